"""FixMatch: a weak view and a strong view of the same crop, pixel-aligned.

The strong view starts from the weak view's pixels (same crop, rotation and flips), so a pseudo-label
or pseudo-mask computed on the weak view applies to the strong one pixel for pixel. Strong adds a
RandAugment-like photometric set: colour jitter at ``strong_magnitude`` x the usual strength (hue stays
mild), grayscale, blur, solarize, posterize, then random erasing on the normalised view (0 = mean colour).
"""
from __future__ import annotations

from typing import List

from torch import Tensor

from ssl_derm.augment import ops
from ssl_derm.augment.base import Preset
from ssl_derm.registry import register


@register("preset", "weak_strong")
class WeakStrong(Preset):
    """(B,3,H,W) uint8 -> [weak, strong], each (B,3,image_size,image_size) float32."""

    n_views = 2

    def views(self, x: Tensor) -> List[Tensor]:
        c = self.cfg
        weak = self.crops(x, 1, self.image_size, (c.weak_crop_scale_min, 1.0))
        strong = self.colour(weak, magnitude=c.strong_magnitude, jitter_p=1.0, solarize_p=c.strong_solarize_p)
        strong = ops.posterize(strong, c.posterize_p)
        strong = ops.random_erase(self.finish(strong, 1)[0], c.erase_p, (0.02, c.erase_scale_max))
        return [self.finish(weak, 1)[0], strong]
