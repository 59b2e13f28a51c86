"""``ssl-derm label-efficiency``: the pretrained-vs-random table and its paired-by-seed differences, on the tiny
synthetic data and helpers of support.py."""
import json

import torch

from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.commands.label_efficiency import run_label_efficiency
from support import ENCODER, SIZE, protocol_cfg


def test_label_efficiency_table(data, tmp_path):
    ds, split = data
    torch.manual_seed(1)
    ck = export_encoder(create_encoder(ENCODER, SIZE), tmp_path / "enc" / "encoder.safetensors")
    base = protocol_cfg("knn")
    rows = run_label_efficiency(base, ck, [0.25, 1.0], ["knn", "linear"], [0], tmp_path / "le", dataset=ds, split=split)
    assert len(rows) == 2 * 2 * 2
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert "| knn | 25% |" in md and "| linear | 100% |" in md
    csv_lines = (tmp_path / "le" / "label_efficiency.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 8
    # finished cells are skipped on a second call (resumable)
    mtime = (tmp_path / "le" / "cells" / "init-random_name-knn_fraction-0.25_seed-0" / "metrics.json").stat().st_mtime
    (tmp_path / "le" / "cells" / "notes").mkdir()  # a stray folder is not a cell, even with a metrics.json
    (tmp_path / "le" / "cells" / "notes" / "metrics.json").write_text("{}")
    run_label_efficiency(base, ck, [0.25], ["knn"], [0], tmp_path / "le", dataset=ds, split=split)
    assert (tmp_path / "le" / "cells" / "init-random_name-knn_fraction-0.25_seed-0" / "metrics.json").stat().st_mtime == mtime
    # a call for part of the grid still tabulates every finished cell in the folder, fractions in order
    assert len((tmp_path / "le" / "label_efficiency.csv").read_text().strip().splitlines()) == 1 + 8
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert md.index("| knn | 25% |") < md.index("| knn | 100% |") < md.index("| linear | 25% |")


def test_label_efficiency_differences_are_paired_by_seed(tmp_path):
    from ssl_derm.commands.sweep.paired import write_paired

    def row(init, protocol, fraction, seed, ba):
        return {"init": init, "protocol": protocol, "fraction": fraction, "seed": seed, "balanced_accuracy": ba,
                "accuracy": None, "macro_f1": None, "macro_auroc": None, "n_labelled": 10, "seconds": 1.0}

    rows = [row("pretrained", "knn", 0.1, s, v) for s, v in enumerate([0.40, 0.45, 0.50])]
    # random has a 4th seed with no pretrained partner: it counts in its mean but not in the difference
    rows += [row("random", "knn", 0.1, s, v) for s, v in enumerate([0.30, 0.40, 0.35, 0.95])]
    rows += [row("random", "knn", 1.0, 0, 0.42), row("pretrained", "knn", 1.0, 0, 0.60)]
    rows += [row("pretrained", "linear", 0.1, 0, 0.50), row("random", "linear", 1.0, 0, 0.90)]
    write_paired(tmp_path, rows)
    md = (tmp_path / "label_efficiency.md").read_text()
    # paired differences +10, +5, +15: mean 10.0, std 5.0, 95% t half-width 4.303 * 5 / sqrt(3) = 12.4
    assert "| knn | 10% | 10 | 45.0 ± 5.0 | 50.0 ± 30.3 | +10.0 ± 5.0 | [-2.4, +22.4] | 4 / 3 |" in md
    assert "| knn | 100% | 10 | 60.0 | 42.0 | +18.0 | - | 1 / 1 |" in md
    assert "| linear | 10% | 10 | 50.0 | - | - | - | 1 / 0 |" in md
    assert "- knn: random init with 100% of the labels 42.0; pretrained reaches it with 10% of the labels" in md
    assert "- linear: random init with 100% of the labels 90.0; pretrained reaches it with none of the fractions run" in md


def _synthetic(tmp_path):
    return {"data.images": ["synthetic"], "data.synthetic_n": 80, "data.image_size": 32,
            "data.cache_dir": str(tmp_path / "cache"), "device": "cpu"}


def test_the_packaged_sweep_writes_the_same_report_with_per_protocol_keys(tmp_path):
    """`ssl-derm sweep configs/sweeps/label_efficiency.yaml checkpoint=...` is the label-efficiency table: its
    paired report, and a protocol's own keys (``finetune.per_protocol``) reach only that protocol's cells."""
    import yaml

    from ssl_derm.cli import main

    torch.manual_seed(2)
    ck = export_encoder(create_encoder(ENCODER, 32), tmp_path / "encoder.safetensors")
    sets = [f"finetune.set.{k}={json.dumps(v)}" for k, v in _synthetic(tmp_path).items()]
    assert main(["sweep", "configs/sweeps/label_efficiency.yaml", "--out", str(tmp_path / "sw"), f"checkpoint={ck}",
                 "seeds=[0]", "grid.finetune.split.fraction=[1.0]", f"finetune.set.encoder.name={ENCODER}",
                 "finetune.per_protocol={linear: {protocol.linear_C: [0.5]}}", *sets]) == 0
    md = (tmp_path / "sw" / "label_efficiency.md").read_text()
    assert "| knn | 100% |" in md and "| linear | 100% |" in md and "difference" in md
    cells = tmp_path / "sw" / "cells"
    lin = yaml.safe_load((cells / "init-pretrained_name-linear_fraction-1.0_seed-0" / "config.yaml").read_text())
    knn = yaml.safe_load((cells / "init-pretrained_name-knn_fraction-1.0_seed-0" / "config.yaml").read_text())
    assert lin["protocol"]["linear_C"] == [0.5] and "linear_C" not in knn["protocol"]
    assert lin["encoder"]["checkpoint"] == str(ck)
    rnd = yaml.safe_load((cells / "init-random_name-linear_fraction-1.0_seed-0" / "config.yaml").read_text())
    assert rnd["encoder"]["checkpoint"] in (None, "none") and rnd["protocol"]["linear_C"] == [0.5]


def test_the_tables_cover_an_earlier_grid_only_for_the_same_setting(tmp_path):
    """A second call into the folder with other fractions tabulates both calls' cells; with another setting
    (here the kNN temperature) the earlier cells are not this table's and are left out."""
    from ssl_derm.commands.sweep import run_sweep

    spec = {"seeds": [0], "downstream": "finetune", "common": _synthetic(tmp_path),
            "finetune": {"config": "configs/finetune/knn.yaml", "set": {"encoder.name": ENCODER}},
            "grid": {"init": ["random"], "finetune.split.fraction": [1.0]}}
    run_sweep(spec, out=tmp_path / "sw")
    run_sweep(dict(spec, grid={"init": ["random"], "finetune.split.fraction": [0.5]}), out=tmp_path / "sw")
    md = (tmp_path / "sw" / "label_efficiency.md").read_text()
    assert "| 50% |" in md and "| 100% |" in md
    assert len((tmp_path / "sw" / "results.csv").read_text().strip().splitlines()) == 1 + 2
    other = dict(spec, grid={"init": ["random"], "finetune.split.fraction": [0.25]})
    other["finetune"] = {**spec["finetune"], "set": {**spec["finetune"]["set"], "protocol.knn_temperature": 0.5}}
    run_sweep(other, out=tmp_path / "sw")
    md = (tmp_path / "sw" / "label_efficiency.md").read_text()
    assert "| 25% |" in md and "| 50% |" not in md and "| 100% |" not in md
