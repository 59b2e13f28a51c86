"""Metrics, kNN, linear probe and FixMatch masking against hand-computed values."""
import numpy as np
import pytest
import torch

from ssl_derm.evaluate.fixmatch import fixmatch_unlabeled_loss
from ssl_derm.evaluate.knn import inverse_frequency, weighted_knn_predict, weighted_knn_probs
from ssl_derm.evaluate.linear import fit_linear, predict_probs
from ssl_derm.evaluate.meanteacher import consistency_loss, sigmoid_rampup
from ssl_derm.metrics.classification import classification_metrics, save_confusion_png

CLASSES = ["a", "b", "c"]


def test_metrics_match_hand_computed():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 1])
    probs = np.eye(3)[pred] * 0.7 + 0.1  # rows sum to 1, argmax = pred
    m = classification_metrics(y, probs, CLASSES)
    # recalls: a 3/4, b 1/2, c 1/2 -> balanced 0.58333; accuracy 5/8
    assert m["per_class_recall"] == {"a": 0.75, "b": 0.5, "c": 0.5}
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    # precision a 3/4, b 1/3, c 1/1; F1 a 0.75, b 2*(1/3*1/2)/(1/3+1/2)=0.4, c 2*0.5/1.5=2/3
    assert m["macro_f1"] == pytest.approx((0.75 + 0.4 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert m["n"] == 8


def test_auroc_by_hand_and_absent_class():
    y = np.array([0, 0, 1, 1])
    # class-a scores 0.9, 0.4 for positives and 0.6, 0.1 for negatives: 3 of 4 pairs ordered -> 0.75
    p_a = np.array([0.9, 0.4, 0.6, 0.1])
    probs = np.stack([p_a, 1 - p_a, np.zeros(4)], 1)
    m = classification_metrics(y, probs, CLASSES)
    assert m["per_class_auroc"]["a"] == pytest.approx(0.75)
    assert m["per_class_auroc"]["b"] == pytest.approx(0.75)
    assert m["macro_auroc"] == pytest.approx(0.75)
    assert m["auroc_classes_skipped"] == ["c"]  # absent from the test side: said, not averaged as 0 or 1
    assert m["per_class_recall"]["c"] is None
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall a 1/2 (0.9 vs 0.4), b 1/2


def test_metrics_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)) / 2, CLASSES)
    with pytest.raises(ValueError, match="unlabelled"):
        classification_metrics(np.array([0, -1]), np.ones((2, 3)) / 3, CLASSES)
    png = save_confusion_png(np.array([[2, 1, 0], [0, 3, 0], [1, 0, 1]]), CLASSES, tmp_path / "cm.png", "t")
    assert png.stat().st_size > 1000


def test_weighted_knn_hand_example():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # similarities 1, 0, 0.8; k=2 keeps 1 (class 0) and 0.8 (class 1); weights exp(s/T), T=0.5
    p = weighted_knn_probs(train, labels, query, 2, k=2, temperature=0.5)
    w0, w1 = np.exp(1 / 0.5), np.exp(0.8 / 0.5)
    assert p[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-5)
    # class weights can flip the vote: inverse frequency of labels [0,1,1] is [1.5, 0.75]
    cw = torch.from_numpy(inverse_frequency(labels.numpy(), 2)).float()
    assert cw.tolist() == pytest.approx([1.5, 0.75])
    assert weighted_knn_predict(train, labels, query, 2, k=3, temperature=10.0).tolist() == [1]
    assert weighted_knn_probs(train, labels, query, 2, k=3, temperature=10.0, class_weights=cw).argmax(1).tolist() == [0]


def _separable(n_per, k=4, d=32, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (k, d)) * 4
    x = np.concatenate([means[c] + rng.normal(0, 1, (n_per, d)) for c in range(k)])
    y = np.repeat(np.arange(k), n_per)
    return x.astype(np.float32), y


def test_knn_and_linear_near_perfect_on_separable_features():
    xtr, ytr = _separable(20, seed=0)
    xte, yte = _separable(50, seed=0)  # same means, new noise
    xte = xte + np.random.default_rng(1).normal(0, 0.5, xte.shape).astype(np.float32)
    names = ["w", "x", "y", "z"]
    p_knn = weighted_knn_probs(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), 4, k=10).numpy()
    assert classification_metrics(yte, p_knn, names)["balanced_accuracy"] >= 0.97
    scaler, clf = fit_linear(xtr, ytr, C=1.0, balanced=True, max_iter=500, seed=0)
    m = classification_metrics(yte, predict_probs(scaler, clf, xte, 4), names)
    assert m["balanced_accuracy"] >= 0.97 and m["macro_auroc"] >= 0.99


def test_fixmatch_mask_and_loss_hand_made_logits():
    weak = torch.tensor([[5.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0]])  # confident, unsure, confident
    strong = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss, mask = fixmatch_unlabeled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 0, 2]), reduction="none")
    assert loss.item() == pytest.approx(((ce[0] + ce[2]) / 3).item())  # divided by all 3 images
    assert loss.item() > 0
    loss0, mask0 = fixmatch_unlabeled_loss(weak, strong, threshold=1.0)
    assert mask0.sum() == 0 and loss0.item() == 0.0
    # no gradient reaches the weak view (it only makes targets)
    w = weak.clone().requires_grad_(True)
    s = strong.clone().requires_grad_(True)
    fixmatch_unlabeled_loss(w, s, 0.5)[0].backward()
    assert w.grad is None and s.grad.abs().sum() > 0


def test_mean_teacher_pieces():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[10.0, -10.0]])
    assert consistency_loss(s, t).item() == pytest.approx(0.5, abs=1e-4)  # (0.5-1)^2 + (0.5-0)^2
    assert consistency_loss(t, t).item() == 0.0
    assert sigmoid_rampup(0, 0) == 1.0 and sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(0, 10) == pytest.approx(np.exp(-5))


def test_seg_pieces_keep_image_and_mask_aligned():
    from ssl_derm.evaluate.fewmask_seg import flip_rotate
    from ssl_derm.models.unet import dice_bce_loss

    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 1:4, 2:6] = 1
    x = m.repeat(1, 3, 1, 1) * 200  # the image is the mask, so any misalignment shows
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        xa, ma = flip_rotate(x, m, gen)
        assert torch.equal(xa[:, :1] / 200, ma)
    good = dice_bce_loss((m * 2 - 1) * 20, m)
    bad = dice_bce_loss((1 - 2 * m) * 20, m)
    assert good.item() < 0.01 and bad.item() > 1.0
