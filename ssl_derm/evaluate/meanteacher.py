"""Mean teacher (Tarvainen & Valpola 2017): a teacher whose weights are an EMA of the student's
gives targets on weakly augmented unlabeled images; the student, seeing strong views, is pulled
towards them with a squared error between class probabilities, ramped up over the first steps.
The teacher (timm's ModelEmaV3) is the model that is selected on val and scored on test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3

from ssl_derm.errors import ConfigError
from ssl_derm.evaluate.config import Balanced, LinearProbe, ProtocolSettings, SemiSupervised, Trained
from ssl_derm.models.features import rows_to_batch
from ssl_derm.evaluate.fixmatch import run_semi_supervised, unlabeled_rows
from ssl_derm.engine import Hook
from ssl_derm.evaluate.train import ClassifierTrainer, IndexStream, rank_seed
from ssl_derm.registry import register


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over images of sum_k (softmax(student) - softmax(teacher))^2; (U, K) inputs, no grad to the teacher."""
    return (student_logits.float().softmax(1) - teacher_logits.detach().float().softmax(1)).pow(2).sum(1).mean()


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2) for t = step / length (Laine & Aila); 1 when ``length`` is 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class TeacherUpdate(Hook):
    """EMA update of the teacher after each optimiser step; the teacher is saved in checkpoints."""

    name = "teacher"

    def __init__(self, ema: ModelEmaV3, model: torch.nn.Module):
        self.ema, self.model = ema, model

    def after_step(self, engine, done: int) -> None:
        self.ema.update(self.model, step=done - 1)

    def state_dict(self) -> dict:
        return {"teacher": self.ema.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state["teacher"])


class MeanTeacherTrainer(ClassifierTrainer):
    def __init__(self, ctx):
        super().__init__(ctx)
        rows, self.note = unlabeled_rows(ctx)
        self.unlabeled = IndexStream(rows, rank_seed(ctx.cfg.seed + 1))
        # warm-up of the decay: early on the teacher follows the student closely, so a short run's
        # teacher is not dominated by the random initial weights
        self.teacher = ModelEmaV3(self.model, decay=ctx.cfg.protocol.ema, use_warmup=True)

    def loss(self, step: int):
        p = self.cfg.protocol
        xl, y = self.labelled_batch()
        urows = self.unlabeled.take(p.mu * len(y))
        xu = rows_to_batch(self.ctx.dataset.images, urows, self.device)
        weak, strong = self.views(torch.cat([xl, xu]))[:2]
        weak_u, strong_u = weak[len(y):], strong[len(y):]
        logits = self.net(torch.cat([weak[:len(y)], strong_u]))
        with torch.no_grad():
            teacher_u = self.teacher.module(weak_u)
        loss_x = self.supervised_loss(logits[:len(y)], y)
        loss_u = consistency_loss(logits[len(y):], teacher_u)
        w = p.lambda_u * sigmoid_rampup(step, p.rampup_steps)
        return loss_x + w * loss_u, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "consistency_weight": w,
                                     "batch_size": len(y) + len(xu)}

    def hooks(self) -> list:
        return [TeacherUpdate(self.teacher, self.model)]

    def rank_state(self) -> dict:
        return {**super().rank_state(), "unlabeled": self.unlabeled}

    def eval_model(self) -> torch.nn.Module:
        return self.teacher.module

    def after_fit(self) -> None:
        # the selected teacher is the trained classifier: ctx.encoder.model holds it for export
        self.model.load_state_dict(self.teacher.module.state_dict())


@dataclass
class MeanTeacherSettings(SemiSupervised, Trained, Balanced, LinearProbe, ProtocolSettings):
    name: str = "meanteacher"
    ema: float = 0.999  # EMA decay of the teacher
    rampup_steps: int = 0  # sigmoid ramp-up of lambda_u over these steps

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"config key 'protocol.ema': must be in [0, 1), got {self.ema}")



@register("protocol", "meanteacher", settings=MeanTeacherSettings)
def run_meanteacher(ctx) -> dict:
    return run_semi_supervised(MeanTeacherTrainer(ctx))  # exports the teacher
