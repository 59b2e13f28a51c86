"""Lesion-aware crops (``augment.lesion_crop_p``): views that keep the lesion in frame.

Pretraining passes each image with its annotation-free lesion mask as a fourth channel (uint8 {0, 1};
see :class:`WithLesionChannel` and ``segment/archive_masks.py``); the preset splits it off, takes the
centre of the mask's bounding box per image (:func:`lesion_centres`) and, with probability
``lesion_crop_p`` per view, re-draws the crop's centre (:func:`recentre`) so that the lesion centre lies
inside the rotated crop, at least ``1 - MARGIN`` of the half-side from its border. The crop's size,
aspect, rotation and flips are those already drawn, so only the position changes; with
``lesion_crop_p=0`` nothing extra is drawn and the views are exactly those of a plain batch.
Everything is batched tensor arithmetic on the device (no host sync).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

MARGIN = 0.8  # the lesion centre lands within 80% of the view's half-side: never on its very edge


def lesion_centres(mask: Tensor) -> Tensor:
    """mask (B, H, W) (any dtype, >0 = lesion) -> (B, 2) centre (x, y) of its bounding box in the
    normalised [-1, 1] coordinates of ``F.affine_grid`` (align_corners=False); NaN where the mask is empty."""
    b, h, w = mask.shape
    on = mask > 0
    rows, cols = on.any(dim=2), on.any(dim=1)  # (B, H), (B, W)
    y0 = rows.float().argmax(dim=1)
    y1 = h - 1 - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = w - 1 - cols.flip(1).float().argmax(dim=1)
    # the box spans pixel edges x0 .. x1 + 1; pixel edge e sits at 2e / W - 1
    cx = (x0 + x1 + 1).float() / w - 1
    cy = (y0 + y1 + 1).float() / h - 1
    centre = torch.stack([cx, cy], dim=1)
    return torch.where(rows.any(dim=1, keepdim=True), centre, torch.full_like(centre, float("nan")))


def _axis(half: Tensor, lesion: Tensor, reach: Tensor, u: Tensor) -> Tensor:
    """A crop centre uniform over [crop inside the image] ∩ [lesion within ``reach`` of the centre]; where
    these do not meet (a lesion near the border, a small crop), the reachable centre nearest the image."""
    lo = torch.maximum(-(1 - half), lesion - reach)
    hi = torch.minimum(1 - half, lesion + reach)
    return torch.minimum(torch.maximum(lo + u * (hi - lo), lesion - reach), lesion + reach)


def recentre(cx: Tensor, cy: Tensor, cw: Tensor, ch: Tensor, angle: Tensor, lesion: Tensor, p: float,
             in_hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Re-drawn crop centres (B, V) each: view (b, v) moves with probability ``p`` (where image b has a
    lesion) so that ``lesion[b]`` is inside its crop. cw, ch: half-extents (normalised, before rotation);
    angle: radians (B, V); lesion (B, 2) from :func:`lesion_centres`.

    An axis-aligned square of half-side r (pixels) about the crop centre lies inside the crop rotated by
    ``angle`` when r (|cos| + |sin|) <= min(half-width, half-height) in pixels: r is that bound x MARGIN.
    """
    dev = cx.device
    h_in, w_in = in_hw
    sx, sy = w_in / 2.0, h_in / 2.0
    valid = ~torch.isnan(lesion[:, 0])
    on = (torch.rand(cx.shape, device=dev) < p) & valid[:, None]
    u = torch.rand(cx.shape + (2,), device=dev)
    r = MARGIN * torch.minimum(cw * sx, ch * sy) / (angle.cos().abs() + angle.sin().abs())
    lx = torch.nan_to_num(lesion[:, :1])
    ly = torch.nan_to_num(lesion[:, 1:])
    nx = _axis(cw, lx, r / sx, u[..., 0])
    ny = _axis(ch, ly, r / sy, u[..., 1])
    return torch.where(on, nx, cx), torch.where(on, ny, cy)


class WithLesionChannel:
    """Images (N, S, S, 3) and masks (N, S, S) read together as (N, S, S, 4) uint8 rows, without a copy of
    the archive: ``x[rows]`` reads both and stacks them. What the batch sampler needs of an array."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        if len(images) != len(masks) or images.shape[1:3] != masks.shape[1:3]:
            raise ValueError(f"images {images.shape} and lesion masks {masks.shape} do not line up")
        self.images, self.masks = images, masks
        self.shape = (*images.shape[:3], 4)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx) -> np.ndarray:
        return np.concatenate([np.asarray(self.images[idx]), np.asarray(self.masks[idx])[..., None]], axis=-1)
