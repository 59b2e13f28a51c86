"""What a protocol trains, as typed objects: a protocol sets ``ctx.trained`` to one of these and
:func:`ssl_derm.serve.export.export_protocol_run` writes it by its type, so a new protocol that trains one of
these kinds needs no change in ``serve``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn


@dataclass
class TimmClassifier:
    """A whole timm classifier (encoder + its own head): finetune, FixMatch, the mean teacher, distillation."""
    model: nn.Module


@dataclass
class FeatureProbe:
    """A scikit-learn probe on frozen encoder features: ``scaler`` (StandardScaler) then ``clf``
    (LogisticRegression or an equivalent with ``coef_``/``intercept_``): linear probe, label spreading."""
    scaler: Any
    clf: Any


@dataclass
class KNNBank:
    """A weighted kNN over the labelled side's L2-normalised features: ``bank`` (N, D), ``labels`` (N,)."""
    bank: torch.Tensor
    labels: np.ndarray
    k: int
    temperature: float
    class_weights: Optional[torch.Tensor] = None


@dataclass
class SegNet:
    """A U-Net segmenter (:class:`ssl_derm.models.unet.SegModel`) and the settings it predicts with."""
    model: nn.Module
    decoder_widths: list
    threshold: float


TRAINED = (TimmClassifier, FeatureProbe, KNNBank, SegNet)
