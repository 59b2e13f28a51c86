"""Every protocol end to end on tiny synthetic data (resnet18 at 32 px, a few steps, CPU)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssl_derm.config import ConfigError
from ssl_derm.data.synth import SYNTH_CLASSES, synth_arrays
from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.evaluate.context import Context, SplitError, split_rows
from ssl_derm.evaluate.fixmatch import FixMatchTrainer
from ssl_derm.evaluate.label_efficiency import run_label_efficiency
from ssl_derm.evaluate.linear import EncoderChangedError, run_linear
from ssl_derm.evaluate.run import run_finetune
from ssl_derm.evaluate.train import IndexStream
from ssl_derm.registry import names

SIZE = 32
ENCODER = "test_resnet"  # timm's 0.4M-parameter ResNet for tests: same code paths as resnet18, 20x fewer weights
FRACTIONS = ("0.1", "0.25", "1.0")


class ArrayDataset(SimpleNamespace):
    """The fields of ssl_derm.data's Dataset that the protocols read."""


@pytest.fixture(scope="module")
def data():
    images, masks, labels = synth_arrays(96, SIZE, seed=0)
    ids = [f"s{i:03d}" for i in range(len(images))]
    labels = labels.copy()
    labels[-6:] = -1  # a few images without a label: unlabeled training data
    ds = ArrayDataset(ids=ids, images=images, masks=masks, labels=labels, classes=list(SYNTH_CLASSES),
                      lesion_ids=None)
    rng = np.random.default_rng(0)
    lab_rows = rng.permutation(np.flatnonzero(labels >= 0))
    test, val, train = lab_rows[:20], lab_rows[20:30], lab_rows[30:]
    labelled = {}
    for frac in FRACTIONS:  # nested subsets with every class present
        keep = []
        for c in range(len(SYNTH_CLASSES)):
            rows_c = train[labels[train] == c]
            keep += list(rows_c[:max(1, int(round(float(frac) * len(rows_c))))])
        labelled[frac] = [ids[r] for r in sorted(keep)]
    split = {"train": [ids[r] for r in train], "val": [ids[r] for r in val], "test": [ids[r] for r in test],
             "labelled": labelled}
    return ds, split


def _cfg(protocol, **extra):
    over = [f"protocol.name={protocol}", f"data.image_size={SIZE}", "device=cpu", "train.max_steps=3",
            f"encoder.name={ENCODER}", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1", "protocol.eval_every=2",
            "protocol.mu=1", "protocol.feature_batch_size=64", "protocol.linear_C=[1.0]", "split.fraction=0.25",
            "protocol.seg_decoder_channels=[32,16,16,8,8]"]
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_finetune_config(None, over, lenient=True)  # each protocol takes the keys it has


def test_all_protocols_registered():
    assert set(names("protocol")) >= {"knn", "linear", "labelprop", "finetune", "fixmatch", "meanteacher", "fewmask_seg"}


@pytest.mark.parametrize("protocol", ["knn", "linear", "labelprop", "finetune", "fixmatch", "meanteacher", "lp-ft"])
def test_classification_protocol_end_to_end(protocol, data, tmp_path):
    ds, split = data
    extra = {"protocol.head_init": "linear_probe"} if protocol == "lp-ft" else {}
    protocol = "finetune" if protocol == "lp-ft" else protocol
    m = run_finetune(_cfg(protocol, **extra), tmp_path / protocol, dataset=ds, split=split, quiet=True)
    saved = json.loads((tmp_path / protocol / "metrics.json").read_text())
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc", "per_class_recall", "confusion_matrix"):
        assert key in saved
    assert 0.0 <= saved["balanced_accuracy"] <= 1.0
    assert np.array(saved["confusion_matrix"]).sum() == saved["n"] == saved["n_per_side"]["test"] == 20
    assert saved["val"]["n"] == 10 and saved["protocol"] == protocol
    assert (tmp_path / protocol / "confusion_matrix.png").is_file()
    assert list((tmp_path / protocol / "tb").iterdir())
    assert m["balanced_accuracy"] == saved["balanced_accuracy"]


