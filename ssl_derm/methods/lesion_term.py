"""The lesion-vs-skin term (``method.lesion_weight``): pretraining that learns where the lesion is.

The archive's annotation-free masks (``segment/archive_masks.py``: the default segmenter's, computed
once and cached beside the image cache) ride along with the images as a 4th channel; the preset warps
each view's mask with that view's own crop, rotation and flips (``Preset.keep_masks``). A 1x1
convolution on the encoder's feature map at stride ``method.lesion_stride`` must then tell lesion
cells from skin cells in every view: binary cross-entropy against the share of lesion pixels in each
cell. The read-out is linear on purpose, so the work is done by the encoder: its map at that stage
has to separate lesion from skin, which is what the Gharawi-style clustering and the self-training
U-Net read, and the pooled features built on it see where the lesion is. Segmentation feeds
pretraining back, which none of lightly, solo-learn or USB does.

The map is caught by a forward hook on that stage while the method's own ``training_step`` runs, so
nothing is computed twice; the term therefore needs a method whose student encoder sees each view
exactly once, in order (the two-view methods: SimCLR, DenseCL, BYOL, MoCo v3, VICReg, Barlow Twins).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_derm.encoders import Encoder
from ssl_derm.errors import ConfigError, MethodError
from ssl_derm.methods.base import fp32
from ssl_derm.registry import get

PRESETS = ("two_view",)  # presets whose views share one size and reach the student once each


def _stage(encoder: Encoder, stride: int) -> dict:
    """The last timm ``feature_info`` entry at ``stride`` (module name, channels)."""
    info = list(getattr(encoder.model, "feature_info", None) or [])
    at = [f for f in info if int(f["reduction"]) == stride]
    if not at:
        have = sorted({int(f["reduction"]) for f in info})
        raise ConfigError(f"config key 'method.lesion_stride': {encoder.name} has no feature map at stride {stride}"
                          + (f"; its strides are {', '.join(map(str, have))}" if have else
                             " (timm gives no feature_info for it); set method.lesion_weight=0"))
    return at[-1]


class LesionTerm(nn.Module):
    """BCE of a 1x1-conv read-out of the stride-``stride`` map against the views' lesion masks."""

    def __init__(self, encoder: Encoder, weight: float, stride: int):
        super().__init__()
        if weight < 0:
            raise ConfigError(f"config key 'method.lesion_weight': must be >= 0, got {weight}")
        stage = _stage(encoder, stride)
        self.weight, self.channels = float(weight), int(stage["num_chs"])
        self.head = nn.Conv2d(self.channels, 1, kernel_size=1)
        self._tokens_to_map = encoder.to_dense  # ViT blocks give tokens (B, prefix + N, C)
        target = encoder.model.get_submodule(stage["module"])
        maps: List[Tensor] = []
        on = [False]

        def catch(module, args, out):
            # only the student's own stage, only inside training_step (not the kNN monitor, not a teacher copy)
            if on[0] and module is target:
                maps.append(out[0] if isinstance(out, (tuple, list)) else out)

        target.register_forward_hook(catch)
        self._maps, self._on = maps, on

    @contextmanager
    def catching(self):
        """Around the method's ``training_step``: collect the stage's outputs of that step."""
        self._maps.clear()
        self._on[0] = True
        try:
            yield
        finally:
            self._on[0] = False

    def _grid(self, out: Tensor) -> Tensor:
        """A caught stage output -> (N, C, h, w)."""
        if out.ndim == 3:
            return self._tokens_to_map(out)
        if out.shape[1] != self.channels and out.shape[-1] == self.channels:  # NHWC stages (Swin, ConvNeXt-V2 some)
            return out.permute(0, 3, 1, 2)
        return out

    def loss(self, masks: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """masks (N, 1, s, s) in [0, 1], view-major like the views -> (BCE, logs)."""
        maps = [self._grid(m) for m in self._maps]
        self._maps.clear()
        if not maps:
            raise MethodError("method.lesion_weight: the method never ran its encoder's stage at "
                              "method.lesion_stride during its step; set method.lesion_weight=0 for this method")
        if len({m.shape[-2:] for m in maps}) > 1 or sum(len(m) for m in maps) != len(masks):
            raise MethodError(f"method.lesion_weight: the method ran its encoder on {sum(len(m) for m in maps)} "
                              f"views but the batch holds {len(masks)}; the lesion term needs a method whose student "
                              f"sees each view once (presets {', '.join(PRESETS)}); set method.lesion_weight=0")
        feats = torch.cat(maps)
        with fp32(feats.device):
            target = F.adaptive_avg_pool2d(masks.float(), feats.shape[-2:])  # share of lesion pixels per cell
            logits = self.head(feats.float())
            bce = F.binary_cross_entropy_with_logits(logits, target)
        acc = ((logits.detach() > 0) == (target > 0.5)).float().mean()
        # 0-d tensors: the engine reads them on the host only on the steps it logs (no sync per step)
        return bce, {"loss_lesion": bce.detach(), "lesion_cell_acc": acc}


def wanted(cfg, preset: str = "") -> bool:
    """Whether the ``method.*`` settings ``cfg`` ask for the term, checked before any work: a negative weight
    is an error (not a silent "off"), and so is a preset (``augment.preset``, empty: the method's own)
    whose views do not reach the student once each."""
    if cfg.lesion_weight < 0:
        raise ConfigError(f"config key 'method.lesion_weight': must be >= 0, got {cfg.lesion_weight}")
    if cfg.lesion_weight == 0:
        return False
    preset = preset or get("method", cfg.name).default_preset
    if preset not in PRESETS:
        raise ConfigError(f"config key 'method.lesion_weight': {cfg.lesion_weight} needs views of one size that "
                          f"reach the student once each (augment.preset {', '.join(PRESETS)}), not '{preset}' "
                          f"(method '{cfg.name}'); set method.lesion_weight=0")
    return True


def attach(method: nn.Module, preset: str) -> LesionTerm:
    """Give ``method`` its lesion term as ``method.lesion_term`` (so the optimiser and checkpoints hold
    its head), on the method's device."""
    wanted(method.cfg, preset)
    device = next(method.parameters()).device
    method.lesion_term = LesionTerm(method.encoder, method.cfg.lesion_weight, int(method.cfg.lesion_stride)).to(device)
    return method.lesion_term


def training_step(method: nn.Module, views: List[Tensor], step: int, masks) -> Tuple[Tensor, Dict[str, float]]:
    """The method's step, plus ``lesion_weight`` x the lesion term where the method has one."""
    term = getattr(method, "lesion_term", None)
    if term is None:
        return method.training_step(views, step)
    if masks is None:
        raise MethodError("method.lesion_weight > 0 needs each view's lesion mask: the preset was not asked to keep "
                          "them (Preset.keep_masks) or the batch had no mask channel")
    with term.catching():
        loss, logs = method.training_step(views, step)
    lesion, extra = term.loss(masks)
    return loss + term.weight * lesion, {**logs, **extra}
