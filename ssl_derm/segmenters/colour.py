"""Colour conversion and hair removal for batches of uint8 images (kornia on torch tensors)."""
from __future__ import annotations

import kornia
import numpy as np
import torch


def uint8_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) array (read-only memory maps too) -> uint8 tensor (N, 3, S, S)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"segmenters take uint8 images of shape (N, S, S, 3), got {images.dtype} {images.shape}")
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
    if kernel < 2:
        return images
    x = to_tensor(images)
    x = kornia.morphology.closing(x, torch.ones(kernel, kernel))
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def scaled_px(px: float, size: int) -> float:
    """A length given for a 128-pixel image, at ``size`` pixels."""
    return float(px) * size / 128.0


def odd_kernel(px: float, size: int) -> int:
    """An odd kernel width for ``px`` (given at 128) at ``size``; 0 stays 0."""
    if px <= 0:
        return 0
    k = max(3, int(round(scaled_px(px, size))))
    return k if k % 2 else k + 1
