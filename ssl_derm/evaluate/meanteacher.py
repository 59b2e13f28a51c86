"""Mean teacher (Tarvainen & Valpola 2017): a teacher whose weights are an EMA of the student's
gives targets on weakly augmented unlabeled images; the student, seeing strong views, is pulled
towards them with a squared error between class probabilities, ramped up over the first steps.
The teacher (timm's ModelEmaV3) is the model that is selected on val and scored on test.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from timm.utils import ModelEmaV3

from ssl_derm.evaluate.features import rows_to_batch
from ssl_derm.evaluate.fixmatch import unlabeled_rows
from ssl_derm.evaluate.train import ClassifierTrainer, IndexStream
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


class MeanTeacherTrainer(ClassifierTrainer):
    def __init__(self, ctx):
        super().__init__(ctx)
        rows, self.note = unlabeled_rows(ctx)
        self.unlabeled = IndexStream(rows, ctx.cfg.seed + 1)
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
        logits = self.model(torch.cat([weak[:len(y)], strong_u]))
        with torch.no_grad():
            teacher_u = self.teacher.module(weak_u)
        loss_x = self.supervised_loss(logits[:len(y)], y)
        loss_u = consistency_loss(logits[len(y):], teacher_u)
        w = p.lambda_u * sigmoid_rampup(step, p.rampup_steps)
        return loss_x + w * loss_u, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "consistency_weight": w}

    def on_step_end(self, step: int) -> None:
        self.teacher.update(self.model, step=step)

    def eval_model(self) -> torch.nn.Module:
        return self.teacher.module


@register("protocol", "meanteacher")
def run_meanteacher(ctx) -> dict:
    trainer = MeanTeacherTrainer(ctx)
    out = trainer.run()
    ctx.extras["export"] = {"model": trainer.eval_model()}  # the teacher it scored, for ssl_derm.serve.export
    out["info"]["n_unlabeled"] = int(len(np.unique(trainer.unlabeled.rows)))
    if trainer.note:
        out["info"]["note"] = trainer.note
    return out
