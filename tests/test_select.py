"""Choosing hyperparameters on validation (ssl_derm.select, the sweep's select key, benchmarks/select_on_val.py)."""
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import t as student_t

from ssl_derm.errors import ConfigError
from ssl_derm.select import check_select, select_on_val, selection_lines
from support import sweep_spec

KEYS = ["init", "lr"]


def _row(init, lr, seed, val, test):
    return {"init": init, "lr": lr, "seed": seed, "val.ba": val, "ba": test}


def _grid():
    """pretrained: lr 1e-3 has the best test but lr 1e-4 the best val; random: lr 1e-3 is best on both."""
    rows = []
    for s in range(3):
        rows += [_row("pretrained", 1e-3, s, 0.30 + 0.01 * s, 0.60 + 0.01 * s),
                 _row("pretrained", 1e-4, s, 0.40 + 0.01 * s, 0.50 + 0.02 * s),
                 _row("random", 1e-3, s, 0.35, 0.30 + 0.03 * s),
                 _row("random", 1e-4, s, 0.20, 0.90)]
    return rows


def test_the_setting_is_chosen_on_validation_and_reported_on_test():
    res = select_on_val(_grid(), KEYS, ["lr"], "val.ba", ["ba"], paired="init")
    chosen = {c["group"]["init"]: c for c in res["chosen"]}
    assert chosen["pretrained"]["setting"] == (("lr", 1e-4),)  # not 1e-3, whose *test* score is higher
    assert chosen["random"]["setting"] == (("lr", 1e-3),)
    assert chosen["pretrained"]["val"] == pytest.approx({(("lr", 1e-3),): 0.31, (("lr", 1e-4),): 0.41})
    assert [r["ba"] for r in chosen["pretrained"]["rows"]] == [0.50, 0.52, 0.54]
    # pretrained at lr 1e-4 minus random at lr 1e-3, seed by seed: 0.20, 0.19, 0.18
    (pair,) = res["paired"]
    mean, std, half, n = pair["diffs"]["ba"]
    d = np.array([0.20, 0.19, 0.18])
    assert (mean, std, n) == (pytest.approx(d.mean()), pytest.approx(d.std(ddof=1)), 3)
    assert half == pytest.approx(student_t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3))
    md = "\n".join(selection_lines(res, ["lr"], "val.ba", ["ba"], "init", scale=100))
    assert "| pretrained | 0.0001 |" in md and "+19.0 | [" in md


def test_settings_with_other_seeds_or_no_val_score_are_not_chosen_from():
    rows = [r for r in _grid() if not (r["init"] == "random" and r["lr"] == 1e-4 and r["seed"] == 2)]
    res = select_on_val(rows, KEYS, ["lr"], "val.ba", ["ba"], paired="init")
    random = next(c for c in res["chosen"] if c["group"]["init"] == "random")
    assert random["setting"] is None and "differ in seeds" in random["why"]
    assert res["paired"] == []  # no difference is reported against a start that has no choice
    rows = [dict(r, **{"val.ba": None}) if r["init"] == "pretrained" and r["seed"] == 1 else r for r in _grid()]
    pre = select_on_val(rows, KEYS, ["lr"], "val.ba", ["ba"])["chosen"][0]
    assert pre["setting"] is None and "no 'val.ba'" in pre["why"]


@pytest.mark.parametrize("sel, msg", [
    ({"by": "balanced_accuracy", "tune": ["finetune.train.lr"]}, "not a validation score"),
    ({"by": "val.balanced_accuracy", "tune": ["finetune.train.wd"]}, "must name grid keys"),
    ({"by": "val.balanced_accuracy", "tune": ["init"], "paired": "init"}, "untuned grid key"),
    ({"by": "val.balanced_accuracy"}, "needs 'by'"),
])
def test_bad_select_keys_are_named(sel, msg):
    spec = {"grid": {"init": ["pretrained", "random"], "finetune.train.lr": [1e-3, 1e-4]}, "select": sel}
    with pytest.raises(ConfigError, match=msg):
        check_select("s.yaml", spec)


