"""The preset base class, the preset factory, config checks and (de)normalisation helpers.

A preset is an ``nn.Module``: ``forward(x)`` takes uint8 images (B, 3, H, W) on any device and returns
a list of float32 views (B, 3, h, w) normalised with ``augment.mean``/``augment.std``. The conversion
to float happens once, on the input's device; on CUDA the work runs in float16 (half the memory
traffic of float32; [0, 1] pixels need no bf16 range) and only the final normalised views are float32.
"""
from __future__ import annotations

import abc

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_derm.augment import ops
from ssl_derm.augment.ops import AugmentError
from ssl_derm.config import AugmentConfig
from ssl_derm.registry import get

_PROBS = ("hflip", "vflip", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "strong_solarize_p", "posterize_p", "erase_p",
          "lesion_crop_p")
_FRACTIONS = ("crop_scale_min", "crop_scale_max", "local_crop_scale_min", "local_crop_scale_max",
              "masked_crop_scale_min", "weak_crop_scale_min")
PADDING_MODES = ("reflection", "zeros", "border")


def check_config(cfg: AugmentConfig, image_size: int) -> None:
    """Raise AugmentError naming the ``augment.*`` key for any value out of range."""
    def bad(key, value, what):
        raise AugmentError(f"config key 'augment.{key}': {value!r} {what}")

    if image_size <= 0:
        raise AugmentError(f"config key 'data.image_size': {image_size!r} must be a positive number of pixels")
    for key in _PROBS:
        v = getattr(cfg, key)
        if not 0.0 <= v <= 1.0:
            bad(key, v, "is a probability: give a value in [0, 1]")
    for key in _FRACTIONS:
        if not 0.0 < getattr(cfg, key) <= 1.0:
            bad(key, getattr(cfg, key), "is an area fraction: give a value in (0, 1]")
    for lo, hi in (("crop_scale_min", "crop_scale_max"), ("local_crop_scale_min", "local_crop_scale_max")):
        if getattr(cfg, lo) > getattr(cfg, hi):
            bad(lo, getattr(cfg, lo), f"must be <= augment.{hi} ({getattr(cfg, hi)!r})")
    for key in ("brightness", "contrast", "saturation", "rotation", "strong_magnitude"):
        if getattr(cfg, key) < 0:
            bad(key, getattr(cfg, key), "must be >= 0")
    if not 0.0 <= cfg.hue <= 0.5:
        bad("hue", cfg.hue, "is a fraction of a hue turn: give a value in [0, 0.5] (dermoscopy: <= 0.05)")
    if not 0.0 < cfg.blur_sigma_min <= cfg.blur_sigma_max:
        bad("blur_sigma_min", cfg.blur_sigma_min, f"must satisfy 0 < blur_sigma_min <= blur_sigma_max ({cfg.blur_sigma_max})")
    if cfg.padding_mode not in PADDING_MODES:
        bad("padding_mode", cfg.padding_mode, f"is not one of {', '.join(PADDING_MODES)}")
    if not 0.02 < cfg.erase_scale_max <= 1.0:
        bad("erase_scale_max", cfg.erase_scale_max, "must be in (0.02, 1]")
    if cfg.n_local_crops < 0 or cfg.local_crop_size < 0:
        bad("n_local_crops" if cfg.n_local_crops < 0 else "local_crop_size",
            min(cfg.n_local_crops, cfg.local_crop_size), "must be >= 0")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        bad("mean/std", (cfg.mean, cfg.std), "must be three values each, std > 0")


