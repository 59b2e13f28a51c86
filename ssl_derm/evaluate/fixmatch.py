"""FixMatch (Sohn et al. 2020): the weak view of an unlabeled image gives a pseudo-label when the
model is confident enough; the strong view of the same image is trained towards it.

Each step takes B labelled and ``mu * B`` unlabeled images (the unlabeled rest of the training side
and any images without a label); the three groups go through the model in one batch so BatchNorm
sees them together, as in the paper.

``protocol.threshold_mode=freematch`` replaces the fixed threshold by FreeMatch's self-adaptive ones
(Wang et al., ICLR 2023): a global threshold that tracks the model's mean confidence on the unlabeled
images (starting at 1/K, so early pseudo-labels are used rather than wasted), scaled per class by how
much probability mass the model gives that class. FreeMatch's fairness regulariser is not included.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.errors import ConfigError
from ssl_derm.evaluate.config import Balanced, LinearProbe, ProtocolSettings, SemiSupervised, Trained
from ssl_derm.models.features import rows_to_batch, to_device
from ssl_derm.evaluate.train import ClassifierTrainer, IndexStream, rank_seed
from ssl_derm.models.trained import TimmClassifier
from ssl_derm.registry import register

THRESHOLD_MODES = ("fixed", "freematch")


def fixmatch_unlabeled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold):
    """Masked pseudo-label cross-entropy.

    logits_weak, logits_strong: (U, K) for the same U unlabeled images; ``threshold``: a float, or a (K,)
    tensor of per-class thresholds (indexed by the pseudo-label). Returns (loss, mask): mask (U,) is 1.0
    where max softmax(weak) >= the threshold; the loss averages CE(strong, argmax weak) * mask over all U
    images (the paper's normalisation, so few confident images give a small loss). No gradient flows
    through the weak view.
    """
    probs = logits_weak.detach().float().softmax(1)
    conf, pseudo = probs.max(1)
    if torch.is_tensor(threshold):
        threshold = threshold.to(conf.device)[pseudo]
    mask = (conf >= threshold).float()
    ce = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (ce * mask).mean(), mask


class SelfAdaptiveThreshold:
    """FreeMatch's self-adaptive thresholds (SAT) over K classes.

    ``update(probs)`` with the weak views' softmax (U, K) moves, by EMA with ``momentum``, the global
    confidence tau (mean of the max probability; starts at 1/K) and the class marginals p (K,) (mean
    probability per class; start at 1/K). ``thresholds()`` -> (K,): tau * p / max(p), so a class the model
    rarely predicts gets a lower bar than the one it favours.
    """

    def __init__(self, n_classes: int, momentum: float, device=None):
        self.momentum = momentum
        self.tau = torch.tensor(1.0 / n_classes, device=device)
        self.p = torch.full((n_classes,), 1.0 / n_classes, device=device)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        m, probs = self.momentum, probs.detach().float()
        self.tau = m * self.tau + (1 - m) * probs.max(1).values.mean()
        self.p = m * self.p + (1 - m) * probs.mean(0)

    def thresholds(self) -> torch.Tensor:
        return self.tau * self.p / self.p.max()

    def state_dict(self) -> dict:
        return {"tau": self.tau.cpu(), "p": self.p.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.tau, self.p = state["tau"].to(self.tau.device), state["p"].to(self.p.device)


class MaskRate:
    """Running sum of the per-step share of unlabeled images above the threshold, kept on the device
    (reading it each step would make the host wait for the GPU)."""

    def __init__(self, device):
        self.sum = torch.zeros((), device=device)
        self.last = torch.zeros((), device=device)
        self.n = 0

    def add(self, rate: torch.Tensor) -> None:
        self.sum, self.last, self.n = self.sum + rate.detach().float(), rate.detach().float(), self.n + 1

    def state_dict(self) -> dict:
        return {"sum": self.sum.cpu(), "last": self.last.cpu(), "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        dev = self.sum.device
        self.sum, self.last, self.n = state["sum"].to(dev), state["last"].to(dev), int(state["n"])


def unlabeled_rows(ctx) -> tuple:
    """(rows, note): the unlabeled side, or the labelled images themselves when nothing is left
    (100% of the labels and no extra unlabeled images); FixMatch then only adds consistency."""
    rows = ctx.rows["unlabeled"]
    if len(rows):
        return rows, ""
    return ctx.rows["labelled"], "no unlabeled images: the labelled images (labels hidden) serve as the unlabeled set"


def run_semi_supervised(trainer) -> dict:
    """Run a trainer that draws unlabeled images (``trainer.unlabeled``, ``trainer.note``): its result dict,
    with the model it scored set for export and how many unlabeled images it drew from."""
    out = trainer.run()
    trainer.ctx.trained = TimmClassifier(trainer.eval_model())
    out["info"]["n_unlabeled"] = int(len(np.unique(trainer.unlabeled.rows)))
    if trainer.note:
        out["info"]["note"] = trainer.note
    return out


class FixMatchTrainer(ClassifierTrainer):
    def __init__(self, ctx):
        super().__init__(ctx)
        rows, self.note = unlabeled_rows(ctx)
        self.unlabeled = IndexStream(rows, rank_seed(ctx.cfg.seed + 1))
        self.mask_rate = MaskRate(self.device)
        p = ctx.cfg.protocol
        self.sat = (SelfAdaptiveThreshold(ctx.n_classes, p.threshold_momentum, self.device)
                    if p.threshold_mode == "freematch" else None)

    def rank_state(self) -> dict:
        state = {**super().rank_state(), "unlabeled": self.unlabeled, "mask_rate": self.mask_rate}
        return {**state, "sat": self.sat} if self.sat is not None else state

    def loss(self, step: int):
        p = self.cfg.protocol
        xl, y = self.labelled_batch()
        urows = self.unlabeled.take(p.mu * len(y))
        xu = rows_to_batch(self.ctx.dataset.images, urows, self.device)
        weak, strong = self.views(torch.cat([xl, xu]))[:2]  # one augmentation call for both groups
        logits = self.net(torch.cat([weak, strong[len(y):]]))  # [labelled weak | unlabeled weak | unlabeled strong]
        lx, lw, ls = logits[:len(y)], logits[len(y):len(y) + len(urows)], logits[len(y) + len(urows):]
        loss_x = self.supervised_loss(lx, y)
        threshold = p.threshold
        if self.sat is not None:  # FreeMatch updates its estimates with this batch, then masks it
            self.sat.update(lw.softmax(1))
            threshold = self.sat.thresholds()
        loss_u, mask = fixmatch_unlabeled_loss(lw, ls, threshold)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.mean(),
                "batch_size": len(y) + len(urows)}
        if self.sat is not None:
            logs["threshold_global"] = self.sat.tau
        self.mask_rate.add(mask.mean())
        # pseudo-label quality, for monitoring only (never trained on): NaN when no labelled-known image
        # passed; computed on the device, without a host sync
        true = to_device(torch.from_numpy(self.labels[urows]), self.device)
        sel = ((mask > 0) & (true >= 0)).float()
        hits = ((lw.argmax(1) == true).float() * sel).sum()
        logs["pseudo_label_acc"] = torch.where(sel.sum() > 0, hits / sel.sum().clamp_min(1), torch.nan)
        return loss_x + p.lambda_u * loss_u, logs


@dataclass
class FixMatchSettings(SemiSupervised, Trained, Balanced, LinearProbe, ProtocolSettings):
    name: str = "fixmatch"
    threshold: float = 0.95  # pseudo-labels only where the weak view's confidence reaches this
    # fixed: `threshold` throughout | freematch: FreeMatch's self-adaptive thresholds (Wang et al. 2023), from
    # 1/K up to the model's own EMA confidence, scaled per class; short budgets and few labels, where a fixed
    # 0.95 is rarely reached and the unlabeled images go unused
    threshold_mode: str = "fixed"
    threshold_momentum: float = 0.999  # freematch: EMA momentum of the confidence estimates (per step)

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"config key 'protocol.threshold': must be in [0, 1], got {self.threshold}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ConfigError(f"config key 'protocol.threshold_mode': must be one of {', '.join(THRESHOLD_MODES)}, "
                              f"got '{self.threshold_mode}'")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise ConfigError(f"config key 'protocol.threshold_momentum': must be in [0, 1), got {self.threshold_momentum}")



@register("protocol", "fixmatch", settings=FixMatchSettings)
def run_fixmatch(ctx) -> dict:
    trainer = FixMatchTrainer(ctx)
    out = run_semi_supervised(trainer)
    # how much the unlabeled term took part: 0 means no pseudo-label ever passed the threshold
    rate = trainer.mask_rate
    out["info"]["mean_mask_rate"] = float(rate.sum) / rate.n if rate.n else 0.0
    out["info"]["last_mask_rate"] = float(rate.last) if rate.n else 0.0
    if trainer.sat is not None:
        out["info"]["final_thresholds"] = dict(zip(ctx.dataset.classes, trainer.sat.thresholds().tolist()))
    return out
