"""The pretrained-vs-random report of a sweep whose grid has an ``init`` axis (a label-efficiency study):
``label_efficiency.csv`` (one row per finished cell) and ``label_efficiency.md`` (per setting of the other grid
keys, the mean +- std over seeds of both starts, their difference paired by seed with its 95% t interval, the
cells' bootstrap intervals, and the smallest label fraction at which pretraining reaches random init's 100%).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ssl_derm.select import mean_std, paired_t

METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc")


def column(key: str) -> str:
    """A grid key's column: ``finetune.protocol.name`` -> protocol, ``split.fraction`` -> fraction."""
    parts = [p for p in key.split(".") if p not in ("pretrain", "finetune")]
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def finished_cells(root) -> list:
    """The planned cells (:func:`ssl_derm.commands.sweep.plan_cells`) of the sweep in folder ``root`` (its
    ``sweep.json``) that have a ``metrics.json``; none when the folder holds no sweep."""
    from ssl_derm.commands.sweep.spec import plan_cells

    path = Path(root) / "sweep.json"
    if not path.is_file():
        return []
    return [c for c in plan_cells(json.loads(path.read_text()))
            if (Path(root) / "cells" / c["id"] / "metrics.json").is_file()]


def paired_rows(cells: list, metrics: dict) -> list:
    """One row per finished cell (init, the other grid values by column, seed, test and external metrics with
    their intervals, n labelled, seconds); ``metrics``: {cell id: its metrics.json}, the finished cells only.
    Cells made with other data, or (per init) another encoder file, than the first finished cell are left out
    with a message: one table never mixes them."""
    rows, ref = [], {}
    for cell in cells:
        m = metrics.get(cell["id"])
        if m is None:
            continue
        init = cell["values"]["init"]
        fp = m.get("fingerprint") or {}
        want = {"data": fp.get("data_sha256"), init: fp.get("encoder_sha256")}
        if any(ref.setdefault(k, v) != v for k, v in want.items()):
            print(f"[ssl-derm] {cell['id']} left out of label_efficiency.md: made with other data or another "
                  "encoder than the table's other cells (rerun it or move it away)")
            continue
        others = {column(k): v for k, v in cell["values"].items() if k != "init"}
        rows.append({"init": init, **others, "seed": cell["seed"], **{k: m.get(k) for k in METRICS},
                     **_ci_and_external(m), "n_labelled": m.get("n_per_side", {}).get("labelled"),
                     "seconds": m.get("seconds")})
    return rows


def _ci_and_external(m: dict) -> dict:
    """<metric>_ci_lo/_hi of the test side, and external_<metric> (+ its interval) when the run had one."""
    out = {}
    ext = m.get("external") if isinstance(m.get("external"), dict) else None
    for prefix, src in (("", m), ("external_", ext)):
        if src is None:
            continue
        for k in METRICS:
            if prefix:
                out[prefix + k] = src.get(k)
            ci = src.get(f"{k}_ci") or [None, None]
            out[f"{prefix}{k}_ci_lo"], out[f"{prefix}{k}_ci_hi"] = ci
    return out


def _fmt(ms: tuple) -> str:
    m, s = ms
    if m is None:
        return "-"
    return f"{100 * m:.1f}" if s is None else f"{100 * m:.1f} ± {100 * s:.1f}"


def _cell(name: str, value) -> str:
    return f"{100 * float(value):g}%" if name == "fraction" else str(value)


def _paired(by_init: dict, metric: str) -> tuple:
    """Per-seed differences pretrained - random over the seeds both inits finished: (mean, sample std,
    half-width of the two-sided 95% t interval, n); Nones where there are too few pairs."""
    pre = {r["seed"]: r[metric] for r in by_init.get("pretrained", []) if r[metric] is not None}
    rnd = {r["seed"]: r[metric] for r in by_init.get("random", []) if r[metric] is not None}
    return paired_t([pre[s] - rnd[s] for s in sorted(pre.keys() & rnd.keys())])


def _reaches_full_labels(means: dict, names: list) -> list:
    """Per setting of the keys other than the fraction: the smallest fraction whose pretrained mean reaches
    random init's mean at 100%. ``means``: {group values: (pretrained mean, random mean)}."""
    if "fraction" not in names:
        return []
    fi = names.index("fraction")
    lines = []
    for rest in dict.fromkeys(g[:fi] + g[fi + 1:] for g in means):
        same = {g[fi]: v for g, v in means.items() if g[:fi] + g[fi + 1:] == rest}
        ref = same.get(1.0, (None, None))[1]
        if ref is None:
            continue
        hit = min((f for f, (pre, _) in same.items() if pre is not None and pre >= ref), default=None)
        label = ", ".join(str(v) for v in rest) or "all"
        lines.append(f"- {label}: random init with 100% of the labels {100 * ref:.1f}; pretrained reaches it with "
                     + (f"{100 * hit:g}% of the labels" if hit is not None else "none of the fractions run"))
    return lines


