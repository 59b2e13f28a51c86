"""Decode one image or mask file with PIL, or say in words why it cannot be used.

Shared by the cache (which stores the decoded arrays) and ``data check`` (which only reports), so the two
always agree on which files are bad. Functions here never raise for a bad file: they return a reason.

Colour conversion choices:
- grayscale (L, 1, LA) is repeated into three channels; palette images go through their palette;
- alpha is dropped, not composited: dermoscopy exports with alpha are nearly always fully opaque, and where
  they are not, the stored RGB is real image data while a white or black backdrop would be invented;
- CMYK / YCbCr / LAB use PIL's conversion to RGB;
- 16-bit ('I;16', 'I') is scaled by 1/257 (full 16-bit range -> 0..255), 32-bit float by its own range,
  because PIL's own convert clips everything above 255 to white;
- EXIF orientation is ignored: masks are drawn on the stored pixel grid, so rotating the image would
  misalign them;
- resizing stretches to a square (no crop), so a mask stretched the same way stays aligned.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

# Bad-file reasons (the words 'data check' prints; tests look for them).
ZERO_BYTES = "zero bytes (empty file)"
NOT_IMAGE = "not an image (PIL cannot identify it)"
TRUNCATED = "corrupt or truncated"
UNREADABLE = "cannot read file"
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _open(path: str) -> Tuple[Optional[Image.Image], Optional[str]]:
    try:
        if os.path.getsize(path) == 0:
            return None, ZERO_BYTES
        return Image.open(path), None
    except UnidentifiedImageError:
        return None, NOT_IMAGE
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        return None, f"{UNREADABLE}: {e}"
    except (OSError, SyntaxError, ValueError) as e:  # PIL read the header and found it broken
        return None, f"{TRUNCATED}: {e}"


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode (see the module docstring for the choices)."""
    if img.mode in _WIDE_MODES and img.mode != "F":
        a = np.asarray(img).astype(np.float32)
        a = np.clip(a / 257.0, 0, 255) if a.max() > 255 else np.clip(a, 0, 255)
        a = a.astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return np.repeat(np.nan_to_num(a).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def load_image(path: str, size: Optional[int] = None):
    """Decode ``path`` fully (so truncation is found) -> ((S,S,3) or (H,W,3) uint8, (h, w) original, None),
    or (None, None, reason).

    With ``size``, JPEGs are decoded at a reduced DCT scale no smaller than ``size`` (``draft``), which is
    several times faster for large files and still reads the whole stream.
    """
    img, reason = _open(path)
    if img is None:
        return None, None, reason
    try:
        with img, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; real problems raise below
            w, h = img.size
            if w == 0 or h == 0:
                return None, None, f"{TRUNCATED}: image has size {w}x{h}"
            if size is not None and img.format == "JPEG":
                img.draft(img.mode, (size, size))
            img.load()
            a = _to_rgb_array(img)
            if size is not None:
                a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))
            return a, (h, w), None
    except Image.DecompressionBombError as e:
        return None, None, f"image too large: {e}"
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for corrupt data
        return None, None, f"{TRUNCATED}: {e}"


def load_mask(path: str, image_hw: Optional[Tuple[int, int]] = None, size: Optional[int] = None):
    """Decode a mask -> ((S,S) or (H,W) uint8 in {0,1}, None) or (None, reason).

    Accepted: after conversion to 'L', at most two distinct values, either {0,255} or {0,1} (or one of them).
    ``image_hw`` is the original (h, w) of its image: a mask of another size is rejected, since it may be
    for another image. Resizing is nearest-neighbour, so the mask stays binary.
    """
    img, reason = _open(path)
    if img is None:
        return None, "mask " + reason
    try:
        with img:
            w, h = img.size
            if image_hw is not None and (h, w) != tuple(image_hw):
                return None, f"mask size differs from its image: mask {w}x{h}, image {image_hw[1]}x{image_hw[0]} (WxH)"
            img.load()
            # 16-bit masks are read as stored (0/65535 is a valid binary mask); the rest through 'L'.
            a = np.asarray(img if img.mode in _WIDE_MODES else img.convert("L"))
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"mask {TRUNCATED}: {e}"
    values = set(np.unique(a).tolist())
    if not any(values <= ok for ok in ({0, 255}, {0, 1}, {0, 65535})):
        shown = ", ".join(str(v) for v in sorted(values)[:6]) + (" ..." if len(values) > 6 else "")
        return None, f"mask not binary: {len(values)} distinct values ({shown}); expected {{0,255}} or {{0,1}}"
    a = (a > 0).astype(np.uint8)
    if size is not None:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.NEAREST))
    return a, None


def image_worker(args):
    """Pool entry point: (path, size) -> (array or None, (h, w) or None, reason or None)."""
    path, size = args
    try:
        return load_image(path, size)
    except Exception as e:  # a bad file must never stop a 100k-image build; say what happened instead
        return None, None, f"{TRUNCATED}: {type(e).__name__}: {e}"


def mask_worker(args):
    """Pool entry point: (path, image_hw, size) -> (array or None, reason or None)."""
    path, image_hw, size = args
    try:
        return load_mask(path, image_hw, size)
    except Exception as e:
        return None, f"mask {TRUNCATED}: {type(e).__name__}: {e}"
