"""MAE / SimMIM: one lightly augmented view (crop, rotation, flips; no colour change)."""
from __future__ import annotations

from typing import List

from torch import Tensor

from ssl_derm.augment.base import Preset
from ssl_derm.registry import register


@register("preset", "masked")
class Masked(Preset):
    """(B,3,H,W) uint8 -> [view], (B,3,image_size,image_size) float32.

    Crop area U(``masked_crop_scale_min``, 1): masked-image models reconstruct pixels, so the view
    keeps most of the lesion and its true colours.
    """

    n_views = 1

    def views(self, x: Tensor) -> List[Tensor]:
        return self.finish(self.crops(x, 1, self.image_size, (self.cfg.masked_crop_scale_min, 1.0)), 1)
