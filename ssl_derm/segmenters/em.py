"""Gaussian colour classes and their classification EM: the helpers that contrast_em, the lesion prior
(``prior.choose_lesion_clusters``) and the refine step (``segment.refine_em``) share.

Features are columns: ``f`` is (C, P) for C channels (Lab) and P pixels; selections are bool (P,).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

REG = 1.0  # added to covariance diagonals (Lab units^2): keeps flat-colour classes invertible
MIN_PIXELS = 10  # EM stops when a class has fewer pixels than this


def gaussian(f: np.ndarray, sel: np.ndarray, reg: float = REG):
    """Mean (C,) and regularised covariance (C, C) of the columns ``sel`` of ``f`` (C, P)."""
    s = f[:, sel]
    cov = np.cov(s) if s.shape[1] > 1 else np.zeros((f.shape[0], f.shape[0]))
    return s.mean(1), cov + reg * np.eye(f.shape[0])


def nll(f: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (up to a constant) of every column of ``f`` under N(mu, cov). -> (P,)"""
    d = f - mu[:, None]
    return 0.5 * (np.einsum("ip,ip->p", np.linalg.inv(cov) @ d, d) + np.linalg.slogdet(cov)[1])


def gaussian_nll(f: np.ndarray, sel: np.ndarray, reg: float = REG) -> np.ndarray:
    """NLL of every column of ``f`` under the Gaussian fitted to the columns ``sel``. -> (P,)"""
    return nll(f, *gaussian(f, sel, reg))


def mahalanobis_to(f: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Distance of every column of ``f`` (C, P), or of the vector ``f`` (C,), to N(mu, cov). -> (P,) or ()"""
    d = f - (mu[:, None] if f.ndim == 2 else mu)
    return np.sqrt(np.einsum("i...,i...->...", np.linalg.inv(cov) @ d, d))  # a matmul: BLAS, ~4x a 3-operand einsum


def mahalanobis(f: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Distance of every column of ``f`` to the Gaussian of the columns ``sel``. -> (P,)"""
    return mahalanobis_to(f, *gaussian(f, sel))


def em_rounds(f: np.ndarray, valid: np.ndarray, init: np.ndarray, iters: int,
              bias: float = 0.0) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Two-Gaussian classification EM. f: (C, P) features; valid, init: bool (P,).

    ``bias``: prior log-odds of lesion against skin added to every pixel's log-likelihood ratio (0: equal
    priors; > 0: a pixel the two Gaussians explain about equally well goes to the lesion).
    Returns one (lesion posterior float (P,), lesion bool (P,)) per round, ``iters`` of them (a round after
    a class fell under MIN_PIXELS repeats the last); pixels outside ``valid`` are 0 / False.
    """
    m = init & valid
    post = m.astype(np.float64)
    out = []
    for _ in range(iters):
        if m.sum() >= MIN_PIXELS and (valid & ~m).sum() >= MIN_PIXELS:
            llr = gaussian_nll(f, valid & ~m) - gaussian_nll(f, m) + bias
            post = 1.0 / (1.0 + np.exp(-np.clip(llr, -30, 30)))
            m = (llr > 0) & valid
        out.append((np.where(valid, post, 0.0), m))
    return out


def em_split(f: np.ndarray, valid: np.ndarray, init: np.ndarray, iters: int,
             bias: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """The last round of :func:`em_rounds` (the initial split when ``iters`` is 0). -> (post (P,), bool (P,))"""
    rounds = em_rounds(f, valid, init, iters, bias)
    if rounds:
        return rounds[-1]
    m = init & valid
    return m.astype(np.float64), m