def _boot(rs: list, metric: str) -> str:
    """The bootstrap 95% interval of a cell (several seeds: the mean of their bounds), in percent."""
    b = np.array([(r.get(f"{metric}_ci_lo"), r.get(f"{metric}_ci_hi")) for r in rs
                  if r.get(f"{metric}_ci_lo") is not None], dtype=float).reshape(-1, 2)
    return "-" if not len(b) else f"[{100 * b[:, 0].mean():.1f}, {100 * b[:, 1].mean():.1f}]"


def _table(rows: list, names: list, metric: str, side: str) -> list:
    heads = ["labels" if n == "fraction" else n for n in names]
    lines = [f"{metric} (%, {side}; mean ± sample std over seeds where there are several; difference = "
             "pretrained - random init paired by seed, mean ± std, with its 95% t interval; bootstrap = 95% interval "
             "over the scored images, the mean of the seeds' bounds)", "",
             "| " + " | ".join(heads) + " | n labelled | pretrained | random init | difference | 95% interval "
             "| seeds / pairs | pretrained bootstrap | random bootstrap |", "|---" * (len(names) + 8) + "|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[n] for n in names), {}).setdefault(r["init"], []).append(r)
    firsts = [{v: i for i, v in enumerate(dict.fromkeys(g[j] for g in groups))} for j in range(len(names))]
    groups = dict(sorted(groups.items(), key=lambda kv: tuple(
        v if n == "fraction" else firsts[j][v] for j, (n, v) in enumerate(zip(names, kv[0])))))
    means = {}
    for values, by_init in groups.items():
        pre = mean_std([r[metric] for r in by_init.get("pretrained", [])])
        rnd = mean_std([r[metric] for r in by_init.get("random", [])])
        means[values] = (pre[0], rnd[0])
        d_mean, d_std, half, n_pairs = _paired(by_init, metric)
        diff = "-" if d_mean is None else (f"{100 * d_mean:+.1f}" if d_std is None else f"{100 * d_mean:+.1f} ± {100 * d_std:.1f}")
        ci = "-" if half is None else f"[{100 * (d_mean - half):+.1f}, {100 * (d_mean + half):+.1f}]"
        n_lab = next((r["n_labelled"] for rs in by_init.values() for r in rs), "-")
        n_seeds = max(len(rs) for rs in by_init.values())
        lines.append("| " + " | ".join(_cell(n, v) for n, v in zip(names, values))
                     + f" | {n_lab} | {_fmt(pre)} | {_fmt(rnd)} | {diff} | {ci} | {n_seeds} / {n_pairs} "
                     f"| {_boot(by_init.get('pretrained', []), metric)} | {_boot(by_init.get('random', []), metric)} |")
    reach = _reaches_full_labels(means, names)
    if reach:
        lines += ["", "Labels the pretrained encoder needs to match random init with all of them (means):", *reach]
    return lines


def write_paired(out: Path, rows: list, names=("protocol", "fraction"), metric: str = "balanced_accuracy") -> None:
    """label_efficiency.csv and label_efficiency.md (``metric`` in percent, mean ± std over seeds), grouped by
    the row keys ``names`` (the grid's keys other than init, by :func:`column`).

    The difference is paired: seed s of the pretrained rows against seed s of the random rows (the same
    labelled subset when ``split.redraw_labelled`` draws one per seed), with its 95% t interval, so a gap can
    be told from the spread over subsets and initialisations."""
    names = list(names)
    extra = list(dict.fromkeys(k for r in rows for k in r if k.startswith("external_") or "_ci_" in k))
    fields = ["init", *names, "seed", *METRICS, *extra, "n_labelled", "seconds"]
    with open(Path(out) / "label_efficiency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = []
    if any(r.get(metric) is not None for r in rows) or not rows:  # data.test_frac=0: the external set only
        lines = _table(rows, names, metric, "test side")
    if any(r.get("external_" + metric) is not None for r in rows):
        lines += ["", *_table(rows, names, "external_" + metric, "external test set (data.test_images)")]
    (Path(out) / "label_efficiency.md").write_text("\n".join(lines) + "\n")
