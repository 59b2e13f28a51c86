"""Label-efficiency folders run with different settings -> each start at the setting chosen on validation.

    python benchmarks/select_on_val.py --tune train.lr runs/le_lr2e-3 runs/le_lr6e-4 runs/le_lr2e-4 --out runs/le_sel

Each folder is one ``benchmarks/label_efficiency_ham10000.py`` or ``ssl-derm label-efficiency`` ``--out`` (a sweep folder).
The tuned value of a cell is read from its own ``config.yaml``, and two cells of the same init, protocol, fraction
and seed must not differ in any other key (``--ignore`` lists keys that do not change results), so a table never
mixes in another change. Per (init, protocol, fraction), the setting with the best mean ``val.balanced_accuracy``
over seeds is kept, and pretrained - random is paired by seed at each start's own choice
(:mod:`ssl_derm.select`). Writes ``selected.md`` / ``selected.csv`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ["balanced_accuracy", "accuracy", "macro_f1", "macro_auroc"]


def read_cells(folders, tune, ignore) -> list:
    """One row per finished cell of every folder; a clear error where two cells differ in an untuned key."""
    from ssl_derm.commands.sweep.paired import finished_cells
    from ssl_derm.runs import flatten
    from ssl_derm.commands.sweep import metric_value

    rows, seen = [], {}
    for folder in map(Path, folders):
        cells = finished_cells(folder)
        if not cells:
            raise SystemExit(f"{folder}: no finished label-efficiency cells (sweep.json and cells/<id>/metrics.json)")
        for cell in cells:
            v, seed = cell["values"], cell["seed"]
            init, protocol, fraction = v["init"], v["finetune.protocol.name"], v["finetune.split.fraction"]
            cdir = folder / "cells" / cell["id"]
            cfg_path = cdir / "config.yaml"
            if not cfg_path.is_file():
                raise SystemExit(f"{cfg_path}: missing; the cell's settings cannot be checked (rerun the cell)")
            cfg = {k: v for k, v in flatten(yaml.safe_load(cfg_path.read_text())).items() if k not in ignore}
            missing = [k for k in tune if k not in cfg]
            if missing:
                raise SystemExit(f"{cfg_path}: no key {missing}; --tune names config keys such as train.lr")
            key = (init, protocol, fraction, seed)
            setting = tuple(cfg[k] for k in tune)
            rest = {k: v for k, v in cfg.items() if k not in tune}
            for other_setting, (other_rest, other_dir) in seen.get(key, {}).items():
                diff = sorted(k for k in rest.keys() | other_rest.keys() if rest.get(k) != other_rest.get(k))
                if diff:
                    raise SystemExit(f"{cdir} and {other_dir} differ in {diff}, not only in {tune}: the table would "
                                     "mix another change in (add it to --tune, or to --ignore if it cannot matter)")
                if other_setting == setting:
                    raise SystemExit(f"{cdir} and {other_dir}: the same cell with the same {tune}; give each setting once")
            seen.setdefault(key, {})[setting] = (rest, cdir)
            m = json.loads((cdir / "metrics.json").read_text())
            rows.append({"init": init, "protocol": protocol, "fraction": fraction, "seed": seed,
                         **dict(zip(tune, setting)), "val.balanced_accuracy": metric_value(m, "val.balanced_accuracy"),
                         **{k: m.get(k) for k in METRICS}})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="label-efficiency --out folders, one per setting")
    ap.add_argument("--tune", required=True, help="comma-separated config keys the folders differ in, e.g. train.lr")
    ap.add_argument("--ignore", default="train.num_threads,data.cache_dir",
                    help="config keys allowed to differ because they cannot change a result")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to keep (default: every finished seed)")
    ap.add_argument("--out", default=None, help="where selected.md / selected.csv go (default: print only)")
    args = ap.parse_args(argv)
    from ssl_derm.select import select_on_val, selection_lines, write_selection

    tune = [k for k in args.tune.split(",") if k]
    rows = read_cells(args.folders, tune, set(k for k in args.ignore.split(",") if k))
    if args.seeds is not None:  # e.g. the seeds every setting has finished while the others still run
        keep = {int(s) for s in args.seeds.split(",") if s}
        rows = [r for r in rows if r["seed"] in keep]
    keys = ["protocol", "fraction", "init", *tune]
    rows.sort(key=lambda r: (r["protocol"], r["fraction"], r["init"] != "pretrained"))  # pretrained - random
    result = select_on_val(rows, keys, tune, "val.balanced_accuracy", METRICS[:2], paired="init")
    print("\n".join(selection_lines(result, tune, "val.balanced_accuracy", METRICS[:2], "init", scale=100)))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_selection(Path(args.out), result, tune, "val.balanced_accuracy", METRICS[:2], "init", scale=100)
        print(f"written: {Path(args.out) / 'selected.md'}, {Path(args.out) / 'selected.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