def test_finetune_vit_with_layer_decay(data, tmp_path):
    ds, split = data
    cfg = _cfg("finetune", **{"encoder.name": "test_vit", "protocol.llrd": 0.65, "train.max_steps": 2})
    m = run_finetune(cfg, tmp_path / "vit", dataset=ds, split=split, quiet=True)
    assert m["info"]["steps"] == 2 and m["encoder"]["name"] == "test_vit"


def test_balance_options_run(data, tmp_path):
    ds, split = data
    for balance in ("weighted_loss", "balanced_sampler"):
        m = run_finetune(_cfg("finetune", **{"protocol.balance": balance, "train.max_steps": 2}), tmp_path / balance,
                         dataset=ds, split=split, quiet=True)
        assert m["balance"] == balance
    # the balanced sampler draws each class about equally often even when the labelled set is skewed
    rows = np.arange(100)
    y = np.array([0] * 90 + [1] * 10)
    w = 1.0 / np.bincount(y)[y]
    draws = IndexStream(rows, 0, w / w.sum()).take(4000)
    assert abs((y[draws] == 1).mean() - 0.5) < 0.05


@pytest.mark.parametrize("encoder", [ENCODER, "test_vit"])
def test_fewmask_segmentation_end_to_end(encoder, data, tmp_path):
    ds, split = data
    cfg = _cfg("fewmask_seg", **{"split.fraction": 0.1, "encoder.name": encoder})
    m = run_finetune(cfg, tmp_path / "seg", dataset=ds, split=split, quiet=True)
    assert 0.0 <= m["dice"] <= 1.0 and 0.0 <= m["jaccard"] <= 1.0
    assert len(m["per_image"]) == 20
    assert m["info"]["n_masks_used"] == len(split["labelled"]["0.1"])


def _ctx(data, protocol, tmp_path, **extra):
    ds, split = data
    cfg = _cfg(protocol, **extra)
    torch.manual_seed(0)
    enc = create_encoder(ENCODER, SIZE)
    return Context(cfg=cfg, encoder=enc, device=torch.device("cpu"), dataset=ds,
                   rows=split_rows(ds.ids, ds.labels, split, cfg.split.fraction), out_dir=tmp_path)


def test_lp_ft_head_starts_as_the_linear_probe(data, tmp_path):
    """protocol.head_init=linear_probe: before any update the finetuned model predicts what the probe predicts."""
    from ssl_derm.evaluate.linear import fit_probe, predict_probs
    from ssl_derm.evaluate.train import ClassifierTrainer

    ctx = _ctx(data, "finetune", tmp_path, **{"protocol.head_init": "linear_probe", "protocol.linear_C": "[0.1,1.0]"})
    feats = {side: ctx.features(side, l2=False).numpy() for side in ("labelled", "val")}
    C, _, scaler, clf = fit_probe(ctx, feats)
    expected = predict_probs(scaler, clf, feats["val"], ctx.n_classes)
    trainer = ClassifierTrainer(ctx)
    assert trainer.head_info["probe_C"] == C
    np.testing.assert_allclose(trainer.predict(ctx.rows["val"]), expected, atol=1e-4)
    info = trainer.fit()
    assert info["val_history"][0]["step"] == 0  # the probe itself is a model-selection candidate
    assert info["best_val_balanced_accuracy"] >= info["val_history"][0]["val_balanced_accuracy"]
    # a random head predicts something else
    plain = ClassifierTrainer(_ctx(data, "finetune", tmp_path))
    assert not np.allclose(plain.predict(ctx.rows["val"]), expected, atol=1e-2)