def test_sweep_select_picks_each_inits_best_val_setting(tmp_path):
    from ssl_derm.commands.sweep import run_sweep

    spec = yaml.safe_load(sweep_spec(tmp_path).read_text())  # support's tiny kNN sweep, with its own grid
    spec["metrics"] = ["balanced_accuracy"]
    spec["grid"] = {"init": ["pretrained", "random"], "finetune.protocol.knn_k": [1, 9]}
    spec["select"] = {"by": "val.balanced_accuracy", "tune": ["finetune.protocol.knn_k"], "paired": "init"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # cell ids follow the grid's key order
    root = run_sweep(path, out=tmp_path / "sw")
    cells = {}
    for p in (root / "cells").glob("*/metrics.json"):
        m = json.loads(p.read_text())
        cells[p.parent.name] = (m["val"]["balanced_accuracy"], m["balanced_accuracy"])
    with open(root / "selected.csv") as f:
        got = list(csv.DictReader(f))
    for init in ("pretrained", "random"):
        val = {k: np.mean([cells[f"init-{init}_knn_k-{k}_seed-{s}"][0] for s in (0, 1)]) for k in (1, 9)}
        best = 1 if val[1] >= val[9] else 9
        mine = [r for r in got if r["init"] == init]
        assert {int(r["finetune.protocol.knn_k"]) for r in mine} == {best}
        assert sorted(float(r["balanced_accuracy"]) for r in mine) == pytest.approx(
            sorted(cells[f"init-{init}_knn_k-{best}_seed-{s}"][1] for s in (0, 1)))
    assert "Paired by seed: init = pretrained - random" in (root / "selected.md").read_text()


def _cell(folder: Path, init: str, seed: int, lr: float, wd: float = 0.05, val: float = 0.3):
    """A finished cell of a label-efficiency sweep folder (its sweep.json grows to plan it)."""
    cdir = folder / "cells" / f"init-{init}_name-finetune_fraction-0.01_seed-{seed}"
    cdir.mkdir(parents=True)
    path = folder / "sweep.json"
    spec = json.loads(path.read_text()) if path.is_file() else {
        "seeds": [], "downstream": "finetune", "grid": {"init": [], "finetune.protocol.name": ["finetune"],
                                                        "finetune.split.fraction": [0.01]}}
    spec["seeds"] = sorted({*spec["seeds"], seed})
    spec["grid"]["init"] = sorted({*spec["grid"]["init"], init})
    path.write_text(json.dumps(spec))
    cfg = {"seed": seed, "train": {"lr": lr, "weight_decay": wd, "num_threads": 1}, "split": {"fraction": 0.01}}
    (cdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (cdir / "metrics.json").write_text(json.dumps({"balanced_accuracy": val + 0.1, "accuracy": 0.5,
                                                   "val": {"balanced_accuracy": val}}))


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "select_on_val.py"
    spec = importlib.util.spec_from_file_location("select_on_val_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_reads_the_tuned_value_from_each_cell_and_refuses_another_difference(tmp_path, capsys):
    bench = _bench()
    for i, lr in enumerate((2e-3, 6e-4)):
        for s in (0, 1):
            _cell(tmp_path / f"a{i}", "pretrained", s, lr, val=0.3 + 0.1 * i)
            _cell(tmp_path / f"a{i}", "random", s, lr, val=0.3 - 0.1 * i)
    assert bench.main([str(tmp_path / "a0"), str(tmp_path / "a1"), "--tune", "train.lr", "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "selected.md").read_text()
    assert "| finetune | 0.01 | pretrained | 0.0006 |" in md and "| finetune | 0.01 | random | 0.002 |" in md
    _cell(tmp_path / "b", "pretrained", 0, 2e-4, wd=0.1)  # another weight decay as well: not comparable
    with pytest.raises(SystemExit, match=r"differ in \['train.weight_decay'\]"):
        bench.main([str(tmp_path / "a0"), str(tmp_path / "b"), "--tune", "train.lr"])
    with pytest.raises(SystemExit, match="the same cell with the same"):
        bench.main([str(tmp_path / "a0"), str(tmp_path / "a0"), "--tune", "train.lr"])
