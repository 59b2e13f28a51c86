"""Mask clean-up shared by every method: keep one connected component, fill its holes."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.segment.prior import centrality


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


def clean_mask(mask: np.ndarray, component: str = "central", fill_holes: bool = True) -> np.ndarray:
    """One component, holes filled: bool (S, S) -> bool (S, S)."""
    out = select_component(np.asarray(mask, bool), component)
    return ndi.binary_fill_holes(out) if fill_holes else out


def clean_masks(masks: np.ndarray, component: str = "central", fill_holes: bool = True) -> np.ndarray:
    """Batch version: bool (N, S, S) -> bool (N, S, S)."""
    return np.stack([clean_mask(m, component, fill_holes) for m in masks]) if len(masks) else masks.astype(bool)
