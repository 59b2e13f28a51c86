"""Skin tone: the individual typology angle (ITA), its groups, and scores per group (metrics.json ``skin_tone``).

    ITA = atan2(L* - 50, b*) * 180 / pi   (degrees; CIELAB, D65; higher = lighter skin)

grouped on the usual scale (Chardon et al. 1991; Del Bino et al. 2013): very light > 55, light 41-55,
intermediate 28-41, tan 10-28, brown -30-10, dark < -30 (a value on an edge goes to the lighter group).
With atan2 a bluish skin colour (b* < 0, a dermoscope's white balance: about a third of HAM10000's
skin bands at 64 px) has |ITA| > 90: very light when L* > 50, dark below. A dermoscopy ITA is the
camera's, not a colorimeter's: compare groups within one archive, not across devices.
The per-image ITA comes from :mod:`ssl_derm.segmenters.skin_tone` (the skin around the lesion).

The ``skin_tone`` block of one scored side::

    {"min_images": 20, "n_unknown": 0, "edges": [55, 41, 28, 10, -30],
     "groups": {"very_light": {"n": 140, "balanced_accuracy": 0.71, "balanced_accuracy_ci": [..], "macro_auroc": ..,
                               "macro_auroc_ci": [..], "accuracy": .., "ita_median": ..},
                "dark": {"n": 7, "status": "too_few"}, ...},
     "worst_group_gap": {"balanced_accuracy": 0.08, "balanced_accuracy_ci": [..], "balanced_accuracy_best": "light",
                         "balanced_accuracy_worst": "tan", "macro_auroc": .., ...}}

A group with fewer than ``MIN_GROUP_IMAGES`` images gets no score, only its count and ``"status":
"too_few"``: a balanced accuracy of 7 images has an interval as wide as the scale. Balanced accuracy averages the
recall of the classes present in the group; AUROC is one-vs-rest over them (None with one class).
Intervals: one lesion-grouped bootstrap of the whole side (:mod:`ssl_derm.metrics.bootstrap`), each
resample scored per group, so the gap's interval is that of (best - worst) within the same resamples.
The gap is that of balanced accuracy and of AUROC between the best and the worst scored group; its
interval leans high when a group is small (the largest of noisy scores minus the smallest).
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

GROUPS = ("very_light", "light", "intermediate", "tan", "brown", "dark")  # lightest first
EDGES = (55.0, 41.0, 28.0, 10.0, -30.0)  # lower edge of each group but the last, degrees
UNKNOWN = "unknown"
MIN_GROUP_IMAGES = 20
TOO_FEW = "too_few"
GAP_METRICS = ("balanced_accuracy", "macro_auroc")


def ita_degrees(lightness, b) -> np.ndarray:
    """ITA in degrees of CIELAB L* (0-100) and b* (arrays of one shape)."""
    return np.degrees(np.arctan2(np.asarray(lightness, float) - 50.0, np.asarray(b, float)))


def ita_group(ita) -> List[str]:
    """Group name of each ITA (degrees; NaN -> ``unknown``)."""
    out = []
    for v in np.atleast_1d(np.asarray(ita, float)):
        if not np.isfinite(v):
            out.append(UNKNOWN)
            continue
        k = next((i for i, edge in enumerate(EDGES) if v >= edge), len(EDGES))
        out.append(GROUPS[k])
    return out


def write_skin_tone_csv(path, ids: Sequence[str], ita: np.ndarray) -> Path:
    """``image_id,ita,group`` (ITA rounded to 0.01 degree; empty and ``unknown`` where NaN), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "ita", "group"])
        for i, v, g in zip(ids, ita, ita_group(ita)):
            w.writerow([i, f"{v:.2f}" if np.isfinite(v) else "", g])
    os.replace(tmp, path)
    return path


def distribution(ita: np.ndarray) -> dict:
    """{group: count} over ``GROUPS`` and ``unknown``, plus the median and quartiles of the finite ITAs."""
    names = ita_group(ita)
    out = {g: names.count(g) for g in GROUPS + (UNKNOWN,)}
    v = np.asarray(ita, float)
    v = v[np.isfinite(v)]
    if len(v):
        out.update(median=float(np.median(v)), q25=float(np.quantile(v, 0.25)), q75=float(np.quantile(v, 0.75)))
    return out


