"""External test sets: train on one archive, also score on another (``data.test_images``).

    ssl-derm finetune ... data.images=[ham10000/images] data.labels=ham10000/labels.csv \\
        data.test_images=[isic2017/images] data.test_labels=isic2017/labels.csv \\
        'data.label_map={melanoma: mel, nevus: nv, seborrheic_keratosis: bkl}'

``fewmask_seg`` scores ``data.test_masks`` instead of labels. The external images go through the same
decode-once cache as ``data.images``; their labels are mapped
onto the training classes by ``data.label_map`` (an external label name -> a training class, or null
to leave those images out); a label that is neither a training class nor mapped is an error naming it.
The external rows are appended behind the training pool's rows (``rows["external"]``), so every
protocol scores them with the model it scores the test side with; they are never trained or selected on.
When ``data.test_labels`` has a ``split`` column (ISIC 2017's official split), only its ``test`` rows are
scored; ``data.test_frac=0`` gives the whole labelled pool of ``data.*`` to train/val.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Optional, Tuple

import numpy as np

from ssl_derm.data.sources import DataError

_MERGED: dict = {}  # (id of the pool, external key) -> merged dataset: label-efficiency cells reuse one copy


def wanted(cfg) -> bool:
    return bool(getattr(cfg.data, "test_images", None))


def _label_map(cfg) -> dict:
    m = cfg.data.label_map or {}
    if not isinstance(m, dict):
        raise DataError(f"data.label_map must map external label names to training classes, e.g. "
                        f"{{melanoma: mel, nevus: nv}}; got {m!r}")
    return {str(k): (None if v is None or str(v).lower() in ("null", "none", "") else str(v)) for k, v in m.items()}


def load_external(cfg, pool, need_masks: bool = False):
    """The external ``Dataset`` with labels re-indexed onto ``pool.classes`` (-1 = left out), or None."""
    if not wanted(cfg):
        if cfg.data.test_labels or cfg.data.test_masks or cfg.data.label_map:
            raise DataError("data.test_labels / data.test_masks / data.label_map are set but data.test_images is "
                            "not: give the external image folders with data.test_images=[DIR]")
        return None
    from ssl_derm.config import ConfigError
    from ssl_derm.data import load_dataset

    if need_masks and not cfg.data.test_masks:
        raise ConfigError(f"data.test_images is set but data.test_masks is not: protocol {cfg.protocol.name} scores "
                          "an external set on its masks (a folder of <id>.png)")
    if not need_masks and not cfg.data.test_labels:
        raise DataError("data.test_images is set but data.test_labels is not: an external classification test set "
                        "needs a CSV image_id,label")
    dcfg = dataclasses.replace(copy.deepcopy(cfg.data), images=list(cfg.data.test_images),
                               labels=None if need_masks else cfg.data.test_labels, masks=cfg.data.test_masks)
    ext = load_dataset(dcfg, need_labels=not need_masks, need_masks=need_masks)
    keep = np.ones(len(ext.ids), bool)
    if ext.given_split is not None:  # a CSV with a split column (ISIC 2017): its test rows are the test set
        from ssl_derm.data.given_split import side_of

        keep &= np.array([side_of(s, "data.test_labels") == "test" for s in ext.given_split])
    if ext.labels is not None and not need_masks:
        lmap = _label_map(cfg)
        index = {c: k for k, c in enumerate(pool.classes)}
        unknown = sorted({lmap.get(c, c) for c in ext.classes if c not in lmap and c not in index}
                         | {v for v in lmap.values() if v is not None and v not in index})
        if unknown:
            raise DataError(f"external label(s) {unknown} of '{cfg.data.test_labels}' are not training classes "
                            f"({', '.join(pool.classes)}): map them with data.label_map={{name: class}} "
                            "(or to null to leave those images out)")
        to_pool = np.array([index[lmap[c]] if c in lmap and lmap[c] is not None else
                            (-1 if c in lmap else index[c]) for c in ext.classes] + [-1], dtype=np.int64)
        ext.labels = to_pool[ext.labels]  # ext.labels == -1 picks the trailing -1
        ext.classes = list(pool.classes)
        keep &= ext.labels >= 0
    if not keep.any():
        raise DataError(f"no image of data.test_images={cfg.data.test_images} is left to score (labels mapped to "
                        "null, unlabelled, or no 'test' rows with split.mode=given)")
    overlap = set(pool.ids) & {i for i, k in zip(ext.ids, keep) if k}
    if overlap:
        raise DataError(f"{len(overlap)} external test images are also in data.images (e.g. {sorted(overlap)[:3]}): "
                        "an evaluated image must never be trained on; remove them from one of the folders")
    ext = _subset(ext, np.flatnonzero(keep))
    _refuse_copies(pool, ext, cfg)
    return ext


def _refuse_copies(pool, ext, cfg) -> None:
    """The id check above misses a training image copied into the external set under another name (refused:
    it would be scored as unseen) and an external image of a lesion id the pool holds (said on stderr)."""
    from ssl_derm.data.duplicates import pairs_text, same_pixels

    same = same_pixels(pool.images, pool.ids, range(len(pool.ids)), ext.images, ext.ids, range(len(ext.ids)))
    if same:
        raise DataError(f"{len(same)} external test images of data.test_images are identical to images in "
                        f"data.images under another id (data.images = data.test_images: {pairs_text(same)}): an "
                        "evaluated image must never be trained on; remove the copies from one of the folders")
    if pool.lesion_ids is not None and ext.lesion_ids is not None:
        own = lambda ds: {g for g, i in zip(ds.lesion_ids, ds.ids) if g != i}  # noqa: E731 (no lesion id: no group)
        shared = sorted(own(pool) & own(ext))
        if shared:  # a warning: two archives may number their lesions alike without sharing one
            print(f"[ssl-derm] warning: {len(shared)} lesion ids of data.test_labels are also lesion ids in "
                  f"data.labels (e.g. {shared[:3]}); if they name the same lesions, the external score is not of "
                  "unseen lesions: remove those images from one of the sets", file=sys.stderr)


def _subset(ds, rows: np.ndarray):
    if len(rows) == len(ds.ids):
        return ds
    pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
    return dataclasses.replace(
        ds, ids=pick(ds.ids), images=ds.images[rows], paths=pick(ds.paths), orig_sizes=pick(ds.orig_sizes),
        labels=None if ds.labels is None else ds.labels[rows], lesion_ids=pick(ds.lesion_ids),
        masks=None if ds.masks is None else ds.masks[rows], has_mask=None if ds.has_mask is None else ds.has_mask[rows],
        given_split=pick(ds.given_split))


def attach(pool, ext) -> Tuple[object, np.ndarray]:
    """(pool + external rows as one Dataset, the external rows (M,) int64). The pool's rows keep their numbers."""
    # the labels too: the same images under another data.label_map must not reuse a merge with the old labels
    key = (id(pool), ext.key, tuple(ext.ids), None if ext.labels is None else np.asarray(ext.labels).tobytes())
    if key not in _MERGED:
        _MERGED.clear()
        n = len(pool.ids)
        cat = lambda a, b: None if a is None or b is None else list(a) + list(b)  # noqa: E731
        masks = None
        if pool.masks is not None and ext.masks is not None:
            masks = np.concatenate([pool.masks, ext.masks])
        labels = None if pool.labels is None else np.concatenate(
            [pool.labels, ext.labels if ext.labels is not None else np.full(len(ext.ids), -1)])
        merged = dataclasses.replace(
            pool, ids=cat(pool.ids, ext.ids), images=np.concatenate([pool.images, ext.images]),
            paths=cat(pool.paths, ext.paths), orig_sizes=cat(pool.orig_sizes, ext.orig_sizes), labels=labels,
            lesion_ids=None if pool.lesion_ids is None and ext.lesion_ids is None else
            list(pool.lesion_ids or pool.ids) + list(ext.lesion_ids or ext.ids),
            masks=masks, has_mask=None if masks is None else np.concatenate([pool.has_mask, ext.has_mask]),
            given_split=None)
        _MERGED[key] = (merged, np.arange(n, n + len(ext.ids), dtype=np.int64), pool)  # keep pool alive: id() stays unique
    merged, rows, _ = _MERGED[key]
    return merged, rows


