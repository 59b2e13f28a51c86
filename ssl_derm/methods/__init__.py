"""Self-supervised methods, one registered file each (found by the registry): simclr, mocov3, byol, dino,
mae, simmim, barlowtwins, vicreg, swav, ibot, densecl.

``build_method(method_cfg, encoder, max_steps)`` -> a ``Method``; see ``methods/base.py`` for the interface.
"""
from ssl_derm.methods.base import Method, MethodError, build_method
from ssl_derm.methods import byol, dino, mae, mocov3, simclr, simmim  # noqa: F401  (registration)

__all__ = ["Method", "MethodError", "build_method"]
