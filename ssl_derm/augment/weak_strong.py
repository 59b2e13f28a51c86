"""FixMatch: a weak view and a strong view of the same crop, pixel-aligned.

The strong view starts from the weak view's pixels (same crop, rotation and flips), so a pseudo-label
or pseudo-mask computed on the weak view applies to the strong one pixel for pixel. Strong adds a
RandAugment-like photometric set: colour jitter at ``strong_magnitude`` x the usual strength (hue stays
mild), grayscale, blur, solarize, posterize, then random erasing (kornia) on the normalised view.
"""
from __future__ import annotations

from typing import List

import kornia.augmentation as K
from torch import Tensor

from ssl_derm.augment import ops
from ssl_derm.augment.base import Preset
from ssl_derm.registry import register


@register("preset", "weak_strong")
class WeakStrong(Preset):
    """(B,3,H,W) uint8 -> [weak, strong], each (B,3,image_size,image_size) float32."""

    n_views = 2

    def __init__(self, cfg, image_size, dtype=None):
        super().__init__(cfg, image_size, dtype)
        self.erase = K.RandomErasing(scale=(0.02, cfg.erase_scale_max), ratio=(0.3, 3.3), value=0.0, p=cfg.erase_p)

    def views(self, x: Tensor) -> List[Tensor]:
        c = self.cfg
        weak = self.crops(x, 1, self.image_size, (c.weak_crop_scale_min, 1.0))
        strong = self.colour(weak, magnitude=c.strong_magnitude, jitter_p=1.0, solarize_p=c.strong_solarize_p)
        strong = ops.posterize(strong, c.posterize_p)
        out_weak = self.finish(weak, 1)[0]
        out_strong = self.erase(self.finish(strong, 1)[0]) if c.erase_p > 0 else self.finish(strong, 1)[0]
        return [out_weak, out_strong]
