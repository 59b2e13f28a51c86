"""Synthetic dermoscopy-like lesions with exact masks: the built-in data set for demos and tests.

Each image: skin of a random tone (very light to dark; its ITA in ``labels.csv``) with smooth blotches and an illumination gradient; one pigmented lesion
whose outline is a circle perturbed by a few Fourier terms (its mask is exactly that outline); texture
inside it (pigment network, dots, colour regions); dark curved hairs over lesion and skin on about half the
images; a dark circular dermoscope border on about 40%; sensor noise. Four classes differ in shape, size
and colour, with wide overlap so a classifier has something to learn:

- ``nevus``: round to oval, uniformly brown (light to dark), regular network;
- ``melanoma``: larger, irregular outline, multicolour (black, dark brown, blue-grey, red regions);
- ``bcc``: pinkish, low contrast, fuzzy edge, red vessels and blue-grey dots;
- ``df``: small, light brown network ring around a whitish centre.

Several images share a lesion (a ``lesion_id``), seen at another angle, position, lighting and hair, as in
HAM10000, so grouped splits matter. Output depends only on (n, size, seed).
"""
from __future__ import annotations

import csv
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_derm.errors import ConfigError

SYNTH_CLASSES = ("bcc", "df", "melanoma", "nevus")  # alphabetical: the same indices load_dataset gives
_P = np.array([0.2, 0.15, 0.25, 0.4])  # class frequencies (imbalanced, like real archives)
_CHUNK = 32  # images per vectorised batch; fixed so output never depends on memory settings
_BCC, _DF, _MEL, _NEV = range(4)


def _class_counts(n: int) -> np.ndarray:
    counts = np.floor(_P * n).astype(int)
    for c in np.argsort(-(_P * n - counts))[: n - counts.sum()]:
        counts[c] += 1
    return counts


def _lesion_params(n: int, rng: np.random.Generator) -> dict:
    """Per-lesion parameters; each lesion is seen in 1-3 images."""
    labels = rng.permutation(np.repeat(np.arange(4), _class_counts(n)))
    lesion_of = np.zeros(n, np.int64)
    m = 0
    for c in range(4):  # group each class's images into lesions of 1-3 images
        members = np.flatnonzero(labels == c)
        i = 0
        while i < len(members):
            g = rng.choice([1, 2, 3], p=[0.65, 0.25, 0.1])
            lesion_of[members[i:i + g]] = m
            m, i = m + 1, i + g
    cls = np.zeros(m, np.int64)
    cls[lesion_of] = labels
    r_lo = np.array([0.35, 0.20, 0.40, 0.32])[cls]
    r_hi = np.array([0.70, 0.40, 0.85, 0.70])[cls]
    irregular = np.array([0.08, 0.05, 0.17, 0.045])[cls] * rng.uniform(0.5, 1.5, m)
    k = np.arange(2, 8)
    base = np.array([[0.80, 0.50, 0.50], [0.62, 0.42, 0.32], [0.30, 0.18, 0.12], [0.50, 0.33, 0.25]])[cls]
    tone = rng.uniform(0.7, 1.25, (m, 1)) * np.array([1.0, 0.35, 0.7, 0.8])[cls][:, None] + \
        (1 - np.array([1.0, 0.35, 0.7, 0.8])[cls][:, None])
    return dict(
        labels=labels, lesion_of=lesion_of, cls=cls,
        radius=rng.uniform(r_lo, r_hi),
        aspect=rng.uniform(0.7, 1.0, m),
        amps=irregular[:, None] * rng.normal(0, 1, (m, len(k))) / k ** 0.7,
        phases=rng.uniform(0, 2 * np.pi, (m, len(k))),
        colour=np.clip(base * tone + rng.normal(0, 0.04, (m, 3)), 0.03, 1.0),
        edge=np.array([0.02, 0.025, 0.015, 0.01])[cls] * rng.uniform(0.5, 1.5, m),
        network=np.array([0.0, 0.2, 0.25, 0.15])[cls] * rng.uniform(0.3, 1.2, m),
        net_period=rng.uniform(3, 6, m),  # pixels at 64 px; scaled with the image
        mix=rng.uniform(0.3, 1.0, (m, 3)) * (cls == _MEL)[:, None],  # melanoma black / blue-grey / red
        scar=rng.uniform(0.5, 0.9, m) * (cls == _DF),
        vessels=(cls == _BCC) * rng.integers(2, 6, m),
    )