def groups_of(dataset, rows: np.ndarray) -> Optional[list]:
    """Lesion ids of ``rows`` for grouped bootstrap resampling, or None (each image its own group)."""
    if dataset.lesion_ids is None:
        return None
    return [dataset.lesion_ids[r] for r in rows]


def warn_unused_test_keys(cfg, command: str) -> None:
    """``segment`` and ``pretrain`` score no external set: say so instead of ignoring the keys silently."""
    for key in ("test_images", "test_labels", "test_masks"):
        if getattr(cfg.data, key, None):
            print(f"[ssl-derm] warning: data.{key} is ignored by `ssl-derm {command}`", file=sys.stderr)


def score(ctx, probs: np.ndarray, logger=None) -> dict:
    """Metrics of the external rows (the test side's names, with bootstrap intervals, calibration and
    skin tone); writes external_probs.npy, external_ids.json, external_confusion_matrix.png and
    external_calibration.png."""
    from ssl_derm.metrics.bootstrap import classification_cis
    from ssl_derm.metrics.classification import classification_metrics, save_confusion_png
    from ssl_derm.runs import write_json
    from ssl_derm.runs.folder import write_npy

    rows = ctx.rows["external"]
    y = ctx.labels("external")
    m = classification_metrics(y, probs, ctx.dataset.classes)
    m.update(classification_cis(y, probs, groups_of(ctx.dataset, rows)))
    from ssl_derm.metrics.audit import side_scores

    m.update(side_scores(y, probs, ctx.skin_tone()[rows], ctx.dataset.classes, groups_of(ctx.dataset, rows),
                         ctx.out_dir / "external_calibration.png", f"external, {ctx.cfg.protocol.name}", logger,
                         tag="external/calibration"))
    m["images"] = list(ctx.cfg.data.test_images)
    write_npy(ctx.out_dir / "external_probs.npy", np.asarray(probs, dtype=np.float32))
    write_json(ctx.out_dir / "external_ids.json", [ctx.dataset.ids[r] for r in rows])
    title = f"external, {ctx.cfg.protocol.name}: balanced acc {m['balanced_accuracy']:.3f}"
    save_confusion_png(np.array(m["confusion_matrix"]), ctx.dataset.classes, ctx.out_dir / "external_confusion_matrix.png",
                       title, logger, tag="external/confusion_matrix")
    if logger is not None:
        for k in ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc"):
            if m[k] is not None:
                logger.scalar(f"external/{k}", m[k], 0)
    return m
