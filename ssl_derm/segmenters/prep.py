"""The first step of every segmenter: hair removal, Lab colour, field of view and skin ring of a batch.

``prepare`` runs once per batch before the segmenter (see the steps in :mod:`ssl_derm.segmenters.pipeline`);
segmenters and the EM refinement read its :class:`Prepared` inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.segmenters.colour import (average_hair, hair_map, inpaint_hair, long_lines, odd_kernel, remove_hair,
                                        scaled_px, shades_of_grey, to_lab)
from ssl_derm.segmenters.prior import skin_ring
from ssl_derm.segmenters.vignette import field_of_view, flatten_illumination


@dataclass
class Prepared:
    """Shared per-batch inputs. images: uint8 (N,S,S,3) hair removed; lab: float32 (N,3,S,S);
    valid: bool (N,S,S) field of view; ring: bool (N,S,S) skin ring inside it; hair: bool (N,S,S) what the
    hair-line detector marked (all of it, filled or not), which the clean-up's opening is limited to."""

    images: np.ndarray
    lab: np.ndarray
    valid: np.ndarray
    ring: np.ndarray
    hair: Optional[np.ndarray] = None  # bool (N,S,S): the hair-line detector's map (None: hair_lines off)


def prepare(images: np.ndarray, s) -> Prepared:
    """Hair removal, Lab, field of view and skin ring for a batch (``s``: the ``segment`` section)."""
    size = images.shape[1]
    clean, hair = images, None
    if s.hair_lines > 0:  # long thin dark lines first: wider than the square kernel below, narrower than a lesion
        length = odd_kernel(s.hair_lines, size)
        hair, square = hair_map(clean, length, s.hair_threshold), odd_kernel(s.hair_lines / 2, size)
        if s.hair_fill == "average":  # long lines only (3 line lengths or more; a short mark is a small lesion or
            # a dot as often as a hair): the mean of the pixels around them, no brighter than a line-long closing
            clean = average_hair(clean, long_lines(hair, 3 * length), square / 4.0, length)
        else:
            clean = inpaint_hair(clean, hair, square)
    clean = remove_hair(clean, odd_kernel(s.hair_kernel, size))
    lab = to_lab(clean)
    valid = np.stack([field_of_view(lab[i, 0], s.vignette) for i in range(len(lab))])
    inner, outer = (scaled_px(r, size) for r in s.ring)
    ring = np.stack([skin_ring(v, inner, outer) for v in valid])
    if s.flatten_light or s.colour_constancy > 0:
        if s.flatten_light:  # the fall-off measured on the ring's skin, inside the field of view only
            clean = flatten_illumination(clean, ring, valid)
        if s.colour_constancy > 0:  # white balance from the field of view only (the dark border is no colour cue)
            clean = shades_of_grey(clean, s.colour_constancy, valid)
        lab = to_lab(clean)
    return Prepared(clean, lab, valid, ring, hair)


def smooth_lab(lab: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (N, 3, S, S) over the two spatial axes (``sigma`` px at 128)."""
    sig = scaled_px(sigma, lab.shape[-1])
    return ndi.gaussian_filter(lab, (0, 0, sig, sig)) if sig > 0 else lab
