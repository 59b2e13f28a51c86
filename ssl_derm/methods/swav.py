"""SwAV: swapped prediction of online cluster assignments over multi-crop views (lightly's head,
prototypes, Sinkhorn-Knopp loss and memory bank).

Each view is projected, L2-normalised and scored against ``n_prototypes`` unit-norm prototypes. The
codes of each high-resolution (global) view come from Sinkhorn-Knopp on its scores (equal partition
of the batch over the prototypes); every other view predicts them. An optional queue of past global
projections (``queue_length`` > 0, used from ``queue_start_step``) enlarges the Sinkhorn batch, which
small batches need; each rank keeps its own queue, checkpointed per rank. Prototypes are frozen for the first ``freeze_prototypes_steps`` steps, as in the
paper, by a zero gradient rather than ``requires_grad=False`` so that DDP and the optimiser see the
same parameters throughout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

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


class ProjectionQueue:
    """One FIFO of past projections per global view, (views, length, dim), newest first.

    Each rank keeps its own: Sinkhorn-Knopp sums its partition over the ranks (lightly's
    ``sinkhorn_gather_distributed``), so the ranks' queues together enter it once each. Not a module
    buffer, so DDP does not overwrite every rank's queue with rank 0's; the engine saves it per rank
    (``Method.rank_state``), so a resumed run continues with the queue it stopped with. Starts as
    random unit vectors (as lightly's memory bank); updated by concatenation (no pointer read on the host).
    """

    def __init__(self, views: int, length: int, dim: int):
        self.bank = F.normalize(torch.randn(views, length, dim), dim=-1)

    @torch.no_grad()
    def swap(self, batches):
        """batches: one (B, dim) tensor per view -> the queue before them (one (length, dim) per view)."""
        old = self.bank = self.bank.to(batches[0].device, non_blocking=True)
        new = torch.stack([torch.cat([b.detach().to(old.dtype), q])[:old.shape[1]] for b, q in zip(batches, old)])
        self.bank = new
        return list(old)

    def state_dict(self) -> dict:
        return {"bank": self.bank.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.bank = state["bank"].clone()


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
        self.queue = ProjectionQueue(2, cfg.queue_length, cfg.proj_dim) if cfg.queue_length else None

    def rank_state(self) -> dict:
        """Per-rank state the engine checkpoints for each rank: this rank's queue."""
        return {"swav_queue": self.queue} if self.queue is not None else {}

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
            if self.queue is not None:
                banks = self.queue.swap(z_high)  # the queue before this batch; this batch goes in
                if step >= self.cfg.queue_start_step:
                    with torch.no_grad():
                        queue = [self.scores(b.to(t.dtype), step) for b, t in zip(banks, z_high)]
            loss = self.criterion(high, low, queue).squeeze()
        return loss, {}
