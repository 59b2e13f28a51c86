"""What every method assumes about a dermoscopy image, without labels.

- The lesion is darker or more coloured than the skin around it, and the skin shows in a ring just
  inside the field of view (``skin_ring``); large lesions can reach the ring, so statistics of the
  ring are robust ones (median, trimmed covariance).
- The photographer centres the lesion (``centrality``), so among candidate regions the central one wins.
- The vignette and the image border are not lesion (see vignette.py).

``choose_lesion_clusters`` applies these to the output of any clustering (k-means, the Gharawi-style
network): the skin prototype is the ring's median colour, the lesion prototype the most contrasting,
central cluster; every cluster joins whichever prototype its mean colour is nearer to.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.segmenters.em import gaussian_nll

CENTRAL_SIGMA = 0.3  # width of the centrality prior, in image sides


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.mean()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def centrality(size: int) -> np.ndarray:
    """(S, S) float in (0, 1]: an isotropic Gaussian prior centred on the image."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * (CENTRAL_SIGMA * size) ** 2))


def skin_ring(valid: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """bool (S, S): valid pixels between ``inner`` and ``outer`` px from the edge of the field of view."""
    d = ndi.distance_transform_edt(np.pad(valid, 1))[1:-1, 1:-1]
    ring = valid & (d > inner) & (d <= outer)
    return ring if ring.sum() >= 20 else valid


def choose_lesion_clusters(labels: np.ndarray, feats: np.ndarray, valid: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Which clusters are lesion.

    labels: (S, S) int cluster ids (ignored outside ``valid``); feats: (C, S, S) features the contrast is
    measured in (Lab colour); valid: bool (S, S) field of view; ring: bool (S, S) skin ring.
    Returns bool (S, S).

    The seed cluster is the most contrasting, central one that is not concentrated in the skin ring.
    Then every cluster goes, as a whole, to whichever Gaussian explains its pixels better on average:
    the skin ring's or the seed's. Skin colour is tight and lesions vary, so the intermediate clusters
    of a lesion's lighter rim join the lesion.
    """
    size = labels.shape[0]
    f = feats.reshape(feats.shape[0], -1)
    lab = labels.ravel()
    v = valid.ravel()
    r = ring.ravel()
    skin = np.median(f[:, r], axis=1)
    scale = np.std(f[:, v], axis=1) + 1e-6  # contrast in units of the image's own spread
    w = centrality(size).ravel()
    ring_share = r.sum() / max(v.sum(), 1)
    ids = np.unique(lab[v])
    best, seed = -np.inf, ids[0]
    for k in ids:
        sel = (lab == k) & v
        contrast = np.linalg.norm((f[:, sel].mean(1) - skin) / scale)
        in_ring = (sel & r).sum() / sel.sum()
        score = contrast * w[sel].mean() * sel.sum() ** 0.5 / (1.0 + in_ring / max(ring_share, 1e-6))
        if score > best:
            best, seed = score, k
    llr = gaussian_nll(f, r) - gaussian_nll(f, (lab == seed) & v)  # > 0: the seed explains it better
    lesion = np.zeros(lab.shape, bool)
    for k in ids:
        sel = (lab == k) & v
        if k == seed or llr[sel].mean() > 0:
            lesion |= sel
    return lesion.reshape(size, size)
