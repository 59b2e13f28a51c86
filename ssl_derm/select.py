"""Hyperparameters chosen on validation, reported on test: the fair way to compare two starts.

A grid that tries several learning rates (or schedules, or head inits) for a pretrained and a random
encoder must not report each start at its best *test* score. :func:`select_on_val` picks, for every
row of the table (every combination of the grid keys that are not tuned), the tuned setting with the
best mean validation score over seeds, and reports that setting's test scores. With ``paired`` (e.g.
``init``), each value of that key gets its own choice, and the table adds their per-seed difference
(first value - second, e.g. pretrained - random) with its 95% t interval.

A setting is compared only over the same seeds as the others of its row: a row whose settings have
different seeds, or no validation score, is listed as incomplete, not chosen from.

Used by ``ssl-derm sweep`` (the sweep file's ``select:`` key) and ``benchmarks/select_on_val.py``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.stats import t as student_t

from ssl_derm.errors import ConfigError


def mean_std(vals) -> tuple:
    """(mean, sample std or None for a single value) of the values that are not None; (None, None) without any."""
    v = np.array([x for x in vals if x is not None], dtype=float)
    if not len(v):
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def paired_t(diffs) -> tuple:
    """(mean, sample std, half-width of the two-sided 95% t interval, n) of paired differences;
    std and half-width are None below two pairs, everything None without any."""
    n = sum(x is not None for x in diffs)
    mean, std = mean_std(diffs)
    half = None if std is None else float(student_t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return mean, std, half, n


def check_select(path, spec: dict) -> None:
    """The ``select:`` key of a sweep file (:mod:`ssl_derm.commands.sweep`): a clear error for every misuse."""
    sel = spec.get("select")
    if sel is None:
        return
    grid = spec.get("grid", {})
    if not isinstance(sel, dict) or not isinstance(sel.get("by"), str) or not isinstance(sel.get("tune"), list):
        raise ConfigError(f"sweep file '{path}': select needs 'by' (a metrics.json key such as "
                          f"val.balanced_accuracy) and 'tune' (a list of grid keys), got {sel!r}")
    if not sel["by"].startswith("val."):
        raise ConfigError(f"sweep file '{path}': select.by '{sel['by']}' is not a validation score; choosing on the "
                          "test side reports a selected maximum. Use a val.* key, e.g. val.balanced_accuracy")
    bad = [k for k in [*sel["tune"], *([sel["paired"]] if sel.get("paired") else [])] if k not in grid]
    if bad or not sel["tune"] or set(sel) - {"by", "tune", "paired"}:
        raise ConfigError(f"sweep file '{path}': select.tune / select.paired must name grid keys "
                          f"({sorted(grid)}) and select has only by, tune, paired; got {sel!r}")
    if sel.get("paired") and (sel["paired"] in sel["tune"] or len(grid[sel["paired"]]) < 2):
        raise ConfigError(f"sweep file '{path}': select.paired '{sel['paired']}' must be an untuned grid key "
                          "with at least two values")


def _choose(cands: dict, by: str) -> tuple:
    """``cands``: {setting: {seed: row}} -> (chosen setting or None, {setting: mean val}, why not chosen)."""
    seeds = {s: tuple(sorted(rs)) for s, rs in cands.items()}
    if len(set(seeds.values())) > 1:
        return None, {}, "settings differ in seeds: " + "; ".join(f"{_name(s)} {list(v)}" for s, v in seeds.items())
    val = {}
    for s, rs in cands.items():
        vals = [r.get(by) for r in rs.values()]
        if any(v is None for v in vals):
            return None, {}, f"{_name(s)} has no '{by}' in some seed's metrics.json"
        val[s] = float(np.mean(vals))
    best = max(val.values())
    return next(s for s in cands if val[s] == best), val, ""  # ties: the first setting in grid order


def _name(setting: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting)


def select_on_val(rows: Sequence[dict], keys: Sequence[str], tune: Sequence[str], by: str,
                  report: Sequence[str], paired: Optional[str] = None) -> dict:
    """``rows``: one dict per finished cell with every key of ``keys``, ``seed``, ``by`` and the
    ``report`` metrics (None where missing). Returns {"chosen": [...], "paired": [...]}: per row of the
    table the chosen setting, every setting's mean val, and the chosen setting's per-seed rows."""
    unknown = [k for k in [*tune, *([paired] if paired else [])] if k not in keys]
    if unknown:
        raise ValueError(f"select: {unknown} are not grid keys ({list(keys)})")
    if paired in tune:
        raise ValueError(f"select: '{paired}' cannot be both tuned and paired")
    group_keys = [k for k in keys if k not in tune]
    groups: dict = {}
    for r in rows:
        g = tuple(r[k] for k in group_keys)
        setting = tuple((k, r[k]) for k in tune)
        groups.setdefault(g, {}).setdefault(setting, {})[r["seed"]] = r
    chosen = []
    for g, cands in groups.items():
        best, val, why = _choose(cands, by)
        chosen.append({"group": dict(zip(group_keys, g)), "setting": best, "val": val, "why": why,
                       "rows": [cands[best][s] for s in sorted(cands[best])] if best is not None else []})
    return {"chosen": chosen, "paired": _pair(chosen, group_keys, paired, report) if paired else []}


def _pair(chosen: list, group_keys: list, paired: str, report: Sequence[str]) -> list:
    """Per row without ``paired``: first value - second value of ``paired``, each at its own choice."""
    rest = [k for k in group_keys if k != paired]
    by_rest: dict = {}
    for c in chosen:
        by_rest.setdefault(tuple(c["group"][k] for k in rest), []).append(c)
    out = []
    for g, cs in by_rest.items():
        if len(cs) < 2 or any(c["setting"] is None for c in cs[:2]):
            continue
        a, b = cs[0], cs[1]
        diffs = {}
        for m in report:
            va = {r["seed"]: r.get(m) for r in a["rows"]}
            vb = {r["seed"]: r.get(m) for r in b["rows"]}
            diffs[m] = paired_t([va[s] - vb[s] for s in sorted(va.keys() & vb.keys())
                                 if va[s] is not None and vb[s] is not None])
        out.append({"group": dict(zip(rest, g)), "a": a, "b": b, "diffs": diffs})
    return out


def _fmt(x, scale: float, sign: bool = False) -> str:
    return "-" if x is None else (f"{scale * x:+.{3 if scale == 1 else 1}f}" if sign else f"{scale * x:.{3 if scale == 1 else 1}f}")


def selection_lines(result: dict, tune: Sequence[str], by: str, report: Sequence[str], paired: Optional[str],
                    scale: float = 1.0) -> list:
    """Markdown: the chosen settings with their val and test scores; then the paired differences."""
    lines = [f"Chosen on validation (`{by}`, mean over seeds; ties: the first setting of the grid), reported on "
             f"test; scores x{scale:g}", ""]
    gk = list(result["chosen"][0]["group"]) if result["chosen"] else []
    head = [*gk, "chosen " + ", ".join(tune), f"{by} of each setting", "seeds",
            *[f"{m} (mean ± std)" for m in report]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result["chosen"]:
        if c["setting"] is None:
            lines.append("| " + " | ".join([*(str(v) for v in c["group"].values()), f"none: {c['why']}"]
                                           + ["-"] * (len(head) - len(gk) - 1)) + " |")
            continue
        vals = "; ".join(f"{', '.join(str(v) for _, v in s)}: {_fmt(x, scale)}" for s, x in c["val"].items())
        stats = []
        for m in report:
            mean, std = mean_std([r.get(m) for r in c["rows"]])
            stats.append(_fmt(mean, scale) + ("" if std is None else f" ± {_fmt(std, scale)}"))
        lines.append("| " + " | ".join([*(str(v) for v in c["group"].values()),
                                        ", ".join(str(v) for _, v in c["setting"]), vals, str(len(c["rows"])),
                                        *stats]) + " |")
    if result["paired"]:
        p0 = result["paired"][0]
        lines += ["", f"Paired by seed: {paired} = {p0['a']['group'][paired]} - {p0['b']['group'][paired]}, "
                      "each at its own chosen setting; 95% t interval", ""]
        head = [*p0["group"], *[h for m in report for h in (f"{m} difference", "95% interval")], "pairs"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in result["paired"]:
            cols = []
            for m in report:
                mean, _, half, _ = p["diffs"][m]
                cols += [_fmt(mean, scale, True), "-" if half is None else
                         f"[{_fmt(mean - half, scale, True)}, {_fmt(mean + half, scale, True)}]"]
            n = max(p["diffs"][m][3] for m in report)
            lines.append("| " + " | ".join([*(str(v) for v in p["group"].values()), *cols, str(n)]) + " |")
    return lines


def write_selection(root: Path, result: dict, tune: Sequence[str], by: str, report: Sequence[str],
                    paired: Optional[str], scale: float = 1.0) -> None:
    """``selected.md`` (the tables above) and ``selected.csv`` (one row per seed of each chosen setting)."""
    root = Path(root)
    (root / "selected.md").write_text("\n".join(selection_lines(result, tune, by, report, paired, scale)) + "\n")
    rows = [{**c["group"], **dict(c["setting"]), "seed": r["seed"], by: r.get(by), **{m: r.get(m) for m in report}}
            for c in result["chosen"] if c["setting"] is not None for r in c["rows"]]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(root / "selected.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
