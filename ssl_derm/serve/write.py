"""The two halves of ``ssl-derm predict`` that consume the image stream: rows of class probabilities,
or masks and overlays, each written as it comes (scores kept per image, never the images)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ssl_derm.errors import written_whole


def classify_all(model, batches, out: Path, cfg) -> Tuple[int, Optional[dict]]:
    """Write ``predictions.csv`` from ``(ids, uint8 (B,S,S,3), sizes)`` batches; with ``cfg.data.labels``
    return the classification, calibration and skin-tone metrics of the labelled images, else None (the
    skin tone: the ITA around the default segmenter's lesion, computed batch by batch)."""
    from ssl_derm.metrics.classification import classification_metrics
    from ssl_derm.segmenters.skin_tone import default_ita
    from ssl_derm.segmenters.archive_masks import default_segmenter

    path = out / "predictions.csv"
    tmp = path.with_name(path.name + ".tmp")
    all_ids, all_probs, all_ita = [], [], []
    segmenter = None  # the default segmenter, for the skin around each lesion (skin-tone scores)
    n = 0
    with written_whole(tmp, path):  # a full disk: one message, and no half predictions.csv
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "label"] + [f"prob_{c}" for c in model.classes])
            for ids, arr, _ in batches:
                probs = model.predict_batch(torch.from_numpy(arr).permute(0, 3, 1, 2), cfg.tta).numpy().astype(np.float64)
                probs /= probs.sum(1, keepdims=True)  # float32 softmax rows are within 1e-6 of 1; make them exact to print
                for i, p in zip(ids, probs):
                    w.writerow([i, model.classes[int(p.argmax())]] + [f"{v:.6g}" for v in p])
                n += len(ids)
                if cfg.data.labels:
                    all_ids.extend(ids)
                    all_probs.append(probs.astype(np.float32))
                    segmenter = segmenter or default_segmenter()
                    all_ita.append(default_ita(arr, segmenter=segmenter))
        os.replace(tmp, path)
    if not cfg.data.labels:
        return n, None
    m = _label_metrics(model, cfg.data.labels, all_ids, all_probs, classification_metrics, all_ita, out)
    return n, m


def _label_metrics(model, labels_csv: str, ids, probs, classification_metrics, ita, out: Path) -> dict:
    """Scores of the labelled images: classification, calibration and per skin tone (``ita``: per-batch
    (B,) ITA arrays); writes ``calibration.png`` and ``skin_tone.csv`` into ``out``."""
    from ssl_derm.metrics.audit import side_scores
    from ssl_derm.metrics.skin_tone import write_skin_tone_csv

    from ssl_derm.data.sources import DataError, read_labels

    table = read_labels(labels_csv)
    index = {c: k for k, c in enumerate(model.classes)}
    unknown = sorted({table.label[i] for i in ids if table.label.get(i, "") not in ("",) and table.label[i] not in index})
    if unknown:
        raise DataError(f"labels file '{labels_csv}' has classes the model does not know: {', '.join(unknown[:5])}; "
                        f"the model's classes are {', '.join(model.classes)}")
    probs = np.concatenate(probs) if probs else np.zeros((0, len(model.classes)), np.float32)
    keep = [r for r, i in enumerate(ids) if table.label.get(i, "") != ""]
    if not keep:
        raise DataError(f"none of the {len(ids)} predicted images has a label in '{labels_csv}' "
                        f"(image ids look like {', '.join(ids[:3])})")
    y = np.array([index[table.label[ids[r]]] for r in keep])
    m = classification_metrics(y, probs[keep], model.classes)
    ita = np.concatenate(ita) if ita else np.zeros(0, np.float32)
    write_skin_tone_csv(out / "skin_tone.csv", ids, ita)
    groups = [table.lesion_id.get(ids[r], ids[r]) for r in keep] if table.lesion_id else None
    m.update(side_scores(y, probs[keep], ita[keep], model.classes, groups, out / "calibration.png",
                         f"predict: {len(keep)} labelled images"))
    m["n_without_label"] = len(ids) - len(keep)
    return m


def segment_all(model, batches, out: Path, cfg) -> Tuple[int, Optional[dict]]:
    """Write ``masks/<id>.png`` (each image's own size) and the first ``cfg.overlays`` overlays; with
    ``cfg.data.masks`` return per-image and mean segmentation metrics, else None."""
    from ssl_derm.data.decode import load_mask
    from ssl_derm.data.sources import find_masks
    from ssl_derm.metrics.segmentation import image_metrics, mean_metrics
    from ssl_derm.runs.folder import write_png
    from ssl_derm.segmenters.overlay import draw_overlays
    from ssl_derm.segmenters.scoring import to_original

    mask_dir, ov_dir = out / "masks", out / "overlays"
    mask_dir.mkdir(parents=True, exist_ok=True)
    truth = find_masks(cfg.data.masks) if cfg.data.masks else None
    per_image, missing = {}, []
    n = 0
    mode = model.post.get("upsample", "bilinear")
    for ids, arr, sizes in batches:
        small = model.predict_small(arr, cfg.tta)
        for row, (i, m, hw) in enumerate(zip(ids, small, sizes)):
            full = to_original(m, hw, mode)
            write_png(full, mask_dir / f"{i}.png")
            if cfg.overlays < 0 or n + row < cfg.overlays:
                ov_dir.mkdir(exist_ok=True)
                write_png(draw_overlays(arr[row:row + 1], m[None])[0], ov_dir / f"{i}.png")
            if truth is not None:
                gt, reason = load_mask(truth[i], image_hw=tuple(hw)) if i in truth else (None, "no mask file")
                if gt is None:
                    missing.append(f"{i} ({reason})")
                else:
                    per_image[i] = image_metrics(full, gt > 0)
        n += len(ids)
    if truth is None:
        return n, None
    return n, {"mean": mean_metrics(per_image), "per_image": per_image, "missing_masks": len(missing),
               "missing_examples": missing[:5], "masks": str(cfg.data.masks)}

