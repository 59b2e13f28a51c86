"""MoCo v3: query encoder + projector + predictor against a momentum key encoder, symmetric InfoNCE.

Negatives are the keys of every rank (all-gathered when torch.distributed is initialised). lightly has
the heads and the momentum utilities but no MoCo v3 loss (its NTXentLoss also contrasts queries with
queries), so the few lines of the loss live here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import concat_all_gather, update_momentum

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Momentum, Projector, fp32, make_teacher
from ssl_derm.registry import register


def moco_v3_loss(q, k, temperature: float):
    """q (B, D) with grad, k (B, D) keys without -> InfoNCE with all ranks' keys as negatives, x 2T."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    rank = 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        k = concat_all_gather(k)
        rank = dist.get_rank()
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


@dataclass
class MoCoV3Settings(Projector, Momentum, MethodSettings):
    name: str = "mocov3"
    pred_hidden_dim: int = 2048  # predictor MLP
    temperature: float = 0.1  # InfoNCE temperature


@register("method", "mocov3", settings=MoCoV3Settings)
class MoCoV3(Method):
    """views: [x0, x1] (B,3,H,W). Loss: ctr(q0, k1) + ctr(q1, k0)."""

    default_preset = "two_view"
    sync_batchnorm_needed = True

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        # MoCo v3: 3-layer projector and 2-layer predictor, BN in every layer
        self.projection = MoCoProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                             num_layers=3, batch_norm=True)
        self.prediction = MoCoProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim,
                                             num_layers=2, batch_norm=True)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_projection = make_teacher(self.projection)

    def training_step(self, views, step):
        self.expect_views(views, 2)
        x = torch.cat(views)
        q0, q1 = self.prediction(self.projection(self.encoder(x))).float().chunk(2)
        with torch.no_grad():
            k0, k1 = self.teacher_projection(self.teacher_encoder(x)).float().chunk(2)
        with fp32(x.device):
            t = self.cfg.temperature
            loss = moco_v3_loss(q0, k1, t) + moco_v3_loss(q1, k0, t)
        return loss, {"momentum": self.momentum(step)}

    @torch.no_grad()
    def on_step_end(self, step):
        m = self.momentum(step)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.projection, self.teacher_projection, m)
