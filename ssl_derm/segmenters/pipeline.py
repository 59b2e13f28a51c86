"""The segmentation pipeline every segmenter runs in: prepare -> segment -> refine -> clean up.

Used by ``ssl-derm segment``, by ``ssl-derm predict`` on an exported segmenter and by the archive masks
that lesion-aware crops read, so all three give the same mask for the same image and settings.
"""
from __future__ import annotations

import time
from typing import Tuple

import numpy as np
import torch
from tqdm import tqdm

from ssl_derm.augment import resize

from ssl_derm.segmenters.cleanup import clean_up
from ssl_derm.segmenters.em import em_split
from ssl_derm.segmenters.prep import prepare, smooth_lab


def resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    """float or uint8 (N, S, S[, C]) -> float32 (N, size, size[, C]): the augment package's square resize
    (bilinear, antialiased, as the cache's) on channels-last arrays."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    t = resize(t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None], size)
    return (t.permute(0, 2, 3, 1) if x.ndim == 4 else t[:, 0]).numpy()


def predict_batch(segmenter, images: np.ndarray):
    """The steps of every segmenter: prepare -> segment -> refine (``segment.refine_em``) -> clean up.

    uint8 (N, S, S, 3) -> (scores float32 (N, S, S) in [0, 1], masks bool (N, S, S)). With
    ``segment.max_work_size`` below S, the steps run on the images shrunk to that size, and the scores and
    masks come back to S (bilinear; a mask's interpolation > 0.5, as masks reach the original size)."""
    s = segmenter.s
    images = np.asarray(images)
    if len(images) == 0:
        size = images.shape[1] if images.ndim == 4 else 0
        return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), bool)
    size, cap = images.shape[1], int(getattr(s, "max_work_size", 0) or 0)
    if 0 < cap < size:
        small = (resize_batch(images, cap) + 0.5).clip(0, 255).astype(np.uint8)
        scores, masks = _predict_batch(segmenter, small)
        return resize_batch(scores, size).clip(0, 1), resize_batch(masks, size) > 0.5
    return _predict_batch(segmenter, images)


def _predict_batch(segmenter, images: np.ndarray):
    s = segmenter.s
    prep = prepare(images, s)
    scores, masks = segmenter.segment(images, prep)
    if s.refine_em:
        scores, masks = em_refine(prep, masks, s)
    masks = clean_up(masks, prep.valid, s, prep.hair)
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
