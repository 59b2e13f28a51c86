"""``ssl-derm sweep``: a grid over config keys times seeds, resumable, with tables, plots and hparams.

A sweep file (``configs/sweeps/*.yaml``)::

    out: runs/sweeps/label_efficiency
    seeds: [0, 1, 2]
    pretrain_per_seed: false          # one pretraining per pretrain setting (seed 0), shared by all seeds
    exclude_test: true                # pretraining leaves out the test side that the finetune cells score
    downstream: finetune              # or: segment
    metrics: [balanced_accuracy, accuracy]
    common: {data.image_size: 64}     # keys for both stages
    pretrain: {config: configs/pretrain/simclr_resnet18.yaml, set: {train.max_steps: 500}}
    finetune: {config: configs/finetune/linear.yaml, set: {}}
    grid:
      init: [pretrained, random]      # special: random = no pretraining, encoder.checkpoint=none
      pretrain.method.name: [simclr, byol]
      finetune.split.fraction: [0.01, 0.1, 1.0]
      encoder.name: [resnet18]        # a bare key goes to both stages
    select:                           # optional: tune keys chosen on validation, reported on test
      by: val.balanced_accuracy       # (selected.md / selected.csv; see ssl_derm.select)
      tune: [finetune.train.lr]
      paired: init                    # optional: each init at its own choice, pretrained - random by seed

A key of a plug-in section (``method.*``, ``protocol.*``, ``segment.*``) that is set for the whole sweep
goes to the cells whose plug-in has it (``protocol.linear_C`` reaches the linear cells, not the kNN ones);
a key that no plug-in of that kind has is still an error.

Every pretraining is run once (``pretrain/<hash>/``) and reused by every cell that needs it; every
cell writes ``cells/<id>/metrics.json`` last, so a killed sweep skips what finished and resumes the
rest (an unfinished pretraining resumes from its checkpoint).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import yaml

from ssl_derm.config import ConfigError, PretrainConfig, set_nested, load_config, read_yaml
from ssl_derm.runs.fingerprint import recorded
from ssl_derm.runs import flatten, write_json
from ssl_derm.select import check_select, select_on_val, write_selection

_TOP_KEYS = {"out", "seeds", "pretrain_per_seed", "exclude_test", "downstream", "metrics", "common", "pretrain",
             "finetune", "segment", "grid", "select"}


def _overrides(flat: dict) -> list:
    """Sweep values as command-line overrides, so they win over the stage's YAML file."""
    return [f"{k}={json.dumps(v)}" for k, v in flat.items()]


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _set_override(spec: dict, key: str, value) -> None:
    """``common.K``, ``grid.K`` and ``<stage>.set.K`` name one config key ``K`` of that section (its keys are
    dotted: ``grid.finetune.train.lr=[1e-3]`` replaces that axis); any other key is a path into the file."""
    parts = key.split(".")
    if parts[0] in ("common", "grid") and len(parts) > 1:
        spec.setdefault(parts[0], {})[".".join(parts[1:])] = value
    elif parts[0] in ("pretrain", "finetune", "segment") and len(parts) > 2 and parts[1] == "set":
        spec.setdefault(parts[0], {}).setdefault("set", {})[".".join(parts[2:])] = value
    else:
        set_nested(spec, parts, value)


def load_sweep(path, overrides=()) -> dict:
    spec = read_yaml(path)
    for text in overrides:
        key, _, raw = text.partition("=")
        _set_override(spec, key, yaml.safe_load(raw))
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"sweep file '{path}': unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    spec.setdefault("seeds", [0])
    spec.setdefault("downstream", "finetune")
    if spec["downstream"] not in ("finetune", "segment"):
        raise ConfigError(f"sweep file '{path}': downstream must be finetune or segment, not {spec['downstream']!r}")
    if not isinstance(spec.get("grid", {}), dict):
        raise ConfigError(f"sweep file '{path}': grid must map config keys to lists of values")
    for k, v in spec.get("grid", {}).items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep file '{path}': grid key '{k}' needs a non-empty list of values, got {v!r}")
    check_select(path, spec)
    return spec


