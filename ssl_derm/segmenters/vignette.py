"""The dermoscope's field of view: a bright disc; outside it the dark vignette of the lens tube.

The vignette is found without labels as the dark region that reaches the image corners, and its
inner edge is replaced by a robust circle fit: a dark lesion that touches the vignette breaks the
dark region's outline but not the circle, so it is not cut away with the border. A dark lesion that reaches
a corner by itself (a close-up) is no vignette: it lies inside the circle fitted to its own edge, and then
nothing is left out.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

DARK_FRACTION = 0.5  # darker than half the bright (90th percentile) lightness of the image
MIN_AREA = 0.005  # a dark corner region smaller than this share of the image is ignored
OUTSIDE_SHARE = 0.5  # a vignette lies outside the circle fitted to its inner edge; a dark lesion inside it


def _corner_dark(L: np.ndarray) -> np.ndarray:
    """(S, S) lightness -> bool (S, S): dark components that touch a corner patch."""
    s = L.shape[0]
    Ls = ndi.uniform_filter(L, 3)
    dark = Ls < DARK_FRACTION * np.percentile(Ls, 90)
    lab, n = ndi.label(dark)
    if n == 0:
        return dark
    k = max(2, s // 25)
    corners = np.concatenate([lab[:k, :k].ravel(), lab[:k, -k:].ravel(), lab[-k:, :k].ravel(), lab[-k:, -k:].ravel()])
    ids = np.unique(corners[corners > 0])
    return np.isin(lab, ids)


def fit_circle(y: np.ndarray, x: np.ndarray):
    """Least-squares (Kasa) circle through points -> (cy, cx, r)."""
    a = np.stack([2 * x, 2 * y, np.ones_like(x)], 1)
    sol, *_ = np.linalg.lstsq(a, x * x + y * y, rcond=None)
    cx, cy, c = sol
    return cy, cx, float(np.sqrt(max(c + cx * cx + cy * cy, 1e-6)))


def vignette_mask(L: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """(S, S) lightness (Lab L, 0-100) -> bool (S, S), True outside the field of view."""
    s = L.shape[0]
    dark = _corner_dark(L)
    if dark.mean() < MIN_AREA:
        return np.zeros_like(dark)
    edge = dark & ndi.binary_dilation(~dark)
    edge[0] = edge[-1] = False
    edge[:, 0] = edge[:, -1] = False
    y, x = np.nonzero(edge)
    if len(y) < 10:
        return dark
    y, x = y.astype(float), x.astype(float)
    keep = np.ones(len(y), bool)
    for _ in range(3):  # trim the 30% worst-fitting edge points (lesion or hair on the rim) and refit
        cy, cx, r = fit_circle(y[keep], x[keep])
        res = np.abs(np.hypot(y - cy, x - cx) - r)
        keep = res <= np.percentile(res, 70)
    if not (r > 0.3 * s and abs(cy - s / 2) < 0.5 * s and abs(cx - s / 2) < 0.5 * s):
        return dark  # not a plausible lens circle: keep the dark corner regions themselves
    yy, xx = np.mgrid[:s, :s]
    outside = np.hypot(yy - cy, xx - cx) > r - margin * s / 128
    if (dark & outside).sum() < OUTSIDE_SHARE * dark.sum():
        return np.zeros_like(dark)  # dark inside its own circle: a dark lesion that reaches a corner, no vignette
    return outside


def field_of_view(L: np.ndarray, enabled: bool = True) -> np.ndarray:
    """(S, S) lightness -> bool (S, S) valid pixels (inside the field of view). Never (almost) empty."""
    if not enabled:
        return np.ones(L.shape, bool)
    valid = ~vignette_mask(L)
    return valid if valid.mean() > 0.1 else np.ones(L.shape, bool)


def flatten_illumination(images: np.ndarray, ring: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Divide out a smooth illumination fall-off (lens vignetting, an uneven light) measured on the skin.

    uint8 (N, S, S, 3), skin ring bool (N, S, S), field of view bool (N, S, S) -> uint8 (N, S, S, 3).
    Illumination multiplies every channel alike, so its log is a surface added to the log grey level;
    a quadratic surface in (y, x) is fitted to the ring's skin (least squares, then again without the
    pixels more than 2 sigma off: a lesion or hair in the ring) and subtracted, keeping the field of view's
    mean brightness. A ring without enough pixels leaves its image as it is.
    """
    n, s = images.shape[:2]
    yy, xx = np.mgrid[:s, :s].astype(np.float64) / max(s - 1, 1) - 0.5
    design = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1).reshape(-1, 6)  # (P, 6)
    x = images.astype(np.float64)
    out = images.copy()
    for i in range(n):
        g = np.log(x[i].mean(-1).ravel() + 1.0)
        sel = ring[i].ravel()
        if sel.sum() < 50:
            continue
        for _ in range(3):
            coef, *_ = np.linalg.lstsq(design[sel], g[sel], rcond=None)
            res = g - design @ coef
            sd = res[sel].std() + 1e-6
            sel = sel & (res > -sd) & (res < 2 * sd)  # darker than the surface is lesion or hair: out sooner
        surf = design @ coef
        surf -= surf[valid[i].ravel()].mean()
        gain = np.exp(-surf).reshape(s, s, 1)
        out[i] = np.clip(x[i] * gain + 0.5, 0, 255).astype(np.uint8)
    return out
