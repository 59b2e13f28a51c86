"""The segmenter interface and the registry lookup; no concrete segmenter is imported here.

A segmenter is registered with ``@register("segmenter", name, settings=...)`` and built as
``cls(cfg, encoder)``. It is one step of four that :func:`ssl_derm.segmenters.pipeline.predict_batch` composes:
prepare (``prep.py``) -> ``segment`` -> refine (``em.py``, when ``segment.refine_em``) -> clean up
(``cleanup.py``). Segmenters never see masks: :mod:`ssl_derm.commands.segment` reads them only to score,
after prediction.
"""
from __future__ import annotations

import abc
from typing import Optional, Tuple

import numpy as np

from ssl_derm.errors import ConfigError, UnknownNameError
from ssl_derm.registry import get, names
from ssl_derm.segmenters.config import DEFAULT_METHOD, SegmentConfig
from ssl_derm.segmenters.prep import Prepared


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


def method_name(name: str) -> str:
    return DEFAULT_METHOD if name == "default" else name


def segmenter_class(method: str):
    """The registered class for ``segment.method``; an unknown name is a ConfigError listing the names."""
    name = method_name(method)
    try:
        return get("segmenter", name)
    except UnknownNameError:
        raise UnknownNameError(f"config key 'segment.method': unknown segmenter '{method}'; "
                               f"available: default, {', '.join(names('segmenter'))}") from None


def build_segmenter(cfg: SegmentConfig, encoder: Optional[object] = None) -> Segmenter:
    """The registered segmenter ``cfg.segment.method`` (``default`` = the best one without a checkpoint)."""
    cls = segmenter_class(cfg.segment.method)
    name = method_name(cfg.segment.method)
    if cls.needs_encoder and encoder is None:
        raise ConfigError(f"segmenter '{name}' needs an encoder (encoder.name, optionally encoder.checkpoint)")
    if cls.needs_vit and not getattr(encoder, "is_vit", False):
        raise ConfigError(f"segmenter '{name}' reads a ViT's attention maps, but encoder.name="
                          f"'{getattr(encoder, 'name', None)}' is not a ViT; use e.g. encoder.name=vit_small_patch16_224")
    return cls(cfg, encoder)