def plan_cells(spec: dict) -> list:
    """Every (grid point, seed) as a dict: id, values, seed, pretrain overrides (or None), downstream overrides."""
    grid = spec.get("grid", {})
    keys = list(grid)
    down = spec["downstream"]
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        pre = flatten(spec.get("common", {}))
        pre.update(flatten(spec.get("pretrain", {}).get("set", {})))
        dst = flatten(spec.get("common", {}))
        dst.update(flatten(spec.get(down, {}).get("set", {})))
        for k, v in values.items():
            if k == "init":
                continue
            stage, _, rest = k.partition(".")
            if stage == "pretrain":
                pre[rest] = v
            elif stage == down:
                dst[rest] = v
            else:
                pre[k] = v
                dst[k] = v
        needs_pretrain = values.get("init", "pretrained") != "random" and "pretrain" in spec
        for seed in spec["seeds"]:
            p = dict(pre, seed=0 if not spec.get("pretrain_per_seed") else seed) if needs_pretrain else None
            d = dict(dst, seed=seed)
            cid = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in values.items()) + f"_seed-{seed}"
            cells.append({"id": cid.replace("/", "-"), "values": values, "seed": seed, "pretrain": p, "downstream": d})
    return cells


def _run_pretrain(spec, flat: dict, root: Path) -> Path:
    from ssl_derm.commands.pretrain import run_pretrain

    out = root / "pretrain" / _hash(flat)
    enc = out / "encoder.safetensors"
    if not (enc.is_file() and (out / "metrics.json").is_file()):
        cfg = load_config(PretrainConfig, spec["pretrain"].get("config"), _overrides(flat), lenient=True)
        run_pretrain(cfg, out)
    return enc


def _finetune_cfg(spec, flat: dict):
    from ssl_derm.evaluate.config import load_finetune_config

    return load_finetune_config(spec.get("finetune", {}).get("config"), _overrides(flat), lenient=True)


def _shared_data(cfg, shared: dict) -> tuple:
    """(dataset, split, feature cache) of a finetune config, loaded once per data setting and reused
    by every cell that differs only in protocol, fraction or seed."""
    from ssl_derm.config import to_dict
    from ssl_derm.models.features import FeatureCache
    from ssl_derm.commands.finetune import load_data_and_split

    key = _hash([to_dict(cfg.data), cfg.split.seed, cfg.protocol.segments, cfg.augment.mean, cfg.augment.std])
    if key not in shared:
        dataset, split = load_data_and_split(cfg)
        shared[key] = (dataset, split, FeatureCache())
    return shared[key]


def _test_split_file(spec, flat: dict, shared: dict) -> Path:
    """The split file whose test side the downstream cell scores (written now if it is new)."""
    cfg = _finetune_cfg(spec, flat)
    _, split, _ = _shared_data(cfg, shared)
    return split.path


def _run_downstream(spec, flat: dict, out: Path, shared: dict) -> dict:
    if spec["downstream"] == "segment":
        from ssl_derm.segmenters.config import SegmentConfig
        from ssl_derm.commands.segment import run_segment

        cfg = load_config(SegmentConfig, spec.get("segment", {}).get("config"), _overrides(flat), lenient=True)
        return run_segment(cfg, out, existing="stale")
    from ssl_derm.commands.finetune import run_finetune

    cfg = _finetune_cfg(spec, flat)
    dataset, split, cache = _shared_data(cfg, shared)
    return run_finetune(cfg, out, dataset=dataset, split=split, feature_cache=cache, existing="stale")


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


