"""Per-image lesion segmentation metrics on boolean masks, and their means.

Every metric is computed per image, then averaged over images (the ISIC 2017/2018 convention), so a
small lesion counts as much as a large one. With TP, FP, FN, TN the pixel counts of one image:

- ``jaccard`` = TP / (TP + FP + FN); ``dice`` = 2 TP / (2 TP + FP + FN);
- ``thresholded_jaccard`` (ISIC 2018 Task 1): the Jaccard, or 0 where it is below 0.65;
- ``pixel_accuracy`` = (TP + TN) / all pixels;
- ``sensitivity`` = TP / (TP + FN); ``specificity`` = TN / (TN + FP).

Empty-mask conventions (a ratio whose denominator is 0 asks about something that is not there, and
the prediction cannot be wrong about it): prediction and truth both empty -> Jaccard = Dice = 1;
truth empty -> sensitivity = 1; truth covers the whole image -> specificity = 1.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

METRICS = ("jaccard", "dice", "thresholded_jaccard", "pixel_accuracy", "sensitivity", "specificity")
ISIC_JACCARD_THRESHOLD = 0.65


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else float(num) / float(den)


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """Metrics of one image. ``pred``, ``gt``: (H, W) bool (or 0/1, 0/255) of the same shape."""
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask has shape {pred.shape} but the true mask has {gt.shape}; "
                         "upsample predictions to the image's original size before scoring")
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = pred.size - tp - fp - fn
    j = _ratio(tp, tp + fp + fn)
    return {
        "jaccard": j,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "thresholded_jaccard": j if j >= ISIC_JACCARD_THRESHOLD else 0.0,
        "pixel_accuracy": _ratio(tp + tn, pred.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def mean_metrics(per_image: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Means over images of each metric; ``n`` is the number of images."""
    out = {k: float(np.mean([m[k] for m in per_image.values()])) if per_image else float("nan") for k in METRICS}
    out["n"] = len(per_image)
    return out


def score_dataset(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], ids: Sequence[str]) -> dict:
    """Per-image metrics and their means.

    ``preds``, ``gts``: arrays (N, H, W) or lists of (H_i, W_i) masks (sizes may differ between images
    but must agree within a pair); ``ids``: N image ids.
    Returns ``{"mean": {metric: value, "n": N}, "per_image": {id: {metric: value}}}``.
    """
    if not (len(preds) == len(gts) == len(ids)):
        raise ValueError(f"score_dataset: {len(preds)} predictions, {len(gts)} true masks and {len(ids)} ids")
    per_image = {str(i): image_metrics(p, g) for p, g, i in zip(preds, gts, ids)}
    return {"mean": mean_metrics(per_image), "per_image": per_image}
