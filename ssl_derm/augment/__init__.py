"""GPU augmentation presets (kornia + fused batched ops) on uint8 image batches.

``build_preset(name, aug_cfg, image_size)(x_uint8)`` -> list of normalised float32 views. Importing
this package registers the presets: two_view, multi_crop, masked, weak_strong, eval.
"""
from ssl_derm.augment.base import Preset, build_preset, check_config, denormalize, normalize, resize
from ssl_derm.augment.ops import AugmentError
from ssl_derm.augment import eval_preset, masked, multi_crop, two_view, weak_strong  # noqa: F401  (registration)

__all__ = ["AugmentError", "Preset", "build_preset", "check_config", "denormalize", "normalize", "resize"]