@pytest.mark.parametrize("encoder", [ENCODER, "test_vit"])
def test_multistage_and_d4_features(encoder, data):
    """feature_stages=n concatenates the last n stages (the pooled output last for a CNN); d4 TTA makes
    the features of an image and of its 90-degree rotation or mirror image the same."""
    from ssl_derm.config import AugmentConfig
    from ssl_derm.evaluate.features import extract_features

    ds, _ = data
    torch.manual_seed(0)
    enc = create_encoder(encoder, SIZE)
    rows = np.arange(6)
    one = extract_features(enc, ds.images, rows, AugmentConfig(), "cpu", l2=False)
    three = extract_features(enc, ds.images, rows, AugmentConfig(), "cpu", l2=False, stages=3)
    widths = [f["num_chs"] for f in enc.model.feature_info][-3:]
    assert three.shape == (6, sum(widths)) and enc.stages_dim(3) == sum(widths) and enc.stages_dim(1) == one.shape[1]
    assert extract_features(enc, ds.images, rows[:0], AugmentConfig(), "cpu", stages=3).shape == (0, sum(widths))
    if encoder == ENCODER:
        torch.testing.assert_close(three[:, -widths[-1]:], one, atol=1e-5, rtol=1e-4)
    turned = np.ascontiguousarray(np.rot90(ds.images[:6], 1, axes=(1, 2)))
    mirrored = np.ascontiguousarray(ds.images[:6, :, ::-1])
    d4 = extract_features(enc, ds.images, rows, AugmentConfig(), "cpu", l2=False, tta="d4")
    for other in (turned, mirrored):
        torch.testing.assert_close(extract_features(enc, other, rows, AugmentConfig(), "cpu", l2=False, tta="d4"),
                                   d4, atol=1e-4, rtol=1e-3)
        assert not torch.allclose(extract_features(enc, other, rows, AugmentConfig(), "cpu", l2=False), one, atol=1e-3)


def test_frozen_protocols_with_multistage_tta_features(data, tmp_path):
    from ssl_derm.evaluate.features import FeatureCache

    ds, split = data
    cache = FeatureCache()
    for protocol in ("knn", "linear"):
        for stages, tta in ((1, "none"), (2, "d4")):
            cfg = _cfg(protocol, **{"protocol.feature_stages": stages, "protocol.feature_tta": tta})
            m = run_finetune(cfg, tmp_path / f"{protocol}{stages}", dataset=ds, split=split, quiet=True, feature_cache=cache)
            assert 0.0 <= m["balanced_accuracy"] <= 1.0
    assert len(cache._store) == 2  # one extraction per feature kind, shared by both protocols


def test_probe_as_linear_layer_two_classes_and_unseen_class():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ssl_derm.evaluate.linear import predict_probs, probe_as_linear_layer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)) * [1, 2, 3, 4, 5] + 7
    y = np.where(x[:, 0] > 7, 2, 0)  # classes 0 and 2 of 3: class 1 is never seen
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0).fit(scaler.transform(x), y)
    w, b = probe_as_linear_layer(scaler, clf, 3)
    probs = torch.from_numpy(x @ w.T.astype(np.float64) + b).softmax(1).numpy()
    np.testing.assert_allclose(probs, predict_probs(scaler, clf, x, 3), atol=1e-6)
    assert probs[:, 1].max() < 1e-6


def test_fixmatch_uses_unlabeled_images(data, tmp_path):
    ctx = _ctx(data, "fixmatch", tmp_path, **{"protocol.threshold": 0.0})
    ds, _ = data
    unl = ctx.rows["unlabeled"]
    assert set(np.flatnonzero(ds.labels < 0)) <= set(unl)  # unlabelled images are used
    trainer = FixMatchTrainer(ctx)
    loss, logs = trainer.loss(0)
    assert logs["loss_u"] > 0 and logs["mask_rate"] == 1.0  # threshold 0: every pseudo-label counts
    ctx = _ctx(data, "fixmatch", tmp_path, **{"protocol.threshold": 1.0})
    loss, logs = FixMatchTrainer(ctx).loss(0)
    assert logs["mask_rate"] == 0.0 and logs["loss_u"] == 0.0  # nobody is that sure: all masked


