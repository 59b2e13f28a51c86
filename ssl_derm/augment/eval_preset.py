"""Evaluation and feature extraction: resize (only when needed) and normalise."""
from __future__ import annotations

from typing import List

from torch import Tensor

from ssl_derm.augment.base import Preset, resize
from ssl_derm.registry import register


@register("preset", "eval")
class Eval(Preset):
    """(B,3,H,W) uint8 -> [view], (B,3,image_size,image_size) float32, no randomness."""

    n_views = 1

    def views(self, x: Tensor) -> List[Tensor]:
        return self.finish(resize(x, self.image_size), 1)
