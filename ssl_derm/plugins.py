"""Config sections that belong to a plug-in: ``method``, ``protocol``, ``segment`` and ``augment``.

Such a section's dataclass is the settings class that the chosen plug-in registered with itself
(``@register("protocol", "fixmatch", settings=FixMatchSettings)``), so ``cfg.protocol`` is a
``FixMatchSettings`` when ``protocol.name`` is ``fixmatch`` and ``protocol.threshold`` is an error for
``knn``. The top-level config declares the section with :func:`plugin`; the loader
(:func:`ssl_derm.config.load_config`) builds it with :func:`plugin_section`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any, Dict, List, Optional

from ssl_derm.config_values import coerce_scalar
from ssl_derm.errors import ConfigError, UnknownNameError

# the key inside each kind's section that names the plug-in
SELECTOR = {"method": "name", "protocol": "name", "segmenter": "method", "preset": "preset"}


def plugin(kind: str, default: str, aliases: Optional[Dict[str, str]] = None, optional: bool = False,
           base: Optional[type] = None):
    """A dataclass field whose value is the settings of the registered ``kind`` named in its section.

    ``aliases``: names that stand for a registered one (segment.method=default); ``optional``: an empty
    name is allowed and means ``base`` (augment.preset="" = the method's own preset); ``base``: the class
    of a plug-in that registered no settings of its own."""
    meta = {"plugin": kind, "key": SELECTOR[kind], "aliases": dict(aliases or {}), "optional": optional, "base": base}
    return field(default_factory=lambda: plugin_settings(kind, default, meta=meta), metadata=meta)


def _settings_class(kind: str, name: str, meta: dict, declared: Optional[type], key: str) -> type:
    from ssl_derm import registry

    if meta.get("optional") and name == "":
        return declared
    target = meta.get("aliases", {}).get(name, name)
    try:
        registry.get(kind, target)
    except UnknownNameError as e:
        extra = "".join(f"{a}, " for a in meta.get("aliases", {}))
        raise UnknownNameError(f"config key '{key}': {e}".replace("available: ", "available: " + extra)) from None
    cls = registry.settings_class(kind, target) or declared
    if cls is None:
        raise ConfigError(f"{kind} '{target}' registered no settings class; register it with settings=...")
    return cls


def _all_keys(kind: str, declared: Optional[type]) -> set:
    """Every key that some plug-in of ``kind`` (or the declared base) accepts."""
    from ssl_derm import registry

    classes = [registry.settings_class(kind, n) for n in registry.names(kind)] + [declared]
    return {f.name for c in classes if c is not None for f in dataclasses.fields(c)}


def prune_foreign(cls, data: dict, merged: dict) -> dict:
    """``data`` without the plug-in-section keys that the plug-in chosen in ``merged`` (``data`` plus
    overrides) lacks but another plug-in of its kind has; ``cls``: the top-level config class."""
    out = dict(data)
    for f in dataclasses.fields(cls):
        if "plugin" not in f.metadata or not isinstance(out.get(f.name), dict):
            continue
        meta, sel = f.metadata, f.metadata["key"]
        section = merged.get(f.name) if isinstance(merged.get(f.name), dict) else {}
        name = section.get(sel, getattr(f.default_factory(), sel))
        chosen = _settings_class(meta["plugin"], str(name), meta, meta.get("base"), f"{f.name}.{sel}")
        foreign = _all_keys(meta["plugin"], meta.get("base")) - {g.name for g in dataclasses.fields(chosen)}
        out[f.name] = {k: v for k, v in out[f.name].items() if k not in foreign}
    return out


def plugin_section(f_or_meta, declared: Optional[type], values: dict, current, key: str, lenient: bool = False):
    """Build the settings of the plug-in that ``values`` (or else ``current``) names; unknown keys are
    errors that list the chosen plug-in's keys (with ``lenient``, keys of its kind's other plug-ins are
    dropped instead)."""
    meta = f_or_meta.metadata if isinstance(f_or_meta, dataclasses.Field) else f_or_meta
    kind, sel = meta["plugin"], meta["key"]
    declared = meta.get("base") or declared
    name = _coerce(values.get(sel, getattr(current, sel, "")), str, f"{key}.{sel}")
    cls = _settings_class(kind, name, meta, declared, f"{key}.{sel}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    if lenient:
        others = _all_keys(kind, declared) - allowed
        values = {k: v for k, v in values.items() if k not in others}
    unknown = sorted(k for k in values if k not in allowed)
    if unknown:
        what = f"{kind} '{name}'" if name else f"the section '{key}'"
        raise ConfigError(f"unknown config key '{key}.{unknown[0]}' for {what}; allowed keys here: "
                          f"{', '.join(sorted(allowed))}")
    obj = _from_dict(cls, {k: v for k, v in values.items() if k != sel}, key + ".")
    setattr(obj, sel, name)
    return obj


def plugin_settings(kind: str, name: str, values: Optional[dict] = None, lenient: bool = False,
                    meta: Optional[dict] = None):
    """The settings of plug-in ``name`` of ``kind`` from ``values``, checked as a config section would be
    (``plugin_settings("method", "simclr", {"proj_dim": 16})``)."""
    meta = meta or {"plugin": kind, "key": SELECTOR[kind], "aliases": {}, "optional": False}
    section = {"method": "method", "protocol": "protocol", "segmenter": "segment", "preset": "augment"}[kind]
    obj = plugin_section(meta, None, {**(values or {}), meta["key"]: name}, None, section, lenient)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def require_at_least(section: str, settings, minimum, *keys: str, strict: bool = False) -> None:
    """ConfigError naming ``<section>.<key>`` for the first of ``keys`` below ``minimum`` (or equal to it when
    ``strict``): the range check every plug-in's settings ``check()`` makes."""
    for key in keys:
        v = getattr(settings, key)
        if v < minimum or (strict and v == minimum):
            raise ConfigError(f"config key '{section}.{key}': must be {'>' if strict else '>='} {minimum}, got {v}")


# ----------------------------------------------------------------------------- typed loading
def _coerce(value: Any, tp, key: str):
    """Check ``value`` against the annotation ``tp``; convert where it is unambiguous."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, List):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp is Any:
        return value
    if tp in (bool, int, float, str):
        return coerce_scalar(value, tp, key)
    return value


def _from_dict(cls, data: dict, prefix: str = "", lenient: bool = False):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise ConfigError(f"unknown config key '{prefix}{k}'; allowed keys here: {', '.join(sorted(fields))}")
    obj = cls()
    for k, v in data.items():
        if "plugin" in fields[k].metadata:
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{prefix}{k}': expected a mapping of settings, got {v!r}")
            setattr(obj, k, plugin_section(fields[k], hints[k], v, getattr(obj, k), prefix + k, lenient))
        else:
            setattr(obj, k, _coerce(v, hints[k], prefix + k))
    return obj
