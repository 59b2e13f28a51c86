"""The one base class every self-supervised method extends, the factory, and small shared helpers.

A method owns the online ``encoder`` (what gets exported), its heads, any momentum teacher and its
loss. The engine calls ``training_step(views, step) -> (loss, logs)`` under autocast, steps the
optimiser over the parameters that require grad, then ``on_step_end(step)`` for EMA updates.
Teachers have ``requires_grad=False`` so neither the optimiser nor DDP sees them.
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from lightly.models.utils import deactivate_requires_grad, get_at_index
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ssl_derm.config import MethodSettings
from ssl_derm.encoders import Encoder
from ssl_derm.registry import get
from ssl_derm.errors import MethodError


class Method(nn.Module, abc.ABC):
    """Base of every method. ``views`` are normalised float tensors (B, 3, h, w) from a preset."""

    default_preset: str = "two_view"
    # True where batch statistics of a CNN leak information between views or images (contrastive and
    # BYOL-style methods): the engine then converts BatchNorm to SyncBatchNorm under DDP.
    sync_batchnorm_needed: bool = False

    def __init__(self, encoder: Encoder, cfg: MethodSettings, max_steps: int):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.max_steps = max(1, int(max_steps))

    @abc.abstractmethod
    def training_step(self, views: List[Tensor], step: int) -> Tuple[Tensor, Dict[str, float]]:
        """views -> (scalar loss, dict of float logs)."""

    def on_step_end(self, step: int) -> None:
        """Called after the optimiser step; methods with a momentum teacher update it here."""

    def momentum(self, step: int) -> float:
        """EMA momentum on a cosine schedule from ``method.momentum`` to ``method.momentum_end``."""
        return cosine_schedule(min(step, self.max_steps), self.max_steps, self.cfg.momentum, self.cfg.momentum_end)

    def paired_loss(self, views: List[Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        """The two-view recipe of SimCLR, Barlow Twins and VICReg: both views (B,3,H,W) through the encoder
        and ``self.projection`` as one batch of 2B, then ``self.criterion(z0, z1)`` in fp32."""
        self.expect_views(views, 2)
        z0, z1 = self.projection(self.encoder(torch.cat(views))).float().chunk(2)
        with fp32(z0.device):
            return self.criterion(z0, z1), {}

    def expect_views(self, views: List[Tensor], n: int, at_least: bool = False) -> None:
        ok = len(views) >= n if at_least else len(views) == n
        if not ok:
            need = f"at least {n}" if at_least else str(n)
            raise MethodError(f"method '{self.cfg.name}' takes {need} views, got {len(views)}; "
                              f"use augment.preset={self.default_preset} (or leave augment.preset empty)")


@dataclass
class Projector:
    """Settings of a projection MLP (SimCLR, MoCo v3, BYOL, DINO); mixed into their settings."""

    proj_hidden_dim: int = 2048  # width of the projection MLP's hidden layers
    proj_dim: int = 128  # output width of the projection MLP


@dataclass
class Momentum:
    """Settings of a momentum teacher (MoCo v3, BYOL, DINO): EMA start, cosine schedule to the end value."""

    momentum: float = 0.99  # teacher EMA momentum at step 0
    momentum_end: float = 1.0  # teacher EMA momentum at the last step (cosine schedule)


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen deep copy for momentum updates (no gradients, never in the optimiser)."""
    teacher = copy.deepcopy(module)
    deactivate_requires_grad(teacher)
    return teacher


def fp32(device: torch.device):
    """Context that turns autocast off, so losses on small-temperature logits run in float32."""
    return torch.autocast(device.type, enabled=False)


def plain_vit(encoder: Encoder) -> bool:
    """A ViT whose patch embedding is a single linear projection (no CNN stem, unlike hybrids)."""
    pe = getattr(encoder.model, "patch_embed", None)
    return bool(encoder.is_vit and pe is not None and not hasattr(pe, "backbone") and hasattr(encoder.model, "_pos_embed"))


def allow_any_input_size(encoder: Encoder) -> None:
    """Let a timm ViT (plain or hybrid) or Swin take images of any size, as ``dynamic_img_size=True``
    at creation would (ViT: position embedding resampled per input; Swin: attention masks built per
    input); needed for DINO's small local crops. CNNs take any size already."""
    model, pe = encoder.model, getattr(encoder.model, "patch_embed", None)
    if pe is None or not hasattr(pe, "strict_img_size"):
        return
    if hasattr(model, "dynamic_img_size") and encoder.is_vit:
        if model.dynamic_img_size:
            return
        from timm.layers import Format

        model.dynamic_img_size = True
        pe.flatten = False
        pe.output_fmt = Format.NHWC
    else:  # Swin
        for mod in model.modules():
            if hasattr(mod, "dynamic_mask"):
                mod.dynamic_mask = True
    pe.strict_img_size = False


def freeze_unused(encoder: Encoder, dense: bool = True) -> List[str]:
    """Set requires_grad=False on encoder parameters that the (dense or pooled) forward never uses,
    e.g. mobilenetv3's conv_head, which sits after pooling: the method cannot train them and DDP needs
    every trainable parameter to get a gradient. One forward of a single blank image, then
    ``autograd.grad(allow_unused=True)``, which says which parameters the output does not depend on without
    touching any ``.grad``. Returns the frozen parameter names."""
    was_training = encoder.training
    encoder.eval()  # keep BN running statistics untouched
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    p0 = named[0][1]
    blank = torch.zeros(1, 3, encoder.img_size, encoder.img_size, device=p0.device, dtype=p0.dtype)
    out = encoder.forward_dense(blank) if dense else encoder(blank)
    grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    frozen = []
    for (name, p), g in zip(named, grads):
        if g is None:
            p.requires_grad_(False)
            frozen.append(name)
    encoder.train(was_training)
    return frozen


def vit_tokens(encoder: Encoder, images: Tensor, idx_keep: Tensor = None, mask: Tensor = None,
               mask_token: Tensor = None) -> Tensor:
    """Run a timm ViT on images, optionally masking or dropping patch tokens.

    images (B,3,H,W) -> tokens (B, prefix + kept, C) after the final norm. ``mask`` (B, N) bool marks
    patch tokens replaced by ``mask_token`` (1,1,C) before position embedding (SimMIM); ``idx_keep``
    (B, K) indexes the full sequence (prefix tokens included) to keep after it (MAE). Written on timm's
    own parts instead of lightly's MaskedVisionTransformerTIMM because that wrapper registers the ViT a
    second time (doubling checkpoints) and re-initialises its weights.
    """
    vit = encoder.model
    x = vit.patch_embed(images)  # (B, N, C), or (B, h, w, C) with a dynamic image size
    if mask is not None:
        m = mask.view(*x.shape[:-1], 1)
        x = torch.where(m, mask_token.to(x.dtype), x)
    x = vit._pos_embed(x)
    if idx_keep is not None:
        x = get_at_index(x, idx_keep)
    x = vit.norm_pre(vit.patch_drop(x))
    return vit.norm(vit.blocks(x))


def build_method(cfg: MethodSettings, encoder: Encoder, max_steps: int) -> Method:
    """The registered method ``cfg.name`` around ``encoder``."""
    try:
        cls = get("method", cfg.name)
    except KeyError as e:
        raise MethodError(f"config key 'method.name': {e.args[0]}") from None
    return cls(encoder, cfg, max_steps)