def skin_tone_block(y, probs, ita, classes: Sequence[str], groups: Optional[Sequence] = None,
                    min_images: int = MIN_GROUP_IMAGES, n_resamples: Optional[int] = None) -> dict:
    """The ``skin_tone`` block of one side: ``y`` (N,) int labels, ``probs`` (N, K), ``ita`` (N,) degrees
    (NaN: unknown), ``groups`` (N,) lesion ids for the bootstrap or None."""
    from ssl_derm.metrics.bootstrap import N_RESAMPLES, SEED, percentile_ci, resample_weights, resampled_classification
    from ssl_derm.metrics.classification import classification_metrics

    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    ita = np.asarray(ita, np.float64)
    names = np.array(ita_group(ita)) if len(ita) else np.zeros(0, str)
    w = resample_weights(groups, len(y), n_resamples or N_RESAMPLES, SEED)
    block, boot = {}, {}
    for g in GROUPS:
        idx = np.flatnonzero(names == g)
        if len(idx) < min_images:
            block[g] = {"n": int(len(idx)), "status": TOO_FEW}
            continue
        m = classification_metrics(y[idx], probs[idx], classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = resampled_classification(y[idx], probs[idx], w[:, idx])
        boot[g] = res
        block[g] = {"n": int(len(idx)), "balanced_accuracy": m["balanced_accuracy"], "macro_auroc": m["macro_auroc"],
                    "accuracy": m["accuracy"], "ita_median": float(np.median(ita[idx])),
                    "classes_present": sorted({classes[c] for c in y[idx]}),
                    **{f"{k}_ci": percentile_ci(res[k]) for k in ("balanced_accuracy", "macro_auroc", "accuracy")}}
    return {"min_images": int(min_images), "edges": list(EDGES), "n_unknown": int((names == UNKNOWN).sum()),
            "groups": block, "worst_group_gap": _gap(block, boot)}


def _gap(block: dict, boot: dict) -> dict:
    scored = [g for g in GROUPS if "status" not in block[g]]
    if len(scored) < 2:
        return {"status": "fewer than two groups with enough images", "groups_scored": scored}
    from ssl_derm.metrics.bootstrap import percentile_ci

    out = {}
    for k in GAP_METRICS:
        have = [g for g in scored if block[g][k] is not None]
        if len(have) < 2:
            out[k] = None
            continue
        vals = {g: block[g][k] for g in have}
        best, worst = max(vals, key=vals.get), min(vals, key=vals.get)
        stack = np.stack([boot[g][k] for g in have], 1)  # (B, groups)
        with warnings.catch_warnings():  # a resample without a group's images: NaN, left out
            warnings.simplefilter("ignore", RuntimeWarning)
            gaps = np.nanmax(stack, 1) - np.nanmin(stack, 1)
        out[k] = vals[best] - vals[worst]
        out[f"{k}_ci"] = percentile_ci(gaps)
        out[f"{k}_best"], out[f"{k}_worst"] = best, worst
    return out


def table_lines(block: dict) -> list:
    """Markdown rows of a ``skin_tone`` block (group, n, balanced accuracy [CI], AUROC [CI])."""
    def fmt(v, ci):
        return "-" if v is None else (f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))

    lines = ["| group | n | median ITA | balanced accuracy [95% CI] | macro AUROC [95% CI] |", "|---|---|---|---|---|"]
    for g in GROUPS:
        r = block["groups"][g]
        if "status" in r:
            lines.append(f"| {g} | {r['n']} | - | {r['status']} (< {block['min_images']}) | - |")
        else:
            ba = fmt(r["balanced_accuracy"], r["balanced_accuracy_ci"])
            lines.append(f"| {g} | {r['n']} | {r['ita_median']:.1f} | {ba} "
                         f"| {fmt(r['macro_auroc'], r['macro_auroc_ci'])} |")
    gap = block["worst_group_gap"]
    if "balanced_accuracy" in gap and gap["balanced_accuracy"] is not None:
        lines.append(f"| worst-group gap ({gap['balanced_accuracy_best']} - {gap['balanced_accuracy_worst']}) | | | "
                     f"{fmt(gap['balanced_accuracy'], gap['balanced_accuracy_ci'])} | "
                     f"{fmt(gap.get('macro_auroc'), gap.get('macro_auroc_ci'))} |")
    return lines


def sweep_keys(found: Sequence[dict]) -> list:
    """metrics.json keys a sweep table adds when its cells have them: ``ece``, then per skin-tone group
    ``skin_tone.groups.<group>.balanced_accuracy`` (groups scored in at least one cell; a cell where the
    group has too few images leaves its value empty) and ``skin_tone.worst_group_gap.balanced_accuracy``."""
    keys = ["ece"] if any(isinstance(m.get("ece"), (int, float)) for m in found) else []
    blocks = [m["skin_tone"] for m in found if isinstance(m.get("skin_tone"), dict) and "groups" in m["skin_tone"]]
    keys += [f"skin_tone.groups.{g}.balanced_accuracy" for g in GROUPS
             if any("balanced_accuracy" in b["groups"].get(g, {}) for b in blocks)]
    if any(isinstance(b.get("worst_group_gap", {}).get("balanced_accuracy"), (int, float)) for b in blocks):
        keys.append("skin_tone.worst_group_gap.balanced_accuracy")
    return keys