def _f32(*values) -> np.ndarray:
    return np.array(values, np.float32)


# skin colours (sRGB) along the tone axis t in [0, 1]: ITA about 66 (very light) to -52 (dark) degrees
_TONES = ((0.95, 0.80, 0.72), (0.55, 0.38, 0.28), (0.36, 0.23, 0.16))
_TONE_AT = (0.0, 0.8, 1.0)


def _skin_tone(t: np.ndarray) -> np.ndarray:
    """(b,) tone in [0, 1] -> (b, 3) float32 skin colour, piecewise linear through ``_TONES``."""
    return np.stack([np.interp(t, _TONE_AT, [c[j] for c in _TONES]) for j in range(3)], -1).astype(np.float32)


def _true_ita(rgb: np.ndarray) -> np.ndarray:
    """(b, 3) sRGB in [0, 1] -> (b,) ITA degrees of that colour (CIELAB D65, kornia's conversion)."""
    import kornia
    import torch

    lab = kornia.color.rgb_to_lab(torch.from_numpy(np.clip(rgb, 0, 1).astype(np.float32)).T[None, :, :, None])
    lab = lab[0, :, :, 0].numpy()
    return np.degrees(np.arctan2(lab[0].astype(np.float64) - 50.0, lab[2])).astype(np.float32)


def _smooth_noise(rng, b: int, grid: int, size: int) -> np.ndarray:
    """(b, size, size) float32 smooth noise in about [-1, 1]: a random grid, bilinearly upsampled."""
    pos = np.linspace(0, grid - 1, size, dtype=np.float32)
    w = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(grid, dtype=np.float32)[None]))  # (size, grid)
    return w @ (rng.random((b, grid, grid), dtype=np.float32) * 2 - 1) @ w.T


def _curves(rng, b: int, h: int, x, y, width_px: float, size: int, spread: float = 1.0, bend_sd: float = 0.4):
    """(b, h, size, size) float32 alpha of ``h`` curved lines (parabolas) per image, in [0, 1]."""
    p = rng.uniform(0, 1, (4, b, h, 1, 1)).astype(np.float32)
    ang = p[0] * np.float32(np.pi)
    off = (p[1] * 1.8 - 0.9) * spread
    bend = rng.normal(0, bend_sd, (b, h, 1, 1)).astype(np.float32)
    wid = (0.5 + 0.8 * p[3]) * np.float32(width_px * 2 / size)
    u = x * np.cos(ang) + y * np.sin(ang)
    v = -x * np.sin(ang) + y * np.cos(ang)
    return np.clip(1.5 - np.abs(v - off - bend * u * u) / wid, 0, 1)


