"""Otsu baselines: threshold one channel (grayscale or blue) at Otsu's value, darker = lesion.

The blue channel separates pigment from skin best among RGB (melanin absorbs blue most, skin
reflects it), which is why it is the classic dermoscopy baseline. The score is a sigmoid of the
distance to the threshold in units of the channel's spread. The field of view and hair removal are
left out, so the baseline stays the textbook one; clean-up follows ``segment.component``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssl_derm.registry import register
from ssl_derm.segmenters.base import Segmenter
from ssl_derm.segmenters.config import SegmenterSettings
from ssl_derm.segmenters.prep import Prepared
from ssl_derm.segmenters.prior import otsu_threshold

GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma


def otsu_dark(channel: np.ndarray):
    """(N, S, S) float channel -> (scores float32 (N,S,S), masks bool (N,S,S)); below Otsu = lesion."""
    scores = np.zeros(channel.shape, np.float32)
    masks = np.zeros(channel.shape, bool)
    for i, c in enumerate(channel):
        t = otsu_threshold(c)
        masks[i] = c < t
        scores[i] = 1.0 / (1.0 + np.exp(-np.clip((t - c) / (c.std() + 1e-6) * 4, -30, 30)))
    return scores, masks


class _Otsu(Segmenter):
    weights = GRAY  # RGB weights of the thresholded channel

    def segment(self, images: np.ndarray, prep: Prepared):
        prep.valid[:] = True  # textbook baseline: no field-of-view handling
        return otsu_dark(images.astype(np.float32) @ self.weights)


@dataclass
class OtsuSettings(SegmenterSettings):
    """Otsu uses the shared keys only (configs/segment/otsu_*.yaml pick component: largest)."""

    method: str = "otsu_gray"


@register("segmenter", "otsu_gray", settings=OtsuSettings)
class OtsuGray(_Otsu):
    weights = GRAY


@register("segmenter", "otsu_blue", settings=OtsuSettings)
class OtsuBlue(_Otsu):
    weights = np.array([0.0, 0.0, 1.0], np.float32)
