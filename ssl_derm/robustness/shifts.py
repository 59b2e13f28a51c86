"""Acquisition shifts: how another camera, dermoscope or clinic changes an image, each at three severities.

A shift is registered with ``@register("shift", name)`` as a :class:`Shift`: ``apply(x, masks, severity,
seeds)`` takes a float batch x (N, 3, H, W) in [0, 1] on any device, lesion masks float (N, 1, H, W) in
{0, 1} or None, a severity 1-3 and per-image seeds (N,) int, and returns the shifted (x, masks), same
shapes, x still in [0, 1]. Masks change only under geometric shifts (zoom); the rest leave them as they are
(hair and ink lie over the lesion, they do not move its outline). Lengths are given for a 128-pixel
image and scaled with H, so a shift means the same at any working size.

| shift | what it models | severity 1 / 2 / 3 |
|---|---|---|
| downscale | a lower-resolution sensor: area-downsampled, bilinear back up | factor 2 / 3 / 4 |
| upscale | a small image enlarged without interpolation (digital zoom): nearest down and up | factor 2 / 3 / 4 |
| zoom | closer optics: the centre 1/z of the side, resized to the frame (the lesion fills more of it) | z 1.25 / 1.6 / 2.0 |
| temperature | white balance: red and blue gains 1 +- t, warm or cool (seeded per image) | t 0.08 / 0.16 / 0.24 |
| tint | green-magenta cast: green gain 1 +- t (seeded sign) | t 0.06 / 0.12 / 0.18 |
| vignette | radial fall-off of the lens: x * (1 - a (r / r_corner)^2) | a 0.25 / 0.45 / 0.65 |
| blur | defocus: Gaussian blur (kornia) | sigma 1 / 2 / 3.5 px at 128 |
| jpeg | compression (kornia's differentiable JPEG codec) | quality 40 / 20 / 8 |
| hair | dark curved hairs over skin and lesion (seeded curves; a higher severity adds hairs) | 4 / 10 / 20 hairs |
| ink | surgical-marker arcs (gentian violet) around the lesion, as drawn before excision | arc 90 / 180 / 300 degrees |

Random parameters come from one ``torch.Generator`` per image seeded by its seed, so an image gets the
same hairs, ink and colour direction at every severity and in every batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import kornia
import torch
import torch.nn.functional as F

from ssl_derm.registry import get, names, register

SEVERITIES = (1, 2, 3)
HAIR_COLOUR = (0.12, 0.08, 0.06)  # dark brown-black
INK_COLOUR = (0.42, 0.20, 0.55)  # gentian violet, the usual skin marker


@dataclass(frozen=True)
class Shift:
    """name; parameter: what the levels measure; levels: its value at severity 1, 2, 3; geometric: masks move."""

    name: str
    parameter: str
    levels: Tuple[float, float, float]
    fn: Callable
    geometric: bool = False

    def level(self, severity: int) -> float:
        if severity not in SEVERITIES:
            raise ValueError(f"shift '{self.name}': severity must be one of {SEVERITIES}, got {severity}")
        return self.levels[severity - 1]

    def apply(self, x: torch.Tensor, masks: Optional[torch.Tensor], severity: int,
              seeds: Sequence[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """float (N,3,H,W) in [0,1], float (N,1,H,W) or None -> the same, shifted."""
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"shift '{self.name}' takes float (N, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        if len(seeds) != len(x):
            raise ValueError(f"shift '{self.name}': {len(seeds)} seeds for {len(x)} images")
        y, m = self.fn(x, masks, self.level(severity), seeds)
        return y.clamp(0, 1), m


def shift(name: str, parameter: str, levels, geometric: bool = False):
    """Decorator: register ``fn(x, masks, level, seeds) -> (x, masks)`` as the :class:`Shift` ``name``."""
    def deco(fn):
        register("shift", name)(Shift(name, parameter, tuple(levels), fn, geometric))
        return fn
    return deco


def shift_names() -> list:
    return list(_ORDER) + [n for n in names("shift") if n not in _ORDER]


def get_shift(name: str) -> Shift:
    return get("shift", name)


def generators(seeds: Sequence[int], salt: int) -> list:
    """One CPU generator per image, seeded by (seed, salt): the same draws whatever the batch."""
    return [torch.Generator().manual_seed(int(s) * 1_000_003 + salt) for s in seeds]


def px(length: float, size: int) -> float:
    """A length given at 128 px, at ``size`` px."""
    return length * size / 128.0


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return kornia.geometry.transform.resize(x, size, interpolation=mode, antialias=True)


@shift("downscale", "factor", (2, 3, 4))
def downscale(x, masks, factor, seeds):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return _resize(small, (h, w), "bilinear"), masks


@shift("upscale", "factor", (2, 3, 4))
def upscale(x, masks, factor, seeds):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest"), masks


@shift("zoom", "z", (1.25, 1.6, 2.0), geometric=True)
def zoom(x, masks, z, seeds):
    h, w = x.shape[-2:]
    ch, cw = max(2, round(h / z)), max(2, round(w / z))
    x = _resize(kornia.geometry.transform.center_crop(x, (ch, cw)), (h, w), "bilinear")
    if masks is not None:  # bilinear then > 0.5: a smooth outline that follows the image exactly
        m = kornia.geometry.transform.center_crop(masks.float(), (ch, cw))
        masks = (F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) > 0.5).float()
    return x, masks


def _signs(seeds, salt: int, device) -> torch.Tensor:
    return torch.tensor([1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0 for g in generators(seeds, salt)],
                        device=device)


@shift("temperature", "t", (0.08, 0.16, 0.24))
def temperature(x, masks, t, seeds):
    s = _signs(seeds, 1, x.device).view(-1, 1, 1, 1) * t  # + warm (more red, less blue), - cool
    gains = torch.cat([1 + s, torch.ones_like(s), 1 - s], 1)
    return x * gains, masks


@shift("tint", "t", (0.06, 0.12, 0.18))
def tint(x, masks, t, seeds):
    s = _signs(seeds, 2, x.device).view(-1, 1, 1, 1) * t  # + green, - magenta
    gains = torch.cat([torch.ones_like(s), 1 + s, torch.ones_like(s)], 1)
    return x * gains, masks


def radius(h: int, w: int, device) -> torch.Tensor:
    """(H, W) distance from the image centre, 1 at the corners."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device),
                            indexing="ij")
    return torch.sqrt(yy * yy + xx * xx) / math.sqrt(2)


