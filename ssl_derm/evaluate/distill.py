"""Self-distillation on the unlabeled images (SimCLRv2's third step; Chen et al., "Big Self-Supervised
Models are Strong Semi-Supervised Learners", NeurIPS 2020).

Two phases in one run, each on the engine with its own checkpoints (``checkpoints/teacher``,
``checkpoints/student``), so a killed run resumes in either:

1. the **teacher**: plain finetuning (as protocol ``finetune``) for ``protocol.teacher_steps``, best
   state on val; or, with ``teacher_steps: 0`` and ``head_init: linear_probe``, the class-balanced linear
   probe on the frozen features (the start itself);
2. the **student**: the same network restarted from the same initial weights (the encoder the run was
   given, pretrained or random, and the same head), trained for ``train.max_steps`` on the labelled
   images (class-weighted cross-entropy) plus ``protocol.mu`` unlabeled images per labelled one, pulled
   towards the teacher's class probabilities: ``lambda_u * T^2 * KL(teacher_T || student_T)``. The
   teacher's probabilities are computed once on the un-augmented images (as Noisy Student does); the
   student sees weak views. Model selection on val, as for every trained protocol.

``metrics.json`` keeps the teacher's val and test scores too (``info.teacher``), so one run gives the
finetuned and the distilled figure on the same labelled subset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.engine.hooks import snapshot
from ssl_derm.errors import ConfigError
from ssl_derm.evaluate.config import Balanced, LinearProbe, ProtocolSettings, SemiSupervised, Trained
from ssl_derm.models.features import rows_to_batch, to_device
from ssl_derm.evaluate.fixmatch import run_semi_supervised, unlabeled_rows
from ssl_derm.metrics.classification import classification_metrics
from ssl_derm.evaluate.train import ClassifierTrainer, IndexStream, rank_seed
from ssl_derm.registry import register


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): p^(1/T), renormalised (T = 1 leaves ``probs`` as they are)."""
    logp = np.log(np.clip(probs, 1e-12, None)) / temperature
    logp -= logp.max(1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over images of KL(teacher || softmax(student / T)); ``teacher_probs`` are already at T."""
    logq = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(logq, teacher_probs.float(), reduction="batchmean") * temperature ** 2


class DistillTrainer(ClassifierTrainer):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.start_state = snapshot(self.model)  # what the student restarts from
        rows, self.note = unlabeled_rows(ctx)
        self.unlabeled = IndexStream(rows, rank_seed(ctx.cfg.seed + 1))
        self.targets = None  # (N, K) teacher probabilities at T, indexed by cache row, on the device

    def loss(self, step: int):
        if self.targets is None:  # the teacher phase: plain finetuning
            return super().loss(step)
        p = self.cfg.protocol
        xl, y = self.labelled_batch()
        urows = self.unlabeled.take(p.mu * len(y))
        xu = rows_to_batch(self.ctx.dataset.images, urows, self.device)
        logits = self.net(self.views(torch.cat([xl, xu]))[0])
        loss_x = self.supervised_loss(logits[:len(y)], y)
        loss_u = distillation_loss(logits[len(y):], self.targets[to_device(torch.from_numpy(urows), self.device)],
                                   p.temperature)
        return loss_x + p.lambda_u * loss_u, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                                              "batch_size": len(y) + len(xu)}

    def rank_state(self) -> dict:
        return {**super().rank_state(), "unlabeled": self.unlabeled}

    def fit(self) -> dict:
        """The teacher phase (or the probe as it starts), its probabilities, then the student from the start."""
        p, ctx = self.cfg.protocol, self.ctx
        if p.teacher_steps:
            teacher = super().fit(dataclasses.replace(self.cfg.train, max_steps=p.teacher_steps), phase="teacher")
        else:  # the linear probe in the head (head_init=linear_probe) is the teacher, as it starts
            teacher = {"best_step": 0, "val_history": []}
        probs = self.predict(np.arange(len(ctx.dataset.labels)))
        scores = {side: classification_metrics(ctx.labels(side), probs[ctx.rows[side]], ctx.dataset.classes)["balanced_accuracy"]
                  for side in ctx.scored if len(ctx.rows[side])}
        teacher_info = {"best_step": teacher["best_step"], "steps": p.teacher_steps,
                             "val_history": teacher["val_history"],
                             **{f"{side}_balanced_accuracy": v for side, v in scores.items()}}
        self.targets = to_device(torch.from_numpy(soften(probs, p.temperature)), self.device)
        self.model.load_state_dict(self.start_state)
        student = super().fit(phase="student")
        return {**student, "teacher": teacher_info}


@dataclass
class DistillSettings(SemiSupervised, Trained, Balanced, LinearProbe, ProtocolSettings):
    name: str = "distill"
    # finetuning steps of the teacher (train.max_steps is the student's); 0 with head_init=linear_probe: the
    # linear probe on the frozen features is the teacher
    teacher_steps: int = 1000
    temperature: float = 1.0  # of the teacher's and the student's softmax in the distillation term

    def check(self) -> None:
        super().check()
        if self.teacher_steps < 0:
            raise ConfigError(f"config key 'protocol.teacher_steps': must be >= 0, got {self.teacher_steps}")
        if self.teacher_steps == 0 and self.head_init != "linear_probe":
            raise ConfigError("config key 'protocol.teacher_steps': 0 makes the untrained start the teacher, which "
                              "only means something with protocol.head_init=linear_probe (the linear probe as "
                              "the teacher); give a number of finetuning steps or set head_init")
        if not self.temperature > 0:
            raise ConfigError(f"config key 'protocol.temperature': must be > 0, got {self.temperature}")


@register("protocol", "distill", settings=DistillSettings)
def run_distill(ctx) -> dict:
    return run_semi_supervised(DistillTrainer(ctx))  # exports the student
