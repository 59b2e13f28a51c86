"""Resume safety: a checkpoint continues only the run that wrote it.

Every checkpoint stores the resolved config. On resume the new config is compared with it; keys that
change only the step budget or how often things are logged and saved may differ, anything else
(LR, batch, data, method...) would silently mix two experiments in one folder, so it stops the run.
``--force`` discards the old checkpoints instead. A key that ssl-derm gained after the checkpoint was
written is no difference while it keeps its default (new keys default to the old behaviour); set to
anything else, it is.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from ssl_derm.errors import ConfigError
from ssl_derm.runs.diff import RESUMABLE, describe, differences, field_defaults  # noqa: F401  (field_defaults: re-exported)


class ConfigMismatchError(ConfigError):
    """The config differs from the one the checkpoint was written with."""


def config_differences(old: dict, new: dict, defaults: Optional[dict] = None) -> list:
    """Sorted keys whose values differ between a checkpoint's config and this run's, less :data:`RESUMABLE`."""
    return differences(old, new, defaults, ignore=RESUMABLE)


def check_resume_config(path, old: dict, new: dict, defaults: Optional[dict] = None) -> None:
    """Raise :class:`ConfigMismatchError` (one line, naming the keys) if the configs differ."""
    if old is None or new is None:
        return
    diff = config_differences(old, new, defaults)
    if diff:
        raise ConfigMismatchError(f"cannot resume from {path}: the config differs from the checkpoint's in "
                                  f"{describe(old, new, diff)}; use --force or a new --out")


def discard_checkpoints(out_dir) -> bool:
    """``--force``: delete ``<out_dir>/checkpoints`` so the run starts over; True if there was one."""
    ckpt = Path(out_dir) / "checkpoints"
    if ckpt.exists():
        shutil.rmtree(ckpt)
        print(f"--force: removed the old checkpoints in {ckpt}; starting over")
        return True
    return False
