"""Optimiser and schedule from timm: no weight decay on biases and norms, cosine with linear warm-up."""
from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.errors import ConfigError


def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """Linear scaling rule: ``train.lr`` is the LR for a global batch of 256 (batch_size x accumulated
    micro-batches x ranks)."""
    return cfg.lr * cfg.batch_size * max(getattr(cfg, "accumulate", 1), 1) * world_size / 256


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1, layer_decay=None):
    try:
        return create_optimizer_v2(model, opt=cfg.optimizer, lr=scaled_lr(cfg, world_size),
                                   weight_decay=cfg.weight_decay, layer_decay=layer_decay)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"train.optimizer='{cfg.optimizer}' is not usable ({e}); try adamw, sgd, lars or lamb") from None


def build_scheduler(optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """Per-step schedule: call ``step_update(step)`` after each optimiser step."""
    return CosineLRScheduler(optimizer, t_initial=max(cfg.max_steps, 1), lr_min=cfg.min_lr,
                             warmup_t=min(cfg.warmup_steps, max(cfg.max_steps - 1, 0)),
                             warmup_lr_init=cfg.min_lr, t_in_epochs=False)
