import csv

from ssl_derm.commands.sweep import plan_cells, run_sweep
from support import sweep_spec


def _rows(root):
    with open(root / "results.csv") as f:
        return list(csv.DictReader(f))


def test_plan_routes_keys_and_shares_pretraining(tmp_path):
    from ssl_derm.commands.sweep import load_sweep

    cells = plan_cells(load_sweep(sweep_spec(tmp_path)))
    assert len(cells) == 8
    pre = {str(sorted(c["pretrain"].items())) for c in cells if c["pretrain"] is not None}
    assert len(pre) == 1  # one pretraining serves every pretrained cell and seed
    assert all(c["pretrain"] is None for c in cells if c["values"]["init"] == "random")
    assert {c["downstream"]["split.fraction"] for c in cells} == {0.5, 1.0}
    assert all("split.fraction" not in (c["pretrain"] or {}) for c in cells)


def test_command_line_overrides_reach_the_dotted_keys_of_each_section(tmp_path):
    """``grid.K=[..]`` replaces one axis, ``common.K`` and ``pretrain.set.K`` set one config key of their
    section; any other key is a path into the file (``seeds``)."""
    from ssl_derm.commands.sweep import load_sweep

    path = sweep_spec(tmp_path)
    spec = load_sweep(path, ["grid.finetune.split.fraction=[0.25]", "common.data.image_size=48",
                                        "pretrain.set.train.max_steps=3", "finetune.set.protocol.knn_k=5", "seeds=[4]"])
    cells = plan_cells(spec)
    assert len(cells) == 2 and {c["seed"] for c in cells} == {4}
    assert {c["downstream"]["split.fraction"] for c in cells} == {0.25}
    assert all(c["downstream"]["data.image_size"] == 48 and c["downstream"]["protocol.knn_k"] == 5 for c in cells)
    pre = next(c["pretrain"] for c in cells if c["pretrain"] is not None)
    assert pre["train.max_steps"] == 3 and pre["data.image_size"] == 48 and "protocol.knn_k" not in pre
    assert list(spec["grid"]) == list(load_sweep(path)["grid"])  # the axis kept its place, no new axis


def test_killed_sweep_resumes_to_the_same_table(tmp_path):
    path = sweep_spec(tmp_path)
    full = run_sweep(path, out=tmp_path / "full")
    rows_full = _rows(full)
    assert len(rows_full) == 8
    assert len(list((full / "pretrain").iterdir())) == 1
    # the pretraining left out exactly the test side that the cells score
    import json

    pre = json.loads(next((full / "pretrain").glob("*/metrics.json")).read_text())
    cell = json.loads(next((full / "cells").glob("*/metrics.json")).read_text())
    assert pre["n_excluded"] == cell["n_per_side"]["test"] > 0
    assert pre["n_images"] + pre["n_excluded"] == 64

    part = run_sweep(path, out=tmp_path / "part", stop_after=3)  # "killed" after three cells
    assert len(_rows(part)) == 3
    first = {p: p.stat().st_mtime_ns for p in (part / "cells").glob("*/metrics.json")}
    run_sweep(path, out=tmp_path / "part")
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # finished cells were skipped
    assert _rows(part) == rows_full
    md = (part / "results.md").read_text()
    assert "±" in md and "pretrained" in md and "random" in md
    assert (part / "plots" / "balanced_accuracy.png").is_file()


def test_workers_run_cells_in_parallel_to_the_same_table(tmp_path):
    """Two worker processes give the table of one process, each cell's output goes to logs/<cell>.log, and
    a rerun skips the finished cells."""
    path = sweep_spec(tmp_path)
    one = _rows(run_sweep(path, out=tmp_path / "one"))
    par = run_sweep(path, out=tmp_path / "par", workers=2)
    assert _rows(par) == one and len(one) == 8
    logs = {p.stem: p.read_text() for p in (par / "logs").glob("*.log")}
    assert set(logs) == {p.name for p in (par / "cells").iterdir()}
    assert all(f"-> {par / 'cells' / cid / 'metrics.json'}" in text for cid, text in logs.items())
    first = {p: p.stat().st_mtime_ns for p in (par / "cells").glob("*/metrics.json")}
    run_sweep(path, out=tmp_path / "par", workers=2)
    assert {p: p.stat().st_mtime_ns for p in (par / "cells").glob("*/metrics.json")} == first


def test_a_failing_cell_in_a_worker_names_itself_and_its_log(tmp_path):
    import pytest

    from ssl_derm.errors import UserError

    path = sweep_spec(tmp_path)
    with pytest.raises(UserError, match=r"sweep cell \S*fraction-0.3\S* failed \(its output: .*logs/\S*fraction-0.3\S*\.log\)"
                                        r".*split.fraction=0.3"):
        run_sweep(path, out=tmp_path / "sw", workers=2,
                  overrides=["grid.init=[random]", "grid.finetune.split.fraction=[0.3]"])
    with pytest.raises(UserError, match="workers must be >= 1"):
        run_sweep(path, out=tmp_path / "sw", workers=0)


def test_pretrained_cells_need_a_pretrain_stage(tmp_path):
    """init: [pretrained, random] with no pretrain section would score random init twice: refused, naming it;
    an init value that is neither is refused too."""
    import pytest
    import yaml

    from ssl_derm.commands.sweep import load_sweep
    from ssl_derm.config import ConfigError

    spec = yaml.safe_load(sweep_spec(tmp_path).read_text())
    del spec["pretrain"]
    path = tmp_path / "no_pretrain.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="no pretrain stage"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="takes pretrained and random"):
        load_sweep(sweep_spec(tmp_path), ["grid.init=[pretrained, imagenet]"])
    assert load_sweep(path, ["grid.init=[random]"])["grid"]["init"] == ["random"]