@shift("vignette", "a", (0.25, 0.45, 0.65))
def vignette(x, masks, a, seeds):
    return x * (1 - a * radius(*x.shape[-2:], x.device) ** 2), masks


@shift("blur", "sigma_px_at_128", (1.0, 2.0, 3.5))
def blur(x, masks, sigma, seeds):
    sig = px(sigma, x.shape[-1])
    k = 2 * int(math.ceil(3 * sig)) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sig, sig), border_type="reflect"), masks


@shift("jpeg", "quality", (40, 20, 8))
def jpeg(x, masks, quality, seeds):
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16  # the codec needs sides divisible by 16
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    q = torch.full((len(x),), float(quality), device=x.device, dtype=x.dtype)
    return kornia.enhance.jpeg_codec_differentiable(xp, q)[..., :h, :w], masks


def stroke_map(points: torch.Tensor, h: int, w: int, width: float) -> torch.Tensor:
    """points: float (N, P, 2) (y, x) in pixels -> float (N, 1, H, W) in [0, 1]: the points splatted, grown
    to ``width`` px (max pool) and softened (Gaussian), so strokes have antialiased edges."""
    n = points.shape[0]
    yi, xi = points[..., 0].round().long(), points[..., 1].round().long()
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    idx = torch.where(inside, yi * w + xi, torch.full_like(yi, h * w))  # points off the frame go to a spare cell
    canvas = torch.zeros(n, h * w + 1, device=points.device)
    canvas.scatter_(1, idx, 1.0)
    canvas = canvas[:, :-1].view(n, 1, h, w)
    k = max(1, int(round(width)))
    if k > 1:
        canvas = F.max_pool2d(canvas, k + 1 - k % 2, stride=1, padding=(k + 1 - k % 2) // 2)
    return kornia.filters.gaussian_blur2d(canvas, (3, 3), (0.6, 0.6)).clamp(0, 1)


def _paint(x: torch.Tensor, alpha: torch.Tensor, colour) -> torch.Tensor:
    c = torch.tensor(colour, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x * (1 - alpha) + c * alpha


MAX_HAIRS = 20


def hair_points(seeds, h: int, w: int, count: int, device) -> torch.Tensor:
    """(N, count * P, 2) points on ``count`` quadratic Bezier hairs per image; the first k hairs of an image
    are the same for every count >= k."""
    p = 2 * (h + w)
    t = torch.linspace(0, 1, p).view(1, p, 1)
    out = []
    for g in generators(seeds, 3):
        ends = torch.rand(MAX_HAIRS, 3, 2, generator=g)[:count]  # start, control, end in [0, 1]^2
        ends = ends * 1.4 - 0.2  # hairs enter from outside the frame too
        curve = (1 - t) ** 2 * ends[:, :1] + 2 * (1 - t) * t * ends[:, 1:2] + t ** 2 * ends[:, 2:]
        out.append((curve * torch.tensor([h - 1, w - 1])).reshape(-1, 2))
    return torch.stack(out).to(device)


@shift("hair", "hairs", (4, 10, 20))
def hair(x, masks, count, seeds):
    h, w = x.shape[-2:]
    alpha = 0.9 * stroke_map(hair_points(seeds, h, w, int(count), x.device), h, w, px(1.2, w))
    return _paint(x, alpha, HAIR_COLOUR), masks


def ink_points(seeds, h: int, w: int, degrees: float, device) -> torch.Tensor:
    """(N, P, 2) points on an elliptical arc of ``degrees`` around the centre (radius 0.36-0.46 of the side,
    seeded start angle), as a marker circle drawn around a lesion."""
    p = 4 * (h + w)
    out = []
    for g in generators(seeds, 4):
        r = torch.rand(3, generator=g)
        start = float(r[0]) * 2 * math.pi
        ry, rx = (0.36 + 0.1 * float(r[1])) * h, (0.36 + 0.1 * float(r[2])) * w
        ang = start + torch.linspace(0, math.radians(degrees), p)
        out.append(torch.stack([(h - 1) / 2 + ry * torch.sin(ang), (w - 1) / 2 + rx * torch.cos(ang)], 1))
    return torch.stack(out).to(device)


@shift("ink", "arc_degrees", (90, 180, 300))
def ink(x, masks, degrees, seeds):
    h, w = x.shape[-2:]
    alpha = 0.85 * stroke_map(ink_points(seeds, h, w, degrees, x.device), h, w, px(2.5, w))
    return _paint(x, alpha, INK_COLOUR), masks


_ORDER = ("downscale", "upscale", "zoom", "temperature", "tint", "vignette", "blur", "jpeg", "hair", "ink")
