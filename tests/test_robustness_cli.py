"""``ssl-derm robustness``: the contract on a default-segmenter run folder and synthetic masks; the table's
drops and paired intervals; the one-line errors."""
import csv
import json

import numpy as np
import pytest

from ssl_derm.cli import main
from ssl_derm.robustness.report import metrics_json, summarise
from ssl_derm.robustness.shifts import SEVERITIES


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rob")
    assert main(["data", "synth", "--out", str(root / "synth"), "--n", "12", "--size", "48"]) == 0
    assert main(["segment", "--out", str(root / "seg"), f"data.images=[{root / 'synth/images'}]",
                 "data.image_size=48", "segment.write_masks=false"]) == 0
    return root


def test_contract_default_segmenter_on_synthetic_masks(seg_run):
    out = seg_run / "out"
    assert main(["robustness", "--model", str(seg_run / "seg"), "--images", str(seg_run / "synth/images"),
                 "--out", str(out), f"data.masks={seg_run / 'synth/masks'}", "image_size=48", "device=cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "segmenter" and m["method"] == "contrast_em" and m["n_images"] == 12
    assert len(m["shifts"]) >= 8
    for name, sh in m["shifts"].items():
        assert sorted(sh["severities"]) == ["1", "2", "3"]
        for cell in sh["severities"].values():
            assert 0 <= cell["jaccard"] <= 1
            assert cell["jaccard_drop"] == pytest.approx(m["clean"]["jaccard"]["value"] - cell["jaccard"])
            lo, hi = cell["jaccard_ci"]
            assert lo <= cell["jaccard"] <= hi
            dlo, dhi = cell["jaccard_drop_ci"]
            assert dlo <= cell["jaccard_drop"] + 1e-9 and cell["jaccard_drop"] <= dhi + 1e-9
    rows = list(csv.DictReader(open(out / "robustness.csv")))
    assert len(rows) == 2 * (1 + 3 * len(m["shifts"]))  # jaccard and dice, clean + every cell
    assert (out / "robustness.png").stat().st_size > 1000
    # seeded: a second run gives the same table
    out2 = seg_run / "out2"
    assert main(["robustness", "--model", str(seg_run / "seg"), "--images", str(seg_run / "synth/images"),
                 "--out", str(out2), f"data.masks={seg_run / 'synth/masks'}", "image_size=48", "device=cpu",
                 "shifts=[hair,zoom]"]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert sorted(m2["shifts"]) == ["hair", "zoom"]
    assert m2["shifts"]["hair"]["severities"]["2"]["jaccard"] == m["shifts"]["hair"]["severities"]["2"]["jaccard"]


def test_summary_drops_and_paired_intervals():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.6, 0.9, 40)
    results = {("clean", 0): {"jaccard": clean, "dice": clean},
               **{("blur", s): {"jaccard": clean - 0.05 * s, "dice": clean - 0.05 * s} for s in SEVERITIES}}
    rows = summarise(results, n_resamples=200)
    m = metrics_json(rows)
    for s in SEVERITIES:
        cell = m["shifts"]["blur"]["severities"][str(s)]
        assert cell["jaccard_drop"] == pytest.approx(0.05 * s)
        # every image dropped by exactly 0.05 s: the paired interval is that point, the unpaired one is wide
        assert cell["jaccard_drop_ci"] == pytest.approx([0.05 * s, 0.05 * s])
        assert cell["jaccard_ci"][1] - cell["jaccard_ci"][0] > 0.02
    assert m["worst_drop"]["jaccard"] == {"shift": "blur", "severity": 3, "drop": pytest.approx(0.15)}


def test_summary_of_a_classifier():
    y = np.array([0, 1] * 20)
    good = np.eye(2)[y] * 0.8 + 0.1  # always right
    bad = good.copy()
    bad[:10] = bad[:10, ::-1]  # 10 of 40 wrong
    rows = summarise({("clean", 0): good, ("jpeg", 1): bad, ("jpeg", 2): bad, ("jpeg", 3): bad}, y, n_resamples=200)
    m = metrics_json(rows)
    assert m["clean"]["balanced_accuracy"]["value"] == 1.0
    assert m["shifts"]["jpeg"]["severities"]["1"]["balanced_accuracy_drop"] == pytest.approx(0.25)


def test_errors_are_one_line(seg_run, capsys):
    base = ["robustness", "--model", str(seg_run / "seg"), "--images", str(seg_run / "synth/images"),
            "--out", str(seg_run / "bad")]
    assert main(base) == 2
    assert "data.masks=DIR" in capsys.readouterr().err
    assert main(base + [f"data.masks={seg_run / 'synth/masks'}", "shifts=[fog]"]) == 2
    err = capsys.readouterr().err
    assert "unknown shift" in err and "zoom" in err
    (seg_run / "empty").mkdir()
    assert main(base + [f"data.masks={seg_run / 'empty'}"]) == 1  # no <id>.png there: nothing to score
    assert "none of the 12 images has a mask" in capsys.readouterr().err
    assert main(base + [f"data.masks={seg_run / 'synth'}"]) == 1  # the images themselves: not binary masks
    assert "mask not binary" in capsys.readouterr().err


def test_a_finetuned_classifier_end_to_end(tmp_path):
    """A linear-probe run folder (labels with lesion ids left empty) under two shifts: balanced accuracy per
    shift and severity, its drop from clean and their intervals."""
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--n", "60", "--size", "32"]) == 0
    images, labels = tmp_path / "synth" / "images", tmp_path / "synth" / "labels.csv"
    assert main(["finetune", "--config", "finetune/linear", "--out", str(tmp_path / "lin"), f"data.images=[{images}]",
                 f"data.labels={labels}", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu",
                 "protocol.linear_C=[1.0]"]) == 0
    assert main(["robustness", "--model", str(tmp_path / "lin"), "--images", str(images), "--out",
                 str(tmp_path / "rob"), f"data.labels={labels}", "shifts=[blur,zoom]", "device=cpu"]) == 0
    m = json.loads((tmp_path / "rob" / "metrics.json").read_text())
    assert m["kind"] == "classifier" and m["main_metric"] == "balanced_accuracy" and set(m["shifts"]) == {"blur", "zoom"}
    for shift in m["shifts"].values():
        for sev in shift["severities"].values():
            assert 0 <= sev["balanced_accuracy"] <= 1 and len(sev["balanced_accuracy_drop_ci"]) == 2
            assert sev["balanced_accuracy_drop"] == pytest.approx(m["clean"]["balanced_accuracy"]["value"] - sev["balanced_accuracy"])
