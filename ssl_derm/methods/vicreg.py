"""VICReg: two views, a 3-layer BN expander; invariance (MSE between views) + variance (hinge on each
feature's std over the batch) + covariance (off-diagonal covariance) terms, lightly's head and loss."""
from __future__ import annotations

from dataclasses import dataclass

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Projector
from ssl_derm.registry import register


@dataclass
class VICRegSettings(Projector, MethodSettings):
    name: str = "vicreg"
    proj_hidden_dim: int = 2048  # width of the projection MLP's hidden layers
    proj_dim: int = 2048  # paper: 8192
    invariance_weight: float = 25.0  # lambda
    variance_weight: float = 25.0  # mu
    covariance_weight: float = 1.0  # nu

    def check(self) -> None:
        self.at_least(0, "invariance_weight", "variance_weight", "covariance_weight")


@register("method", "vicreg", settings=VICRegSettings)
class VICReg(Method):
    """views: [x0, x1], each (B,3,H,W), B >= 2 (variance and covariance are batch statistics)."""

    default_preset = "two_view"
    sync_batchnorm_needed = True

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        self.projection = VICRegProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = VICRegLoss(lambda_param=cfg.invariance_weight, mu_param=cfg.variance_weight,
                                    nu_param=cfg.covariance_weight, gather_distributed=True)

    def training_step(self, views, step):
        return self.paired_loss(views)
