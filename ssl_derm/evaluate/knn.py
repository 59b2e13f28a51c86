"""Weighted kNN on frozen features (DINO ``eval_knn``): cosine similarity to the labelled images,
each of the k nearest votes for its class with weight exp(similarity / T).

scikit-learn's KNeighborsClassifier has no exponential-similarity vote, so it is a few lines of torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ssl_derm.errors import ConfigError, SplitError
from ssl_derm.evaluate.config import Balanced, FrozenFeatures, ProtocolSettings
from ssl_derm.models.trained import KNNBank
from ssl_derm.registry import register


@torch.no_grad()
def weighted_knn_probs(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor,
                       n_classes: int, k: int = 20, temperature: float = 0.07,
                       class_weights: Optional[torch.Tensor] = None, chunk: int = 1024) -> torch.Tensor:
    """(Q, n_classes) vote shares of each query.

    train_feats: (N, D), train_labels: (N,) int in [0, n_classes), query_feats: (Q, D); features are
    L2-normalised here, so raw or normalised inputs both work. ``class_weights`` (n_classes,) scales
    each class's votes (inverse class frequency counters the majority class's many neighbours).
    """
    if len(train_feats) == 0:
        raise SplitError("weighted kNN needs at least one labelled training image")
    train = torch.nn.functional.normalize(train_feats.float(), dim=1)
    query = torch.nn.functional.normalize(query_feats.float(), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long, device=train.device)
    k = min(k, len(train))
    out = []
    for i in range(0, len(query), chunk):
        sim = query[i:i + chunk] @ train.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), n_classes, device=train.device)
        # subtracting the row max before exp keeps it finite; the shift cancels in the vote shares
        w = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes.scatter_add_(1, labels[top_idx], w)
        if class_weights is not None:
            votes = votes * class_weights.to(votes)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.zeros(0, n_classes)


def weighted_knn_predict(train_feats, train_labels, query_feats, n_classes: int, k: int = 20,
                         temperature: float = 0.07) -> torch.Tensor:
    """(Q,) predicted class of each query (argmax of :func:`weighted_knn_probs`)."""
    return weighted_knn_probs(train_feats, train_labels, query_feats, n_classes, k, temperature).argmax(1)


def inverse_frequency(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) weights n / (K * count_c); classes without samples get weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


@dataclass
class KNNSettings(Balanced, FrozenFeatures, ProtocolSettings):
    name: str = "knn"
    # weighted kNN (DINO eval_knn): cosine similarity, exp(sim / T) votes of the k nearest
    knn_k: int = 20
    knn_temperature: float = 0.07  # softmax temperature of the similarity weights

    def check(self) -> None:
        super().check()
        if self.knn_k < 1 or self.knn_temperature <= 0:
            raise ConfigError(f"config keys 'protocol.knn_k'/'protocol.knn_temperature' must be positive, "
                              f"got {self.knn_k}/{self.knn_temperature}")



@register("protocol", "knn", settings=KNNSettings)
def run_knn(ctx) -> dict:
    """Weighted kNN of val and test images against the labelled training images' frozen features."""
    p = ctx.cfg.protocol
    k_cls = ctx.n_classes
    feats = {side: ctx.features(side, l2=True) for side in ("labelled", *ctx.scored)}
    y_lab = torch.from_numpy(ctx.labels("labelled"))
    cw = None
    if p.balance != "none":  # both balance modes mean: do not let the majority class win by numbers
        cw = torch.from_numpy(inverse_frequency(y_lab.numpy(), k_cls)).float()
    probs = {side: weighted_knn_probs(feats["labelled"], y_lab, feats[side], k_cls, p.knn_k, p.knn_temperature, cw).numpy()
             for side in ctx.scored if len(feats[side])}
    ctx.trained = KNNBank(feats["labelled"], y_lab.numpy(), p.knn_k, p.knn_temperature, cw)
    return {"probs": probs, "info": {"k": min(p.knn_k, len(y_lab)), "temperature": p.knn_temperature}}
