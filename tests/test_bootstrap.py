"""Bootstrap intervals: the vectorised resamples equal a plain loop over classification_metrics."""
import numpy as np

from ssl_derm.metrics.bootstrap import (classification_cis, mean_cis, percentile_ci, resample_weights,
                                         resampled_classification)
from ssl_derm.metrics.classification import classification_metrics


def _toy(n=40, k=3, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    logits[::7] = np.round(logits[::7])  # some tied scores
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_weights_resample_whole_groups():
    groups = ["a", "a", "b", "c", "c", "c"]
    w = resample_weights(groups, 6, n_resamples=50, seed=0)
    assert w.shape == (50, 6)
    assert np.allclose(w[:, 0], w[:, 1]) and np.allclose(w[:, 3], w[:, 5])  # one lesion, one count
    assert np.allclose(w[:, [0, 2, 3]].sum(1), 3)  # 3 groups drawn per resample


def test_vectorised_scores_match_a_loop():
    y, p = _toy()
    w = resample_weights(None, len(y), n_resamples=30, seed=3)
    fast = resampled_classification(y, p, w)
    for b in range(30):
        idx = np.repeat(np.arange(len(y)), w[b].astype(int))
        ref = classification_metrics(y[idx], p[idx], ["x", "y", "z"])
        for m in ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc"):
            assert np.isclose(fast[m][b], ref[m]), (m, b, fast[m][b], ref[m])


def test_interval_by_hand_and_fixed_seed():
    y, p = _toy(n=60)
    ci = classification_cis(y, p)
    again = classification_cis(y, p)
    assert ci == again  # fixed seed
    w = resample_weights(None, len(y))
    acc = np.array([(w[b] * (p.argmax(1) == y)).sum() / w[b].sum() for b in range(len(w))])
    assert np.allclose(ci["accuracy_ci"], np.percentile(acc, [2.5, 97.5]))
    point = classification_metrics(y, p, ["x", "y", "z"])
    for m in ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc"):
        lo, hi = ci[f"{m}_ci"]
        assert lo <= point[m] <= hi and hi - lo > 0


def test_mean_cis_and_empty():
    vals = np.linspace(0, 1, 21)
    ci = mean_cis({"dice": vals})["dice_ci"]
    assert ci[0] < 0.5 < ci[1]
    assert percentile_ci(np.array([np.nan])) is None
