"""Batched, sync-free augmentation primitives that the presets compose.

Why not one kornia op per transform: a SimCLR view in kornia is ~8 modules, each drawing parameters,
masking the batch and launching its own kernels (colour jitter alone goes through HSV and back). Here
a whole view group costs a handful of kernels:

* geometry: crop + rotation + flips are one affine matrix per view, applied by ONE ``grid_sample``
  for all views of the same size (the views are stacked along the grid's height);
* colour: brightness, contrast, saturation, hue and grayscale are one 3x3 matrix + offset per view
  (as NVIDIA DALI's ``color_twist``), applied by ONE ``baddbmm``; torchvision applies them in a
  random order with clamps in between, our order is one of its orders with a single final clamp;
* blur: kornia's ``gaussian_blur2d`` with a per-view sigma; views that draw "no blur" get a
  ~0 sigma (a delta kernel), so no boolean indexing and no host-device sync.

Every random draw uses torch's generator on the input's device, so ``torch.manual_seed`` makes the
output reproducible.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_derm.errors import AugmentError


GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_CROSS = ((0.0, -1.0, 1.0), (1.0, 0.0, -1.0), (-1.0, 1.0, 0.0))  # [u]x for u = (1,1,1), before 1/sqrt(3)
_CONSTS: Dict[tuple, Tensor] = {}


def const(values: tuple, device) -> Tensor:
    """A small float32 constant on ``device``, made once: ``torch.tensor(..., device=cuda)`` copies from
    pageable host memory and waits for every queued kernel, which would stall the pipeline each batch."""
    key = (values, str(device))
    if key not in _CONSTS:
        _CONSTS[key] = torch.tensor(values, dtype=torch.float32, device=device)
    return _CONSTS[key]


def _uniform(shape, lo: float, hi: float, device) -> Tensor:
    return torch.rand(shape, device=device) * (hi - lo) + lo


def _bernoulli(shape, p: float, device) -> Tensor:
    """Float 0/1 with P(1) = p."""
    return (torch.rand(shape, device=device) < p).float()


def to_unit_float(x: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 (B,3,H,W) in 0..255 -> ``dtype`` in [0,1]; float input is taken as already in [0,1]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise AugmentError(f"augmentation input must be (B, 3, H, W) images, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(dtype).mul_(1.0 / 255.0)
    if x.is_floating_point():
        return x.to(dtype)
    raise AugmentError(f"augmentation input must be uint8 (0..255) or float (0..1) images, got {x.dtype}")


def affine_views(
    n_views: int,
    batch: int,
    in_hw: Tuple[int, int],
    scale: Tuple[float, float],
    rotation: float,
    hflip: float,
    vflip: float,
    device,
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    lesion: Optional[Tensor] = None,
    lesion_p: float = 0.0,
) -> Tensor:
    """Random-resized-crop + rotation + flips as affine maps for ``F.affine_grid``.

    Returns theta (B, n_views, 2, 3) mapping output coordinates in [-1, 1] to input coordinates.
    The crop covers ``scale`` of the image area with aspect ``ratio`` (as torchvision's
    RandomResizedCrop, clamped to the image instead of re-drawn) and is then rotated by
    U(-rotation, rotation) degrees about its centre, in pixel space so non-square inputs stay undistorted.
    ``lesion`` (B, 2) normalised lesion centres (NaN: none) with ``lesion_p`` > 0: each view's crop is moved,
    with that probability, to keep the lesion centre in frame (``augment/lesion.py``); drawn after all
    other parameters, so ``lesion_p=0`` leaves every draw as it was.
    """
    h_in, w_in = in_hw
    shape = (batch, n_views)
    area = _uniform(shape, scale[0], scale[1], device)
    log_r = _uniform(shape, math.log(ratio[0]), math.log(ratio[1]), device)
    aspect = torch.exp(log_r)
    # crop half-extents in normalised units (1 = half the image side)
    cw = torch.sqrt(area * aspect).clamp(max=1.0)
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(shape, device=device) * 2 - 1) * (1 - cw)
    cy = (torch.rand(shape, device=device) * 2 - 1) * (1 - ch)
    angle = _uniform(shape, -rotation, rotation, device) * (math.pi / 180.0)
    fx = 1 - 2 * _bernoulli(shape, hflip, device)
    fy = 1 - 2 * _bernoulli(shape, vflip, device)
    if lesion is not None and lesion_p > 0:
        from ssl_derm.augment.lesion import recentre

        cx, cy = recentre(cx, cy, cw, ch, angle, lesion, lesion_p, in_hw)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = w_in / 2.0, h_in / 2.0  # normalised -> pixels
    # A = diag(1/sx, 1/sy) @ R @ diag(sx * fx * cw, sy * fy * ch)
    a00 = cos * fx * cw
    a01 = -sin * fy * ch * (sy / sx)
    a10 = sin * fx * cw * (sx / sy)
    a11 = cos * fy * ch
    theta = torch.stack([torch.stack([a00, a01, cx], -1), torch.stack([a10, a11, cy], -1)], -2)
    return theta


def warp(x: Tensor, theta: Tensor, size: int, padding_mode: str) -> Tensor:
    """Sample every view of every image in one ``grid_sample``.

    x (B,C,H,W) float, theta (B,V,2,3) -> (V*B, C, size, size), view-major (view v of image b at v*B+b).
    """
    b, v = theta.shape[:2]
    c = x.shape[1]
    grid = F.affine_grid(theta.reshape(b * v, 2, 3).float(), [b * v, c, size, size], align_corners=False)
    grid = grid.reshape(b, v * size, size, 2)  # views stacked along the output height
    # the grid stays float32: in float16 sample positions are off by up to 0.055 px at 224 px
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False).to(x.dtype)
    return out.reshape(b, c, v, size, size).permute(2, 0, 1, 3, 4).reshape(v * b, c, size, size)


def colour_jitter(
    x: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p_jitter: float,
    p_gray: float,
) -> Tensor:
    """torchvision-style ColorJitter + RandomGrayscale, fused (see ``colour_transform``).

    x (N,3,H,W) in [0,1] -> same shape. Factors b, c, s ~ U(1 - v, 1 + v), hue ~ U(-hue, hue) turns;
    each image is jittered with probability ``p_jitter`` and turned gray with probability ``p_gray``.
    """
    n, dev = x.shape[0], x.device
    on = _bernoulli(n, p_jitter, dev)
    b = 1 + on * _uniform(n, -brightness, brightness, dev).clamp(min=-1)
    c = 1 + on * _uniform(n, -contrast, contrast, dev).clamp(min=-1)
    s = 1 + on * _uniform(n, -saturation, saturation, dev).clamp(min=-1)
    h = on * _uniform(n, -hue, hue, dev)
    return colour_transform(x, b, c, s, h, _bernoulli(n, p_gray, dev))


def colour_transform(x: Tensor, b: Tensor, c: Tensor, s: Tensor, hue: Tensor, gray: Tensor) -> Tensor:
    """Brightness b, contrast c, saturation s, hue shift (turns) and grayscale (0/1), per image (N,),
    as one affine colour map y = M x + o, then clamp to [0, 1]. x (N,3,H,W) -> same shape.

    Brightness, contrast and saturation equal torchvision's exactly (up to its intermediate clamps);
    hue is a rotation about the gray axis, the linear map closest to HSV's hexagonal hue shift.
    """
    n, dev = x.shape[0], x.device
    ang = hue * (2 * math.pi)
    cos, sin = torch.cos(ang).view(n, 1, 1), torch.sin(ang).view(n, 1, 1)
    eye = torch.eye(3, device=dev)
    third = torch.full((3, 3), 1 / 3, device=dev)
    cross = const(_CROSS, dev) / math.sqrt(3)
    rot = cos * eye + (1 - cos) * third + sin * cross  # Rodrigues: rotation about (1, 1, 1)
    luma = const(GRAY, dev)
    to_luma = luma.expand(3, 3)  # every channel := luma
    sv = s.view(n, 1, 1)
    sat = sv * eye + (1 - sv) * to_luma
    g = gray.view(n, 1, 1)
    m = (g * to_luma + (1 - g) * eye) @ sat @ rot
    m = m * (b * c).view(n, 1, 1)
    # every map above keeps gray (1,1,1) fixed, so contrast, a blend towards the mean luma of the
    # brightened image, is an offset (1 - c) * b * mean_luma on all channels
    mean_luma = x.float().mean(dim=(2, 3)) @ luma
    offset = ((1 - c) * b * mean_luma).view(n, 1, 1).expand(n, 3, 1)
    y = torch.baddbmm(offset.to(x.dtype), m.to(x.dtype), x.reshape(n, 3, -1))
    return y.reshape(x.shape).clamp_(0, 1)


def gaussian_blur(x: Tensor, p: float, sigma: Tuple[float, float]) -> Tensor:
    """Blur each image with probability p, sigma ~ U(sigma); kernel ~10% of the side (SimCLR)."""
    if p <= 0:
        return x
    n, side = x.shape[0], x.shape[-1]
    k = max(3, int(0.1 * side) // 2 * 2 + 1)
    # drawn on the host: kornia checks sigma > 0 there and moves it non-blocking (a device sigma would sync)
    on = (torch.rand(n) < p).float()
    sig = on * _uniform(n, sigma[0], sigma[1], "cpu") + (1 - on) * 1e-3  # 1e-3: an exact delta kernel
    if x.is_cuda:  # blur everything: a boolean index would make the host wait for the device
        return kornia.filters.gaussian_blur2d(x, (k, k), sig.view(n, 1).expand(n, 2).contiguous(), border_type="reflect")
    # on the CPU there is nothing to overlap with: blur only the chosen images (same result)
    idx = on.nonzero().flatten()
    out = x.clone()
    if idx.numel():
        out[idx] = kornia.filters.gaussian_blur2d(x[idx], (k, k), sig[idx].view(-1, 1).expand(-1, 2).contiguous(),
                                                  border_type="reflect")
    return out


def solarize(x: Tensor, p: float) -> Tensor:
    """Invert pixels >= 0.5, in each image with probability p."""
    if p <= 0:
        return x
    on = _bernoulli(x.shape[0], p, x.device).view(-1, 1, 1, 1).bool()
    return torch.where(on & (x >= 0.5), 1 - x, x)


def posterize(x: Tensor, p: float) -> Tensor:
    """Keep 4..7 bits per channel, in each image with probability p (kornia's posterize, per-image bits)."""
    if p <= 0:
        return x
    n = x.shape[0]
    on = _bernoulli(n, p, x.device)
    bits = (8 - on * torch.randint(1, 5, (n,), device=x.device)).long()
    return kornia.enhance.posterize(x, bits)


def random_erase(x: Tensor, p: float, scale: Tuple[float, float], ratio: Tuple[float, float] = (0.3, 3.3),
                 value: float = 0.0) -> Tensor:
    """Random erasing (Zhong et al.) of one rectangle per image with probability p, filled with ``value``.

    x (N,C,H,W) -> same. Area ~ U(scale) of the image, log-uniform aspect in ``ratio``, clamped to the
    image. A broadcast comparison instead of kornia's RandomErasing, whose per-image parameters are
    drawn on the host and applied by boolean indexing (a device sync per batch).
    """
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, scale[0], scale[1], dev) * (h * w)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), dev))
    eh = torch.sqrt(area * aspect).clamp(max=h)
    ew = torch.sqrt(area / aspect).clamp(max=w)
    top = torch.rand(n, device=dev) * (h - eh)
    left = torch.rand(n, device=dev) * (w - ew)
    on = torch.rand(n, device=dev) < p
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    v = lambda t: t.view(n, 1, 1)  # noqa: E731
    box = (ys >= v(top)) & (ys < v(top + eh)) & (xs >= v(left)) & (xs < v(left + ew)) & v(on)
    return x.masked_fill(box.unsqueeze(1), value)


def norm_stats(mean: Sequence[float], std: Sequence[float], device) -> Tuple[Tensor, Tensor]:
    return const(tuple(mean), device).view(1, 3, 1, 1), const(tuple(std), device).view(1, 3, 1, 1)


def normalize_unit(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[0,1] images (any float dtype) -> float32 normalised by ``mean``/``std``."""
    m, s = norm_stats(mean, std, x.device)
    return (x.float() - m) / s


def split_views(x: Tensor, n_views: int) -> List[Tensor]:
    """(V*B, ...) view-major -> list of V tensors (B, ...)."""
    return list(x.chunk(n_views, dim=0))
