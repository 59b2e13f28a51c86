"""SimCLR / MoCo / BYOL: two independently augmented views of each image."""
from __future__ import annotations

from typing import List

from torch import Tensor

from ssl_derm.augment.base import Preset
from ssl_derm.registry import register


@register("preset", "two_view")
class TwoView(Preset):
    """(B,3,H,W) uint8 -> [view0, view1], each (B,3,image_size,image_size) float32.

    Per view: random resized crop (``crop_scale_*``), rotation U(-rotation, rotation) degrees, both
    flips, colour jitter with mild hue, grayscale, gaussian blur and optional solarize.
    """

    n_views = 2

    def views(self, x: Tensor) -> List[Tensor]:
        c = self.cfg
        v = self.crops(x, 2, self.image_size, (c.crop_scale_min, c.crop_scale_max))
        return self.finish(self.colour(v), 2)
