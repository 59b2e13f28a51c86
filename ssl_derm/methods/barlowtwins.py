"""Barlow Twins: two views, a 3-layer BN projector, the cross-correlation of the two embeddings driven
to the identity (lightly's head and loss; the correlation matrix is summed over ranks under DDP)."""
from __future__ import annotations

from dataclasses import dataclass

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Projector
from ssl_derm.registry import register


@dataclass
class BarlowTwinsSettings(Projector, MethodSettings):
    name: str = "barlowtwins"
    proj_hidden_dim: int = 2048  # width of the projection MLP's hidden layers
    proj_dim: int = 2048  # Barlow Twins wants a wide embedding (paper: 8192)
    lambda_offdiag: float = 5e-3  # weight of the redundancy-reduction (off-diagonal) term

    def check(self) -> None:
        self.at_least(0, "lambda_offdiag")


@register("method", "barlowtwins", settings=BarlowTwinsSettings)
class BarlowTwins(Method):
    """views: [x0, x1], each (B,3,H,W), B >= 2 (the loss standardises each feature over the batch)."""

    default_preset = "two_view"
    sync_batchnorm_needed = True  # the loss standardises over the batch; the projector has BN

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        self.projection = BarlowTwinsProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=cfg.lambda_offdiag, gather_distributed=True)

    def training_step(self, views, step):
        return self.paired_loss(views)
