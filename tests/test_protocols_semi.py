"""Semi-supervised protocols end to end: FixMatch (fixed and FreeMatch thresholds) and label spreading, on the
tiny synthetic data and helpers of test_protocols.py."""
import numpy as np
import pytest
import torch

from ssl_derm.config import ConfigError
from ssl_derm.data.synth import SYNTH_CLASSES
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.evaluate.fixmatch import FixMatchTrainer
from ssl_derm.commands.finetune import run_finetune
from test_protocols import _cfg, _ctx, data  # noqa: F401  (data is a fixture)


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
