"""Skin tone: the ITA estimate against the synthetic set's true skin tone, the groups, glare and hair, the
per-group block (too-few groups carry no score) and the CSV that data check and segment write."""
import csv
import json

import numpy as np
import pytest

from ssl_derm.data.synth import synth_arrays, synth_ita
from ssl_derm.metrics.skin_tone import GROUPS, ita_degrees, ita_group, skin_tone_block
from ssl_derm.segmenters.skin_tone import MIN_SKIN_PIXELS, dataset_ita, default_ita, image_ita

# mean absolute error of the estimate, degrees, on 96 synthetic images at 64 px (measured: 1.3)
MAX_MEAN_ABS_ERROR = 2.5


def test_ita_formula_and_group_edges():
    assert ita_degrees(50.0, 10.0) == pytest.approx(0.0)
    assert ita_degrees(60.0, 10.0) == pytest.approx(45.0)
    assert ita_group([56, 55, 41, 40.9, 28, 10, 9.9, -30, -30.1, np.nan]) == [
        "very_light", "very_light", "light", "intermediate", "intermediate", "tan", "brown", "brown", "dark", "unknown"]


def test_ita_estimate_matches_the_synthetic_truth_across_all_groups():
    images, _, _ = synth_arrays(96, 64, seed=1)
    true = synth_ita(96, 64, seed=1)
    assert set(ita_group(true)) == set(GROUPS)  # the synthetic set draws every tone
    est = default_ita(images)
    err = np.abs(est - true)
    assert np.isfinite(est).all()
    assert err.mean() < MAX_MEAN_ABS_ERROR, err.mean()
    assert np.mean(np.array(ita_group(est)) == np.array(ita_group(true))) > 0.85


def _flat(rgb, size=64):
    return np.tile(np.array(rgb, np.uint8), (1, size, size, 1))


def test_glare_and_hair_are_left_out_of_the_skin():
    skin = _flat((170, 120, 100))
    lesion = np.zeros((1, 64, 64), np.uint8)
    lesion[0, 24:40, 24:40] = 1
    clean = image_ita(skin, lesion)[0]
    # two thirds of the columns glare, or two of every three rows thin dark hair: a median over all the
    # pixels would be the glare's or the hair's, so only leaving them out keeps the skin's value
    glare = skin.copy()
    glare[0, :, (np.arange(64) // 8) % 3 != 0] = (250, 250, 250)  # 8-px stripes (highlights are blobs)
    hair = skin.copy()
    hair[0, np.arange(64) % 3 != 0, :] = (60, 40, 30)
    assert abs(image_ita(glare, lesion)[0] - clean) < 1.0
    assert abs(image_ita(hair, lesion)[0] - clean) < 1.0
    too_small = np.ones((1, 64, 64), np.uint8)  # lesion everywhere: no skin left
    assert np.isnan(image_ita(skin, too_small)[0]) and MIN_SKIN_PIXELS > 0


def test_block_reports_too_few_groups_without_a_number_and_the_gap():
    rng = np.random.default_rng(0)
    n_light, n_tan, n_dark = 60, 50, 7
    ita = np.concatenate([np.full(n_light, 45.0), np.full(n_tan, 20.0), np.full(n_dark, -40.0)])
    y = rng.integers(0, 2, len(ita))
    probs = np.zeros((len(ita), 2))
    right = np.concatenate([rng.random(n_light) < 0.9, rng.random(n_tan) < 0.6, np.ones(n_dark, bool)])
    pred = np.where(right, y, 1 - y)
    probs[np.arange(len(y)), pred] = 0.8
    probs[np.arange(len(y)), 1 - pred] = 0.2
    block = skin_tone_block(y, probs, ita, ["a", "b"], n_resamples=200)
    g = block["groups"]
    assert g["dark"] == {"n": 7, "status": "too_few"} and g["very_light"] == {"n": 0, "status": "too_few"}
    assert g["light"]["n"] == 60 and g["tan"]["n"] == 50
    lo, hi = g["light"]["balanced_accuracy_ci"]
    assert lo <= g["light"]["balanced_accuracy"] <= hi
    gap = block["worst_group_gap"]
    want = g["light"]["balanced_accuracy"] - g["tan"]["balanced_accuracy"]
    assert gap["balanced_accuracy"] == pytest.approx(want) and want > 0.1
    assert gap["balanced_accuracy_best"] == "light" and gap["balanced_accuracy_worst"] == "tan"
    assert gap["balanced_accuracy_ci"][0] < want < gap["balanced_accuracy_ci"][1]
    one = skin_tone_block(y[:60], probs[:60], ita[:60], ["a", "b"], n_resamples=20)
    assert "status" in one["worst_group_gap"]  # one group scored: no gap


def test_dataset_ita_is_cached_beside_the_image_cache(tmp_path):
    from ssl_derm.cli import main
    from ssl_derm.config import DataConfig
    from ssl_derm.data import load_dataset

    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "24", "--size", "48"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "labels.csv")))
    assert len(rows) == 24 and all(-90 < float(r["ita"]) < 90 for r in rows)
    ds = load_dataset(DataConfig(images=[str(tmp_path / "s" / "images")], image_size=32,
                                 cache_dir=str(tmp_path / "cache")))
    first = dataset_ita(ds)
    files = list((tmp_path / "cache").glob("skin-tone-*.npy"))
    assert len(files) == 1 and len(first) == 24
    np.save(files[0], np.full(24, 12.5, np.float32))  # the second call reads the file
    assert (dataset_ita(ds) == 12.5).all()
    true = {r["image_id"]: float(r["ita"]) for r in rows}
    err = np.abs(first - np.array([true[i] for i in ds.ids]))
    assert np.nanmean(err) < 2 * MAX_MEAN_ABS_ERROR  # 32 px, JPEG files: looser than at 64 px


