"""Linear probe: scikit-learn logistic regression on standardised frozen features.

The regularisation strength C is picked on the val side by balanced accuracy; the test side is scored
once, with the picked C. As in MoCo v3's ``sanity_check``, the probe asserts afterwards that the
encoder's weights did not change: a frozen-feature protocol that moved them would be a silent bug.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssl_derm.errors import SplitError
from ssl_derm.evaluate.config import Balanced, FrozenFeatures, LinearProbe, ProtocolSettings
from ssl_derm.metrics.classification import classification_metrics
from ssl_derm.models.trained import FeatureProbe
from ssl_derm.registry import register


class EncoderChangedError(RuntimeError):
    """The frozen encoder's weights changed during a frozen-feature protocol."""


def snapshot(module: torch.nn.Module) -> dict:
    """A detached CPU copy of the state dict (parameters and buffers, e.g. BatchNorm statistics)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_unchanged(before: dict, module: torch.nn.Module) -> None:
    """Raise :class:`EncoderChangedError` naming the first tensors that differ from ``before``."""
    after = module.state_dict()
    changed = [k for k, v in before.items() if k not in after or not torch.equal(v, after[k].detach().cpu())]
    if changed or set(after) != set(before):
        raise EncoderChangedError(f"the frozen encoder changed during the linear probe ({len(changed)} tensors, "
                                  f"first: {changed[:3]}); frozen features must come from eval mode without updates")


def fit_linear(x_train: np.ndarray, y_train: np.ndarray, C: float, balanced: bool, max_iter: int, seed: int,
               sample_weight: Optional[np.ndarray] = None):
    """Standardise (fit on the training features only) and fit a multinomial logistic regression."""
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced" if balanced else None, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped lbfgs is still a valid probe
        clf.fit(scaler.transform(x_train), y_train, sample_weight=sample_weight)
    return scaler, clf


def select_by_val(Cs, fit: Callable, x_val: Optional[np.ndarray], y_val, n_classes: int, classes) -> tuple:
    """(C, {C: val balanced accuracy}, fitted model) of the C in ``Cs`` with the best val balanced
    accuracy; ``fit(C)`` returns (scaler, clf). Without val images the first C is kept."""
    search, best = {}, None
    for C in Cs:
        model = fit(C)
        if x_val is None or len(x_val) == 0:
            return C, search, model
        score = classification_metrics(y_val, predict_probs(*model, x_val, n_classes), classes)["balanced_accuracy"]
        search[str(C)] = score
        if best is None or score > search[str(best[0])]:
            best = (C, model)
    return best[0], search, best[1]


def predict_probs(scaler, clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities; classes missing from the labelled set get probability 0."""
    out = np.zeros((len(x), n_classes))
    if len(x):
        out[:, clf.classes_] = clf.predict_proba(scaler.transform(x))
    return out


def fit_probe(ctx, feats: dict) -> tuple:
    """(C, {C: val balanced accuracy}, scaler, clf): the class-balanced (unless ``protocol.balance`` is
    none) logistic regression on the labelled side's frozen features, C picked on the val side."""
    p = ctx.cfg.protocol
    y_lab = ctx.labels("labelled")
    if len(np.unique(y_lab)) < 2:
        raise SplitError(f"the linear probe needs labelled images of at least two classes; split.fraction="
                         f"{ctx.cfg.split.fraction} gives {len(y_lab)} image(s) of {len(np.unique(y_lab))} class(es)")
    C, search, (scaler, clf) = select_by_val(
        p.linear_C, lambda C: fit_linear(feats["labelled"], y_lab, C, p.balance != "none", p.linear_max_iter, ctx.cfg.seed),
        feats.get("val"), ctx.labels("val"), ctx.n_classes, ctx.dataset.classes)
    return C, search, scaler, clf


def probe_as_linear_layer(scaler, clf, n_classes: int) -> tuple:
    """(weight (K, D), bias (K,)) float32 arrays of one linear layer on raw features that gives the
    probe's logits: standardisation folded into the weights. Classes the probe never saw get zero
    weights and a bias well below the others, so they keep probability ~0 as in :func:`predict_probs`."""
    coef, icpt = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: logits (-z/2, z/2) give the same softmax
        coef, icpt = np.stack([-coef[0], coef[0]]) / 2, np.array([-icpt[0], icpt[0]]) / 2
    w_seen = coef / scaler.scale_
    b_seen = icpt - w_seen @ scaler.mean_
    weight = np.zeros((n_classes, w_seen.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, b_seen.min() - 20.0, dtype=np.float32)
    weight[clf.classes_], bias[clf.classes_] = w_seen, b_seen
    return weight, bias


@dataclass
class LinearSettings(Balanced, FrozenFeatures, LinearProbe, ProtocolSettings):
    name: str = "linear"



@register("protocol", "linear", settings=LinearSettings)
def run_linear(ctx) -> dict:
    before = snapshot(ctx.encoder)
    feats = {side: ctx.features(side, l2=False).numpy() for side in ("labelled", *ctx.scored)}
    C, search, scaler, clf = fit_probe(ctx, feats)
    probs = {side: predict_probs(scaler, clf, feats[side], ctx.n_classes) for side in ctx.scored if len(feats[side])}
    assert_unchanged(before, ctx.encoder)
    ctx.trained = FeatureProbe(scaler, clf)
    return {"probs": probs, "info": {"C": C, "val_balanced_accuracy_by_C": search,
                                     "balanced_class_weight": ctx.cfg.protocol.balance != "none"}}
