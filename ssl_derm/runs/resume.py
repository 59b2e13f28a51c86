"""Resume safety: a checkpoint continues only the run that wrote it.

Every checkpoint stores the resolved config. On resume the new config is compared with it; keys that
change only the step budget or how often things are logged and saved may differ, anything else
(LR, batch, data, method...) would silently mix two experiments in one folder, so it stops the run.
``--force`` discards the old checkpoints instead. A key that ssl-derm gained after the checkpoint was
written is no difference while it keeps its default (new keys default to the old behaviour); set to
anything else, it is.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from ssl_derm.errors import ConfigError
from ssl_derm.runs.fingerprint import IGNORED
from ssl_derm.runs.folder import flatten

# keys that may change between a run and its resume: those that never change a result (the fingerprint's
# IGNORED: logging and checkpoint frequency, threads, device...) and the step budget
RESUMABLE_KEYS = IGNORED | {"train.max_steps"}


class ConfigMismatchError(ConfigError):
    """The config differs from the one the checkpoint was written with."""


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


def config_differences(old: dict, new: dict, defaults: Optional[dict] = None) -> list:
    """Sorted keys whose values differ between two resolved config dicts, less :data:`RESUMABLE_KEYS`.

    ``defaults`` (flattened, see :func:`field_defaults`): a key missing from ``old`` (added to ssl-derm
    since) that holds its default in ``new`` is not a difference."""
    a, b, d = flatten(old or {}), flatten(new or {}), defaults or {}
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)
                  and not (k not in a and k in b and b[k] == d.get(k, _NONE)))


def check_resume_config(path, old: dict, new: dict, defaults: Optional[dict] = None) -> None:
    """Raise :class:`ConfigMismatchError` (one line, naming the keys) if the configs differ."""
    if old is None or new is None:
        return
    diff = config_differences(old, new, defaults)
    if diff:
        a, b = flatten(old), flatten(new)
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise ConfigMismatchError(f"cannot resume from {path}: the config differs from the checkpoint's in "
                                  f"{shown}{more}; use --force or a new --out")


def discard_checkpoints(out_dir) -> bool:
    """``--force``: delete ``<out_dir>/checkpoints`` so the run starts over; True if there was one."""
    ckpt = Path(out_dir) / "checkpoints"
    if ckpt.exists():
        shutil.rmtree(ckpt)
        print(f"--force: removed the old checkpoints in {ckpt}; starting over")
        return True
    return False
