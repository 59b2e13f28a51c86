"""Frozen-feature extraction shared by kNN, the linear probe and the pretraining monitor.

Features come from the uint8 cache in batches, in eval mode and without gradients, normalised with
``ssl_derm.augment.normalize`` exactly as every training view is.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory without blocking, so the host does
    not wait for the GPU to finish the work already queued."""
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def rows_to_batch(images, rows: np.ndarray, device) -> torch.Tensor:
    """Cache rows -> (B, 3, S, S) uint8 on ``device``, in the order of ``rows``.

    images: (N, S, S, 3) uint8 (a memmap); reading sorted rows keeps memmap access sequential.
    """
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    x = torch.from_numpy(np.ascontiguousarray(images[rows[order]]))
    inv = torch.from_numpy(np.argsort(order, kind="stable"))
    return to_device(x[inv].permute(0, 3, 1, 2).contiguous(), device)


TTA_CHOICES = ("none", "d4")
# avg: the encoder's own pooling; lesion: each map's mean weighted by the annotation-free lesion mask
# (segment/archive_masks.py); both: the two side by side
POOL_CHOICES = ("avg", "lesion", "both")


def tta_views(x: torch.Tensor, tta: str):
    """The views whose features are averaged: the image itself, or (``d4``) its 8 rotations by 90
    degrees with and without a mirror flip (a dermoscopy image has no canonical orientation)."""
    if tta == "none":
        return [x]
    return [torch.rot90(v, k, dims=(2, 3)) for v in (x, x.flip(3)) for k in range(4)]


def pooled(encoder, x: torch.Tensor, stages: int, pool: str, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """One view's frozen features of the ``pool`` kind (:data:`POOL_CHOICES`); ``weights`` (B, 1, S, S),
    the lesion masks, for ``lesion`` and ``both``."""
    if pool == "avg":
        return encoder.pooled_stages(x, stages)
    return encoder.pooled_stages(x, stages, weights=weights, keep_avg=pool == "both")


def feature_dim(encoder, stages: int = 1, pool: str = "avg") -> int:
    plain, weighted = encoder.stages_dim(stages), encoder.stages_dim(stages, weighted=True)
    return {"avg": plain, "lesion": weighted, "both": plain + weighted}[pool]


@torch.no_grad()
def extract_features(encoder, images, rows, aug_cfg, device, batch_size: int = 256, l2: bool = True,
                     stages: int = 1, tta: str = "none", pool: str = "avg", masks=None) -> torch.Tensor:
    """(len(rows), D) float32 pooled features of cache rows, on the CPU.

    ``l2=True`` L2-normalises each row (kNN uses cosine similarity); the linear probe takes raw
    features and standardises them itself. ``stages``: concatenate the pooled outputs of the last n
    stages (:meth:`Encoder.pooled_stages`); ``tta``: average over :func:`tta_views` (each mask turned
    with its view); ``pool`` (:data:`POOL_CHOICES`) with ``masks`` (N, S, S) {0, 1}, rows aligned with
    ``images``, for ``lesion`` and ``both``. The encoder's train/eval mode is restored afterwards.
    """
    from ssl_derm.augment import normalize

    if pool != "avg" and masks is None:
        raise ValueError(f"feature pool '{pool}' needs the lesion masks")
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    out = []
    use_amp = device.type == "cuda"
    try:
        for i in range(0, len(rows), batch_size):
            x = normalize(rows_to_batch(images, rows[i:i + batch_size], device), aug_cfg)
            views = tta_views(x, tta)
            weights = [None] * len(views)
            if pool != "avg":
                m = torch.from_numpy(np.asarray(masks[rows[i:i + batch_size]], dtype=np.float32))[:, None]
                weights = tta_views(to_device(m, device), tta)
            f = 0.0
            for v, w in zip(views, weights):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    f = f + pooled(encoder, v, stages, pool, w).float()
            f = f / len(views)
            if l2:
                f = torch.nn.functional.normalize(f, dim=1)
            out.append(f.cpu())
    finally:
        encoder.train(was_training)
    if not out:
        return torch.zeros(0, feature_dim(encoder, stages, pool))
    return torch.cat(out)


class FeatureCache:
    """Features per encoder key (and feature kind) for every cache row, computed once and reused across
    label fractions and protocols (kNN, linear and label spreading at 1/10/100% labels share one extraction)."""

    def __init__(self):
        self._store = {}

    def get(self, key: Optional[str], encoder, images, rows, aug_cfg, device, batch_size: int, l2: bool,
            stages: int = 1, tta: str = "none", pool: str = "avg", masks=None) -> torch.Tensor:
        """Features of ``rows``; with ``key=None`` nothing is cached."""
        rows = np.asarray(rows, dtype=np.int64)
        if key is None:
            return extract_features(encoder, images, rows, aug_cfg, device, batch_size, l2, stages, tta, pool, masks)
        key = (key, stages, tta, pool)
        full = self._store.get(key)  # raw features; the L2-normalised ones are derived, not re-extracted
        if full is None:
            full = extract_features(encoder, images, np.arange(len(images)), aug_cfg, device, batch_size, False,
                                    stages, tta, pool, masks)
            self._store[key] = full
        out = full[torch.from_numpy(rows)]
        return torch.nn.functional.normalize(out, dim=1) if l2 else out
