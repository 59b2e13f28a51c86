"""Annotation-free lesion masks of a whole pretraining archive, computed once and cached beside the images.

``archive_masks(dataset)`` -> (N, S, S) uint8 {0, 1}, rows aligned with ``dataset.images``: the default
segmenter (``segment.method=default``, its default settings) at the cache's own resolution S. The entry
``lesions-<S>px-<key>/`` sits in the image cache's folder; its key hashes the image entry's key, the
segmenter's name and settings and a version of this file's recipe, so new images or another default give
a new entry and a stale one is never read. Built in a temporary folder and renamed into place (as the
image cache), so a crash or a second process never sees half an entry. No labels or masks are read.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ssl_derm.data.cache import _commit, _fingerprint
from ssl_derm.errors import DataError

RECIPE_VERSION = 2  # 2: contrast_em colour edges image by image (1 blended neighbours in a batch)


def _segment_config():
    from ssl_derm.segmenters.config import SegmentConfig

    return SegmentConfig()  # segment.method=default with its default settings


def recipe() -> list:
    """What the masks depend on besides the images: this file's recipe version and the default
    segmenter's name and settings."""
    return [RECIPE_VERSION, dataclasses.asdict(_segment_config().segment)]


def entry_dir(dataset) -> Path:
    """The cache folder of ``dataset``'s lesion masks (whether built yet or not)."""
    if dataset.cache_dir is None or not dataset.key:
        raise DataError("lesion masks are cached beside an image cache entry; this dataset has none")
    version, seg = recipe()
    key = _fingerprint([version, dataset.key, seg])
    return Path(dataset.cache_dir) / f"lesions-{dataset.image_size}px-{key[:20]}"


def archive_masks(dataset, progress: bool = True) -> np.ndarray:
    """(N, S, S) uint8 lesion masks of every row of ``dataset.images``, from the cache or computed now."""
    final = entry_dir(dataset)
    n, s = len(dataset), dataset.image_size
    if not (final / "index.json").exists():
        _build(dataset, final, progress)
    index = json.loads((final / "index.json").read_text())
    if index.get("n") != n or index.get("size") != s:
        raise DataError(f"lesion mask cache '{final}' does not match its images (n={index.get('n')} vs {n}); "
                        "delete that folder and run again")
    if n == 0:
        return np.zeros((0, s, s), np.uint8)
    return np.memmap(final / "masks.u8", dtype=np.uint8, mode="r", shape=(n, s, s))


def _default_segmenter():
    from ssl_derm.segmenters.base import build_segmenter

    cfg = _segment_config()
    return cfg, build_segmenter(cfg)


def default_masks(images: np.ndarray, segmenter=None) -> np.ndarray:
    """uint8 (N, S, S, 3) -> (N, S, S) uint8 {0, 1}: the masks this cache would hold for these images
    (``ssl-derm predict`` of a classifier that pooled its features over the lesion). ``segmenter``: one
    built by :func:`default_segmenter` and kept by a caller that asks batch after batch."""
    from ssl_derm.segmenters.pipeline import predict_batch

    return predict_batch(segmenter or default_segmenter(), np.asarray(images))[1].astype(np.uint8)


def default_segmenter():
    """The segmenter whose masks this cache holds."""
    return _default_segmenter()[1]


def _build(dataset, final: Path, progress: bool) -> None:
    from ssl_derm.data.cache import new_array, new_entry
    from ssl_derm.segmenters.pipeline import predict_batch

    cfg, segmenter = _default_segmenter()
    n, s = len(dataset), dataset.image_size
    final.parent.mkdir(parents=True, exist_ok=True)
    with new_entry(final) as tmp:
        empty = 0
        if n:
            out = new_array(tmp / "masks.u8", (n, s, s), f"the lesion-mask cache ({n} masks at {s} px)", final.parent)
            bs = cfg.segment.batch_size
            steps = range(0, n, bs)
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc=f"lesion masks ({n} images, {cfg.segment.method})", dynamic_ncols=True)
            for i in steps:
                _, masks = predict_batch(segmenter, np.asarray(dataset.images[i:i + bs]))
                out[i:i + bs] = masks
                empty += int((~masks.any(axis=(1, 2))).sum())
            out.flush()
            del out
        seg = dataclasses.asdict(cfg.segment)
        (tmp / "index.json").write_text(json.dumps({"n": n, "size": s, "image_key": dataset.key, "segment": seg,
                                                    "recipe": RECIPE_VERSION, "empty_masks": empty}))
        _commit(tmp, final)


def masks_for(dataset) -> np.ndarray:
    """The default segmenter's masks of every cache row of ``dataset``: cached beside its image cache entry,
    or computed in memory for a dataset without one (uint8 (N, S, S))."""
    if getattr(dataset, "cache_dir", None) is None or not getattr(dataset, "key", None):
        return default_masks(dataset.images)
    return archive_masks(dataset, progress=False)

