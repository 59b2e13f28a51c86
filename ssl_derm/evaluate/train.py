"""The supervised training loop that finetune, FixMatch and mean teacher share.

The encoder's timm model gets a K-way head (``reset_classifier``), so timm's optimiser factory can
apply layer-wise LR decay through the model's own ``group_matcher``. Every ``protocol.eval_every``
steps the val side is scored and the best state (val balanced accuracy) is kept; the test side is
only predicted after training, with that state. Subclasses override :meth:`loss` (and, for a
teacher, :meth:`eval_model` and :meth:`on_step_end`): one level of base class.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.engine.optim import build_optimizer, build_scheduler
from ssl_derm.evaluate.features import rows_to_batch
from ssl_derm.evaluate.knn import inverse_frequency
from ssl_derm.evaluate.linear import fit_probe, probe_as_linear_layer, snapshot
from ssl_derm.evaluate.metrics import classification_metrics


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


class ClassifierTrainer:
    """Plain supervised finetuning on the labelled side (weak views), with model selection on val."""

    def __init__(self, ctx):
        from ssl_derm.augment import build_preset

        self.ctx, self.cfg, self.device = ctx, ctx.cfg, ctx.device
        p, t = ctx.cfg.protocol, ctx.cfg.train
        lab = ctx.rows["labelled"]
        if len(lab) == 0:
            raise ValueError(f"split.fraction={ctx.cfg.split.fraction} leaves no labelled training image")
        self.labels = np.asarray(ctx.dataset.labels, dtype=np.int64)
        self.model = ctx.encoder.model
        self.model.reset_classifier(ctx.n_classes)
        self.head_info = self.init_head_from_probe() if p.head_init == "linear_probe" else {}
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, t, layer_decay=p.llrd if p.llrd < 1.0 else None)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.views = build_preset(ctx.cfg.augment.preset or "weak_strong", ctx.cfg.augment, ctx.image_size).to(self.device)
        w = inverse_frequency(self.labels[lab], ctx.n_classes)
        self.class_weights = torch.tensor(w, dtype=torch.float32, device=self.device) if p.balance == "weighted_loss" else None
        probs = w[self.labels[lab]] / w[self.labels[lab]].sum() if p.balance == "balanced_sampler" else None
        self.labelled = IndexStream(lab, ctx.cfg.seed, probs)
        self.amp = t.amp and self.device.type == "cuda"
        self.history = []

    def init_head_from_probe(self) -> dict:
        """LP-FT: fit the linear probe on the encoder's frozen features (before any update) and copy it
        into the classifier head; returns the probe's C and val scores for metrics.json."""
        # the head sees one view's pooled output, so the probe does too, whatever protocol.feature_* say
        feats = {side: self.ctx.features(side, l2=False, stages=1, tta="none").numpy() for side in ("labelled", "val")}
        C, search, scaler, clf = fit_probe(self.ctx, feats)
        weight, bias = probe_as_linear_layer(scaler, clf, self.ctx.n_classes)
        head = self.model.get_classifier()
        if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != weight.shape:
            raise ValueError(f"protocol.head_init=linear_probe needs a linear head on the pooled features; "
                             f"{self.ctx.encoder.name} has {type(head).__name__}; use protocol.head_init=random")
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        return {"head_init": "linear_probe", "probe_C": C, "probe_val_balanced_accuracy_by_C": search}

    # ------------------------------------------------------------------ batches and losses
    def labelled_batch(self):
        """(B, 3, S, S) uint8 and (B,) int64 labels on the device."""
        rows = self.labelled.take(self.cfg.train.batch_size)
        return rows_to_batch(self.ctx.dataset.images, rows, self.device), torch.from_numpy(self.labels[rows]).to(self.device)

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=self.class_weights,
                               label_smoothing=self.cfg.protocol.label_smoothing)

    def loss(self, step: int):
        """(scalar loss, logs) for one step; subclasses add an unlabeled term."""
        x, y = self.labelled_batch()
        logits = self.model(self.views(x)[0])
        loss = self.supervised_loss(logits, y)
        return loss, {"loss_x": loss.detach()}

    def eval_model(self) -> torch.nn.Module:
        return self.model

    def on_step_end(self, step: int) -> None:
        pass

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        t, p = self.cfg.train, self.cfg.protocol
        best = {"score": -math.inf, "state": None, "step": 0}
        t0 = time.time()
        if self.head_info and len(self.ctx.rows["val"]):  # LP-FT: the probe itself is the step-0 candidate
            self.select(0, best)
        for step in range(t.max_steps):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, logs = self.loss(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at step {step}; lower train.lr "
                                         f"(now {t.lr}) or raise train.warmup_steps")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
            self.optimizer.step()
            self.scheduler.step_update(step + 1)
            self.on_step_end(step)
            if step % max(t.log_every, 1) == 0 or step + 1 == t.max_steps:
                self.ctx.log("train/loss", float(loss.detach()), step)
                self.ctx.log("train/lr", self.optimizer.param_groups[-1]["lr"], step)
                for k, v in logs.items():
                    self.ctx.log(f"train/{k}", float(v), step)
            if len(self.ctx.rows["val"]) and ((step + 1) % p.eval_every == 0 or step + 1 == t.max_steps):
                score = self.select(step + 1, best)
                print(f"  [{p.name}] step {step + 1}/{t.max_steps} loss {float(loss.detach()):.4f} "
                      f"val balanced_acc {score:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if best["state"] is not None:
            self.eval_model().load_state_dict(best["state"])
        return {"best_step": best["step"], "best_val_balanced_accuracy": None if best["state"] is None else best["score"],
                "val_history": self.history, "steps": t.max_steps, **self.head_info}

    def select(self, step: int, best: dict) -> float:
        """Score the eval model on val at ``step``, log it, and keep a copy of its weights in ``best``
        when it beats ``best["score"]``; returns the score."""
        score = self.val_score()
        self.ctx.log("val/balanced_accuracy", score, step)
        self.history.append({"step": step, "val_balanced_accuracy": score})
        if score > best["score"]:
            best.update(score=score, step=step, state=snapshot(self.eval_model()))  # a copy, not an alias
        return score

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
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out.append(model(x).float().softmax(1).cpu())
        model.train(was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.ctx.n_classes))

    def run(self) -> dict:
        """Train, then predict val and test with the selected state; the protocol's result dict."""
        info = self.fit()
        probs = {side: self.predict(self.ctx.rows[side]) for side in self.ctx.scored if len(self.ctx.rows[side])}
        return {"probs": probs, "info": info}
