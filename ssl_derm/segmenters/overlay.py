"""Overlay grids: each image with the predicted outline (magenta) and, when known, the true one (green)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

PRED_COLOUR = (255, 0, 255)
TRUE_COLOUR = (0, 255, 0)


def outline(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> bool (H, W): the mask's inner boundary pixels."""
    mask = np.asarray(mask, bool)
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def draw_overlays(images: np.ndarray, pred: np.ndarray, true: Optional[np.ndarray] = None) -> np.ndarray:
    """images uint8 (N, S, S, 3), pred bool (N, S, S), true bool (N, S, S) or None -> uint8 (N, S, S, 3)."""
    out = np.array(images, copy=True)
    for i in range(len(out)):
        if true is not None:
            out[i][outline(true[i])] = TRUE_COLOUR
        out[i][outline(pred[i])] = PRED_COLOUR
    return out


def grid(tiles: np.ndarray, ncol: int = 8) -> np.ndarray:
    """uint8 (N, S, S, 3) -> one uint8 (rows*S, ncol*S, 3) image (blank tiles fill the last row)."""
    n, s = len(tiles), tiles.shape[1]
    ncol = max(1, min(ncol, n))
    rows = (n + ncol - 1) // ncol
    out = np.zeros((rows * s, ncol * s, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[r * s:(r + 1) * s, c * s:(c + 1) * s] = tiles[i]
    return out


def save_overlay_grid(path, images: np.ndarray, pred: np.ndarray, true: Optional[np.ndarray] = None,
                      ncol: int = 8, logger=None, tag: str = "segment/overlays", step: int = 0) -> Path:
    """Write the overlay grid as PNG (and to TensorBoard through ``logger.image_grid`` when given)."""
    import torch

    tiles = draw_overlays(images, pred, true)
    path = Path(path)
    Image.fromarray(grid(tiles, ncol)).save(path)
    if logger is not None:
        logger.image_grid(tag, torch.from_numpy(tiles).permute(0, 3, 1, 2), step, nrow=ncol)
    return path
