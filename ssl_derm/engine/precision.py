"""Numeric precision of a training step: autocast dtype, the fp16 GradScaler, clipping and the step.

``train.precision``: ``bf16`` (no scaler needed, bf16 has fp32's range), ``fp16`` (autocast to float16
with a dynamic loss scale), ``fp32``; ``auto``: bf16 on GPUs with native bf16, fp16 on those that only
emulate it (V100, T4), fp32 on the CPU.
``train.amp`` is the old switch, kept as a deprecated alias: true -> auto, false -> fp32.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(cfg, device: torch.device) -> str:
    """``train.precision`` (and the deprecated ``train.amp``) on ``device`` -> bf16 | fp16 | fp32."""
    kind = cfg.precision
    if cfg.amp is not None:
        warnings.warn("train.amp is deprecated; use train.precision (bf16 | fp16 | fp32 | auto)", FutureWarning,
                      stacklevel=2)
        if kind == "auto" and not cfg.amp:
            kind = "fp32"
    if kind == "auto":
        kind = auto_precision(device)
    if kind not in DTYPES:
        raise ValueError(f"config key 'train.precision': {kind!r} is not one of auto, bf16, fp16, fp32")
    return kind


def bf16_native() -> bool:
    """True where the current GPU computes bf16 in hardware (Ampere and later), False where torch only
    emulates it (V100, T4: slower than fp16 there)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before the argument existed: the check was the native one
        return torch.cuda.is_bf16_supported()


def auto_precision(device: torch.device) -> str:
    """``train.precision=auto`` on ``device``: bf16 on a GPU with native bf16, fp16 on other GPUs, fp32 on the CPU."""
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if bf16_native() else "fp16"


def autocast_for_inference(device: torch.device):
    """Autocast of frozen-feature and prediction passes: the dtype ``auto`` picks (no scaler needed without a backward)."""
    dtype = DTYPES[auto_precision(device)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class Precision:
    """Autocast context, loss scaling and the optimiser step for one precision on one device."""

    def __init__(self, kind: str, device: torch.device):
        self.kind, self.device = kind, torch.device(device)
        self.dtype = DTYPES[kind]
        # the scaler keeps float16 gradients from underflowing; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=kind == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer, params, clip: float):
        """Unscale, clip (when ``clip`` > 0; returns the total norm as a tensor, else None) and step.
        With fp16 a step whose gradients overflowed is skipped and the scale lowered (GradScaler)."""
        norm = None
        if clip > 0:
            self.scaler.unscale_(optimizer)
            norm = nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
