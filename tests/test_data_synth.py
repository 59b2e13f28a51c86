"""Synthetic lesions: shapes, determinism, exact masks, files on disk, classes learnable but not trivial."""
import csv

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from ssl_derm.data import SYNTH_CLASSES, synth_arrays, write_synthetic
from ssl_derm.data.synth import synth_ita


def test_shapes_and_determinism():
    im, m, y = synth_arrays(70, 40, seed=5)
    assert im.shape == (70, 40, 40, 3) and im.dtype == np.uint8
    assert m.shape == (70, 40, 40) and m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(len(SYNTH_CLASSES)))
    im2, m2, y2 = synth_arrays(70, 40, seed=5)
    assert (im == im2).all() and (m == m2).all() and (y == y2).all()
    im3, _, _ = synth_arrays(70, 40, seed=6)
    assert not (im == im3).all()
    area = m.reshape(70, -1).mean(1)
    assert (area > 0.005).all() and (area < 0.9).all() and im.std() > 20  # a lesion in every image, varied pixels


def test_masks_are_exact_lesion_outlines():
    im, m, _ = synth_arrays(60, 64, seed=0)
    # The lesion is darker or redder than the skin just around it: compare the mask with a ring outside it.
    from scipy.ndimage import binary_dilation

    contrast = []
    for i in range(len(im)):
        ring = binary_dilation(m[i], iterations=4) & ~binary_dilation(m[i], iterations=1)
        inside, outside = im[i][m[i] > 0].astype(float), im[i][ring].astype(float)
        contrast.append(np.abs(inside.mean(0) - outside.mean(0)).sum())
    assert np.median(contrast) > 40
    # Shifting the mask by a few pixels makes it fit worse: the outline is where the lesion edge is.
    shifted = [np.abs(im[i][np.roll(m[i], 6, axis=1) > 0].astype(float).mean(0)
                      - im[i][m[i] > 0].astype(float).mean(0)).sum() for i in range(len(im))]
    assert np.median(shifted) > 5


def test_write_synthetic_layout(tmp_path, capsys):
    out = write_synthetic(tmp_path / "syn", n=12, size=32, seed=2)
    assert "wrote 12 synthetic lesions" in capsys.readouterr().out
    im, m, y = synth_arrays(12, 32, seed=2)
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert list(rows[0]) == ["image_id", "label", "lesion_id", "ita"] and len(rows) == 12
    true_ita = synth_ita(12, 32, seed=2)
    for i, r in enumerate(rows):
        assert r["label"] == SYNTH_CLASSES[y[i]] and float(r["ita"]) == pytest.approx(true_ita[i], abs=0.006)
        mask = Image.open(out / "masks" / f"{r['image_id']}.png")
        assert mask.mode == "L" and (np.asarray(mask) == m[i] * 255).all()
        jpg = np.asarray(Image.open(out / "images" / f"{r['image_id']}.jpg")).astype(int)
        assert np.abs(jpg - im[i]).mean() < 6  # JPEG quality 95
    same_lesion = {}
    for r in rows:  # images of one lesion share its class
        same_lesion.setdefault(r["lesion_id"], set()).add(r["label"])
    assert all(len(v) == 1 for v in same_lesion.values())


def test_classes_learnable_but_not_trivial():
    im, m, y = synth_arrays(400, 48, seed=0)
    flat = im.reshape(len(im), -1, 3).astype(float)
    global_stats = np.concatenate([flat.mean(1), flat.std(1)], 1)  # no idea where the lesion is
    lesion_stats = np.stack([np.r_[im[i][m[i] > 0].mean(0), im[i][m[i] > 0].std(0), m[i].mean()] for i in range(len(im))])

    def acc(f):
        f = (f - f.mean(0)) / (f.std(0) + 1e-9)
        return cross_val_score(LogisticRegression(max_iter=3000), f, y, cv=4).mean()

    majority = np.bincount(y).max() / len(y)
    assert acc(global_stats) < 0.75  # colour histograms alone do not solve it
    assert acc(lesion_stats) > max(0.7, majority + 0.25)  # but knowing the lesion does
