"""The segmenter interface, the preprocessing every method shares, and the registry lookup.

A segmenter is registered with ``@register("segmenter", name)`` and built as ``cls(cfg, encoder)``;
``predict(images)`` takes uint8 (N, S, S, 3) at the cache resolution and returns
``(scores, masks)``: float32 (N, S, S) lesion scores in [0, 1] and bool (N, S, S) cleaned-up masks.
Segmenters never see masks: :mod:`ssl_derm.segment.run` reads them only to score, after prediction.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.registry import get, names
from ssl_derm.segment.cleanup import clean_masks
from ssl_derm.segment.colour import odd_kernel, remove_hair, scaled_px, to_lab
from ssl_derm.segment.config import DEFAULT_METHOD, SegmentConfig
from ssl_derm.segment.prior import skin_ring
from ssl_derm.segment.vignette import field_of_view


@dataclass
class Prepared:
    """Shared per-batch inputs. images: uint8 (N,S,S,3) hair removed; lab: float32 (N,3,S,S);
    valid: bool (N,S,S) field of view; ring: bool (N,S,S) skin ring inside it."""

    images: np.ndarray
    lab: np.ndarray
    valid: np.ndarray
    ring: np.ndarray


def prepare(images: np.ndarray, s) -> Prepared:
    """Hair removal, Lab, field of view and skin ring for a batch (``s``: the ``segment`` section)."""
    size = images.shape[1]
    clean = remove_hair(images, odd_kernel(s.hair_kernel, size))
    lab = to_lab(clean)
    valid = np.stack([field_of_view(lab[i, 0], s.vignette) for i in range(len(lab))])
    inner, outer = (scaled_px(r, size) for r in s.ring)
    ring = np.stack([skin_ring(v, inner, outer) for v in valid])
    return Prepared(clean, lab, valid, ring)


def smooth_lab(lab: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (N, 3, S, S) over the two spatial axes (``sigma`` px at 128)."""
    sig = scaled_px(sigma, lab.shape[-1])
    return ndi.gaussian_filter(lab, (0, 0, sig, sig)) if sig > 0 else lab


class Segmenter(abc.ABC):
    """One level of base class: holds the config; subclasses implement ``segment``."""

    needs_encoder = False  # True: built with an Encoder (random weights when encoder.checkpoint is unset)
    needs_vit = False

    def __init__(self, cfg: SegmentConfig, encoder=None):
        self.cfg = cfg
        self.s = cfg.segment
        self.encoder = encoder

    @abc.abstractmethod
    def segment(self, images: np.ndarray, prep: Prepared) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 (N,S,S,3) + shared inputs -> (scores float32 (N,S,S) in [0,1], raw masks bool (N,S,S))."""

    def predict(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) -> (scores float32 (N, S, S) in [0, 1], masks bool (N, S, S))."""
        if len(images) == 0:
            size = images.shape[1] if images.ndim == 4 else 0
            return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), bool)
        prep = prepare(np.asarray(images), self.s)
        scores, masks = self.segment(np.asarray(images), prep)
        if self.s.refine_em:
            from ssl_derm.segment.contrast_em import em_refine

            scores, masks = em_refine(prep, masks, self.s)
        masks = clean_masks(masks & prep.valid, self.s.component, self.s.fill_holes)
        return np.clip(scores, 0, 1).astype(np.float32), masks


def method_name(name: str) -> str:
    return DEFAULT_METHOD if name == "default" else name


def segmenter_class(method: str):
    """The registered class for ``segment.method``; an unknown name is a ValueError listing the names."""
    name = method_name(method)
    try:
        return get("segmenter", name)
    except KeyError:
        raise ValueError(f"config key 'segment.method': unknown segmenter '{method}'; "
                         f"available: default, {', '.join(names('segmenter'))}") from None


def build_segmenter(cfg: SegmentConfig, encoder: Optional[object] = None) -> Segmenter:
    """The registered segmenter ``cfg.segment.method`` (``default`` = the best one without a checkpoint)."""
    cls = segmenter_class(cfg.segment.method)
    name = method_name(cfg.segment.method)
    if cls.needs_encoder and encoder is None:
        raise ValueError(f"segmenter '{name}' needs an encoder (encoder.name, optionally encoder.checkpoint)")
    if cls.needs_vit and not getattr(encoder, "is_vit", False):
        raise ValueError(f"segmenter '{name}' reads a ViT's attention maps, but encoder.name="
                         f"'{getattr(encoder, 'name', None)}' is not a ViT; use e.g. encoder.name=vit_small_patch16_224")
    return cls(cfg, encoder)
