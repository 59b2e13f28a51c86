"""Online kNN monitor for pretraining: weighted kNN accuracy of the current encoder on a labelled
validation split, so a run shows whether its features are getting better while it trains.

The monitor's reference side is the split's ``train`` ids and its query side the ``val`` ids of the
foundation's split file, so no image is on both sides.
"""
from __future__ import annotations

import numpy as np
import torch

from ssl_derm.data.splits import Split
from ssl_derm.engine.hooks import Hook
from ssl_derm.models.features import extract_features
from ssl_derm.evaluate.knn import weighted_knn_predict


class KNNMonitor(Hook):
    """An engine hook: at step 0 and every ``monitor.every_steps`` steps, {"knn_top1", "knn_balanced_acc"}
    go to TensorBoard (``monitor/``) and ``history`` (saved in checkpoints)."""

    name = "knn_monitor"

    def __init__(self, encoder, dataset, split, cfg, aug_cfg, device, logger=None):
        """``split``: a :class:`~ssl_derm.data.splits.Split` of ``dataset`` (or its split dict)."""
        self.encoder, self.dataset, self.cfg, self.aug_cfg, self.device = encoder, dataset, cfg, aug_cfg, device
        self.logger = logger
        split = Split.of(split, dataset)
        rng = np.random.default_rng(0)
        ref, qry = split.side_rows("train"), split.side_rows("val")
        self.ref = rng.permutation(ref)[: cfg.max_images]
        self.qry = rng.permutation(qry)[: max(cfg.max_images // 4, 1)]
        self.history = []

    def on_start(self, engine) -> None:
        if engine.start == 0:
            self.evaluate(0)

    def after_step(self, engine, done: int) -> None:
        if done % self.cfg.every_steps == 0:
            self.evaluate(done)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])

    def evaluate(self, step: int) -> dict:
        labels = torch.as_tensor(self.dataset.labels)
        fr = extract_features(self.encoder, self.dataset.images, self.ref, self.aug_cfg, self.device)
        fq = extract_features(self.encoder, self.dataset.images, self.qry, self.aug_cfg, self.device)
        n_cls = len(self.dataset.classes)
        pred = weighted_knn_predict(fr, labels[self.ref], fq, n_cls, k=self.cfg.k, temperature=self.cfg.temperature)
        y = labels[self.qry]
        acc = float((pred == y).float().mean())
        recalls = [float((pred[y == c] == c).float().mean()) for c in range(n_cls) if (y == c).any()]
        res = {"knn_top1": acc, "knn_balanced_acc": float(np.mean(recalls))}
        self.history.append({"step": step, **res})
        if self.logger is not None:
            self.logger.scalars(res, step, prefix="monitor/")
        return res