class Preset(nn.Module, abc.ABC):
    """Base of every preset. Subclasses implement ``views``."""

    def __init__(self, cfg: AugmentConfig, image_size: int, dtype: Optional[torch.dtype] = None):
        super().__init__()
        check_config(cfg, image_size)
        self.cfg = cfg
        self.image_size = int(image_size)
        self.dtype = dtype  # None: float16 on CUDA, float32 elsewhere
        self._lesion = None  # (B, 2) lesion centres of the batch being augmented (augment/lesion.py)
        # keep_masks: warp each image's lesion mask (4th input channel) with its views' geometry; after a call,
        # last_masks is (V*B, 1, s, s) float in [0, 1], view-major like the views (the lesion term reads it)
        self.keep_masks = False
        self.last_masks: Optional[Tensor] = None
        self._mask: Optional[Tensor] = None
        self._view_masks: List[Tensor] = []

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        return self.dtype or (torch.float16 if x.is_cuda else torch.float32)

    # -- building blocks ------------------------------------------------------------------------
    def crops(self, x: Tensor, n: int, size: int, scale, rotation=None) -> Tensor:
        """n random crop/rotate/flip views of each image: x (B,3,H,W) [0,1] -> (n*B, 3, size, size)."""
        c = self.cfg
        theta = ops.affine_views(n, x.shape[0], tuple(x.shape[-2:]), scale,
                                 c.rotation if rotation is None else rotation, c.hflip, c.vflip, x.device,
                                 lesion=self._lesion, lesion_p=c.lesion_crop_p)
        if self._mask is None:
            return ops.warp(x, theta, size, c.padding_mode)
        # the mask as a 4th channel of the same grid_sample: it gets exactly the views' geometry
        v = ops.warp(torch.cat([x, self._mask.to(x.dtype)], dim=1), theta, size, c.padding_mode)
        self._view_masks.append(v[:, 3:].float())
        return v[:, :3]

    def colour(self, v: Tensor, magnitude: float = 1.0, jitter_p=None, solarize_p=None) -> Tensor:
        """Colour jitter, grayscale, blur, solarize: (N,3,h,w) [0,1] -> same."""
        c = self.cfg
        v = ops.colour_jitter(v, c.brightness * magnitude, c.contrast * magnitude, c.saturation * magnitude,
                              c.hue, c.jitter_p if jitter_p is None else jitter_p, c.grayscale_p)
        v = ops.gaussian_blur(v, c.blur_p, (c.blur_sigma_min, c.blur_sigma_max))
        return ops.solarize(v, c.solarize_p if solarize_p is None else solarize_p)

    def finish(self, v: Tensor, n: int) -> List[Tensor]:
        """Normalise (to float32) and split a view-major stack into n views (B,3,h,w)."""
        return ops.split_views(ops.normalize_unit(v, self.cfg.mean, self.cfg.std), n)

    @abc.abstractmethod
    def views(self, x: Tensor) -> List[Tensor]:
        """x: (B,3,H,W) in [0,1] at the compute dtype -> list of normalised float32 views."""

    @torch.no_grad()
    def forward(self, x: Tensor) -> List[Tensor]:
        """x (B,3,H,W) uint8, or (B,4,H,W) with a lesion mask {0,1} as the 4th channel -> views."""
        if x.ndim == 4 and x.shape[1] == 4:
            from ssl_derm.augment.lesion import lesion_centres

            self._lesion = lesion_centres(x[:, 3]) if self.cfg.lesion_crop_p > 0 else None
            self._mask = x[:, 3:4] if self.keep_masks else None
            x = x[:, :3]
        elif self.cfg.lesion_crop_p > 0 or self.keep_masks:
            what = f"augment.lesion_crop_p={self.cfg.lesion_crop_p}" if self.cfg.lesion_crop_p > 0 else "method.lesion_weight > 0"
            raise AugmentError(f"{what} needs the lesion masks of the batch "
                               "(ssl-derm pretrain computes them); set it to 0 for this command")
        self._view_masks, self.last_masks = [], None
        try:
            # autocast off: affine grids and colour matrices need more precision than bf16 gives
            with torch.autocast(x.device.type, enabled=False):
                views = self.views(ops.to_unit_float(x, self.compute_dtype(x)))
            if self._mask is not None:
                self.last_masks = torch.cat(self._view_masks)
            return views
        finally:
            self._lesion, self._mask, self._view_masks = None, None, []

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"


def build_preset(name: str, aug_cfg: AugmentConfig, image_size: int, dtype: Optional[torch.dtype] = None) -> Preset:
    """The registered preset ``name`` ("two_view", "multi_crop", "masked", "weak_strong", "eval")."""
    try:
        cls = get("preset", name)
    except KeyError as e:
        raise AugmentError(f"config key 'augment.preset': {e.args[0]}") from None
    return cls(aug_cfg, image_size, dtype=dtype)


def normalize(x: Tensor, aug_cfg: AugmentConfig) -> Tensor:
    """uint8 (B,3,H,W) (or float in [0,1]) -> float32 normalised with ``aug_cfg.mean``/``std``."""
    return ops.normalize_unit(ops.to_unit_float(x, torch.float32), aug_cfg.mean, aug_cfg.std)


def denormalize(x: Tensor, aug_cfg: AugmentConfig) -> Tensor:
    """Normalised float (B,3,H,W) -> float in [0,1] (clamped), for image logging."""
    m, s = ops.norm_stats(aug_cfg.mean, aug_cfg.std, x.device)
    return (x.float() * s + m).clamp(0, 1)


def resize(x: Tensor, size: int) -> Tensor:
    """Square resize with antialiasing, only when needed: (B,3,H,W) -> (B,3,size,size)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
