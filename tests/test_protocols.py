"""Every protocol end to end on tiny synthetic data (resnet18 at 32 px, a few steps, CPU)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssl_derm.config import ConfigError
from ssl_derm.data.synth import SYNTH_CLASSES, synth_arrays
from ssl_derm.encoders import create_encoder
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.evaluate.context import Context, SplitError, split_rows
from ssl_derm.segmenters.archive_masks import masks_for
from ssl_derm.evaluate.linear import EncoderChangedError, run_linear
from ssl_derm.commands.finetune import run_finetune
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
    assert set(names("protocol")) >= {"knn", "linear", "labelprop", "finetune", "fixmatch", "meanteacher", "distill",
                                      "fewmask_seg"}


@pytest.mark.parametrize("protocol", ["knn", "linear", "labelprop", "finetune", "fixmatch", "meanteacher", "distill",
                                      "lp-ft"])
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
                   rows=split_rows(ds.ids, ds.labels, split, cfg.split.fraction), out_dir=tmp_path,
                   mask_source=masks_for)


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
    from ssl_derm.models.features import extract_features

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
    from ssl_derm.models.features import FeatureCache

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
