"""BYOL: an online encoder + projector + predictor regresses a momentum teacher's projection."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Momentum, Projector, fp32, make_teacher
from ssl_derm.registry import register


@dataclass
class BYOLSettings(Projector, Momentum, MethodSettings):
    name: str = "byol"
    pred_hidden_dim: int = 2048  # predictor MLP


@register("method", "byol", settings=BYOLSettings)
class BYOL(Method):
    """views: [x0, x1] (B,3,H,W). Loss: symmetric negative cosine similarity in [-1, 1]."""

    default_preset = "two_view"
    sync_batchnorm_needed = True

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        self.projection = BYOLProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prediction = BYOLPredictionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_projection = make_teacher(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, views, step):
        self.expect_views(views, 2)
        x = torch.cat(views)
        p0, p1 = self.prediction(self.projection(self.encoder(x))).float().chunk(2)
        with torch.no_grad():
            z0, z1 = self.teacher_projection(self.teacher_encoder(x)).float().chunk(2)
        with fp32(x.device):
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return loss, {"momentum": self.momentum(step)}

    @torch.no_grad()
    def on_step_end(self, step):
        m = self.momentum(step)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.projection, self.teacher_projection, m)
