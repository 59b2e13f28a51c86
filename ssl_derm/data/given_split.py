"""``split.mode: given``: train/val/test from the ``split`` column of the labels CSV (e.g. ISIC 2017's
official train/validation/test), instead of a seeded draw.

The result has the layout of :func:`ssl_derm.data.splits.make_split` (train/val/test id lists, nested
labelled subsets of the training side drawn with ``seed``, unlabeled ids), so every protocol reads it alike.
Column values are matched case-insensitively: train/training, val/valid/validation, test/testing.
"""
from __future__ import annotations

import sys

import numpy as np

from ssl_derm.data.sources import DataError

SIDE_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}


def side_of(value: str, where: str = "data.labels") -> str:
    """The side a ``split`` column value names; an unknown value is an error naming it and the file key."""
    side = SIDE_NAMES.get(str(value).strip().lower())
    if side is None:
        raise DataError(f"split column of {where}: value {value!r} is not one of train, val/validation, test "
                        "(split.mode=given takes the sides from this column)")
    return side


def _warn_leaks(dataset, rows: dict) -> None:
    """Say so when the given sides share a lesion or an image (same pixels under two ids): the column is the
    dataset's own split, so it is used as given, but its test score then is not of unseen lesions."""
    from ssl_derm.data.duplicates import pairs_text, same_pixels, shared_groups
    from ssl_derm.data.sources import _few

    fit = np.concatenate([rows["train"], rows["val"]])
    for held, name in ((rows["test"], "test"), (rows["val"], "val")):
        base = rows["train"] if name == "val" else fit
        lesions = shared_groups(dataset.lesion_ids, dataset.ids, base, held)
        if lesions:
            print(f"[ssl-derm] warning: split.mode=given: {len(lesions)} lesions of data.labels have images on the "
                  f"{name} side and on the training side ({_few(lesions)}); fix the split column so that each "
                  "lesion is on one side, or use split.mode=draw (lesion-grouped)", file=sys.stderr)
        if getattr(dataset, "images", None) is not None:
            same = same_pixels(dataset.images, dataset.ids, base, dataset.images, dataset.ids, held)
            if same:
                print(f"[ssl-derm] warning: split.mode=given: {len(same)} {name} images are identical to training "
                      f"images under another id ({pairs_text(same)}); remove the copies from data.images",
                      file=sys.stderr)


def given_split(dataset, seed: int = 0) -> dict:
    """Split dict of a labelled ``Dataset`` whose CSV has a ``split`` column."""
    from ssl_derm.data.splits import SPLIT_VERSION, nested_labelled

    if dataset.given_split is None:
        raise DataError("split.mode=given needs a 'split' column (train/val/test) in data.labels; this CSV has none: "
                        "use split.mode=draw")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    lab = np.flatnonzero(labels >= 0)
    blank = [dataset.ids[r] for r in lab if not dataset.given_split[r]]
    if blank:
        raise DataError(f"split.mode=given: {len(blank)} labelled images have an empty split column in data.labels "
                        f"(e.g. {blank[:3]}); fill it in or use split.mode=draw")
    side = np.array([side_of(dataset.given_split[r]) for r in lab])
    rows = {s: lab[side == s] for s in ("train", "val", "test")}
    if not len(rows["train"]):
        raise DataError("split.mode=given: no labelled image has split=train in data.labels")
    ids = dataset.ids
    _warn_leaks(dataset, rows)
    return {
        "version": SPLIT_VERSION,
        "params": {"mode": "given", "n": len(ids), "seed": seed},
        **{s: [ids[r] for r in rows[s]] for s in ("train", "val", "test")},
        "labelled": {f: [ids[r] for r in sub] for f, sub in nested_labelled(rows["train"], labels, seed).items()},
        "unlabeled": [ids[r] for r in np.flatnonzero(labels < 0)],
    }
