"""A sweep's tables: results.csv (one row per finished cell), results.md (mean +- std over seeds), plots,
TensorBoard hparams, with ``select`` the settings chosen on validation, and with an ``init`` axis the
pretrained-vs-random report (:mod:`ssl_derm.commands.sweep.paired`)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ssl_derm.select import select_on_val, write_selection


def metric_value(metrics: dict, key: str):
    """``a.b`` looks into nested dicts of metrics.json."""
    cur = metrics
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, (int, float)) else None


def metric_ci(metrics: dict, key: str):
    """[lo, hi] bootstrap interval stored beside ``key`` (``a.b`` -> ``a.b_ci``), or None."""
    head, _, last = key.rpartition(".")
    cur = metrics
    for part in head.split(".") if head else []:
        cur = cur.get(part) if isinstance(cur, dict) else None
    ci = cur.get(f"{last}_ci") if isinstance(cur, dict) else None
    return ci if isinstance(ci, list) and len(ci) == 2 else None


def write_tables(root: Path, spec: dict, cells: list) -> list:
    """results.csv (one row per finished cell), results.md (mean +- std over seeds), plots, hparams."""
    keys = list(spec.get("grid", {}))
    metric_keys = list(spec.get("metrics") or ["balanced_accuracy"])
    paths = {c["id"]: root / "cells" / c["id"] / "metrics.json" for c in cells}
    loaded = {cid: json.loads(p.read_text()) for cid, p in paths.items() if p.is_file()}  # each file read once
    found = list(loaded.values())
    from ssl_derm.metrics.skin_tone import sweep_keys

    metric_keys += [k for k in sweep_keys(found) if k not in metric_keys]  # ece, per skin tone, worst-group gap
    if any(isinstance(m.get("external"), dict) for m in found):  # the external set's columns beside the test side's
        metric_keys += [f"external.{k}" for k in metric_keys if not k.startswith("external.")]
    ci_keys = [f"{k}_ci" for k in metric_keys if any(metric_ci(m, k) for m in found)]
    rows = []
    sel = spec.get("select")
    for cell in cells:
        m = loaded.get(cell["id"])
        if m is not None:
            rows.append({**cell["values"], "seed": cell["seed"], **{k: metric_value(m, k) for k in metric_keys},
                         **{k: metric_ci(m, k[:-3]) for k in ci_keys},
                         **({sel["by"]: metric_value(m, sel["by"])} if sel else {})})
    if sel and rows:
        result = select_on_val(rows, keys, sel["tune"], sel["by"], metric_keys, sel.get("paired"))
        write_selection(root, result, sel["tune"], sel["by"], metric_keys, sel.get("paired"))
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + ["seed"] + metric_keys + ci_keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    ci_head = [f"{k} 95% CI" for k in ci_keys]  # bootstrap over images; several seeds: mean of their bounds
    lines = ["| " + " | ".join(keys + ["seeds"] + metric_keys + ci_head) + " |",
             "|" + "---|" * (len(keys) + 1 + len(metric_keys) + len(ci_keys))]
    summary = []
    for gk, rs in groups.items():
        cols = []
        stats = {}
        for mk in metric_keys:
            vals = np.array([r[mk] for r in rs if r[mk] is not None], dtype=float)
            mean, std = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0) if len(vals) else (np.nan, np.nan)
            stats[mk] = (mean, std)
            too_few = mk.startswith(("skin_tone.", "external.skin_tone."))  # a group with too few images
            cols.append(f"{mean:.3f} ± {std:.3f}" if len(vals) else "too_few" if too_few else "-")
        for ck in ci_keys:
            bounds = np.array([r[ck] for r in rs if r[ck]], dtype=float).reshape(-1, 2)
            cols.append(f"[{bounds[:, 0].mean():.3f}, {bounds[:, 1].mean():.3f}]" if len(bounds) else "-")
        summary.append((dict(zip(keys, gk)), len(rs), stats))
        lines.append("| " + " | ".join([str(v) for v in gk] + [str(len(rs))] + cols) + " |")
    (root / "results.md").write_text("\n".join(lines) + "\n")
    if "init" in keys and spec.get("downstream", "finetune") == "finetune":  # pretrained against random init
        from ssl_derm.commands.sweep.paired import column, paired_rows, write_paired

        write_paired(root, paired_rows(cells, loaded), [column(k) for k in keys if k != "init"])
    from ssl_derm.plots import plot_sweep

    plot_sweep(root, keys, metric_keys, summary)
    _write_hparams(root, rows, keys, metric_keys)
    return rows


def _write_hparams(root: Path, rows: list, keys: list, metric_keys: list) -> None:
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(root / "tb", ignore_errors=True)  # rewritten whole, so a resumed sweep has no duplicates
    writer = SummaryWriter(str(root / "tb"))
    for i, r in enumerate(rows):
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in r.items() if k in keys or k == "seed"}
        writer.add_hparams(hp, {f"hparam/{k}": float(r[k]) for k in metric_keys if r[k] is not None}, run_name=f"cell{i}")
    writer.close()
