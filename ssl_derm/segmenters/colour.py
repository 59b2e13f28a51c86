"""Colour conversion (kornia) and hair removal (scipy's morphology) for batches of uint8 images."""
from __future__ import annotations

import kornia
import numpy as np
import torch


def check_uint8_batch(images: np.ndarray) -> None:
    """ValueError unless ``images`` is uint8 (N, S, S, 3), what every segmenter takes."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"segmenters take uint8 images of shape (N, S, S, 3), got {images.dtype} {images.shape}")


def uint8_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) array (read-only memory maps too) -> uint8 tensor (N, 3, S, S)."""
    check_uint8_batch(images)
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [0, 1]."""
    return uint8_batch(images).float().div_(255.0)


def to_lab(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB -> float32 (N, 3, S, S) CIE Lab (L in [0, 100], a and b about [-100, 100]).

    Lab separates lightness from chroma and is roughly perceptually uniform, so Euclidean and
    Gaussian models of skin and lesion colour behave much better there than in RGB.
    """
    return kornia.color.rgb_to_lab(to_tensor(images)).numpy()


def remove_hair(images: np.ndarray, kernel: int) -> np.ndarray:
    """Grey closing (dilation then erosion) of each channel with a ``kernel`` x ``kernel`` square.

    uint8 (N, S, S, 3) -> same. Hairs are thin and dark: a closing fills dark structures narrower than
    the kernel with the surrounding skin colour and leaves wider dark regions (lesions) in place.
    """
    from scipy import ndimage as ndi

    if kernel < 2:
        return images
    # a flat square is separable: scipy's running min/max filters, edge pixels repeated (so the window is
    # the image's part of it, as kornia's geodesic border), ~6x faster than kornia's shifted copies at 256 px
    check_uint8_batch(images)
    return ndi.grey_closing(images, size=(1, kernel, kernel, 1), mode="nearest")


def scaled_px(px: float, size: int) -> float:
    """A length given for a 128-pixel image, at ``size`` pixels."""
    return float(px) * size / 128.0


def odd_kernel(px: float, size: int) -> int:
    """An odd kernel width for ``px`` (given at 128) at ``size``; 0 stays 0."""
    if px <= 0:
        return 0
    k = max(3, int(round(scaled_px(px, size))))
    return k if k % 2 else k + 1


def shades_of_grey(images: np.ndarray, p: float, valid: np.ndarray = None) -> np.ndarray:
    """Shades-of-grey colour constancy (Finlayson & Trezzi 2004): divide each channel by its Minkowski
    p-norm mean over the field of view, rescaled so the three norms' mean is kept (brightness unchanged).

    uint8 (N, S, S, 3) -> same; ``valid`` bool (N, S, S) (None: every pixel). p = 1 is grey world, large p
    approaches max-RGB; p = 6 is the usual choice for skin images. A colour cast of the camera or of the
    light (white balance, tint) is a per-channel gain, which this removes, so Lab distances to the skin
    ring mean the same under any white balance.
    """
    x = images.astype(np.float32) / 255.0
    w = np.ones(x.shape[:3], np.float32) if valid is None else valid.astype(np.float32)
    norm = ((x ** p * w[..., None]).sum((1, 2)) / np.maximum(w.sum((1, 2)), 1)[:, None]) ** (1.0 / p)  # (N, 3)
    gain = norm.mean(1, keepdims=True) / np.maximum(norm, 1e-6)
    return (np.clip(x * gain[:, None, None, :], 0, 1) * 255.0 + 0.5).astype(np.uint8)


def line_closings(g: np.ndarray, length: int) -> list:
    """Grey closings of (N, S, S) with lines ``length`` px long at 0, 45, 90 and 135 degrees: the horizontal
    and vertical ones as 1-D sizes (scipy's separable running min/max), the diagonals as footprints."""
    from scipy import ndimage as ndi

    diagonal = np.eye(length, dtype=bool)[None]
    return [ndi.grey_closing(g, size=(1, 1, length)), ndi.grey_closing(g, footprint=diagonal[:, ::-1]),
            ndi.grey_closing(g, size=(1, length, 1)), ndi.grey_closing(g, footprint=diagonal)]


