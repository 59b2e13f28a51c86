"""The one config diff of the run lifecycle, and its one ignore policy.

Two resolved configs (nested dicts, as written to ``config.yaml`` and into checkpoints) are compared as
flattened dotted keys. :data:`IGNORED` keys never change a result (logging and checkpoint frequencies, CPU
threads, the device, the cache location...): they are left out of the config fingerprint and never count
as a difference. Resuming also lets the step budget grow (:data:`RESUMABLE`). A key that ssl-derm gained after
the older config was written is no difference while the newer one keeps its default (``defaults``, see
:func:`field_defaults`): new keys default to the old behaviour.

Every user of a config comparison calls :func:`differences` (resume, the finished-run rule, sweep cells) and
:func:`describe` to name the keys in its message.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from ssl_derm.config_values import flatten

IGNORED = frozenset({
    "device", "train.dist_timeout_min", "train.log_every", "train.image_log_every", "train.ckpt_every",
    "train.num_threads", "train.resume", "data.cache_dir", "protocol.feature_batch_size", "monitor.every_steps",
    "monitor.max_images"})
RESUMABLE = IGNORED | {"train.max_steps"}  # a checkpoint may be continued with a larger step budget

_NONE = object()  # "no default": such a key must be in both configs and agree


def field_defaults(cfg, prefix: str = "") -> dict:
    """Flattened {key: default} of a config dataclass instance. Each section's defaults come from its own
    class, so a plug-in's settings (``method``, ``segment``...) give theirs, not the central class's."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(field_defaults(value, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            out[prefix + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[prefix + f.name] = f.default_factory()
    return out


def differences(old: Optional[dict], new: Optional[dict], defaults: Optional[dict] = None,
                ignore: Iterable[str] = IGNORED) -> list:
    """Sorted dotted keys whose values differ between two resolved config dicts, less ``ignore``.

    ``defaults`` (flattened): a key missing from ``old`` that holds its default in ``new`` is not a difference."""
    a, b, d, skip = flatten(old or {}), flatten(new or {}), defaults or {}, frozenset(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k)
                  and not (k not in a and k in b and b[k] == d.get(k, _NONE)))


def describe(old: Optional[dict], new: Optional[dict], keys: list, limit: int = 6, sep: str = ", ") -> str:
    """"key (old -> new), ..." for the first ``limit`` of ``keys``, then "and N more"."""
    a, b = flatten(old or {}), flatten(new or {})
    shown = sep.join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def flat_config(cfg) -> dict:
    """{"a.b": value} of a config dataclass or dict, without the :data:`IGNORED` keys."""
    from ssl_derm.config import to_dict

    return {k: v for k, v in flatten(cfg if isinstance(cfg, dict) else to_dict(cfg)).items() if k not in IGNORED}
