"""The robustness table: each condition's metric, its drop from clean, bootstrap intervals; CSV and plot.

``summarise`` turns :func:`ssl_derm.robustness.suite.run_conditions` output into rows
``{shift, severity, level, metric, value, drop, lo, hi, drop_lo, drop_hi, n}`` (clean has severity 0 and
drop 0). Intervals: 95% percentile bootstrap over images (ssl_derm/metrics/bootstrap.py), the same
resamples for every condition, so a drop's interval is paired.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ssl_derm.metrics.bootstrap import percentile_ci, resample_weights, resampled_classification
from ssl_derm.robustness.shifts import get_shift
from ssl_derm.robustness.suite import CLS_METRICS, SEG_METRICS

COLUMNS = ("shift", "severity", "parameter", "level", "metric", "value", "drop", "lo", "hi", "drop_lo", "drop_hi", "n")


def _resampled(results, y_true: Optional[np.ndarray], w: np.ndarray) -> Dict[Tuple[str, int], Dict[str, np.ndarray]]:
    """{condition: {metric: (value, (B,) resampled values)}}."""
    out = {}
    for cond, r in results.items():
        if y_true is None:  # segmenter: per-image scores
            out[cond] = {k: (float(np.mean(r[k])), (w @ r[k]) / w.sum(1)) for k in SEG_METRICS}
        else:
            from ssl_derm.metrics.classification import classification_metrics

            k = r.shape[1]
            full = classification_metrics(y_true, r, [str(i) for i in range(k)])
            res = resampled_classification(y_true, r, w)
            out[cond] = {m: (full[m], res[m]) for m in CLS_METRICS}
    return out


def summarise(results, y_true: Optional[np.ndarray] = None, groups: Optional[Sequence] = None,
              n_resamples: int = 1000, seed: int = 0) -> List[dict]:
    """Rows of the robustness table (see the module docstring); ``y_true`` (N,) int for a classifier."""
    n = len(y_true) if y_true is not None else len(next(iter(results.values()))[SEG_METRICS[0]])
    w = resample_weights(groups, n, n_resamples, seed)
    res = _resampled(results, y_true, w)
    clean = res[("clean", 0)]
    rows = []
    for (name, sev), metrics in res.items():
        sh = None if name == "clean" else get_shift(name)
        for m, (value, boot) in metrics.items():
            c_value, c_boot = clean[m]
            drop = None if value is None or c_value is None else c_value - value
            ci = percentile_ci(boot) or [None, None]
            dci = percentile_ci(c_boot - boot) if name != "clean" else [0.0, 0.0]
            dci = dci or [None, None]
            rows.append({"shift": name, "severity": sev, "parameter": sh.parameter if sh else "",
                         "level": sh.level(sev) if sh else "", "metric": m, "value": value, "drop": drop,
                         "lo": ci[0], "hi": ci[1], "drop_lo": dci[0], "drop_hi": dci[1], "n": n})
    return rows


def metrics_json(rows: List[dict]) -> dict:
    """{"clean": {metric: {value, ci}}, "shifts": {shift: {parameter, severities: {"1": {level, <metric>,
    <metric>_drop, <metric>_ci, <metric>_drop_ci}}}}, "worst_drop": {metric: {shift, severity, drop}}}."""
    out = {"clean": {}, "shifts": {}, "worst_drop": {}}
    for r in rows:
        m = r["metric"]
        if r["shift"] == "clean":
            out["clean"][m] = {"value": r["value"], "ci": [r["lo"], r["hi"]]}
            continue
        sh = out["shifts"].setdefault(r["shift"], {"parameter": r["parameter"], "severities": {}})
        cell = sh["severities"].setdefault(str(r["severity"]), {"level": r["level"]})
        cell.update({m: r["value"], f"{m}_drop": r["drop"], f"{m}_ci": [r["lo"], r["hi"]],
                     f"{m}_drop_ci": [r["drop_lo"], r["drop_hi"]]})
        worst = out["worst_drop"].get(m)
        if r["drop"] is not None and (worst is None or r["drop"] > worst["drop"]):
            out["worst_drop"][m] = {"shift": r["shift"], "severity": r["severity"], "drop": r["drop"]}
    return out


def write_csv(path, rows: List[dict]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else ("" if r[k] is None else r[k])) for k in COLUMNS})
    os.replace(tmp, path)
    return path


def plot(path, rows: List[dict], metric: str) -> Path:
    """One line per shift: ``metric`` at severity 0 (clean) to 3, with the clean value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next(r["value"] for r in rows if r["shift"] == "clean" and r["metric"] == metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [r["shift"] for r in rows if r["metric"] == metric and r["shift"] != "clean" and r["severity"] == 1]
    for name in names:
        pts = sorted((r["severity"], r["value"]) for r in rows if r["shift"] == name and r["metric"] == metric)
        ax.plot([0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=name)
    ax.axhline(clean, color="k", ls="--", lw=0.8)
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def table(rows: List[dict], metric: str) -> str:
    """A markdown table: shift x severity of ``metric`` (drop in brackets)."""
    clean = next(r["value"] for r in rows if r["shift"] == "clean" and r["metric"] == metric)
    lines = [f"clean {metric}: {clean:.4f}", "", "| shift | parameter | 1 | 2 | 3 |", "|---|---|---|---|---|"]
    names = list(dict.fromkeys(r["shift"] for r in rows if r["shift"] != "clean"))
    for name in names:
        cells = {r["severity"]: r for r in rows if r["shift"] == name and r["metric"] == metric}
        vals = " | ".join(f"{cells[s]['value']:.4f} ({-cells[s]['drop']:+.4f}) @{cells[s]['level']}" for s in (1, 2, 3))
        lines.append(f"| {name} | {cells[1]['parameter']} | {vals} |")
    return "\n".join(lines)
