"""What produced a result: sha256 of the resolved config, of the data and of the encoder file.

``fingerprint(cfg, dataset, split, encoder_file)`` -> a dict written into every ``metrics.json``::

    {"sha256": <of the three below>, "config_sha256": ..., "data_sha256": ..., "encoder_sha256": ... | None}

Keys that do not change results are left out of the config hash (:data:`ssl_derm.runs.diff.IGNORED`): logging and
checkpoint frequencies, CPU threads, the device (CPU and CUDA runs of one config are meant to agree;
their last digits differ), the cache location and feature-extraction batch size. Reused results (sweep
and label-efficiency cells, finished finetune folders) are compared by ``sha256``; when they differ,
:func:`config_diff` says which keys.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ssl_derm.encoder_files import file_sha256  # noqa: F401  (re-exported: the encoder part of a fingerprint)
from ssl_derm.runs.diff import IGNORED, differences, flat_config, flatten  # noqa: F401  (IGNORED: re-exported)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_sha256(cfg) -> str:
    flat = flat_config(cfg)
    flat.pop("encoder.checkpoint", None)  # a path: the file's own sha256 identifies the weights
    return _sha(flat)


def data_sha256(dataset, split: Optional[dict] = None, external=None) -> str:
    """The image files (the cache key: ids, sizes, mtimes), labels, lesion ids, split sides, external set."""
    def part(ds):
        if ds is None:
            return None
        labels = None if getattr(ds, "labels", None) is None else [int(v) for v in ds.labels]
        key = getattr(ds, "key", "") or hashlib.sha256(np.ascontiguousarray(ds.images).tobytes()).hexdigest()  # in memory
        has_mask = getattr(ds, "has_mask", None)
        return [key, list(ds.ids), labels, list(getattr(ds, "classes", None) or []), getattr(ds, "lesion_ids", None),
                None if has_mask is None else int(np.asarray(has_mask).sum())]
    sides = None if split is None else {k: split.get(k) for k in ("train", "val", "test")}
    return _sha([part(dataset), sides, part(external)])


def fingerprint(cfg, dataset=None, split: Optional[dict] = None, encoder_file=None, external=None,
                derived=None) -> dict:
    """``derived``: what the run reads besides its config, data and encoder, e.g. the recipe of the
    annotation-free lesion masks a lesion-pooled probe uses (a new default segmenter: a new result)."""
    enc = file_sha256(encoder_file)
    parts = {"config_sha256": config_sha256(cfg),
             "data_sha256": data_sha256(dataset, split, external) if dataset is not None else None,
             "encoder_sha256": enc}
    if derived is not None:
        parts["derived_sha256"] = _sha(derived)
    return {"sha256": _sha(parts), **parts}


def config_diff(old: dict, new: dict, limit: int = 8) -> list:
    """["key: old -> new", ...] for the keys (outside :data:`IGNORED`) whose values differ."""
    a, b, keys = flatten(old or {}), flatten(new or {}), differences(old, new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit]] + (
        [f"... and {len(keys) - limit} more"] if len(keys) > limit else [])


def recorded(run_dir) -> Optional[dict]:
    """The fingerprint dict in ``run_dir/metrics.json``, {} for a finished run without one, None if unfinished."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("fingerprint") or {}
    except ValueError:
        return {}


def move_aside(run_dir) -> Path:
    """Rename ``run_dir`` to the first free ``<run_dir>.stale-N`` and return it (the old results are kept)."""
    run_dir = Path(run_dir)
    n = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
        n += 1
    dest = run_dir.with_name(f"{run_dir.name}.stale-{n}")
    run_dir.rename(dest)
    return dest
