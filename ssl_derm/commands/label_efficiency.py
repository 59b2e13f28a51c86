"""The label-efficiency table: the same recipe with a pretrained and a randomly initialised encoder,
per protocol, label fraction and seed.

    ssl-derm label-efficiency --config configs/finetune/knn.yaml --out runs/le \\
        --checkpoint runs/pretrain/encoder.safetensors --fractions 0.01,0.1,1.0 \\
        --protocols knn,linear,finetune,fixmatch --seeds 0,1,2 data.images=[...] data.labels=...

Each cell is a full ``run_finetune`` run folder under ``<out>/cells/<init>_<protocol>_<fraction>_seed<seed>``;
finished cells (with metrics.json) are skipped, so an interrupted table resumes. The data and the
split are loaded once, and kNN / linear share one feature extraction per encoder.
Writes ``label_efficiency.csv`` (one row per finished cell in the folder, this call's grid first) and
``label_efficiency.md`` (mean +- std over seeds, pretrained against random, and their paired difference).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ssl_derm.config import load_config, to_dict
from ssl_derm.errors import ConfigError
from ssl_derm.evaluate.config import FinetuneConfig
from ssl_derm.models.features import FeatureCache
from ssl_derm.commands.finetune import load_data_and_split, run_finetune
from ssl_derm.registry import names
from ssl_derm.select import mean_std, paired_t

METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc")
INITS = ("pretrained", "random")


def cell_id(init: str, protocol: str, fraction: float, seed: int) -> str:
    return f"{init}_{protocol}_{fraction:g}_seed{seed}"


def run_label_efficiency(base_cfg, checkpoint, fractions: Sequence[float], protocols: Sequence[str],
                         seeds: Sequence[int], out_dir, dataset=None, split=None, inits=INITS,
                         protocol_overrides: Optional[Dict[str, Sequence[str]]] = None) -> list:
    """Run every missing cell, then write the CSV and Markdown tables; returns the CSV rows.

    ``checkpoint``: the exported encoder for the "pretrained" rows (``None`` only with inits=("random",)).
    ``protocol_overrides``: ``{"fixmatch": ["train.max_steps=200", ...]}``, applied on top of ``base_cfg``
    for that protocol only (budgets differ per protocol; pretrained and random always share them).
    """
    known = names("protocol")
    bad = [p for p in protocols if p not in known]
    if bad:
        raise ConfigError(f"unknown protocol(s) {', '.join(bad)}; available: {', '.join(known)}")
    if "pretrained" in inits and (not checkpoint or not Path(checkpoint).exists()):
        raise ConfigError(f"--checkpoint '{checkpoint}' does not exist; give the encoder.safetensors of `ssl-derm pretrain`")
    from ssl_derm.runs.finished import check_out_path

    check_out_path(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache()
    for init in inits:
        for protocol in protocols:
            for fraction in fractions:
                for seed in seeds:
                    cdir = out / "cells" / cell_id(init, protocol, fraction, seed)
                    # lenient: the base protocol's own keys do not carry over to another protocol
                    cfg = load_config(FinetuneConfig, base=to_dict(base_cfg), lenient="file", overrides=[
                        f"protocol.name={protocol}", *(protocol_overrides or {}).get(protocol, ())])
                    cfg.explicit_keys |= getattr(base_cfg, "explicit_keys", frozenset())  # what the user set
                    cfg.split.fraction = float(fraction)
                    cfg.seed = int(seed)
                    cfg.encoder.checkpoint = str(checkpoint) if init == "pretrained" else "none"
                    if dataset is None or split is None:
                        dataset, split = load_data_and_split(cfg)
                    # a finished cell of the same fingerprint is reused; another one is moved aside and rerun
                    run_finetune(cfg, cdir, dataset=dataset, split=split, feature_cache=cache, existing="stale")
    rows = collect(out, inits, protocols, fractions, seeds, others=True)
    write_tables(out, rows)
    return rows


def finished_cells(out: Path) -> list:
    """(init, protocol, fraction, seed) of every cell under ``out/cells`` with a metrics.json, read from the
    folder names that :func:`cell_id` writes; other folders are ignored."""
    keys = []
    for path in sorted((Path(out) / "cells").glob("*/metrics.json")):
        name = path.parent.name
        try:
            rest, seed = name.rsplit("_seed", 1)
            init, rest = rest.split("_", 1)
            protocol, fraction = rest.rsplit("_", 1)
            key = (init, protocol, float(fraction), int(seed))
        except ValueError:
            continue
        if init in INITS and cell_id(*key) == name:
            keys.append(key)
    return keys


def collect(out: Path, inits, protocols, fractions, seeds, others: bool = False) -> list:
    """One row per finished cell of the grid, in grid order; with ``others`` also every other finished cell
    in the folder (an earlier call's seeds or fractions), so the table summarises the whole folder."""
    keys = [(i, p, float(f), int(s)) for i in inits for p in protocols for f in fractions for s in seeds]
    if others:
        seen = set(keys)
        keys += [k for k in finished_cells(out) if k not in seen]
    rows = []
    ref: dict = {}  # fingerprint parts every row must share: the data, and per init the encoder file
    for n, (init, protocol, fraction, seed) in enumerate(keys):
        path = out / "cells" / cell_id(init, protocol, fraction, seed) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            fp = m.get("fingerprint") or {}
            want = {"data": fp.get("data_sha256"), init: fp.get("encoder_sha256")}
            if any(ref.setdefault(k, v) != v for k, v in want.items()):
                print(f"[ssl-derm] {path.parent.name} left out of the table: made with other data or another "
                      "encoder than this call's cells (rerun it or move it away)")
                continue
            rows.append({"init": init, "protocol": protocol, "fraction": fraction, "seed": seed,
                         **{k: m.get(k) for k in METRICS}, **_ci_and_external(m),
                         "n_labelled": m.get("n_per_side", {}).get("labelled"), "seconds": m.get("seconds")})
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


def _paired(by_init: dict, metric: str) -> tuple:
    """Per-seed differences pretrained - random over the seeds both inits finished: (mean, sample std,
    half-width of the two-sided 95% t interval, n); Nones where there are too few pairs."""
    pre = {r["seed"]: r[metric] for r in by_init.get("pretrained", []) if r[metric] is not None}
    rnd = {r["seed"]: r[metric] for r in by_init.get("random", []) if r[metric] is not None}
    return paired_t([pre[s] - rnd[s] for s in sorted(pre.keys() & rnd.keys())])


def _reaches_full_labels(means: dict) -> list:
    """Per protocol: the smallest fraction whose pretrained mean reaches random init's mean at 100%.
    ``means``: {(protocol, fraction): (pretrained mean, random mean)}, None where not run."""
    lines = []
    for protocol in dict.fromkeys(p for p, _ in means):
        ref = means.get((protocol, 1.0), (None, None))[1]
        if ref is None:
            continue
        hit = min((f for (p, f), (pre, _) in means.items() if p == protocol and pre is not None and pre >= ref),
                  default=None)
        lines.append(f"- {protocol}: random init with 100% of the labels {100 * ref:.1f}; pretrained reaches it with "
                     + (f"{100 * hit:g}% of the labels" if hit is not None else "none of the fractions run"))
    return lines


def _boot(rs: list, metric: str) -> str:
    """The bootstrap 95% interval of a cell (several seeds: the mean of their bounds), in percent."""
    b = np.array([(r.get(f"{metric}_ci_lo"), r.get(f"{metric}_ci_hi")) for r in rs
                  if r.get(f"{metric}_ci_lo") is not None], dtype=float).reshape(-1, 2)
    return "-" if not len(b) else f"[{100 * b[:, 0].mean():.1f}, {100 * b[:, 1].mean():.1f}]"


def _table(rows: list, metric: str, side: str) -> list:
    lines = [f"{metric} (%, {side}; mean ± sample std over seeds where there are several; difference = "
             "pretrained - random init paired by seed, mean ± std, with its 95% t interval; bootstrap = 95% interval "
             "over the scored images, the mean of the seeds' bounds)", "",
             "| protocol | labels | n labelled | pretrained | random init | difference | 95% interval | seeds / pairs "
             "| pretrained bootstrap | random bootstrap |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [dict(r, **{metric: r.get(metric)}) for r in rows]
    groups = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["fraction"]), {}).setdefault(r["init"], []).append(r)
    order = {p: i for i, p in enumerate(dict.fromkeys(p for p, _ in groups))}  # protocols as first met
    groups = dict(sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])))
    means = {}
    for (protocol, fraction), by_init in groups.items():
        pre = mean_std([r[metric] for r in by_init.get("pretrained", [])])
        rnd = mean_std([r[metric] for r in by_init.get("random", [])])
        means[(protocol, fraction)] = (pre[0], rnd[0])
        d_mean, d_std, half, n_pairs = _paired(by_init, metric)
        diff = "-" if d_mean is None else (f"{100 * d_mean:+.1f}" if d_std is None else f"{100 * d_mean:+.1f} ± {100 * d_std:.1f}")
        ci = "-" if half is None else f"[{100 * (d_mean - half):+.1f}, {100 * (d_mean + half):+.1f}]"
        n_lab = next((r["n_labelled"] for rs in by_init.values() for r in rs), "-")
        n_seeds = max(len(rs) for rs in by_init.values())
        lines.append(f"| {protocol} | {100 * fraction:g}% | {n_lab} | {_fmt(pre)} | {_fmt(rnd)} | {diff} | {ci} "
                     f"| {n_seeds} / {n_pairs} | {_boot(by_init.get('pretrained', []), metric)} "
                     f"| {_boot(by_init.get('random', []), metric)} |")
    reach = _reaches_full_labels(means)
    if reach:
        lines += ["", "Labels the pretrained encoder needs to match random init with all of them (means):", *reach]
    return lines


def write_tables(out: Path, rows: list, metric: str = "balanced_accuracy") -> None:
    """label_efficiency.csv and label_efficiency.md (``metric`` in percent, mean ± std over seeds).

    The difference is paired: seed s of the pretrained rows against seed s of the random rows (the same
    labelled subset when ``split.redraw_labelled`` draws one per seed), with its 95% t interval, so a gap can
    be told from the spread over subsets and initialisations."""
    extra = list(dict.fromkeys(k for r in rows for k in r if k.startswith("external_") or "_ci_" in k))
    fields = ["init", "protocol", "fraction", "seed", *METRICS, *extra, "n_labelled", "seconds"]
    with open(out / "label_efficiency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    lines = []
    if any(r.get(metric) is not None for r in rows) or not rows:  # data.test_frac=0: the external set only
        lines = _table(rows, metric, "test side")
    if any(r.get("external_" + metric) is not None for r in rows):
        lines += ["", *_table(rows, "external_" + metric, "external test set (data.test_images)")]
    (out / "label_efficiency.md").write_text("\n".join(lines) + "\n")
