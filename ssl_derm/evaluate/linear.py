"""Linear probe: scikit-learn logistic regression on standardised frozen features.

The regularisation strength C is picked on the val side by balanced accuracy; the test side is scored
once, with the picked C. As in MoCo v3's ``sanity_check``, the probe asserts afterwards that the
encoder's weights did not change: a frozen-feature protocol that moved them would be a silent bug.
"""
from __future__ import annotations

import warnings

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


def fit_linear(x_train: np.ndarray, y_train: np.ndarray, C: float, balanced: bool, max_iter: int, seed: int):
    """Standardise (fit on the labelled features only) and fit a multinomial logistic regression."""
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced" if balanced else None, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped lbfgs is still a valid probe
        clf.fit(scaler.transform(x_train), y_train)
    return scaler, clf


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
    search = {}
    best = None
    for C in p.linear_C:
        scaler, clf = fit_linear(feats["labelled"], y_lab, C, balanced, p.linear_max_iter, ctx.cfg.seed)
        if len(feats["val"]) == 0:  # nothing to select on: keep the first C
            best = (C, scaler, clf)
            break
        score = classification_metrics(ctx.labels("val"), predict_probs(scaler, clf, feats["val"], k),
                                       ctx.dataset.classes)["balanced_accuracy"]
        search[str(C)] = score
        if best is None or score > search[str(best[0])]:
            best = (C, scaler, clf)
    C, scaler, clf = best
    probs = {side: predict_probs(scaler, clf, feats[side], k) for side in ("val", "test") if len(feats[side])}
    assert_unchanged(before, ctx.encoder)
    return {"probs": probs, "info": {"C": C, "val_balanced_accuracy_by_C": search, "balanced_class_weight": balanced}}
