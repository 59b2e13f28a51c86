"""Calibration scores against hand computations and probabilities of known miscalibration."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from ssl_derm.evaluate.calibration import (apply_temperature, bin_index, calibration_metrics, fit_temperature,
                                           reliability, risk_coverage, save_calibration_png, weighted_scores)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ece_of_an_over_confident_model_matches_a_hand_computation():
    # 10 images at confidence 0.95 of which 6 right (bin 15: |0.6 - 0.95|), 10 at 0.55 of which 5 right
    # (bin 9: |0.5 - 0.55|): ECE = 0.5 * 0.35 + 0.5 * 0.05 = 0.2
    p_hi = np.tile([0.95, 0.05], (10, 1))
    p_lo = np.tile([0.55, 0.45], (10, 1))
    probs = np.concatenate([p_hi, p_lo])
    y = np.array([0] * 6 + [1] * 4 + [0] * 5 + [1] * 5)
    m = calibration_metrics(y, probs, n_resamples=50)
    assert m["ece"] == pytest.approx(0.2)
    brier = (6 * 2 * 0.05 ** 2 + 4 * 2 * 0.95 ** 2 + 5 * 2 * 0.45 ** 2 + 5 * 2 * 0.55 ** 2) / 20
    assert m["brier"] == pytest.approx(brier)
    assert m["nll"] == pytest.approx(log_loss(y, probs))
    lo, hi = m["ece_ci"]
    assert lo <= m["ece"] <= hi and hi > lo
    rel = reliability(y, probs)
    assert rel["count"][14] == 10 and rel["accuracy"][14] == pytest.approx(0.6) and rel["count"][8] == 10


def test_a_calibrated_model_has_small_ece_and_the_bin_edges_are_right_closed():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20000, 3))
    probs = _softmax(z)
    y = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the probabilities themselves
    assert calibration_metrics(y, probs, n_resamples=10)["ece"] < 0.02
    assert calibration_metrics(y, _softmax(3 * z), n_resamples=10)["ece"] > 0.1  # over-confident
    assert list(bin_index(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]))) == [0, 0, 1, 14]


def test_temperature_fitted_on_logits_scaled_by_3_recovers_3():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (5000, 4))
    y = np.array([rng.choice(4, p=p) for p in _softmax(z)])
    t = fit_temperature(_softmax(3 * z), y)
    assert t == pytest.approx(3.0, rel=0.08)
    fixed = apply_temperature(_softmax(3 * z), t)
    np.testing.assert_allclose(fixed.sum(1), 1.0)
    np.testing.assert_allclose(apply_temperature(_softmax(3 * z), 3.0), _softmax(z), atol=1e-9)
    assert calibration_metrics(y, fixed, n_resamples=10)["nll"] < calibration_metrics(y, _softmax(3 * z), n_resamples=10)["nll"]


def test_aurc_is_the_mean_risk_over_coverage_and_rewards_ranking_errors_last():
    y = np.array([0, 0, 0, 0])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])  # the two errors least confident
    bad = np.array([[0.6, 0.4], [0.7, 0.3], [0.05, 0.95], [0.01, 0.99]])  # the two errors most confident
    cov, risk = risk_coverage(y, good)
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 2])
    assert calibration_metrics(y, good, n_resamples=5)["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert calibration_metrics(y, bad, n_resamples=5)["aurc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)


def test_weighted_scores_equal_the_scores_of_the_repeated_images():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(0, 2, (30, 3)))
    y = rng.integers(0, 3, 30)
    w = rng.integers(0, 3, 30).astype(float)
    rep = np.repeat(np.arange(30), w.astype(int))
    got = weighted_scores(y, probs, w[None])
    want = weighted_scores(y[rep], probs[rep], np.ones((1, len(rep))))
    for k in ("ece", "brier", "nll"):
        assert got[k][0] == pytest.approx(want[k][0]), k
    # AURC counts an image drawn twice as one step of twice the weight (copies are ties): exact for 0/1 weights
    keep = w > 0
    got = weighted_scores(y, probs, keep[None].astype(float))["aurc"][0]
    assert got == pytest.approx(weighted_scores(y[keep], probs[keep], np.ones((1, keep.sum())))["aurc"][0])


def test_calibration_png_is_written(tmp_path):
    rng = np.random.default_rng(3)
    probs = _softmax(rng.normal(0, 2, (50, 3)))
    path = save_calibration_png(rng.integers(0, 3, 50), probs, tmp_path / "calibration.png", "t")
    assert path.stat().st_size > 1000
