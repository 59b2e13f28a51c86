"""Mask clean-up shared by every method: keep one connected component, fill its holes, and (optionally)
take its convex hull."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from ssl_derm.segmenters.prior import centrality


def select_component(mask: np.ndarray, mode: str = "central") -> np.ndarray:
    """bool (S, S) -> bool (S, S) with one connected component (8-connectivity).

    ``largest``: the most pixels. ``central``: the most centrality-weighted pixels (a big blob at
    the border loses to a smaller one in the middle, where dermoscopy images put the lesion).
    ``all``: every component.
    """
    if mode == "all" or not mask.any():
        return mask
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n == 1:
        return mask
    weights = np.ones(mask.shape) if mode == "largest" else centrality(mask.shape[0])
    score = ndi.sum(weights, lab, np.arange(1, n + 1))
    return lab == 1 + int(np.argmax(score))


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """bool (S, S) -> bool (S, S): ``mask`` plus every pixel whose centre lies in the convex hull of its
    pixels' centres. Fewer than 3 pixels, or all on one line, are their own hull."""
    y, x = np.nonzero(mask)
    if len(y) < 3:
        return np.asarray(mask, bool)
    try:
        eq = ConvexHull(np.stack([y, x], 1).astype(np.float64)).equations  # rows (ny, nx, c): inside <= 0
    except QhullError:
        return np.asarray(mask, bool)
    y0, y1, x0, x1 = y.min(), y.max() + 1, x.min(), x.max() + 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (eq[:, :1, None] * yy + eq[:, 1:2, None] * xx + eq[:, 2:, None] <= 1e-9).all(0)
    out = np.array(mask, bool)
    out[y0:y1, x0:x1] |= inside
    return out


def clean_mask(mask: np.ndarray, component: str = "central", fill_holes: bool = True,
               hull: bool = False) -> np.ndarray:
    """One component, holes filled (and with ``hull``, its convex hull): bool (S, S) -> bool (S, S)."""
    out = select_component(np.asarray(mask, bool), component)
    if hull:  # a hull has no holes
        return convex_hull(out)
    return ndi.binary_fill_holes(out) if fill_holes else out


def clean_masks(masks: np.ndarray, component: str = "central", fill_holes: bool = True,
                hull: bool = False) -> np.ndarray:
    """Batch version: bool (N, S, S) -> bool (N, S, S)."""
    return np.stack([clean_mask(m, component, fill_holes, hull) for m in masks]) if len(masks) else masks.astype(bool)
