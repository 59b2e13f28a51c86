"""Supervised finetuning on the engine, and the base that FixMatch and mean teacher extend.

The encoder's timm model gets a K-way head (``reset_classifier``), so timm's optimiser factory can
apply layer-wise LR decay through the model's own ``group_matcher``. The engine
(:class:`ssl_derm.engine.Engine`) runs the steps; a :class:`~ssl_derm.engine.BestState` hook scores
the val side every ``protocol.eval_every`` steps and keeps the best state (val balanced accuracy);
the test side is only predicted after training, with that state. Subclasses override :meth:`loss`
(and, for a teacher, :meth:`eval_model` and :meth:`hooks`): one level of base class.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.engine import BestState, Engine
from ssl_derm.engine import distributed as D
from ssl_derm.engine.precision import Precision, resolve_precision
from ssl_derm.errors import ConfigError, SplitError
from ssl_derm.models.features import rows_to_batch, to_device
from ssl_derm.evaluate.knn import inverse_frequency
from ssl_derm.evaluate.linear import fit_probe, probe_as_linear_layer
from ssl_derm.metrics.classification import classification_metrics


class IndexStream:
    """Endless seeded draws of cache rows: epochs of permutations, or, with ``probs``, draws with
    replacement (class-balanced sampling)."""

    def __init__(self, rows: np.ndarray, seed: int, probs: Optional[np.ndarray] = None):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.probs = probs
        self.rng = np.random.default_rng(seed)
        self._buf = np.zeros(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        if self.probs is not None:
            return self.rng.choice(self.rows, size=n, replace=True, p=self.probs)
        while len(self._buf) < n:
            self._buf = np.concatenate([self._buf, self.rng.permutation(self.rows)])
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def state_dict(self) -> dict:
        """The generator and the unread rest of the epoch: a resumed run draws the same rows."""
        return {"rng": self.rng.bit_generator.state, "buf": torch.from_numpy(self._buf.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._buf = state["buf"].numpy().astype(np.int64)


def rank_seed(seed: int) -> int:
    """Each DDP rank draws its own batches (rank 0 keeps the single-process seed)."""
    return seed + 1000 * D.rank()


class ClassifierTrainer:
    """Plain supervised finetuning on the labelled side (weak views), with model selection on val."""

    def __init__(self, ctx):
        from ssl_derm.augment import build_preset

        self.ctx, self.cfg, self.device = ctx, ctx.cfg, ctx.device
        p, t = ctx.cfg.protocol, ctx.cfg.train
        lab = ctx.rows["labelled"]
        if len(lab) == 0:
            raise SplitError(f"split.fraction={ctx.cfg.split.fraction} leaves no labelled training image")
        self.labels = np.asarray(ctx.dataset.labels, dtype=np.int64)
        self.model = ctx.encoder.model
        self.model.reset_classifier(ctx.n_classes)
        self.head_info = self.init_head_from_probe() if p.head_init == "linear_probe" else {}
        self.model.to(self.device).train()
        self.net = self.model  # what loss() calls: the DDP-wrapped model while the engine runs
        self.views = build_preset(ctx.cfg.augment.preset or "weak_strong", ctx.cfg.augment, ctx.image_size).to(self.device)
        w = inverse_frequency(self.labels[lab], ctx.n_classes)
        self.class_weights = torch.tensor(w, dtype=torch.float32, device=self.device) if p.balance == "weighted_loss" else None
        probs = w[self.labels[lab]] / w[self.labels[lab]].sum() if p.balance == "balanced_sampler" else None
        self.labelled = IndexStream(lab, rank_seed(ctx.cfg.seed), probs)
        self.precision = Precision(resolve_precision(t, self.device), self.device)  # for predict()
        self.history = []
        self.best: Optional[BestState] = None

    def init_head_from_probe(self) -> dict:
        """LP-FT: fit the linear probe on the encoder's frozen features (before any update) and copy it
        into the classifier head; returns the probe's C and val scores for metrics.json."""
        # the head sees one view's pooled output, so the probe does too, whatever protocol.feature_* say
        feats = {side: self.ctx.features(side, l2=False, stages=1, tta="none", pool="avg").numpy() for side in ("labelled", "val")}
        C, search, scaler, clf = fit_probe(self.ctx, feats)
        weight, bias = probe_as_linear_layer(scaler, clf, self.ctx.n_classes)
        head = self.model.get_classifier()
        if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != weight.shape:
            raise ConfigError(f"protocol.head_init=linear_probe needs a linear head on the pooled features; "
                              f"{self.ctx.encoder.name} has {type(head).__name__}; use protocol.head_init=random")
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        return {"head_init": "linear_probe", "probe_C": C, "probe_val_balanced_accuracy_by_C": search}

    # ------------------------------------------------------------------ batches and losses
    def labelled_batch(self):
        """(B, 3, S, S) uint8 and (B,) int64 labels on the device."""
        rows = self.labelled.take(self.cfg.train.batch_size)
        return rows_to_batch(self.ctx.dataset.images, rows, self.device), to_device(torch.from_numpy(self.labels[rows]), self.device)

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=self.class_weights,
                               label_smoothing=self.cfg.protocol.label_smoothing)

    def loss(self, step: int):
        """(scalar loss, logs) for one step; subclasses add an unlabeled term."""
        x, y = self.labelled_batch()
        logits = self.net(self.views(x)[0])
        loss = self.supervised_loss(logits, y)
        return loss, {"loss_x": loss.detach(), "batch_size": len(y)}

    def eval_model(self) -> torch.nn.Module:
        return self.model

    def hooks(self) -> list:
        """Hooks that run before validation after each step (a teacher's EMA update)."""
        return []

    def rank_state(self) -> dict:
        """Per-rank samplers and statistics saved in checkpoints."""
        return {"labelled": self.labelled}

    # ------------------------------------------------------------------ training
    def fit(self, train=None, phase: str = "") -> dict:
        """Train for ``train.max_steps`` (default ``cfg.train``). A protocol with several phases names
        each (its checkpoints under ``checkpoints/<phase>``, its logs under ``<phase>/``)."""
        t, p, ctx = train or self.cfg.train, self.cfg.protocol, self.ctx
        name, where = (f"{p.name} {phase}", f"{phase}/") if phase else (p.name, "")
        t0 = time.time()

        def report(done: int, score: float) -> None:
            if D.is_main():
                print(f"  [{name}] step {done}/{t.max_steps} val balanced_acc {score:.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)

        if len(ctx.rows["val"]):  # LP-FT: the probe itself is the step-0 candidate
            self.best = BestState(self.val_score, self.eval_model, p.eval_every, "val_balanced_accuracy",
                                  log=ctx.log, log_tag=f"val/{where}balanced_accuracy", at_start=bool(self.head_info),
                                  report=report)
        engine = Engine(self.model, t, self.device, hooks=self.hooks() + ([self.best] if self.best else []),
                        rank_state=self.rank_state(), config=self.cfg,
                        ckpt_dir=ctx.out_dir / "checkpoints" / phase if t.ckpt_every else None,
                        logger=ctx.logger if D.is_main() else None, name=name, log_prefix=f"train/{where}",
                        layer_decay=p.llrd if p.llrd < 1.0 else None, sync_batchnorm=True)

        def step_fn(module, step: int, micro: int):
            self.net = module
            return self.loss(step)

        try:
            summary = engine.fit(step_fn)
        finally:
            self.net = self.model
        best = self.best
        if best is not None:
            best.restore()
            self.history = best.history
        self.after_fit()
        return {"best_step": best.step if best else 0,
                "best_val_balanced_accuracy": None if best is None or best.state is None else best.best,
                "val_history": self.history, "steps": t.max_steps, "resumed_from_step": summary["resumed_from"],
                **self.head_info}

    def after_fit(self) -> None:
        """After the best state is back: subclasses copy a teacher into ``ctx.encoder.model``."""

    def val_score(self) -> float:
        probs = self.predict(self.ctx.rows["val"])
        return classification_metrics(self.ctx.labels("val"), probs, self.ctx.dataset.classes)["balanced_accuracy"]

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), K) softmax probabilities of the eval model on un-augmented (normalised) images."""
        from ssl_derm.augment import normalize

        model = self.eval_model()
        was = model.training
        model.eval()
        out = []
        bs = self.cfg.protocol.feature_batch_size
        for i in range(0, len(rows), bs):
            x = normalize(rows_to_batch(self.ctx.dataset.images, rows[i:i + bs], self.device), self.cfg.augment)
            with self.precision.autocast():
                out.append(model(x).float().softmax(1).cpu())
        model.train(was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.ctx.n_classes))

    def run(self) -> dict:
        """Train, then predict val and test with the selected state; the protocol's result dict."""
        info = self.fit()
        probs = {side: self.predict(self.ctx.rows[side]) for side in self.ctx.scored if len(self.ctx.rows[side])}
        return {"probs": probs, "info": info}
