"""``ssl-derm predict --model RUN_DIR --images DIR [DIR ...] --out OUT [key=value ...]``.

A classifier writes ``OUT/predictions.csv`` (``image_id,label,prob_<class>...``; one row per usable
image, probabilities summing to 1; the logits divided by the temperature in model.json) and, with
``data.labels=CSV``, ``OUT/metrics.json`` (the run's classification metrics on the images that have a
label, calibration and the ``skin_tone`` block), ``OUT/calibration.png`` and ``OUT/skin_tone.csv``. A segmenter writes ``OUT/masks/<id>.png`` (0/255,
each image's own size), ``OUT/overlays/<id>.png`` for the first ``overlays`` images, and, with
``data.masks=DIR``, ``OUT/metrics.json`` (per-image and mean Dice, Jaccard...). Unusable files go to
``OUT/bad_files.txt`` (always written, empty when none) and are skipped.

Images are streamed: decoded in a bounded window by ``data/decode.py`` (the cache's own decoder, so a
file is accepted or rejected exactly as in training), predicted a batch at a time and written out, so a
folder of 100k images takes the memory of one batch plus one row of probabilities per image.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ssl_derm.config import ConfigError, ScoringData, load_config
from ssl_derm.runs import resolve_device, torch_threads, write_json, write_metrics
from ssl_derm.runs.finished import check_out_path

TTA_CHOICES = ("none", "d4")


@dataclass
class PredictConfig:
    """Overrides of ``ssl-derm predict`` (``key=value``)."""

    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    batch_size: int = 64  # images per forward pass
    workers: int = 2  # decoding threads
    num_threads: int = 0  # >0: torch CPU threads for this run
    tta: str = "none"  # none | d4: mean over the 8 rotations/flips
    overlays: int = 32  # segmenters: overlays of the first n images (-1: all)
    data: ScoringData = field(default_factory=ScoringData)


def _stream(paths: Sequence[str], ids: Sequence[str], size: int, workers: int, batch_size: int, bad: list, bar):
    """Yield (ids, uint8 (B, S, S, 3), [(h, w)]) batches of usable images; bad files go to ``bad``."""
    from ssl_derm.data import decode
    from ssl_derm.data.cache import _ordered_map

    results = _ordered_map(decode.image_worker, [(p, size) for p in paths], workers, window=max(2 * batch_size, 64))
    b_ids, b_arr, b_hw = [], [], []
    for image_id, path, (arr, hw, reason) in zip(ids, paths, results):
        bar.update(1)
        if arr is None:
            bad.append((path, reason))
            continue
        b_ids.append(image_id)
        b_arr.append(arr)
        b_hw.append(hw)
        if len(b_ids) == batch_size:
            yield b_ids, np.stack(b_arr), b_hw
            b_ids, b_arr, b_hw = [], [], []
    if b_ids:
        yield b_ids, np.stack(b_arr), b_hw


def run_predict(model_dir, images: Sequence[str], out_dir, overrides=(), tta: Optional[str] = None) -> dict:
    """Predict every image under ``images`` with the model exported in ``model_dir``; returns the summary
    (also ``OUT/predict.json``) with ``metrics`` when labels or masks were given."""
    from ssl_derm.data.sources import DataError, list_images
    from ssl_derm.serve.loaders import load_model

    cfg = load_config(PredictConfig, None, overrides) if not isinstance(overrides, PredictConfig) else overrides
    if tta is not None:
        cfg.tta = tta
    if cfg.tta not in TTA_CHOICES:
        raise ConfigError(f"--tta / tta: {cfg.tta!r} is not one of {', '.join(TTA_CHOICES)}")
    with torch_threads(cfg.num_threads):  # for this run only: the caller's setting comes back afterwards
        device = resolve_device(cfg.device)
        model = load_model(model_dir, device)
        if model.meta["kind"] == "classifier" and cfg.data.masks:
            raise ConfigError(f"data.masks is for segmenters; '{model_dir}' holds a classifier (use data.labels=CSV)")
        if model.meta["kind"] == "segmenter" and cfg.data.labels:
            raise ConfigError(f"data.labels is for classifiers; '{model_dir}' holds a segmenter (use data.masks=DIR)")
        found = list_images(images)
        if not len(found):
            raise DataError(f"no image files (jpg, jpeg, png, bmp, tif, tiff) under {', '.join(map(str, images))}")
        if found.duplicates:
            p, i, kept = found.duplicates[0]
            print(f"[ssl-derm] {len(found.duplicates)} image files share an id with an earlier file and are not "
                  f"predicted (one row per id, first folder wins; e.g. {p} = {kept}); rename them to predict them",
                  file=sys.stderr)
        out = Path(out_dir)
        check_out_path(out)
        clear_earlier_predict(out)
        out.mkdir(parents=True, exist_ok=True)
        bad: List[tuple] = []
        t0 = time.perf_counter()
        with tqdm(total=len(found), desc=f"predict ({len(found)} images)", dynamic_ncols=True, unit="img") as bar:
            batches = _stream(found.paths, found.ids, model.image_size, cfg.workers, cfg.batch_size, bad, bar)
            if model.meta["kind"] == "classifier":
                from ssl_derm.serve.write import classify_all

                n, metrics = classify_all(model, batches, out, cfg)
            else:
                from ssl_derm.serve.write import segment_all

                n, metrics = segment_all(model, batches, out, cfg)
        seconds = time.perf_counter() - t0
        _write_bad(out / "bad_files.txt", bad)
        summary = {"model": str(Path(model_dir).resolve()), "kind": model.meta["kind"], "n_images": n,
                   "n_bad": len(bad), "tta": cfg.tta, "device": str(device), "seconds": round(seconds, 2),
                   "images_per_second": round(n / seconds, 2) if seconds > 0 else None,
                   "duplicates_skipped": len(found.duplicates)}
        if metrics is not None:
            write_metrics(out, metrics)
            summary["metrics"] = metrics
        write_json(out / "predict.json", {k: v for k, v in summary.items() if k != "metrics"})
        what = "predictions.csv" if model.meta["kind"] == "classifier" else "masks/"
        print(f"[ssl-derm] predicted {n} images ({len(bad)} bad, listed in {out / 'bad_files.txt'}) "
              f"in {seconds:.1f}s -> {out / what}", flush=True)
        return summary


PREDICT_OUTPUTS = ("predictions.csv", "masks", "overlays", "metrics.json", "calibration.png", "skin_tone.csv",
                   "bad_files.txt", "predict.json")


def clear_earlier_predict(out: Path) -> None:
    """A folder of an earlier predict is cleared (its masks would sit beside the new ones, its metrics.json
    beside new predictions); a folder holding another command's outputs (a finetune run's metrics.json, a
    model) is refused, never cleared."""
    from ssl_derm.errors import RunFolderError
    from ssl_derm.runs.finished import clear_outputs

    present = [n for n in PREDICT_OUTPUTS if (out / n).exists()]
    if not present:
        return
    if not (out / "predict.json").is_file():
        raise RunFolderError(f"--out '{out}' holds {', '.join(present)} of another command (no predict.json): "
                             "give predict a folder of its own")
    clear_outputs(out, present)
    print(f"[ssl-derm] cleared the outputs of an earlier predict in {out} ({', '.join(present)})", file=sys.stderr)


def _write_bad(path: Path, bad: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for p, reason in bad:
            f.write(f"{p}\t{reason}\n")
    os.replace(tmp, path)


def read_predictions(path) -> List[dict]:
    """Rows of a predictions.csv (for tests and notebooks)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
