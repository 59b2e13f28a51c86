"""Semi-supervised learning on frozen features: label spreading, then a linear probe on the pseudo-labels.

1. scikit-learn's ``LabelSpreading`` (Zhou et al. 2004) on a kNN graph of the L2-normalised features
   of the training side: the labelled images keep their labels (softly, ``alpha``) and pass them on to
   the unlabeled ones through their neighbours.
2. Each unlabeled image takes the spread label's argmax as a pseudo-label, weighted by its confidence;
   with a class-balance mode the spread distributions are first divided by the labelled class
   frequencies, so the majority class does not swallow the rest through sheer numbers. Pseudo-labels
   below ``labelprop_threshold`` are dropped.
3. The linear probe (``ssl_derm.evaluate.linear``) is fitted on the labelled images (weight 1) plus
   the pseudo-labelled ones; C is picked on the val side by balanced accuracy, the test side is
   scored once. Val and test images never enter the graph.

It costs one feature extraction and a few logistic regressions: the CPU-cheap counterpart of FixMatch,
and a good way to tell whether a pretrained encoder's neighbourhoods carry the classes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.semi_supervised import LabelSpreading

from ssl_derm.errors import ConfigError, SplitError
from ssl_derm.evaluate.config import Balanced, FrozenFeatures, LinearProbe, ProtocolSettings
from ssl_derm.evaluate.knn import inverse_frequency
from ssl_derm.evaluate.linear import assert_unchanged, fit_linear, predict_probs, select_by_val, snapshot
from ssl_derm.models.trained import FeatureProbe
from ssl_derm.registry import register


def spread_labels(x_lab: np.ndarray, y_lab: np.ndarray, x_unl: np.ndarray, n_classes: int, k: int, alpha: float,
                  balanced: bool, max_iter: int = 100) -> tuple:
    """(pseudo-labels, confidences) of the unlabeled rows, from label spreading on a kNN graph.

    Features should be L2-normalised (the graph is built on Euclidean distances, which then rank like
    cosine similarity). Confidence is the spread distribution's top share after the optional class
    balancing; classes without a labelled image are never predicted.
    """
    if len(x_unl) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    x = np.concatenate([x_lab, x_unl]).astype(np.float32)
    y = np.concatenate([y_lab, np.full(len(x_unl), -1)]).astype(np.int64)
    model = LabelSpreading(kernel="knn", n_neighbors=min(k, len(x) - 1), alpha=alpha, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    dist = np.zeros((len(x_unl), n_classes))
    dist[:, model.classes_] = model.label_distributions_[len(x_lab):]
    if balanced:
        dist = dist * inverse_frequency(y_lab, n_classes)[None]
    total = dist.sum(1, keepdims=True)
    dist = np.divide(dist, total, out=np.full_like(dist, 1.0 / n_classes), where=total > 0)
    return dist.argmax(1).astype(np.int64), dist.max(1)


@dataclass
class LabelPropSettings(Balanced, FrozenFeatures, LinearProbe, ProtocolSettings):
    name: str = "labelprop"
    labelprop_k: int = 10  # neighbours of the kNN graph
    labelprop_alpha: float = 0.2  # how far spread labels may move off the given ones (sklearn LabelSpreading)
    labelprop_threshold: float = 0.0  # pseudo-labels with a lower confidence are dropped (each is weighted by it)

    def check(self) -> None:
        super().check()
        if self.labelprop_k < 1 or not 0.0 < self.labelprop_alpha < 1.0 or not 0.0 <= self.labelprop_threshold <= 1.0:
            raise ConfigError("config keys 'protocol.labelprop_k'/'labelprop_alpha'/'labelprop_threshold' need k >= 1, "
                              f"0 < alpha < 1 and 0 <= threshold <= 1, got {self.labelprop_k}/{self.labelprop_alpha}/"
                              f"{self.labelprop_threshold}")



@register("protocol", "labelprop", settings=LabelPropSettings)
def run_labelprop(ctx) -> dict:
    p = ctx.cfg.protocol
    before = snapshot(ctx.encoder)
    k_cls = ctx.n_classes
    y_lab = ctx.labels("labelled")
    if len(np.unique(y_lab)) < 2:
        raise SplitError(f"label spreading needs labelled images of at least two classes; split.fraction="
                         f"{ctx.cfg.split.fraction} gives {len(y_lab)} image(s) of {len(np.unique(y_lab))} class(es)")
    balanced = p.balance != "none"
    # one extraction per side: the graph takes the L2-normalised rows, the probe the raw ones
    raw = {side: ctx.features(side, l2=False) for side in ("labelled", "unlabeled", *ctx.scored)}
    unit = {side: torch.nn.functional.normalize(raw[side], dim=1).numpy() for side in ("labelled", "unlabeled")}
    feats = {side: f.numpy() for side, f in raw.items()}
    pseudo, conf = spread_labels(unit["labelled"], y_lab, unit["unlabeled"], k_cls, p.labelprop_k,
                                 p.labelprop_alpha, balanced)
    keep = conf >= p.labelprop_threshold
    x_train = np.concatenate([feats["labelled"], feats["unlabeled"][keep]])
    y_train = np.concatenate([y_lab, pseudo[keep]])
    weights = np.concatenate([np.ones(len(y_lab)), conf[keep]])
    C, search, (scaler, clf) = select_by_val(
        p.linear_C, lambda C: fit_linear(x_train, y_train, C, balanced, p.linear_max_iter, ctx.cfg.seed, weights),
        feats["val"], ctx.labels("val"), k_cls, ctx.dataset.classes)
    probs = {side: predict_probs(scaler, clf, feats[side], k_cls) for side in ctx.scored if len(feats[side])}
    assert_unchanged(before, ctx.encoder)
    ctx.trained = FeatureProbe(scaler, clf)
    n_unl = len(conf)
    info = {"C": C, "val_balanced_accuracy_by_C": search, "k": p.labelprop_k, "alpha": p.labelprop_alpha,
            "threshold": p.labelprop_threshold, "n_unlabeled": int(n_unl), "n_pseudo_labelled": int(keep.sum()),
            "mean_confidence": float(conf.mean()) if n_unl else None,
            "pseudo_label_counts": np.bincount(pseudo[keep], minlength=k_cls).tolist()}
    if n_unl:  # how good the pseudo-labels are where the truth is known (never used for training)
        truth = np.asarray(ctx.dataset.labels)[ctx.rows["unlabeled"]]
        known = truth >= 0
        if known.any():
            info["pseudo_label_accuracy"] = float((pseudo[known] == truth[known]).mean())
    ctx.log("labelprop/n_pseudo_labelled", int(keep.sum()), 0)
    return {"probs": probs, "info": info}