def _render(idx: np.ndarray, les: dict, size: int, rng: np.random.Generator):
    """Images (b, S, S, 3) uint8 and masks (b, S, S) uint8 for the images ``idx``."""
    b = len(idx)
    L = les["lesion_of"][idx]
    g = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = g[None, :, None], g[None, None, :]
    # Skin: tone from very light to dark (its ITA is the truth skin_tone.py estimates), blotches, lighting.
    base = _skin_tone(rng.uniform(0, 1, b).astype(np.float32))[:, None, None, :]
    base = base * (1 + rng.normal(0, 0.03, (b, 1, 1, 3)).astype(np.float32))
    skin = base * (1 + 0.04 * _smooth_noise(rng, b, 5, size)[..., None])
    # Lesion outline: rotated, stretched circle with a Fourier-perturbed radius.
    ang = rng.uniform(0, 2 * np.pi, (b, 1, 1)).astype(np.float32)
    c = np.clip(rng.normal(0, 0.12, (b, 2, 1, 1)), -0.3, 0.3).astype(np.float32)
    dx, dy = x - c[:, 0], y - c[:, 1]
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / les["aspect"][L][:, None, None].astype(np.float32)
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    k = np.arange(2, 2 + les["amps"].shape[1])[None, :, None, None]
    amps, phases = (les[n][L][..., None, None].astype(np.float32) for n in ("amps", "phases"))
    wobble = (amps * np.cos(k.astype(np.float32) * theta[:, None] + phases)).sum(1)
    r0 = (les["radius"][L][:, None, None] * rng.uniform(0.9, 1.1, (b, 1, 1))).astype(np.float32)
    radius = r0 * np.maximum(1 + wobble, 0.35)
    mask = rho < radius
    q = rho / radius  # 0 at the centre, 1 on the outline
    alpha = 1 / (1 + np.exp(np.clip((rho - radius) / les["edge"][L][:, None, None].astype(np.float32), -50, 50)))
    # Lesion colour: base with smooth variation, darker centre, class-specific regions.
    col = les["colour"][L][:, None, None, :].astype(np.float32) * (1 + 0.12 * _smooth_noise(rng, b, 6, size)[..., None])
    col = col * (1 - 0.15 * (1 - q[..., None]).clip(0, 1))
    regions = _smooth_noise(rng, b * 3, 4, size).reshape(b, 3, size, size)
    for j, tint in enumerate((_f32(0.08, 0.06, 0.07), _f32(0.38, 0.45, 0.55), _f32(0.65, 0.25, 0.25))):
        w = (les["mix"][L][:, j, None, None].astype(np.float32) * np.clip(regions[:, j] * 2 - 0.2, 0, 1))[..., None]
        col = col * (1 - w) + tint * w
    scar = (les["scar"][L][:, None, None].astype(np.float32) * np.clip(1 - q / 0.45, 0, 1) ** 0.7)[..., None]
    col = col * (1 - scar) + _f32(0.92, 0.86, 0.82) * scar
    # Texture: pigment network (warped grid lines), dots, vessels.
    period = (les["net_period"][L][:, None, None] * 2 / 64).astype(np.float32)
    warp = 0.08 * _smooth_noise(rng, b, 7, size)
    net = 1 - np.sqrt(np.abs(np.sin(np.pi * (u + warp) / period) * np.sin(np.pi * (v - warp) / period)))
    ring = np.where(les["scar"][L][:, None, None] > 0, np.clip((q - 0.35) * 3, 0, 1), 1)
    col = col * (1 - (les["network"][L][:, None, None].astype(np.float32) * net * ring)[..., None])
    dots = np.clip(_smooth_noise(rng, b, max(size // 3, 4), size) * 3 - 2.2, 0, 1)
    dot_amt = _f32(0.5, 0.2, 0.6, 0.25)[les["cls"][L]][:, None, None]
    dot_col = np.where((les["cls"][L] == _BCC)[:, None], _f32(0.38, 0.45, 0.55), _f32(0.12, 0.08, 0.07))
    dw = (dots * dot_amt)[..., None]
    col = col * (1 - dw) + dot_col[:, None, None, :] * dw
    nv = les["vessels"][L].max() if b else 0
    if nv:
        vessel = _curves(rng, b, int(nv), u[:, None], v[:, None], 0.5 * size / 64, size, spread=0.4, bend_sd=2.0)
        vessel = vessel * (np.arange(nv)[None, :, None, None] < les["vessels"][L][:, None, None, None])
        vw = (0.5 * vessel.max(1) * mask)[..., None]
        col = col * (1 - vw) + _f32(0.7, 0.15, 0.18) * vw
    # on skin darker than the old palette's darkest, the lesion darkens with it (it stays the darker one)
    col = col * np.minimum(1.0, base.mean(-1, keepdims=True) / _f32(*_TONES[-2]).mean())
    img = skin * (1 - alpha[..., None]) + col * alpha[..., None]
    # Hairs over everything, on about half the images.
    n_hair = np.where(rng.random(b) < 0.45, rng.integers(1, 6, b), 0)
    if n_hair.max() > 0:
        hair = _curves(rng, b, int(n_hair.max()), x[None], y[None], 0.8 * max(size / 64, 0.75), size)
        hair = (hair * (np.arange(n_hair.max())[None, :, None, None] < n_hair[:, None, None, None])).max(1)
        hair_col = rng.uniform(0.05, 0.3, (b, 1, 1, 1)).astype(np.float32) * _f32(1.0, 0.8, 0.7)
        img = img * (1 - hair[..., None]) + hair_col * hair[..., None]
    # Lighting gradient, dermoscope border, noise.
    grad = rng.normal(0, 0.08, (b, 2, 1, 1)).astype(np.float32)
    img = img * (1 + grad[:, 0, ..., None] * x[..., None] + grad[:, 1, ..., None] * y[..., None])
    has_vig = rng.random(b) < 0.4
    vr = rng.uniform(0.9, 1.15, (b, 1, 1)).astype(np.float32)
    vig = has_vig[:, None, None] / (1 + np.exp(-(np.hypot(x, y) - vr) / 0.03))
    img = img * (1 - 0.92 * vig[..., None])
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.005, 0.025, (b, 1, 1, 1)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask.astype(np.uint8), _true_ita(base[:, 0, 0])


def _generate(n: int, size: int, seed: int):
    if n <= 0 or size < 8:
        raise ConfigError(f"synthetic set needs n > 0 and size >= 8, got n={n}, size={size}")
    les = _lesion_params(n, np.random.default_rng(seed))
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    ita = np.empty(n, np.float32)
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, n))
        images[idx], masks[idx], ita[idx] = _render(idx, les, size, np.random.default_rng([seed, start]))
    return images, masks, les["labels"].astype(np.int64), les["lesion_of"], ita


def synth_arrays(n: int, size: int, seed: int = 0):
    """``n`` synthetic lesions -> (images uint8 (N,S,S,3), masks uint8 (N,S,S) in {0,1}, labels int64 (N,)).

    Labels index ``SYNTH_CLASSES`` ('bcc', 'df', 'melanoma', 'nevus').
    """
    images, masks, labels, _, _ = _generate(n, size, seed)
    return images, masks, labels


def synth_ita(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(N,) float32 true ITA (degrees) of the skin of :func:`synth_arrays` ``(n, size, seed)``: that of each
    image's skin colour before blotches, lighting gradient, vignette, noise and JPEG."""
    return _generate(n, size, seed)[4]


def write_synthetic(out_dir, n: int, size: int = 128, seed: int = 0, quiet: bool = False) -> Path:
    """Write the synthetic set in the shared-data layout and return ``out_dir``.

    ``images/<id>.jpg`` (quality 95), ``masks/<id>.png`` (0/255, mode L), ``labels.csv``
    (``image_id,label,lesion_id,ita``; ``ita``: the true skin tone, :func:`synth_ita`). Files go to a
    temporary folder first and are moved in at the end, so a half-written set never appears; existing
    files of the same names are replaced.
    """
    out = Path(out_dir).expanduser()
    images, masks, labels, lesion_of, ita = _generate(n, size, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    try:
        width = max(5, len(str(n - 1)))
        ids = [f"synth_{i:0{width}d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            Image.fromarray(images[i]).save(tmp / "images" / f"{image_id}.jpg", quality=95)
            Image.fromarray(masks[i] * 255).save(tmp / "masks" / f"{image_id}.png")
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "label", "lesion_id", "ita"])
            w.writerows([image_id, SYNTH_CLASSES[labels[i]], f"lesion_{lesion_of[i]:0{width}d}", f"{ita[i]:.2f}"]
                        for i, image_id in enumerate(ids))
        out.mkdir(exist_ok=True)
        for name in ("images", "masks", "labels.csv"):
            if (out / name).exists():
                shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        counts = ", ".join(f"{c} {int((labels == i).sum())}" for i, c in enumerate(SYNTH_CLASSES))
        print(f"wrote {n} synthetic lesions at {size}x{size} px ({counts}; {lesion_of.max() + 1} lesions) to {out}\n"
              f"  {out / 'images'}/<id>.jpg, {out / 'masks'}/<id>.png, {out / 'labels.csv'}")
    return out