def test_data_check_and_segment_write_skin_tone_csv(tmp_path):
    from ssl_derm.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "16", "--size", "48"]) == 0
    assert main(["data", "check", str(tmp_path / "s" / "images"), "--out", str(tmp_path / "check"), "--size", "32",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "check" / "skin_tone.csv")))
    assert len(rows) == 16 and {r["group"] for r in rows} <= set(GROUPS) and rows[0]["ita"]
    assert main(["segment", "--out", str(tmp_path / "seg"), f"data.images=[{tmp_path / 's' / 'images'}]",
                 "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu",
                 "segment.overlay_n=0"]) == 0
    seg = list(csv.DictReader(open(tmp_path / "seg" / "skin_tone.csv")))
    assert sorted(r["image_id"] for r in seg) == sorted(r["image_id"] for r in rows)
    m = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert sum(m["skin_tone"][g] for g in GROUPS + ("unknown",)) == 16


def test_sweep_table_has_a_column_per_scored_group_and_the_gap(tmp_path):
    from ssl_derm.commands.sweep import write_tables

    def block(light, tan_n):
        tan = {"n": tan_n, "status": "too_few"} if tan_n < 20 else {"n": tan_n, "balanced_accuracy": 0.5,
                                                                    "balanced_accuracy_ci": [0.4, 0.6]}
        groups = {g: {"n": 0, "status": "too_few"} for g in GROUPS}
        groups.update(light={"n": 40, "balanced_accuracy": light, "balanced_accuracy_ci": [light - 0.1, light + 0.1]},
                      tan=tan)
        gap = {"balanced_accuracy": light - 0.5, "balanced_accuracy_ci": [0.0, 0.3]} if tan_n >= 20 else {"status": "x"}
        return {"balanced_accuracy": 0.6, "ece": 0.1, "skin_tone": {"groups": groups, "worst_group_gap": gap}}

    cells = [{"id": "a", "values": {"init": "random"}, "seed": 0},
             {"id": "b", "values": {"init": "pretrained"}, "seed": 0}]
    for c, m in zip(cells, (block(0.7, 30), block(0.8, 5))):
        (tmp_path / "cells" / c["id"]).mkdir(parents=True)
        (tmp_path / "cells" / c["id"] / "metrics.json").write_text(json.dumps(m))
    rows = write_tables(tmp_path, {"grid": {"init": ["random", "pretrained"]}}, cells)
    assert rows[0]["skin_tone.groups.light.balanced_accuracy"] == 0.7
    tan = "skin_tone.groups.tan.balanced_accuracy"
    assert rows[0][tan] == 0.5 and rows[1][tan] is None
    assert rows[0]["skin_tone.worst_group_gap.balanced_accuracy"] == pytest.approx(0.2) and rows[0]["ece"] == 0.1
    assert rows[0]["skin_tone.groups.light.balanced_accuracy_ci"] == pytest.approx([0.6, 0.8])
    assert "skin_tone.groups.dark.balanced_accuracy" not in rows[0]  # no cell scored it
    md = (tmp_path / "results.md").read_text()
    assert "too_few" in md.splitlines()[-1]  # the pretrained row's tan column
