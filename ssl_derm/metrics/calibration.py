"""Can the probabilities be trusted: calibration error, proper scores, temperature scaling, selective prediction.

- ``ece``: expected calibration error of the top-class confidence over ``N_BINS`` = 15 equal-width bins
  (Guo et al. 2017): sum over bins of (bin share) * |accuracy - mean confidence|; a bin (lo, hi] holds
  the confidences above lo up to hi (the first bin includes 0).
- ``brier``: mean over images of sum_k (p_k - 1[y = k])^2 (0 best, 2 worst).
- ``nll``: mean -log p_y (probabilities clipped at 1e-12).
- ``aurc``: area under the risk-coverage curve (Geifman & El-Yaniv 2017): images ranked by confidence,
  most confident first; at coverage k/n the risk is the error rate of the k most confident; the area is
  the mean risk over k = 1..n (lower is better: it rewards a low error rate and confidences that rank
  the errors last). Under bootstrap weights, an image drawn m times is one step of weight m (its copies
  are ties), so the resampled areas are those of the drawn images up to the order of tied copies.

Each comes with a 95% bootstrap interval from the lesion-grouped resampling weights of
:mod:`ssl_derm.metrics.bootstrap`: every score is written for a weight vector, so all resamples are
matrix products. Temperature scaling (``protocol.calibrate: temperature``) fits one T > 0 on the
validation side by a bounded search of the NLL of ``log(p) / T`` over log T; since softmax(log softmax(z) / T) = softmax(z / T),
the protocols' probabilities are enough and the fitted T is the logits' temperature.

No library here covers this: scikit-learn's ``calibration_curve`` and ``brier_score_loss`` are binary,
torchmetrics is not a dependency, and none takes bootstrap weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

N_BINS = 15
EPS = 1e-12
CALIBRATE_CHOICES = ("none", "temperature")
SCORES = ("ece", "brier", "nll", "aurc")


def _check(y: np.ndarray, probs: np.ndarray):
    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must be (N, K) with N = len(y) = {len(y)}, got {probs.shape}")
    return y, probs


def bin_index(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(N,) bin of each confidence in [0, 1]: bin b holds (b/n, (b+1)/n], bin 0 also holds 0."""
    return np.clip(np.ceil(np.asarray(conf) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def weighted_scores(y, probs, w: np.ndarray, n_bins: int = N_BINS) -> dict:
    """{score: (B,) values} of ``SCORES`` under each weight row of ``w`` (B, N); one row of ones gives
    the plain scores."""
    y, probs = _check(y, probs)
    w = np.atleast_2d(np.asarray(w, np.float64))
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    total = w.sum(1)
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), bin_index(conf, n_bins)] = 1.0
    acc_b, conf_b = w @ (onehot * correct[:, None]), w @ (onehot * conf[:, None])  # (B, bins) weighted sums
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(acc_b - conf_b).sum(1) / total  # sum_b n_b/n * |acc_b/n_b - conf_b/n_b|
        target = np.zeros_like(probs)
        target[np.arange(len(y)), y] = 1.0
        brier = w @ ((probs - target) ** 2).sum(1) / total
        nll = w @ -np.log(np.clip(probs[np.arange(len(y)), y], EPS, 1.0)) / total
        order = np.argsort(-conf, kind="stable")  # most confident first
        ws, err = w[:, order], 1.0 - correct[order]
        risk = np.cumsum(ws * err, 1) / np.cumsum(ws, 1)  # (B, N) risk at each coverage step
        aurc = np.nansum(np.where(ws > 0, risk, 0.0) * ws, 1) / total
    return {"ece": ece, "brier": brier, "nll": nll, "aurc": aurc}


def calibration_metrics(y, probs, groups: Optional[Sequence] = None, n_bins: int = N_BINS,
                        n_resamples: Optional[int] = None, seed: Optional[int] = None) -> dict:
    """{"ece", "brier", "nll", "aurc", "<score>_ci": [lo, hi], "n_bins"} of one side's probabilities;
    ``groups``: lesion ids for the grouped bootstrap (None: each image its own group)."""
    from ssl_derm.metrics.bootstrap import N_RESAMPLES, SEED, percentile_ci, resample_weights

    y, probs = _check(y, probs)
    point = weighted_scores(y, probs, np.ones((1, len(y))), n_bins)
    w = resample_weights(groups, len(y), n_resamples or N_RESAMPLES, SEED if seed is None else seed)
    boot = weighted_scores(y, probs, w, n_bins)
    out = {k: float(point[k][0]) for k in SCORES}
    out.update({f"{k}_ci": percentile_ci(boot[k]) for k in SCORES})
    out["n_bins"] = n_bins
    return out


def reliability(y, probs, n_bins: int = N_BINS) -> dict:
    """Per bin: ``count``, ``confidence`` (mean) and ``accuracy`` (None where empty), plus bin ``edges``."""
    y, probs = _check(y, probs)
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    mean = lambda v: [float(v[b == i].mean()) if count[i] else None for i in range(n_bins)]  # noqa: E731
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "count": count.tolist(),
            "confidence": mean(conf), "accuracy": mean(correct.astype(float))}


def risk_coverage(y, probs) -> tuple:
    """(coverage (N,), risk (N,)): the error rate of the k most confident images at coverage k/N."""
    y, probs = _check(y, probs)
    order = np.argsort(-probs.max(1), kind="stable")
    err = (probs.argmax(1) != y)[order].astype(float)
    k = np.arange(1, len(y) + 1)
    return k / len(y), np.cumsum(err) / k


def save_calibration_png(y, probs, path, title: str = "", logger=None, tag: str = "test/calibration") -> Path:
    """Reliability diagram (accuracy vs confidence per bin, bar width = bin; the gap to the diagonal is
    what ECE sums) beside the risk-coverage curve, as one PNG (and TensorBoard with ``logger``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = reliability(y, probs)
    m = calibration_metrics(y, probs, n_resamples=1)
    edges = np.array(rel["edges"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 3.8))
    acc = [a if a is not None else 0.0 for a in rel["accuracy"]]
    ax.bar(edges[:-1], acc, width=np.diff(edges), align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy",
           title=f"reliability: ECE {m['ece']:.3f}, n={len(y)}")
    ax.legend(loc="upper left", fontsize=8)
    cov, risk = risk_coverage(y, probs)
    ax2.plot(cov, risk, color="#c44e52")
    ax2.set(xlim=(0, 1), ylim=(0, max(float(risk.max()) * 1.1, 0.05)), xlabel="coverage", ylabel="risk (error rate)",
            title=f"risk-coverage: AURC {m['aurc']:.3f}")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    if logger is not None:
        logger.figure(tag, fig, 0)
    plt.close(fig)
    return path


def fit_temperature(probs, y) -> float:
    """The T in [0.01, 100] minimising the NLL of softmax(log(probs) / T) on (N, K) ``probs`` with labels (N,):
    a bounded one-dimensional search over log T (scipy), the NLL being smooth in it."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    y, probs = _check(y, probs)
    if not len(y):
        raise ValueError("temperature scaling needs validation images; the val side is empty")
    logp = np.log(np.clip(probs, EPS, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, y].mean())

    best = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """(N, K) probabilities -> softmax(log(probs) / T), rows summing to 1 (float64)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0)) / float(temperature)
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)
