"""Predicted masks at the images' original sizes, and their scores against a mask folder.

This is the only place that reads true masks, and it runs after every prediction is made: the
segmenters get images only (a test checks that no mask file is opened before scoring starts).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ssl_derm.data.decode import load_mask
from ssl_derm.data.sources import find_masks
from ssl_derm.metrics.segmentation import score_dataset


def to_original(mask: np.ndarray, hw: Tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """bool (S, S) at the cache size -> bool (h, w): bilinear interpolation then > 0.5 (smooth outlines),
    or nearest neighbour."""
    h, w = int(hw[0]), int(hw[1])
    img = Image.fromarray(np.asarray(mask, np.uint8) * 255)
    if mode == "nearest":
        return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 127
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR)) > 127


def write_masks(out_dir, ids: Sequence[str], masks: np.ndarray, sizes: Sequence[Tuple[int, int]], mode: str) -> Path:
    """Write ``<id>.png`` (0/255, 1-bit, each image's original size) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, m, hw in zip(ids, masks, sizes):
        Image.fromarray(to_original(m, hw, mode)).save(out_dir / f"{i}.png")
    return out_dir


def score_predictions(ids: Sequence[str], masks: np.ndarray, sizes: Sequence[Tuple[int, int]], masks_dir: str,
                      mode: str = "bilinear", keep_small: Optional[Sequence[int]] = None) -> Tuple[dict, Dict[int, np.ndarray]]:
    """Score predicted masks bool (N, S, S) against ``masks_dir`` at each image's original size.

    Images without a usable mask are left out (``mean.n`` says how many were scored, ``missing_masks``
    how many were not, ``missing_examples`` names a few with the reason). ``keep_small``: rows whose
    true mask to return at (S, S) (for overlays).
    Returns (scores dict as :func:`ssl_derm.metrics.segmentation.score_dataset` plus the missing counts,
    {row: bool (S, S) true mask}).
    """
    files = find_masks(masks_dir)
    size = masks.shape[1]
    keep = set(keep_small or ())
    preds: List[np.ndarray] = []
    gts: List[np.ndarray] = []
    scored: List[str] = []
    missing: List[str] = []
    small: Dict[int, np.ndarray] = {}
    for row, (i, m, hw) in enumerate(zip(ids, masks, sizes)):
        path = files.get(i)
        gt, reason = load_mask(path, image_hw=tuple(hw)) if path else (None, "no mask file")
        if gt is None:
            missing.append(i if path is None else f"{i} ({reason})")
            continue
        preds.append(to_original(m, hw, mode))
        gts.append(gt > 0)
        scored.append(i)
        if row in keep:
            small[row] = np.asarray(Image.fromarray(gt).resize((size, size), Image.Resampling.NEAREST)) > 0
    result = score_dataset(preds, gts, scored)
    result["missing_masks"] = len(missing)
    result["missing_examples"] = missing[:5]
    return result, small
