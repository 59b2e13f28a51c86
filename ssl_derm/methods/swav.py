"""SwAV: swapped prediction of online cluster assignments over multi-crop views (lightly's head,
prototypes, Sinkhorn-Knopp loss and memory bank).

Each view is projected, L2-normalised and scored against ``n_prototypes`` unit-norm prototypes. The
codes of each high-resolution (global) view come from Sinkhorn-Knopp on its scores (equal partition
of the batch over the prototypes); every other view predicts them. An optional queue of past global
projections (``queue_length`` > 0, used from ``queue_start_step``) enlarges the Sinkhorn batch, which
small batches need. Prototypes are frozen for the first ``freeze_prototypes_steps`` steps, as in the
paper, by a zero gradient rather than ``requires_grad=False`` so that DDP and the optimiser see the
same parameters throughout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import nn

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Projector, allow_any_input_size, fp32
from ssl_derm.registry import register


@dataclass
class SwAVSettings(Projector, MethodSettings):
    name: str = "swav"
    n_prototypes: int = 3000  # paper's ImageNet value; a few hundred suits a 10k-image archive
    temperature: float = 0.1  # softmax temperature of the swapped prediction
    sinkhorn_iterations: int = 3  # Sinkhorn-Knopp iterations per assignment
    sinkhorn_epsilon: float = 0.05  # entropy regularisation of the assignment
    freeze_prototypes_steps: int = 0  # paper: about one epoch
    queue_length: int = 0  # past global projections per view added to Sinkhorn's batch; 0 = no queue
    queue_start_step: int = 0  # step from which the queue is used (it needs filling first)

    def check(self) -> None:
        self.at_least(1, "n_prototypes", "sinkhorn_iterations")
        self.at_least(0, "temperature", "sinkhorn_epsilon", strict=True)
        self.at_least(0, "freeze_prototypes_steps", "queue_length", "queue_start_step")


@register("method", "swav", settings=SwAVSettings)
class SwAV(Method):
    """views: [global0, global1, local0, ...]; globals (B,3,H,W), locals (B,3,h,w) of any one size."""

    default_preset = "multi_crop"
    sync_batchnorm_needed = True  # the projector has BN and Sinkhorn partitions the batch

    def __init__(self, encoder, cfg, max_steps):
        allow_any_input_size(encoder)  # ViT local crops are smaller than the global ones
        super().__init__(encoder, cfg, max_steps)
        self.projection = SwaVProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = SwaVPrototypes(cfg.proj_dim, cfg.n_prototypes)
        self.criterion = SwaVLoss(temperature=cfg.temperature, sinkhorn_iterations=cfg.sinkhorn_iterations,
                                  sinkhorn_epsilon=cfg.sinkhorn_epsilon, sinkhorn_gather_distributed=True)
        # one queue per global view; its buffers are not checkpointed (they refill after a resume)
        self.queues = nn.ModuleList([MemoryBankModule(size=(cfg.queue_length, cfg.proj_dim), feature_dim_first=False)
                                     for _ in range(2)]) if cfg.queue_length else None

    def scores(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """Normalised projections (N, proj_dim) -> prototype scores (N, n_prototypes)."""
        layer = self.prototypes.heads[0]  # lightly's prototypes: a Linear layer (with a bias)
        w, b = layer.weight, layer.bias
        if step < self.cfg.freeze_prototypes_steps:
            w, b = w.detach() + 0.0 * w, b.detach() + 0.0 * b  # zero gradient, parameters still used
        return F.linear(z, w, b)

    def training_step(self, views, step):
        self.expect_views(views, 2, at_least=True)
        with torch.no_grad():
            self.prototypes.normalize()  # prototypes live on the unit sphere
        z = [F.normalize(self.projection(self.encoder(torch.cat(views[:2]))).float(), dim=1)]
        if len(views) > 2:
            z.append(F.normalize(self.projection(self.encoder(torch.cat(views[2:]))).float(), dim=1))
        z_high = list(z[0].chunk(2))
        z_low = list(z[1].chunk(len(views) - 2)) if len(views) > 2 else []
        with fp32(z[0].device):
            high = [self.scores(t, step) for t in z_high]
            low = [self.scores(t, step) for t in z_low]
            queue = None
            if self.queues is not None:
                banks = [q(t.detach(), update=True)[1] for q, t in zip(self.queues, z_high)]
                if step >= self.cfg.queue_start_step:
                    with torch.no_grad():
                        queue = [self.scores(b.to(t.dtype), step) for b, t in zip(banks, z_high)]
            loss = self.criterion(high, low, queue).squeeze()
        return loss, {}