def test_freematch_thresholds_follow_the_confidence_ema():
    from ssl_derm.evaluate.fixmatch import SelfAdaptiveThreshold, fixmatch_unlabeled_loss

    sat = SelfAdaptiveThreshold(4, momentum=0.5)
    assert torch.allclose(sat.thresholds(), torch.full((4,), 0.25))  # starts at 1/K for every class
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.5, 0.2, 0.2]])
    sat.update(probs)
    # tau = 0.5 * 0.25 + 0.5 * mean(0.7, 0.5) = 0.425; p = 0.5 * 0.25 + 0.5 * (0.4, 0.3, 0.15, 0.15)
    p = torch.tensor([0.325, 0.275, 0.2, 0.2])
    assert torch.isclose(sat.tau, torch.tensor(0.425))
    assert torch.allclose(sat.thresholds(), 0.425 * p / 0.325)
    # per-class thresholds are indexed by the pseudo-label: the same confidence passes for one class only
    weak = torch.log(torch.tensor([[0.40, 0.2, 0.2, 0.2], [0.2, 0.2, 0.40, 0.2]]))
    _, mask = fixmatch_unlabeled_loss(weak, torch.zeros(2, 4), torch.tensor([0.45, 0.3, 0.3, 0.3]))
    assert mask.tolist() == [0.0, 1.0]


def test_freematch_uses_unlabeled_images_where_a_fixed_threshold_does_not(data, tmp_path):
    ds, split = data
    kw = {"protocol.threshold": 0.99, "train.max_steps": 2}
    fixed = run_finetune(_cfg("fixmatch", **kw), tmp_path / "fixed", dataset=ds, split=split, quiet=True)
    free = run_finetune(_cfg("fixmatch", **kw, **{"protocol.threshold_mode": "freematch"}), tmp_path / "free",
                        dataset=ds, split=split, quiet=True)
    assert fixed["info"]["mean_mask_rate"] == 0.0  # a fresh 7-way head is never 99% sure
    assert free["info"]["mean_mask_rate"] > 0.5  # the adaptive bar starts near 1/K
    thr = free["info"]["final_thresholds"]
    assert set(thr) == set(SYNTH_CLASSES) and all(0 < v < 1 for v in thr.values())
    with pytest.raises(ConfigError, match="protocol.threshold_mode.*freematch"):
        load_finetune_config(None, ["protocol.name=fixmatch", "protocol.threshold_mode=flexmatch"])


def test_labelprop_pseudo_labels_the_unlabeled_images(data, tmp_path):
    ds, split = data
    m = run_finetune(_cfg("labelprop", **{"protocol.labelprop_threshold": 0.0}), tmp_path / "lp", dataset=ds,
                     split=split, quiet=True)
    info = m["info"]
    n_unl = len(split["train"]) - len(split["labelled"]["0.25"]) + int((ds.labels < 0).sum())
    assert info["n_unlabeled"] == n_unl and info["n_pseudo_labelled"] == n_unl
    assert sum(info["pseudo_label_counts"]) == n_unl
    m = run_finetune(_cfg("labelprop", **{"protocol.labelprop_threshold": 1.0}), tmp_path / "lp1", dataset=ds,
                     split=split, quiet=True)
    assert m["info"]["n_pseudo_labelled"] < n_unl  # only certain pseudo-labels are kept


