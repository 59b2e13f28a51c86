"""``ssl-derm robustness --model RUN --images DIR [DIR ...] (data.masks=DIR | data.labels=CSV) --out OUT``.

Runs the run folder's exported classifier or segmenter (``model.json``, as ``ssl-derm predict`` loads it;
classical segmenters included) on the images as they are and under every acquisition shift of
``ssl_derm/robustness/shifts.py`` at three severities. Writes:

- ``OUT/robustness.csv``: one row per shift, severity and metric: value, drop from clean (> 0 hurts),
  95% bootstrap interval of the value (lo, hi) and of the drop (drop_lo, drop_hi, paired), n;
- ``OUT/metrics.json``: the same by shift and severity (``shifts.<name>.severities.<1-3>``), ``clean``,
  ``worst_drop``, and what was run (model, images, working size, seed);
- ``OUT/robustness.png``: the main metric (Jaccard, or balanced accuracy) per shift against severity;
- ``OUT/bad_files.txt``: unreadable images or masks (skipped).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

import numpy as np
from tqdm import tqdm

from ssl_derm.config import ConfigError, load_config
from ssl_derm.errors import DataError
from ssl_derm.runs import resolve_device, torch_threads, write_json, write_metrics


def load_truth(found, cfg, model, bad: list):
    """Decode images at ``cfg.image_size`` with their masks (segmenter) or labels (classifier).

    -> (ids, uint8 (N,S,S,3), bool (N,S,S) masks or None, int (N,) labels or None, lesion groups or None,
    number of images without a mask / label)."""
    from ssl_derm.data import decode
    from ssl_derm.data.cache import _ordered_map
    from ssl_derm.data.sources import find_masks, read_labels

    is_seg = model.meta["kind"] == "segmenter"
    truth = find_masks(cfg.data.masks) if is_seg else read_labels(cfg.data.labels)
    rows = [r for r in range(len(found)) if (found.ids[r] in truth if is_seg else truth.label.get(found.ids[r], ""))]
    n_without = len(found) - len(rows)
    if not rows:
        what = f"mask in '{cfg.data.masks}'" if is_seg else f"label in '{cfg.data.labels}'"
        raise DataError(f"none of the {len(found)} images has a {what} (image ids look like {', '.join(found.ids[:3])})")
    if 0 < cfg.max_images < len(rows):
        rows = sorted(np.random.default_rng(cfg.seed).choice(rows, cfg.max_images, replace=False).tolist())
    if not is_seg:
        index = {c: k for k, c in enumerate(model.classes)}
        unknown = sorted({truth.label[found.ids[r]] for r in rows} - set(index))
        if unknown:
            raise DataError(f"labels file '{cfg.data.labels}' has classes the model does not know: "
                            f"{', '.join(unknown[:5])}; the model's classes are {', '.join(model.classes)}")
    size = cfg.image_size
    ids, imgs, masks, labels, groups = [], [], [], [], []
    decoded = _ordered_map(decode.image_worker, [(found.paths[r], size) for r in rows], cfg.workers)
    for r, (arr, hw, reason) in zip(rows, decoded):
        i = found.ids[r]
        if arr is None:
            bad.append((found.paths[r], reason))
            continue
        if is_seg:
            m, why = decode.load_mask(truth[i], image_hw=hw, size=size)
            if m is None:
                bad.append((truth[i], why))
                continue
            masks.append(m > 0)
        else:
            labels.append(index[truth.label[i]])
            groups.append(truth.lesion_id.get(i) or i)  # no lesion id: its own group
        ids.append(i)
        imgs.append(arr)
    if not ids:
        raise DataError(f"no usable image{' with a usable mask' if is_seg else ''}: all {len(rows)} failed, e.g. "
                        f"'{bad[0][0]}': {bad[0][1]}")
    return (ids, np.stack(imgs), np.stack(masks) if is_seg else None, np.array(labels) if not is_seg else None,
            groups if not is_seg and any(g != i for g, i in zip(groups, ids)) else None, n_without)


def _write_bad(path: Path, bad: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{p}\t{reason}\n" for p, reason in bad))
    os.replace(tmp, path)


def run_robustness(model_dir, images: Sequence[str], out_dir, overrides=()) -> dict:
    """Score the model of ``model_dir`` on ``images`` clean and under every shift; returns metrics.json's dict."""
    from ssl_derm.data.sources import list_images
    from ssl_derm.robustness import report
    from ssl_derm.robustness.shifts import shift_names
    from ssl_derm.robustness.suite import RobustnessConfig, check_robustness_config, conditions, run_conditions
    from ssl_derm.serve.loaders import load_model

    cfg = overrides if isinstance(overrides, RobustnessConfig) else load_config(RobustnessConfig, None, list(overrides))
    check_robustness_config(cfg)
    with torch_threads(cfg.num_threads):  # for this run only: the caller's setting comes back afterwards
        device = resolve_device(cfg.device)
        model = load_model(model_dir, device)
        kind = model.meta["kind"]
        if kind == "segmenter" and not cfg.data.masks:
            raise ConfigError(f"'{model_dir}' holds a segmenter: give its true masks with data.masks=DIR")
        if kind == "classifier" and not cfg.data.labels:
            raise ConfigError(f"'{model_dir}' holds a classifier: give its labels with data.labels=CSV")
        if kind == "segmenter" and cfg.data.labels or kind == "classifier" and cfg.data.masks:
            raise ConfigError(f"'{model_dir}' holds a {kind}: use "
                              f"{'data.masks=DIR' if kind == 'segmenter' else 'data.labels=CSV'} only")
        found = list_images(images)
        if not len(found):
            raise DataError(f"no image files (jpg, jpeg, png, bmp, tif, tiff) under {', '.join(map(str, images))}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bad: List[tuple] = []
        ids, imgs, masks, labels, groups, n_without = load_truth(found, cfg, model, bad)
        _write_bad(out / "bad_files.txt", bad)
        names = list(cfg.shifts) or shift_names()
        total = len(ids) * len(conditions(names))
        with tqdm(total=total, desc=f"robustness ({len(ids)} images x {len(conditions(names))} conditions)",
                  dynamic_ncols=True, unit="img") as bar:
            results = run_conditions(model, imgs, masks, names, cfg.seed, cfg.batch_size, device, bar)
        rows = report.summarise(results, labels, groups, seed=cfg.seed)
        metric = "jaccard" if kind == "segmenter" else "balanced_accuracy"
        report.write_csv(out / "robustness.csv", rows)
        report.plot(out / "robustness.png", rows, metric)
        metrics = {"model": str(Path(model_dir).resolve()), "kind": kind, "method": model.meta.get("method"),
                   "images": [str(p) for p in images], "n_images": len(ids), "n_without_truth": n_without,
                   "n_bad": len(bad), "image_size": cfg.image_size, "model_image_size": model.image_size,
                   "seed": cfg.seed, "device": str(device), "main_metric": metric, **report.metrics_json(rows)}
        write_metrics(out, metrics)
        write_json(out / "robustness_config.json", {"shifts": names, "batch_size": cfg.batch_size,
                                                    "max_images": cfg.max_images})
        print(report.table(rows, metric))
        print(f"[ssl-derm] robustness of {len(ids)} images under {len(names)} shifts x 3 severities -> "
              f"{out / 'robustness.csv'}", flush=True)
        return metrics
