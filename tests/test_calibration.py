"""Calibration scores against hand computations and probabilities of known miscalibration."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from ssl_derm.metrics.calibration import (apply_temperature, bin_index, calibration_metrics, fit_temperature,
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
    nll = {k: calibration_metrics(y, p, n_resamples=10)["nll"] for k, p in (("fixed", fixed), ("hot", _softmax(3 * z)))}
    assert nll["fixed"] < nll["hot"]


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


# --- the contract: a linear probe on `ssl-derm data synth` output, then `ssl-derm predict` of its model

@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory):
    """Two linear-probe runs on one synthetic set: uncalibrated and protocol.calibrate=temperature."""
    from ssl_derm.cli import main

    root = tmp_path_factory.mktemp("calib")
    assert main(["data", "synth", "--out", str(root / "s"), "--n", "360", "--size", "40", "--seed", "2"]) == 0
    base = [f"data.images=[{root / 's' / 'images'}]", f"data.labels={root / 's' / 'labels.csv'}",
            "data.image_size=32", f"data.cache_dir={root / 'cache'}", "data.test_frac=0.5", "encoder.name=test_resnet",
            "encoder.checkpoint=none", "split.fraction=1.0", "device=cpu", "protocol.linear_C=[10.0]"]
    runs = {}
    for how in ("none", "temperature"):
        runs[how] = root / f"run_{how}"
        assert main(["finetune", "--config", "configs/finetune/linear.yaml", "--out", str(runs[how]), *base,
                     f"protocol.calibrate={how}"]) == 0
    return root, runs


def test_finetune_metrics_have_calibration_and_skin_tone(probe_runs):
    import json

    from ssl_derm.metrics.skin_tone import GROUPS

    root, runs = probe_runs
    m = json.loads((runs["none"] / "metrics.json").read_text())
    for k in ("ece", "brier", "nll", "aurc"):
        assert isinstance(m[k], float) and len(m[f"{k}_ci"]) == 2
    groups = m["skin_tone"]["groups"]
    assert set(groups) == set(GROUPS) and sum(g["n"] for g in groups.values()) + m["skin_tone"]["n_unknown"] == m["n"]
    scored = [g for g in groups.values() if "status" not in g]
    assert scored and all(0 <= g["balanced_accuracy"] <= 1 and g["n"] >= 20 for g in scored)
    assert all(g["status"] == "too_few" and "balanced_accuracy" not in g for g in groups.values() if g["n"] < 20)
    assert (runs["none"] / "calibration.png").stat().st_size > 1000
    assert "calibration" not in m and json.loads((runs["none"] / "model.json").read_text())["temperature"] == 1.0


def test_predict_applies_the_stored_temperature(probe_runs):
    import json

    from ssl_derm.cli import main
    from ssl_derm.commands.predict import read_predictions

    root, runs = probe_runs
    cal = json.loads((runs["temperature"] / "metrics.json").read_text())["calibration"]
    t = json.loads((runs["temperature"] / "model.json").read_text())["temperature"]
    assert t == pytest.approx(cal["temperature"]) and t != pytest.approx(1.0, abs=1e-3)
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    raw, fixed = np.load(runs["none"] / "test_probs.npy"), np.load(runs["temperature"] / "test_probs.npy")
    np.testing.assert_allclose(fixed, apply_temperature(raw, t), atol=1e-5)  # the same probe, scaled
    preds = {}
    for how, run in runs.items():
        out = root / f"pred_{how}"
        assert main(["predict", "--model", str(run), "--images", str(root / "s" / "images"), "--out", str(out),
                     "device=cpu", f"data.labels={root / 's' / 'labels.csv'}"]) == 0
        rows = read_predictions(out / "predictions.csv")
        classes = [c[5:] for c in rows[0] if c.startswith("prob_")]
        preds[how] = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
        np.testing.assert_allclose(preds[how].sum(1), 1.0, atol=1e-5)
        pm = json.loads((out / "metrics.json").read_text())
        assert "ece" in pm and "groups" in pm["skin_tone"] and (out / "skin_tone.csv").is_file()
    assert np.abs(preds["temperature"] - preds["none"]).max() > 1e-3
    np.testing.assert_allclose(preds["temperature"], apply_temperature(preds["none"], t), atol=1e-4)


def test_model_json_format_1_still_loads_uncalibrated(probe_runs):
    import json

    from ssl_derm.serve.loaders import load_model

    _, runs = probe_runs
    meta = json.loads((runs["temperature"] / "model.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("temperature", "calibrate")}
    (runs["temperature"] / "model.json").write_text(json.dumps({**old, "format_version": 1}))
    try:
        assert load_model(runs["temperature"]).calibration_t == 1.0
    finally:
        (runs["temperature"] / "model.json").write_text(json.dumps(meta))


def test_calibrate_setting_is_checked():
    from ssl_derm.config import ConfigError
    from ssl_derm.evaluate.config import load_finetune_config

    assert load_finetune_config(None, ["protocol.name=linear"]).protocol.calibrate == "none"
    with pytest.raises(ConfigError, match="protocol.calibrate.*none, temperature"):
        load_finetune_config(None, ["protocol.name=linear", "protocol.calibrate=platt"])
    with pytest.raises(ConfigError, match="protocol.calibrate.*fewmask_seg"):
        load_finetune_config(None, ["protocol.name=fewmask_seg", "protocol.calibrate=temperature"])
