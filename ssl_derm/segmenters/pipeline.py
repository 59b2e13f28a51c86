"""The segmentation pipeline every segmenter runs in: prepare -> segment -> refine -> clean up.

Used by ``ssl-derm segment``, by ``ssl-derm predict`` on an exported segmenter and by the archive masks
that lesion-aware crops read, so all three give the same mask for the same image and settings.
"""
from __future__ import annotations

import time
from typing import Tuple

import numpy as np
from tqdm import tqdm

from ssl_derm.segmenters.cleanup import clean_up
from ssl_derm.segmenters.em import em_split
from ssl_derm.segmenters.prep import prepare, smooth_lab


def predict_batch(segmenter, images: np.ndarray):
    """The steps of every segmenter: prepare -> segment -> refine (``segment.refine_em``) -> clean up.

    uint8 (N, S, S, 3) -> (scores float32 (N, S, S) in [0, 1], masks bool (N, S, S))."""
    s = segmenter.s
    images = np.asarray(images)
    if len(images) == 0:
        size = images.shape[1] if images.ndim == 4 else 0
        return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), bool)
    prep = prepare(images, s)
    scores, masks = segmenter.segment(images, prep)
    if s.refine_em:
        scores, masks = em_refine(prep, masks, s)
    masks = clean_up(masks, prep.valid, s)
    return np.clip(scores, 0, 1).astype(np.float32), masks


def predict_all(segmenter, images: np.ndarray, rows: np.ndarray, batch_size: int):
    """-> (scores float32 (n,S,S), masks bool (n,S,S), seconds spent predicting)."""
    size = images.shape[1]
    scores = np.zeros((len(rows), size, size), np.float32)
    masks = np.zeros((len(rows), size, size), bool)
    seconds = 0.0
    for i in tqdm(range(0, len(rows), batch_size), desc=f"segment ({len(rows)} images)", dynamic_ncols=True):
        batch = np.asarray(images[rows[i:i + batch_size]])
        t0 = time.perf_counter()
        scores[i:i + batch_size], masks[i:i + batch_size] = predict_batch(segmenter, batch)
        seconds += time.perf_counter() - t0
    return scores, masks, seconds


def em_refine(prep, masks: np.ndarray, s) -> Tuple[np.ndarray, np.ndarray]:
    """The refine step: masks bool (N, S, S) of any segmenter -> the colour EM's (scores, masks), started
    from them (``prep``: the batch's :class:`~ssl_derm.segmenters.prep.Prepared`; ``s``: the segment settings)."""
    lab = smooth_lab(prep.lab, s.smooth_sigma)
    n, c, size, _ = lab.shape
    scores = np.zeros((n, size, size), np.float32)
    out = np.zeros((n, size, size), bool)
    for i in range(n):
        f, v = lab[i].reshape(c, -1), prep.valid[i].ravel()
        post, m = em_split(f, v, masks[i].ravel(), max(s.em_iters, 1))
        scores[i], out[i] = post.reshape(size, size), m.reshape(size, size)
    return scores, out
