"""Self-supervised methods, one registered file each: simclr, mocov3, byol, dino, mae,
simmim, barlowtwins, vicreg, swav, ibot.

``build_method(method_cfg, encoder, max_steps)`` -> a ``Method``; see ``methods/base.py`` for the interface.
"""
from ssl_derm.methods.base import Method, MethodError, build_method
from ssl_derm.methods import barlowtwins, byol, dino, ibot, mae, mocov3, simclr, simmim, swav, vicreg  # noqa: F401,E501

__all__ = ["Method", "MethodError", "build_method"]
