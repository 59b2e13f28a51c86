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
ratio. The same EM (``segment/em.py``) finishes other methods' masks when ``segment.refine_em`` is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ssl_derm.errors import ConfigError
from ssl_derm.registry import register
from ssl_derm.segment.base import Segmenter
from ssl_derm.segment.config import SegmenterSettings
from ssl_derm.segment.em import em_split, mahalanobis
from ssl_derm.segment.prep import Prepared, smooth_lab
from ssl_derm.segment.prior import otsu_threshold


def contrast_init(f: np.ndarray, valid: np.ndarray, ring: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mahalanobis distance to the ring's colour Gaussian, and its Otsu split. -> (dist (P,), bool (P,))."""
    dist = mahalanobis(f, ring)
    return dist, (dist > otsu_threshold(dist[valid])) & valid


@dataclass
class ContrastEMSettings(SegmenterSettings):
    """contrast_em uses the shared keys only: ``smooth_sigma`` and ``em_iters`` (0: the contrast alone)."""

    method: str = "contrast_em"

    def check(self) -> None:
        super().check()
        if self.em_iters < 0:
            raise ConfigError(f"config key 'segment.em_iters': must be >= 0, got {self.em_iters}")


@register("segmenter", "contrast_em", settings=ContrastEMSettings)
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