def test_spread_labels_follow_clusters_and_balance():
    from ssl_derm.evaluate.labelprop import spread_labels

    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4
    # a skewed unlabeled pool: 300 of class 0, 30 each of classes 1 and 2; one labelled image per class
    y_unl = np.array([0] * 300 + [1] * 30 + [2] * 30)
    x_unl = centres[y_unl] + rng.normal(0, 0.5, (len(y_unl), 8))
    x_lab = centres + rng.normal(0, 0.5, (3, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    pseudo, conf = spread_labels(unit(x_lab), np.arange(3), unit(x_unl), 4, k=10, alpha=0.2, balanced=True)
    assert (pseudo == y_unl).mean() > 0.97
    assert conf.shape == (len(y_unl),) and ((conf > 0) & (conf <= 1)).all()
    assert not (pseudo == 3).any()  # a class without a labelled image is never predicted
    empty, _ = spread_labels(unit(x_lab), np.arange(3), np.zeros((0, 8)), 4, k=10, alpha=0.2, balanced=False)
    assert empty.shape == (0,)


def test_fixmatch_reports_mask_rate(data, tmp_path):
    ds, split = data
    m = run_finetune(_cfg("fixmatch", **{"protocol.threshold": 0.0, "train.max_steps": 2}), tmp_path / "fm", dataset=ds,
                     split=split, quiet=True)
    assert m["info"]["mean_mask_rate"] == 1.0 and m["info"]["n_unlabeled"] > 0


def test_linear_probe_detects_a_changed_encoder(data, tmp_path, monkeypatch):
    ctx = _ctx(data, "linear", tmp_path)
    orig = Context.features

    def features_that_touch_weights(self, side, l2=True):
        with torch.no_grad():
            next(self.encoder.parameters()).add_(1.0)
        return orig(self, side, l2)

    monkeypatch.setattr(Context, "features", features_that_touch_weights)
    with pytest.raises(EncoderChangedError, match="changed"):
        run_linear(ctx)


def test_split_rows_keep_test_untouched(data):
    ds, split = data
    rows = split_rows(ds.ids, ds.labels, split, 0.1)
    train = set(split["train"])
    assert {ds.ids[r] for r in rows["labelled"]} <= train
    assert not set(rows["test"]) & (set(rows["labelled"]) | set(rows["unlabeled"]) | set(rows["val"]))
    assert set(rows["labelled"]).isdisjoint(rows["unlabeled"])
    with pytest.raises(SplitError, match="available fractions"):
        split_rows(ds.ids, ds.labels, split, 0.05)
    bad = dict(split, test=split["test"] + split["train"][:1])
    with pytest.raises(SplitError, match="overlap"):
        split_rows(ds.ids, ds.labels, bad, 0.1)


def test_redrawn_labelled_subsets_are_nested_and_seeded():
    from ssl_derm.data.splits import make_split

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    ids = [f"i{k}" for k in range(400)]
    split = make_split(ids, labels, test_frac=0.2, val_frac=0.1, seed=0)
    train = split_rows(ids, labels, split, 1.0)["labelled"]
    same = split_rows(ids, labels, split, 0.1, redraw_seed=0)
    assert (same["labelled"] == split_rows(ids, labels, split, 0.1)["labelled"]).all()  # seed 0 = the split file's
    small, big = (split_rows(ids, labels, split, f, redraw_seed=3) for f in (0.1, 0.25))
    assert set(small["labelled"]) < set(big["labelled"]) <= set(train)  # nested, inside the training side
    assert set(np.unique(labels[small["labelled"]])) == set(range(4))  # every class keeps an image
    assert (small["test"] == same["test"]).all() and (small["val"] == same["val"]).all()
    assert set(small["labelled"]) != set(same["labelled"])  # another seed, other labelled images
    assert not np.intersect1d(small["unlabeled"], small["labelled"]).size


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="protocol.balence"):
        load_finetune_config(None, ["protocol.balence=none"])
    with pytest.raises(ConfigError, match="protocol.balance"):
        load_finetune_config(None, ["protocol.balance=oversample"])
    with pytest.raises(ConfigError, match="split.fraction"):
        load_finetune_config(None, ["split.fraction=0"])
    with pytest.raises(ConfigError, match="protocol.feature_tta.*d4"):
        load_finetune_config(None, ["protocol.feature_tta=flip"])
    with pytest.raises(ConfigError, match="protocol.feature_stages"):
        load_finetune_config(None, ["protocol.feature_stages=0"])
    with pytest.raises(ConfigError, match="protocol.head_init.*linear_probe"):
        load_finetune_config(None, ["protocol.name=finetune", "protocol.head_init=probe"])


def test_label_efficiency_table(data, tmp_path):
    ds, split = data
    torch.manual_seed(1)
    ck = export_encoder(create_encoder(ENCODER, SIZE), tmp_path / "enc" / "encoder.safetensors")
    base = _cfg("knn")
    rows = run_label_efficiency(base, ck, [0.25, 1.0], ["knn", "linear"], [0], tmp_path / "le", dataset=ds, split=split)
    assert len(rows) == 2 * 2 * 2
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert "| knn | 25% |" in md and "| linear | 100% |" in md
    csv_lines = (tmp_path / "le" / "label_efficiency.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 8
    # finished cells are skipped on a second call (resumable)
    mtime = (tmp_path / "le" / "cells" / "random_knn_0.25_seed0" / "metrics.json").stat().st_mtime
    (tmp_path / "le" / "cells" / "notes").mkdir()  # a stray folder is not a cell, even with a metrics.json
    (tmp_path / "le" / "cells" / "notes" / "metrics.json").write_text("{}")
    run_label_efficiency(base, ck, [0.25], ["knn"], [0], tmp_path / "le", dataset=ds, split=split)
    assert (tmp_path / "le" / "cells" / "random_knn_0.25_seed0" / "metrics.json").stat().st_mtime == mtime
    # a call for part of the grid still tabulates every finished cell in the folder, fractions in order
    assert len((tmp_path / "le" / "label_efficiency.csv").read_text().strip().splitlines()) == 1 + 8
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert md.index("| knn | 25% |") < md.index("| knn | 100% |") < md.index("| linear | 25% |")


def test_label_efficiency_differences_are_paired_by_seed(tmp_path):
    from ssl_derm.evaluate.label_efficiency import write_tables

    def row(init, protocol, fraction, seed, ba):
        return {"init": init, "protocol": protocol, "fraction": fraction, "seed": seed, "balanced_accuracy": ba,
                "accuracy": None, "macro_f1": None, "macro_auroc": None, "n_labelled": 10, "seconds": 1.0}

    rows = [row("pretrained", "knn", 0.1, s, v) for s, v in enumerate([0.40, 0.45, 0.50])]
    # random has a 4th seed with no pretrained partner: it counts in its mean but not in the difference
    rows += [row("random", "knn", 0.1, s, v) for s, v in enumerate([0.30, 0.40, 0.35, 0.95])]
    rows += [row("random", "knn", 1.0, 0, 0.42), row("pretrained", "knn", 1.0, 0, 0.60)]
    rows += [row("pretrained", "linear", 0.1, 0, 0.50), row("random", "linear", 1.0, 0, 0.90)]
    write_tables(tmp_path, rows)
    md = (tmp_path / "label_efficiency.md").read_text()
    # paired differences +10, +5, +15: mean 10.0, std 5.0, 95% t half-width 4.303 * 5 / sqrt(3) = 12.4
    assert "| knn | 10% | 10 | 45.0 ± 5.0 | 50.0 ± 30.3 | +10.0 ± 5.0 | [-2.4, +22.4] | 4 / 3 |" in md
    assert "| knn | 100% | 10 | 60.0 | 42.0 | +18.0 | - | 1 / 1 |" in md
    assert "| linear | 10% | 10 | 50.0 | - | - | - | 1 / 0 |" in md
    assert "- knn: random init with 100% of the labels 42.0; pretrained reaches it with 10% of the labels" in md
    assert "- linear: random init with 100% of the labels 90.0; pretrained reaches it with none of the fractions run" in md


def test_every_protocol_has_a_config_file():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "ssl_derm" / "configs" / "finetune"
    for name in names("protocol"):
        cfg = load_finetune_config(folder / f"{name}.yaml")
        assert cfg.protocol.name == name


def test_cli_finetune_on_builtin_synthetic_set(tmp_path):
    from ssl_derm.cli import main

    out = tmp_path / "run"
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "ssl_derm" / "configs" / "finetune" / "knn.yaml"
    rc = main(["finetune", "--config", str(config), "--out", str(out), f"data.cache_dir={tmp_path / 'cache'}",
               "data.synthetic_n=120", f"data.image_size={SIZE}", f"encoder.name={ENCODER}", "encoder.checkpoint=none",
               "split.fraction=0.25", "seed=0", "device=cpu"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "knn" and m["n_per_side"]["test"] > 0 and m["n"] == m["n_per_side"]["test"]
    split_files = list((tmp_path / "cache" / "splits").glob("*.json"))
    assert len(split_files) == 1  # written once, reused by every later run on the same data
