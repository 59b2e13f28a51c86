"""``ssl-derm label-efficiency``: the pretrained-vs-random table and its paired-by-seed differences, on the tiny
synthetic data and helpers of test_protocols.py."""
import json

import torch

from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.commands.label_efficiency import run_label_efficiency
from test_protocols import ENCODER, SIZE, _cfg, data  # noqa: F401  (data is a fixture)


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
    from ssl_derm.commands.label_efficiency import write_tables

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
