"""DINO: self-distillation from a momentum teacher over multi-crop views (lightly's head and loss).

The teacher sees the two global views, the student all views. lightly's DINOLoss centres the teacher
output and all-reduces the batch centre across ranks (``lightly.models.modules.center.center_mean``).
The teacher temperature warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
``warmup_teacher_temp_steps``; the teacher momentum follows the cosine schedule of the base class.
``method.koleo_weight`` > 0 adds DINOv2's KoLeo term (lightly's KoLeoLoss) on the student's pooled
features of each global view: it spreads the features of a batch apart (nearest-neighbour distance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import DINOLoss, KoLeoLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, Momentum, Projector, allow_any_input_size, fp32, make_teacher
from ssl_derm.registry import register


@dataclass
class DINOSettings(Projector, Momentum, MethodSettings):
    name: str = "dino"
    dino_out_dim: int = 4096  # width of the weight-normalised output layer (proj_dim is its bottleneck)
    teacher_temp: float = 0.04  # teacher softmax temperature after the warm-up
    warmup_teacher_temp: float = 0.04  # teacher temperature at step 0, raised linearly to teacher_temp
    warmup_teacher_temp_steps: int = 0  # steps of that warm-up (0 = none)
    student_temp: float = 0.1  # student softmax temperature
    center_momentum: float = 0.9  # EMA of the teacher-output centre (against collapse)
    koleo_weight: float = 0.0  # DINOv2's KoLeo regulariser on the student's global-view features; 0 = off

    def check(self) -> None:
        self.at_least(0, "koleo_weight")


def koleo_term(feats: torch.Tensor, n_views: int, weight: float, criterion: KoLeoLoss) -> torch.Tensor:
    """``weight`` x the mean over views of KoLeo within each view's batch; feats (V*B, D) view-major."""
    return weight * sum(criterion(f) for f in feats.float().chunk(n_views)) / n_views


def make_dino_head(cfg, in_dim: int) -> DINOProjectionHead:
    """proj_dim is the bottleneck before the weight-normalised output layer of dino_out_dim."""
    return DINOProjectionHead(in_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.dino_out_dim,
                              batch_norm=False, norm_last_layer=True)


def scheduled_teacher_temp(cfg, step: int) -> float:
    """Linear warm-up from warmup_teacher_temp to teacher_temp over warmup_teacher_temp_steps."""
    if step >= cfg.warmup_teacher_temp_steps:
        return cfg.teacher_temp
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / cfg.warmup_teacher_temp_steps


@register("method", "dino", settings=DINOSettings)
class DINO(Method):
    """views: [global0, global1, local0, ...]; globals (B,3,H,W), locals (B,3,h,w) of any one size."""

    default_preset = "multi_crop"
    sync_batchnorm_needed = False  # the head has no BN and the teacher's targets are centred

    def __init__(self, encoder, cfg, max_steps):
        allow_any_input_size(encoder)  # ViT local crops are smaller than the global ones
        super().__init__(encoder, cfg, max_steps)
        # proj_dim is the bottleneck before the weight-normalised output layer of dino_out_dim
        self.head = self.make_head()
        self.teacher_encoder = make_teacher(encoder)
        # weight-normed layers cannot be deep-copied: build a second head and copy the weights over
        self.teacher_head = self.make_head()
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=cfg.dino_out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                                  teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp,
                                  center_momentum=cfg.center_momentum)
        self.koleo = KoLeoLoss()

    def make_head(self) -> DINOProjectionHead:
        return make_dino_head(self.cfg, self.encoder.num_features)

    def teacher_temp(self, step: int) -> float:
        return scheduled_teacher_temp(self.cfg, step)

    def training_step(self, views, step):
        self.expect_views(views, 2, at_least=True)
        glob = torch.cat(views[:2])
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(glob)).float().chunk(2))
        feats = self.encoder(glob)  # (2B, D)
        student = list(self.head(feats).float().chunk(2))
        if len(views) > 2:
            student += list(self.head(self.encoder(torch.cat(views[2:]))).float().chunk(len(views) - 2))
        temp = self.teacher_temp(step)
        with fp32(glob.device):
            loss = self.criterion(teacher, student, teacher_temp=temp)
            logs = {"teacher_temp": temp, "momentum": self.momentum(step)}
            if self.cfg.koleo_weight > 0:
                loss = loss + koleo_term(feats, 2, self.cfg.koleo_weight, self.koleo)
        return loss, logs

    @torch.no_grad()
    def on_step_end(self, step):
        m = self.momentum(step)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.head, self.teacher_head, m)
