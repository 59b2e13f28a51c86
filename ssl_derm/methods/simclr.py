"""SimCLR: two views, a projection MLP and the NT-Xent loss with negatives from every rank."""
from __future__ import annotations

from dataclasses import dataclass

from lightly.models.modules import SimCLRProjectionHead

from ssl_derm.config import MethodSettings
from ssl_derm.methods.losses import NTXentLoss
from ssl_derm.methods.base import Method, Projector
from ssl_derm.registry import register


@dataclass
class SimCLRSettings(Projector, MethodSettings):
    name: str = "simclr"
    temperature: float = 0.1  # NT-Xent


@register("method", "simclr", settings=SimCLRSettings)
class SimCLR(Method):
    """views: [x0, x1], each (B,3,H,W). Both views go through the encoder as one batch of 2B."""

    default_preset = "two_view"
    sync_batchnorm_needed = True

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        self.projection = SimCLRProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        # gather_distributed: negatives from all ranks when torch.distributed is initialised
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def training_step(self, views, step):
        return self.paired_loss(views)
