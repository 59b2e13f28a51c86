"""``contrast_em`` (the default): skin/lesion colour classes in Lab, found by contrast and EM.

Per image, with no labels and nothing learnt across images:

1. skin model: a Gaussian of the (hair-free, lightly smoothed) Lab colours in the skin ring just
   inside the field of view; every pixel's Mahalanobis distance to it is its contrast to the skin;
2. initial lesion: contrast above Otsu's threshold (of the field of view's contrasts);
3. hard EM (classification EM) of two full-covariance Gaussians, lesion and skin: refit both to the
   current split, reassign each pixel to the likelier class; ``em_iters`` rounds. The ring seeds
   the skin class but does not bind it, so a lesion reaching the ring is not forced into skin;
4. the shared clean-up: the central component, holes filled.

The lesion score is the posterior of the lesion class (equal priors), a sigmoid of the log-likelihood
ratio. The same EM finishes other methods' masks when ``segment.refine_em`` is set.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ssl_derm.registry import register
from ssl_derm.segment.base import Prepared, Segmenter, smooth_lab
from ssl_derm.segment.prior import otsu_threshold

REG = 1.0  # added to covariance diagonals (Lab units^2): keeps flat-colour classes invertible
MIN_PIXELS = 10


def _gauss(f: np.ndarray, sel: np.ndarray):
    """Mean (C,) and regularised covariance (C, C) of the columns ``sel`` of ``f`` (C, P)."""
    s = f[:, sel]
    return s.mean(1), np.cov(s) + REG * np.eye(f.shape[0])


def _nll(f: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (up to a constant) of every column of ``f`` under N(mu, cov)."""
    d = f - mu[:, None]
    return 0.5 * (np.einsum("ip,ij,jp->p", d, np.linalg.inv(cov), d) + np.linalg.slogdet(cov)[1])


def em_split(f: np.ndarray, valid: np.ndarray, init: np.ndarray, iters: int) -> Tuple[np.ndarray, np.ndarray]:
    """Two-Gaussian classification EM. f: (C, P) features; valid, init: bool (P,).

    Returns (lesion posterior float (P,), lesion bool (P,)); pixels outside ``valid`` are 0 / False.
    """
    m = init & valid
    post = m.astype(np.float64)
    for _ in range(iters):
        if m.sum() < MIN_PIXELS or (valid & ~m).sum() < MIN_PIXELS:
            break
        llr = _nll(f, *_gauss(f, valid & ~m)) - _nll(f, *_gauss(f, m))
        post = 1.0 / (1.0 + np.exp(-np.clip(llr, -30, 30)))
        m = (llr > 0) & valid
    return np.where(valid, post, 0.0), m


def contrast_init(f: np.ndarray, valid: np.ndarray, ring: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mahalanobis distance to the ring's colour Gaussian, and its Otsu split. -> (dist (P,), bool (P,))."""
    mu, cov = _gauss(f, ring)
    d = f - mu[:, None]
    dist = np.sqrt(np.einsum("ip,ij,jp->p", d, np.linalg.inv(cov), d))
    return dist, (dist > otsu_threshold(dist[valid])) & valid


def em_refine(prep: Prepared, masks: np.ndarray, s) -> Tuple[np.ndarray, np.ndarray]:
    """Refine masks bool (N, S, S) of any method with the colour EM. -> (scores, masks)."""
    lab = smooth_lab(prep.lab, s.smooth_sigma)
    n, c, size, _ = lab.shape
    scores = np.zeros((n, size, size), np.float32)
    out = np.zeros((n, size, size), bool)
    for i in range(n):
        f, v = lab[i].reshape(c, -1), prep.valid[i].ravel()
        post, m = em_split(f, v, masks[i].ravel(), max(s.em_iters, 1))
        scores[i], out[i] = post.reshape(size, size), m.reshape(size, size)
    return scores, out


@register("segmenter", "contrast_em")
class ContrastEM(Segmenter):
    def segment(self, images: np.ndarray, prep: Prepared):
        lab = smooth_lab(prep.lab, self.s.smooth_sigma)
        n, c, size, _ = lab.shape
        scores = np.zeros((n, size, size), np.float32)
        masks = np.zeros((n, size, size), bool)
        for i in range(n):
            f, v, ring = lab[i].reshape(c, -1), prep.valid[i].ravel(), prep.ring[i].ravel()
            dist, init = contrast_init(f, v, ring)
            post, m = em_split(f, v, init, self.s.em_iters)
            if self.s.em_iters == 0:  # contrast alone: score = distance relative to the threshold
                post = 1.0 - np.exp(-dist / max(otsu_threshold(dist[v]), 1e-6) * np.log(2))
            scores[i], masks[i] = post.reshape(size, size), m.reshape(size, size)
        return scores, masks
