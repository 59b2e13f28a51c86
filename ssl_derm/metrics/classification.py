"""Classification metrics (scikit-learn) and the confusion-matrix figure.

Balanced accuracy (mean per-class recall) is the ISIC 2018 headline metric: on HAM10000 two thirds of
the images are nevi, so plain accuracy rewards a model that calls everything a nevus.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from ssl_derm.errors import SplitError


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Scores of predicted class probabilities.

    y_true: (N,) int in [0, K); probs: (N, K) rows summing to 1 (the argmax is the prediction).
    Returns balanced_accuracy, accuracy, macro_f1, macro_auroc (one-vs-rest, averaged over the classes
    present in ``y_true``; ``auroc_classes_skipped`` names the absent ones), per_class_recall
    ({class: recall or None when the class has no true sample}), confusion_matrix (K x K, rows = true),
    n and the class names.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probs has shape {probs.shape}; expected ({len(y_true)}, {k}) for {k} classes")
    if len(y_true) == 0:
        raise SplitError("no samples to score: the evaluation side of the split is empty")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}); got {y_true.min()}..{y_true.max()} (unlabelled images cannot be scored)")
    y_pred = probs.argmax(1)
    labels = np.arange(k)
    present = np.unique(y_true)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1)
    recall = {classes[i]: (float(cm[i, i] / support[i]) if support[i] else None) for i in range(k)}
    # sklearn's balanced_accuracy_score averages over classes present in y_true (and warns about
    # predicted-only classes); we state that rule explicitly instead of relying on the warning
    bal = float(np.mean([cm[i, i] / support[i] for i in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # macro F1 over the classes that are present or predicted (sklearn's default label set):
        # a class absent from both has no F1 to average
        used = np.union1d(present, np.unique(y_pred))
        f1 = float(skm.f1_score(y_true, y_pred, labels=used, average="macro", zero_division=0))
    aucs = {}
    for i in present:
        pos = y_true == i
        if pos.all():  # one class only: AUROC undefined
            continue
        aucs[classes[i]] = float(skm.roc_auc_score(pos, probs[:, i]))
    skipped = [classes[i] for i in range(k) if classes[i] not in aucs]
    return {
        "balanced_accuracy": bal,
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": f1,
        "macro_auroc": float(np.mean(list(aucs.values()))) if aucs else None,
        "per_class_auroc": aucs,
        "auroc_classes_skipped": skipped,
        "per_class_recall": recall,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "n": int(len(y_true)),
    }


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = ""):
    """A matplotlib Figure of the confusion matrix: counts, coloured by row-normalised recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.7 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_confusion_png(cm: np.ndarray, classes: Sequence[str], path, title: str = "", logger=None,
                       tag: str = "test/confusion_matrix", step: int = 0) -> Path:
    """Write the confusion matrix as a PNG and, when ``logger`` (``ssl_derm.engine.logger.Logger``) is
    given, to TensorBoard."""
    import matplotlib.pyplot as plt

    fig = confusion_figure(cm, classes, title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    if logger is not None:
        logger.figure(tag, fig, step)
    plt.close(fig)
    return path


def summary_line(m: dict, prefix: str = "") -> str:
    """One line for the console: the headline numbers."""
    auc = m.get("macro_auroc")
    return (f"{prefix}balanced_acc={m['balanced_accuracy']:.4f} acc={m['accuracy']:.4f} "
            f"macro_f1={m['macro_f1']:.4f} macro_auroc={'n/a' if auc is None else f'{auc:.4f}'} (n={m['n']})")

