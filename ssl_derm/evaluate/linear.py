"""Linear probe: scikit-learn logistic regression on standardised frozen features.

The regularisation strength C is picked on the val side by balanced accuracy; the test side is scored
once, with the picked C. As in MoCo v3's ``sanity_check``, the probe asserts afterwards that the
encoder's weights did not change: a frozen-feature protocol that moved them would be a silent bug.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssl_derm.evaluate.metrics import classification_metrics
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


@register("protocol", "linear")
def run_linear(ctx) -> dict:
    p = ctx.cfg.protocol
    before = snapshot(ctx.encoder)
    feats = {side: ctx.features(side, l2=False).numpy() for side in ("labelled", "val", "test")}
    y_lab = ctx.labels("labelled")
    if len(np.unique(y_lab)) < 2:
        raise ValueError(f"the linear probe needs labelled images of at least two classes; split.fraction="
                         f"{ctx.cfg.split.fraction} gives {len(y_lab)} image(s) of {len(np.unique(y_lab))} class(es)")
    balanced = p.balance != "none"
    k = ctx.n_classes
    C, search, (scaler, clf) = select_by_val(
        p.linear_C, lambda C: fit_linear(feats["labelled"], y_lab, C, balanced, p.linear_max_iter, ctx.cfg.seed),
        feats["val"], ctx.labels("val"), k, ctx.dataset.classes)
    probs = {side: predict_probs(scaler, clf, feats[side], k) for side in ("val", "test") if len(feats[side])}
    assert_unchanged(before, ctx.encoder)
    return {"probs": probs, "info": {"C": C, "val_balanced_accuracy_by_C": search, "balanced_class_weight": balanced}}
