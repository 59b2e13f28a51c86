"""95% bootstrap intervals of one test set's scores, resampling images (whole lesions where ids exist).

One resample draws as many groups (lesions, or images without lesion ids) as the set has, with
replacement; an image counts as often as its group was drawn. Every resample is a weight vector
``w`` (N,), so the scores of all resamples come from a few matrix products instead of a Python loop:

- confusion matrices ``W @ onehot(true, pred)``: (B, K*K) -> balanced accuracy, accuracy, macro F1
  with the same class rules as :func:`ssl_derm.metrics.classification.classification_metrics`;
- AUROC per class as the weighted Mann-Whitney statistic (ties count one half), from the negatives'
  weight below each distinct score.

The interval is the percentile interval (2.5th and 97.5th percentiles) of the resampled scores; the
seed is fixed, so a run's intervals are reproducible. Segmentation intervals resample per-image scores.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

N_RESAMPLES = 1000
SEED = 0
CLS_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc")


def resample_weights(groups: Optional[Sequence], n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(B, n) float weights: how often each image is drawn when whole groups are drawn with replacement.

    ``groups``: (n,) group id per image (e.g. lesion ids) or None (every image its own group)."""
    if groups is None:
        gid, n_groups = np.arange(n), n
    else:
        _, gid = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        n_groups = int(gid.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))  # (B, G) drawn group indices
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_groups), draws.ravel()), 1.0)
    return counts[:, gid]  # (B, n)


def _weighted_auroc(w: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(B,) AUROC of ``score`` (n,) for the boolean ``pos`` (n,) under each weight row of ``w`` (B, n);
    NaN where a resample has no positive or no negative."""
    order = np.argsort(score, kind="stable")
    s_sorted = score[order]
    uniq, first, inv = np.unique(s_sorted, return_index=True, return_inverse=True)  # inv: (n,) in sorted order
    last = np.append(first[1:], len(s_sorted)) - 1
    cum = np.cumsum((w * ~pos)[:, order], axis=1)  # (B, n) negative weight up to each sorted position
    cum = np.concatenate([np.zeros((len(w), 1)), cum], axis=1)  # cum[:, j] = weight of the first j images
    below = cum[:, first]  # (B, U) negative weight strictly below each distinct score
    neg_w = cum[:, last + 1] - below  # (B, U) negative weight at each distinct score
    credit = np.empty_like(cum[:, 1:])  # (B, n) credit per image, in the original order
    credit[:, order] = (below + 0.5 * neg_w)[:, inv]  # ties count one half
    num = ((w * pos) * credit).sum(1)
    den = (w * pos).sum(1) * (w * ~pos).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def resampled_classification(y_true: np.ndarray, probs: np.ndarray, w: np.ndarray) -> Dict[str, np.ndarray]:
    """{metric: (B,) scores of each resample}; y_true (n,) int in [0, K), probs (n, K), w (B, n)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    k = probs.shape[1]
    y_pred = probs.argmax(1)
    pair = np.zeros((len(y_true), k * k))
    pair[np.arange(len(y_true)), y_true * k + y_pred] = 1.0
    cm = (w @ pair).reshape(-1, k, k)  # (B, K, K), rows = true
    support, predicted, tp = cm.sum(2), cm.sum(1), np.diagonal(cm, axis1=1, axis2=2)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    total = support.sum(1)
    used = present | (predicted > 0)  # macro F1 averages over classes present or predicted
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=used)
    out = {"balanced_accuracy": (recall * present).sum(1) / present.sum(1),
           "accuracy": tp.sum(1) / total,
           "macro_f1": (f1 * used).sum(1) / used.sum(1)}
    aucs = np.full((len(w), k), np.nan)
    for c in range(k):
        aucs[:, c] = _weighted_auroc(w, y_true == c, probs[:, c])
    none = np.isnan(aucs).all(1)  # a resample with a single class has no AUROC
    out["macro_auroc"] = np.full(len(w), np.nan)
    out["macro_auroc"][~none] = np.nanmean(aucs[~none], axis=1)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> Optional[list]:
    """[lo, hi] percentile interval of the finite values, or None when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    a = (1 - level) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def classification_cis(y_true, probs, groups=None, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """{"<metric>_ci": [lo, hi]} for balanced_accuracy, accuracy, macro_f1 and macro_auroc."""
    w = resample_weights(groups, len(y_true), n_resamples, seed)
    scores = resampled_classification(np.asarray(y_true), np.asarray(probs, dtype=np.float64), w)
    return {f"{m}_ci": percentile_ci(scores[m]) for m in CLS_METRICS}


def mean_cis(per_image: Dict[str, np.ndarray], groups=None, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """{"<metric>_ci": [lo, hi]} of the mean of per-image scores (e.g. jaccard, dice: each (n,))."""
    out = {}
    for name, vals in per_image.items():
        vals = np.asarray(vals, dtype=float)
        w = resample_weights(groups, len(vals), n_resamples, seed)
        out[f"{name}_ci"] = percentile_ci((w @ vals) / w.sum(1)) if len(vals) else None
    return out
