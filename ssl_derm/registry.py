"""One registry for every pluggable piece: methods, augmentation presets, protocols, segmenters.

Usage::

    @register("method", "simclr")
    class SimCLR(...): ...

    @register("protocol", "fixmatch", settings=FixMatchSettings)
    def run_fixmatch(ctx): ...

    cls = get("method", "simclr")
    names("method")  # sorted list of registered names
    settings_class("protocol", "fixmatch")  # FixMatchSettings
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

from ssl_derm.errors import UnknownNameError

_REGISTRY: Dict[str, Dict[str, object]] = {}
_SETTINGS: Dict[str, Dict[str, Optional[type]]] = {}
_LOADED: set = set()

# Packages whose modules are all imported the first time a kind is looked up, so that registration
# happens without every caller having to import every plug-in module.
_PLUGIN_MODULES = {
    "method": "ssl_derm.methods",
    "preset": "ssl_derm.augment",
    "protocol": "ssl_derm.evaluate",
    "segmenter": "ssl_derm.segmenters",
    "shift": "ssl_derm.robustness",
}


def register(kind: str, name: str, settings: Optional[type] = None) -> Callable:
    """Decorator: register ``obj`` under ``kind``/``name``, with the dataclass of its own config settings
    (``method.*``, ``protocol.*``, ``segment.*``, ``augment.*``; see ``ssl_derm/plugins.py``). A duplicate
    name is an error."""

    def deco(obj):
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} '{name}' is registered twice ({table[name]!r} and {obj!r})")
        if settings is not None and not dataclasses.is_dataclass(settings):
            raise TypeError(f"{kind} '{name}': settings={settings!r} is not a dataclass")
        table[name] = obj
        _SETTINGS.setdefault(kind, {})[name] = settings
        return obj

    return deco


def _ensure_loaded(kind: str) -> None:
    """Import the kind's package and every module in it, so a new plug-in file registers itself without
    an edit anywhere else."""
    mod = _PLUGIN_MODULES.get(kind)
    if mod is None or kind in _LOADED:
        return
    import importlib
    import pkgutil

    _LOADED.add(kind)
    pkg = importlib.import_module(mod)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{mod}.{info.name}")


def names(kind: str) -> list:
    _ensure_loaded(kind)
    return sorted(_REGISTRY.get(kind, {}))


def get(kind: str, name: str):
    """Look up a registered object; an unknown name lists what is available."""
    _ensure_loaded(kind)
    table = _REGISTRY.get(kind, {})
    if name not in table:
        avail = ", ".join(sorted(table)) or "(none)"
        raise UnknownNameError(f"unknown {kind} '{name}'; available: {avail}")
    return table[name]


def settings_class(kind: str, name: str) -> Optional[type]:
    """The settings dataclass registered with ``kind``/``name`` (None if it registered none)."""
    get(kind, name)
    return _SETTINGS.get(kind, {}).get(name)
