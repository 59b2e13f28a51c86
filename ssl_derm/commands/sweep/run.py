"""A sweep's cells run: pretrainings once each, then every unfinished downstream cell, in this process or in
worker processes; a finished cell is reused only while its fingerprint fits the plan."""
from __future__ import annotations

import json
from pathlib import Path

from ssl_derm.commands.sweep.spec import _hash, _overrides, load_sweep, merge_grids, plan_cells
from ssl_derm.commands.sweep.tables import write_tables
from ssl_derm.config import ConfigError, PretrainConfig, load_config
from ssl_derm.runs import flatten, write_json
from ssl_derm.runs.fingerprint import recorded


def _run_pretrain(spec, flat: dict, root: Path) -> Path:
    from ssl_derm.commands.pretrain import run_pretrain

    out = root / "pretrain" / _hash(flat)
    enc = out / "encoder.safetensors"
    if not (enc.is_file() and (out / "metrics.json").is_file()):
        cfg = load_config(PretrainConfig, spec["pretrain"].get("config"), _overrides(flat), lenient=True)
        run_pretrain(cfg, out)
    return enc


def _finetune_cfg(spec, flat: dict):
    """The cell's finetune config: defaults <- the stage's ``base`` mapping <- its config file <- the sweep's
    values, then the stage's ``per_protocol`` keys for the cell's protocol (they win over the rest)."""
    from ssl_derm.evaluate.config import load_finetune_config

    stage = spec.get("finetune", {})
    cfg = load_finetune_config(stage.get("config"), _overrides(flat), base=stage.get("base"), lenient=True)
    extra = (stage.get("per_protocol") or {}).get(cfg.protocol.name)
    if extra:
        cfg = load_finetune_config(stage.get("config"), _overrides({**flat, **flatten(extra)}),
                                   base=stage.get("base"), lenient=True)
    return cfg


def _shared_data(cfg, shared: dict) -> tuple:
    """(dataset, split, feature cache) of a finetune config, loaded once per data setting and reused
    by every cell that differs only in protocol, fraction or seed."""
    from ssl_derm.config import to_dict
    from ssl_derm.models.features import FeatureCache
    from ssl_derm.commands.finetune import load_data_and_split

    if "given" in shared:  # the caller's own dataset and split, for every cell
        return shared["given"]
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


def run_sweep(path, out=None, overrides=(), stop_after=None, workers: int = 1, data=None) -> Path:
    """Run every unfinished cell; ``stop_after`` ends after that many newly run cells (for tests).

    ``path``: a sweep file, or a spec already read (a dict). ``data``: (dataset, split) loaded by the caller,
    used by every finetune cell instead of loading its own. The tables cover this call's cells and those of an
    earlier call into the same folder whose spec differs only in its grid values and seeds.

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
    spec = json.loads(json.dumps(spec, default=str))  # as sweep.json holds it, so two calls' specs compare
    earlier = json.loads((root / "sweep.json").read_text()) if (root / "sweep.json").is_file() else None
    tabled = merge_grids(spec, earlier)
    write_json(root / "sweep.json", tabled)
    cells = plan_cells(spec)
    ran = 0
    shared: dict = {}  # data, split and frozen features reused across cells
    if data is not None:
        from ssl_derm.models.features import FeatureCache

        shared["given"] = (*data, FeatureCache())
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
        elif cell["values"].get("init", "pretrained") == "pretrained" and spec.get("checkpoint") is not None:
            flat["encoder.checkpoint"] = str(spec["checkpoint"])  # the sweep's own encoder file
        elif "init" in cell["values"]:
            flat["encoder.checkpoint"] = "none"
        if workers > 1:
            tasks.append((cell["id"], flat, cdir))
            continue
        _run_downstream(spec, flat, cdir, shared)
        ran += int(recorded(cdir) != before)
    if tasks:
        _run_parallel(spec, tasks, workers)
    write_tables(root, tabled, plan_cells(tabled))
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
