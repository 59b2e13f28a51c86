"""DINO multi-crop: two global views at ``image_size`` plus ``n_local_crops`` small local views."""
from __future__ import annotations

from typing import List

from torch import Tensor

from ssl_derm.augment.base import Preset
from ssl_derm.registry import register


def local_size(image_size: int, local_crop_size: int) -> int:
    """``augment.local_crop_size``, or half the image size rounded to a multiple of 8 when 0."""
    return local_crop_size or max(8, int(round(image_size / 2 / 8)) * 8)


@register("preset", "multi_crop")
class MultiCrop(Preset):
    """(B,3,H,W) uint8 -> [global0, global1, local0, ..., local{n-1}].

    Globals: (B,3,image_size,image_size) from ``crop_scale_*``; locals: (B,3,s,s) with
    s = ``local_size`` from ``local_crop_scale_*``. All views get the same colour augmentation.
    One warp for the globals and one for all locals.
    """

    def __init__(self, cfg, image_size, dtype=None):
        super().__init__(cfg, image_size, dtype)
        self.local_size = local_size(self.image_size, cfg.local_crop_size)
        self.n_views = 2 + cfg.n_local_crops

    def views(self, x: Tensor) -> List[Tensor]:
        c = self.cfg
        g = self.crops(x, 2, self.image_size, (c.crop_scale_min, c.crop_scale_max))
        out = self.finish(self.colour(g), 2)
        if c.n_local_crops:
            loc = self.crops(x, c.n_local_crops, self.local_size, (c.local_crop_scale_min, c.local_crop_scale_max))
            out += self.finish(self.colour(loc), c.n_local_crops)
        return out

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, local_size={self.local_size}, n_local_crops={self.cfg.n_local_crops}"