def hair_map(images: np.ndarray, length: int, threshold: float) -> np.ndarray:
    """Pixels under thin dark elongated structures (hairs, marker lines): uint8 (N, S, S, 3) -> bool (N, S, S).

    A grey closing with a line ``length`` px long fills a dark structure that the line spans: a hair is
    filled by a line across it but not by one along it, while a dark blob (a small lesion, a globule, a
    mesh of pigment network) is filled by every line or by none. So the spread of the four oriented
    black top-hats (closing minus image, grey values in [0, 1]) is large on hairs only; above ``threshold``
    it marks hair, grown by one pixel to take the hair's soft rim.
    """
    from scipy import ndimage as ndi

    g = images.astype(np.float32).mean(-1) / 255.0  # (N, S, S)
    tops = np.stack([closed - g for closed in line_closings(g, length)])
    hair = (tops.max(0) - tops.min(0)) > threshold
    return ndi.binary_dilation(hair, structure=np.ones((1, 3, 3), bool))


def inpaint_hair(images: np.ndarray, hair: np.ndarray, length: int) -> np.ndarray:
    """Replace the ``hair`` pixels (bool (N, S, S)) of uint8 (N, S, S, 3) by a grey closing of each channel
    with a ``length`` square (the skin or lesion colour around the hair); the rest is kept.

    ``segment.hair_fill: closing`` (model.json format 1-3). A closing is the local maximum's minimum, so on
    textured skin or lesion it fills brighter than the surroundings' mean, and where hairs cross or run
    beside a lesion (dark wider than the square) it leaves a dark square patch: see :func:`average_hair`."""
    from scipy import ndimage as ndi

    if not hair.any():
        return images
    closed = ndi.grey_closing(images, size=(1, length, length, 1))
    return np.where(hair[..., None], closed, images)


def long_lines(hair: np.ndarray, min_extent: float, shrink: bool = True) -> np.ndarray:
    """The connected parts (8-neighbours) of bool (N, S, S) ``hair`` whose bounding box has a diagonal of at
    least ``min_extent`` px: hairs and marker lines run long, while what the line detector also marks but is
    short (a small elongated lesion, a dot, a streak of pigment network) is not. -> bool (N, S, S).

    With ``shrink``, the parts are found on the map shrunk by one pixel and grown back inside it: the one-pixel
    rim that :func:`hair_map` adds would otherwise join a small lesion's mark to a nearby line."""
    from scipy import ndimage as ndi

    grow = np.ones((1, 3, 3), bool)
    core = ndi.binary_erosion(hair, structure=grow) if shrink else np.asarray(hair, bool)
    out = np.zeros_like(core)
    for i in range(len(core)):
        lab, n = ndi.label(core[i], structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        keep = np.zeros(n + 1, bool)
        for j, sl in enumerate(ndi.find_objects(lab), 1):
            keep[j] = np.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) >= min_extent
        out[i] = keep[lab]
    return ndi.binary_dilation(out, structure=grow) & hair if shrink else out


def average_hair(images: np.ndarray, hair: np.ndarray, sigma: float, bound: int, min_weight: float = 0.05,
                 widen: int = 3) -> np.ndarray:
    """Replace the ``hair`` pixels (bool (N, S, S)) of uint8 (N, S, S, 3) by the Gaussian-weighted mean of
    the pixels around them that are not hair (normalized convolution, ``sigma`` px), no brighter than a
    grey closing with a ``bound`` square; the rest is kept (``segment.hair_fill: average``).

    The mean of the non-hair neighbours is what DullRazor's interpolation across a hair approximates: the
    skin's colour on skin, the lesion's on the lesion, and a blend of the two where a hair crosses the
    border, so the border stays where it was. Where a wide tangle leaves too little non-hair weight
    (< ``min_weight``), sigma doubles (``widen`` times at most), then the closing fills. The bound keeps a
    dark structure wider than ``bound`` (a small lesion the line detector mistook for a hair) as dark as
    it is: a closing never brightens what is wider than its square."""
    from scipy import ndimage as ndi

    if not hair.any():
        return images
    out = images.copy()
    for i in np.flatnonzero(hair.reshape(len(hair), -1).any(1)):
        x, todo = images[i].astype(np.float32), hair[i].copy()
        keep = (~todo).astype(np.float32)
        closed = ndi.grey_closing(images[i], size=(bound, bound, 1)).astype(np.float32)
        fill, sig = closed.copy(), float(sigma)
        for _ in range(widen + 1):
            w = ndi.gaussian_filter(keep, sig)
            ok = todo & (w > min_weight)
            if ok.any():
                mean = ndi.gaussian_filter(x * keep[..., None], (sig, sig, 0))[ok] / w[ok][:, None]
                fill[ok] = np.minimum(mean, closed[ok])
                todo &= ~ok
            if not todo.any():
                break
            sig *= 2
        out[i][hair[i]] = (fill[hair[i]] + 0.5).clip(0, 255).astype(np.uint8)
    return out
