"""Optimiser and schedule from timm: no weight decay on biases and norms, cosine with linear warm-up."""
from __future__ import annotations

from typing import Dict, List, Optional

from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.errors import ConfigError


def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """Linear scaling rule: ``train.lr`` is the LR for a global batch of 256 (batch_size x accumulated
    micro-batches x ranks)."""
    return cfg.lr * cfg.batch_size * max(getattr(cfg, "accumulate", 1), 1) * world_size / 256


def scaled_param_groups(model: nn.Module, weight_decay: float, lr_scales: Dict[str, float]) -> List[dict]:
    """timm's weight-decay groups (``param_groups_weight_decay``, honouring each child's
    ``no_weight_decay()``), made per top-level child with the child's LR multiplier in ``lr_scale``,
    which timm's schedulers apply at every step: ``{"backbone": 0.1}`` trains ``model.backbone`` at a
    tenth of the LR, every other child at 1."""
    children = dict(model.named_children())
    unknown = set(lr_scales) - set(children)
    if unknown:
        raise ValueError(f"lr_scales names {sorted(unknown)}, not children of {type(model).__name__}")
    if any(p.requires_grad for p in model.parameters(recurse=False)):
        raise ValueError(f"lr_scales: {type(model).__name__} holds parameters outside its children; "
                         "move them into a child module")
    groups = []
    for name, child in children.items():
        skip = child.no_weight_decay() if hasattr(child, "no_weight_decay") else ()
        for g in param_groups_weight_decay(child, weight_decay, no_weight_decay_list=skip):
            groups.append({**g, "lr_scale": float(lr_scales.get(name, 1.0))})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1, layer_decay=None,
                    lr_scales: Optional[Dict[str, float]] = None):
    """timm's optimiser ``train.optimizer`` at the linearly scaled LR; ``layer_decay`` (timm's layer-wise
    decay) or ``lr_scales`` (per top-level child, :func:`scaled_param_groups`) scale parts of the model."""
    if layer_decay is not None and lr_scales:
        raise ConfigError("layer-wise LR decay and per-module LR scales cannot be combined; set one of them")
    groups = scaled_param_groups(model, cfg.weight_decay, lr_scales) if lr_scales else None
    group_fn = (lambda m: groups) if groups else None
    try:
        return create_optimizer_v2(model, opt=cfg.optimizer, lr=scaled_lr(cfg, world_size),
                                   weight_decay=cfg.weight_decay, layer_decay=layer_decay, param_group_fn=group_fn)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"train.optimizer='{cfg.optimizer}' is not usable ({e}); try adamw, sgd, lars or lamb") from None


def build_scheduler(optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """Per-step schedule: call ``step_update(step)`` after each optimiser step."""
    return CosineLRScheduler(optimizer, t_initial=max(cfg.max_steps, 1), lr_min=cfg.min_lr,
                             warmup_t=min(cfg.warmup_steps, max(cfg.max_steps - 1, 0)),
                             warmup_lr_init=cfg.min_lr, t_in_epochs=False)
