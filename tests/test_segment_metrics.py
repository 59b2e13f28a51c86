"""Segmentation metrics against hand-computed values, including the empty-mask conventions."""
import numpy as np
import pytest

from ssl_derm.metrics.segmentation import image_metrics, mean_metrics, score_dataset


def _masks():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True  # 4 lesion pixels
    pred = np.zeros((4, 4), bool)
    pred[0:2, 1:3] = True  # 4 predicted, 2 of them right
    return pred, gt


def test_image_metrics_hand_computed():
    pred, gt = _masks()
    m = image_metrics(pred, gt)
    # TP=2, FP=2, FN=2, TN=10
    assert m["jaccard"] == pytest.approx(2 / 6)
    assert m["dice"] == pytest.approx(4 / 8)
    assert m["thresholded_jaccard"] == 0.0  # 1/3 < 0.65
    assert m["pixel_accuracy"] == pytest.approx(12 / 16)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(10 / 12)


def test_thresholded_jaccard_keeps_values_at_or_above_065():
    gt = np.zeros((10, 10), bool)
    gt[:, :10] = True
    pred = np.zeros((10, 10), bool)
    pred[:, :7] = True  # J = 70/100
    m = image_metrics(pred, gt)
    assert m["jaccard"] == pytest.approx(0.7)
    assert m["thresholded_jaccard"] == pytest.approx(0.7)
    pred[:, 6] = False  # J = 0.6
    assert image_metrics(pred, gt)["thresholded_jaccard"] == 0.0


def test_empty_mask_conventions():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    both_empty = image_metrics(empty, empty)
    assert both_empty["jaccard"] == 1.0 and both_empty["dice"] == 1.0 and both_empty["sensitivity"] == 1.0
    assert image_metrics(full, empty)["jaccard"] == 0.0  # a lesion where there is none
    assert image_metrics(full, empty)["specificity"] == 0.0
    assert image_metrics(empty, full)["specificity"] == 1.0  # no negatives to get wrong
    assert image_metrics(empty, full)["sensitivity"] == 0.0


def test_accepts_0_255_and_rejects_shape_mismatch():
    pred, gt = _masks()
    assert image_metrics(pred.astype(np.uint8) * 255, gt)["jaccard"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="original size"):
        image_metrics(np.zeros((4, 5), bool), gt)


def test_score_dataset_means_and_per_image_with_mixed_sizes():
    pred, gt = _masks()
    big = np.ones((5, 7), bool)
    res = score_dataset([pred, big], [gt, big], ["a", "b"])
    assert set(res["per_image"]) == {"a", "b"}
    assert res["per_image"]["b"]["jaccard"] == 1.0
    assert res["mean"]["jaccard"] == pytest.approx((1 / 3 + 1) / 2)
    assert res["mean"]["n"] == 2
    assert mean_metrics(res["per_image"])["dice"] == pytest.approx((0.5 + 1) / 2)
    with pytest.raises(ValueError):
        score_dataset([pred], [gt, gt], ["a"])