def run_sweep(path, out=None, overrides=(), stop_after=None, workers: int = 1) -> Path:
    """Run every unfinished cell; ``stop_after`` ends after that many newly run cells (for tests).

    ``workers > 1`` runs that many cells at once, each in its own process (spawned) with ``cores // workers``
    torch threads unless the cell sets ``train.num_threads``, and its output in ``logs/<id>.log``.
    Pretrainings still run first, one at a time, in this process. A failed cell stops the sweep once the
    cells already running have finished, and names the cell and its log."""
    spec = load_sweep(path, overrides)
    if workers < 1:
        raise ConfigError(f"sweep: workers must be >= 1, got {workers}")
    if workers > 1 and stop_after is not None:
        raise ConfigError("sweep: stop_after counts cells run one at a time; use it with workers=1")
    root = Path(out or spec.get("out") or "runs/sweep")
    from ssl_derm.runs.finished import check_out_path

    check_out_path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "sweep.json", spec)
    cells = plan_cells(spec)
    ran = 0
    shared: dict = {}  # data, split and frozen features reused across cells
    from tqdm import tqdm

    tasks = []
    for cell in tqdm(cells, desc="sweep", dynamic_ncols=True, disable=workers > 1):
        cdir = root / "cells" / cell["id"]
        if stop_after is not None and ran >= stop_after:
            break
        before = recorded(cdir)  # a finished cell is reused only while its fingerprint fits the plan
        flat = dict(cell["downstream"])
        if cell["pretrain"] is not None:
            pre = dict(cell["pretrain"])
            if spec["downstream"] == "finetune" and spec.get("exclude_test", True) and not pre.get("data.exclude_split"):
                # the images that the cell scores stay out of its pretraining, even without their labels
                pre["data.exclude_split"] = str(_test_split_file(spec, flat, shared))
            flat["encoder.checkpoint"] = str(_run_pretrain(spec, pre, root))
        elif "init" in cell["values"]:
            flat["encoder.checkpoint"] = "none"
        if workers > 1:
            tasks.append((cell["id"], flat, cdir))
            continue
        _run_downstream(spec, flat, cdir, shared)
        ran += int(recorded(cdir) != before)
    if tasks:
        _run_parallel(spec, tasks, workers)
    write_tables(root, spec, cells)
    return root


_WORKER_SHARED: dict = {}  # a worker process's data, split and features, reused by the cells it runs


def _log_path(cdir: Path) -> Path:
    """A worker's output for a cell: beside the cells, so a stale cell moved aside keeps its own log."""
    return cdir.parent.parent / "logs" / f"{cdir.name}.log"


def _worker_cell(spec: dict, flat: dict, out: str, threads: int) -> None:
    import contextlib

    import torch

    torch.set_num_threads(threads)
    log_path = _log_path(Path(out))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _run_downstream(spec, flat, Path(out), _WORKER_SHARED)


def _run_parallel(spec: dict, tasks: list, workers: int) -> None:
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as pool, \
            tqdm(total=len(tasks), desc=f"sweep ({workers} workers)", dynamic_ncols=True) as bar:
        futures = {pool.submit(_worker_cell, spec, flat, str(cdir), threads): (cid, cdir) for cid, flat, cdir in tasks}
        for done in as_completed(futures):
            bar.update(1)
            e = done.exception()
            if e is None:
                continue
            for f in futures:
                f.cancel()  # queued cells never start; running ones finish (the pool waits) and keep their results
            cid, cdir = futures[done]
            msg = f"sweep cell {cid} failed (its output: {_log_path(cdir)}): {e}"
            try:
                err = type(e)(msg)  # the same kind of error, so the CLI gives its exit code
            except Exception:
                err = RuntimeError(msg)
            raise err from e


def write_tables(root: Path, spec: dict, cells: list) -> list:
    """results.csv (one row per finished cell), results.md (mean +- std over seeds), plots, hparams."""
    keys = list(spec.get("grid", {}))
    metric_keys = list(spec.get("metrics") or ["balanced_accuracy"])
    found = [json.loads(p.read_text()) for p in (root / "cells" / c["id"] / "metrics.json" for c in cells) if p.is_file()]
    from ssl_derm.metrics.skin_tone import sweep_keys

    metric_keys += [k for k in sweep_keys(found) if k not in metric_keys]  # ece, per skin tone, worst-group gap
    if any(isinstance(m.get("external"), dict) for m in found):  # the external set's columns beside the test side's
        metric_keys += [f"external.{k}" for k in metric_keys if not k.startswith("external.")]
    ci_keys = [f"{k}_ci" for k in metric_keys if any(metric_ci(m, k) for m in found)]
    rows = []
    sel = spec.get("select")
    for cell in cells:
        mpath = root / "cells" / cell["id"] / "metrics.json"
        if mpath.is_file():
            m = json.loads(mpath.read_text())
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
