"""Seeded train/val/test splits and nested low-label subsets, written to JSON once and reused (as nnU-Net does).

- ``test`` and ``val`` are held out stratified by label and grouped by lesion (no lesion on two sides),
  with scikit-learn's ``StratifiedGroupKFold``; without lesion ids every image is its own group.
- ``labelled["f"]`` for f in 0.01 ... 1.0: nested subsets of ``train`` (a smaller fraction is always inside
  a larger one), per class ``max(1, round(f * n_class))`` images, so every class has at least one.
- unlabelled images (label -1) go only to ``unlabeled``.

:class:`Split` is what the rest of the code asks: a split file bound to a dataset's ids and labels, which
maps a side, a label fraction and a redraw seed to cache rows.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ssl_derm.data.sources import MISSING_CELLS
from ssl_derm.errors import DataError, SplitError

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
SPLIT_VERSION = 1


def _folds_for(frac: float):
    """(n_splits, folds to take) so that taken/n_splits is closest to ``frac`` with the fewest folds."""
    options = [(abs(frac - round(frac * k) / k), k, round(frac * k)) for k in range(2, 21) if 0 < round(frac * k) < k]
    if not options:  # below 1/40: one fold of many
        return max(2, round(1 / frac)), 1
    best = min(options, key=lambda t: (round(t[0], 3), t[1]))
    return best[1], best[2]


def _holdout(y: np.ndarray, groups: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``frac`` of the items, stratified by ``y``, whole groups only."""
    held = np.zeros(len(y), bool)
    if frac <= 0 or len(y) == 0:
        return held
    k, take = _folds_for(frac)
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"only {n_groups} labelled lesions/images: too few to hold out a fraction of {frac:.3g}; "
                        "add labelled images or set data.test_frac / data.val_frac to 0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer members than n_splits": expected for rare classes
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups)
        for j, (_, test_idx) in enumerate(folds):
            if j == take:
                break
            held[test_idx] = True
    return held


def _group(lesion_id, image_id) -> str:
    """The split group of an image: its lesion id, or the image itself where the lesion id is missing
    (None, NaN, empty): one shared "missing" group would put every such image on one side."""
    if lesion_id is None or (isinstance(lesion_id, float) and lesion_id != lesion_id):
        return str(image_id)
    text = str(lesion_id).strip()
    return str(image_id) if text.lower() in MISSING_CELLS else text


def _fingerprint(ids, labels, lesion_ids) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(ids), [int(v) for v in labels], list(lesion_ids) if lesion_ids is not None else None]).encode())
    return h.hexdigest()


def nested_labelled(train: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """{"0.01": sorted rows, ..., "1.0": ...}: class-stratified subsets of the ``train`` rows, one per
    fraction in FRACTIONS, each inside the next (every class keeps at least one image)."""
    train = np.asarray(train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    # One seeded order per class; every fraction takes a prefix of it, which makes the subsets nested.
    order = {c: rng.permutation(train[labels[train] == c]) for c in np.unique(labels[train])}
    out = {}
    for f in FRACTIONS:
        chosen = np.concatenate([o[: max(1, int(round(f * len(o))))] for o in order.values()]) if order else []
        out[str(f)] = np.sort(np.asarray(chosen, dtype=np.int64))
    return out


def make_split(ids: Sequence[str], labels, lesion_ids: Optional[Sequence[str]] = None, test_frac: float = 0.2,
               val_frac: float = 0.1, seed: int = 0) -> dict:
    """ids (N,), labels int (N,) with -1 = unlabelled, optional lesion ids (N,) -> split dict (see module doc)."""
    ids = list(ids)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(ids) or (lesion_ids is not None and len(lesion_ids) != len(ids)):
        raise DataError(f"split: {len(ids)} ids but {len(labels)} labels"
                        + (f" and {len(lesion_ids)} lesion ids" if lesion_ids is not None else ""))
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1 and test_frac + val_frac < 1):
        raise DataError(f"split fractions data.test_frac={test_frac}, data.val_frac={val_frac}: each must be in "
                        "[0, 1) and together below 1")
    groups = np.array(ids if lesion_ids is None else [_group(g, i) for g, i in zip(lesion_ids, ids)], dtype=object)
    lab = np.flatnonzero(labels >= 0)
    # Group ids must be comparable for sklearn: map them to integers.
    _, gid = np.unique(groups[lab].astype(str), return_inverse=True)
    y = labels[lab]
    test = _holdout(y, gid, test_frac, seed)
    rest = np.flatnonzero(~test)
    val = np.zeros(len(lab), bool)
    if val_frac > 0:
        val[rest[_holdout(y[rest], gid[rest], val_frac / (1 - test_frac), seed + 1)]] = True
    train = lab[~test & ~val]
    labelled = {f: [ids[i] for i in rows] for f, rows in nested_labelled(train, labels, seed).items()}
    return {
        "version": SPLIT_VERSION,
        "params": {"n": len(ids), "fingerprint": _fingerprint(ids, labels, lesion_ids), "test_frac": test_frac,
                   "val_frac": val_frac, "seed": seed, "grouped_by_lesion": lesion_ids is not None},
        "train": [ids[i] for i in train],
        "val": [ids[i] for i in lab[val]],
        "test": [ids[i] for i in lab[test]],
        "labelled": labelled,
        "unlabeled": [ids[i] for i in np.flatnonzero(labels < 0)],
    }


def load_or_make_split(path, ids: Sequence[str], labels, lesion_ids: Optional[Sequence[str]] = None,
                       test_frac: float = 0.2, val_frac: float = 0.1, seed: int = 0) -> dict:
    """Read the split at ``path`` if it was made for these ids/labels/params; else make and write it.

    A file made for other data or params is an error, never silently replaced: results must stay comparable.
    """
    from ssl_derm.runs import write_json  # atomic write

    path = Path(path).expanduser()
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    want = {"n": len(ids), "fingerprint": _fingerprint(ids, labels, lesion_ids), "test_frac": test_frac,
            "val_frac": val_frac, "seed": seed, "grouped_by_lesion": lesion_ids is not None}
    if path.exists():
        try:
            split = json.loads(path.read_text())
            have = split["params"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"split file '{path}' is not a split this program wrote ({e}); delete it or set "
                            "data.split_file to another path") from None
        diff = [k for k in want if have.get(k) != want[k]]
        if split.get("version") != SPLIT_VERSION:
            diff.append("version")
        if diff:
            what = ", ".join("ids/labels/lesion ids" if k == "fingerprint" else
                             f"{k} ({have.get(k)!r} there, {want[k]!r} now)" for k in diff)
            raise DataError(f"split file '{path}' was made for other data or parameters (differs in: {what}); "
                            "delete it to make a new split, or set data.split_file to another path")
        return split
    split = make_split(ids, labels, lesion_ids, test_frac, val_frac, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, split)
    return split


def split_path(data_cfg, dataset, seed: int = 0) -> Path:
    """``data.split_file`` if set, else ``<cache_dir>/splits/<ids+labels+lesions hash>-test..-val..-seed...json``.

    The default name changes whenever the data or the fractions do, so it never clashes with an old split.
    """
    from ssl_derm.data.cache import default_cache_dir

    if data_cfg.split_file:
        return Path(data_cfg.split_file).expanduser()
    labels = dataset.labels if dataset.labels is not None else np.full(len(dataset.ids), -1)
    fp = _fingerprint(dataset.ids, labels, dataset.lesion_ids)[:16]
    return default_cache_dir(data_cfg.cache_dir) / "splits" / (
        f"{fp}-test{data_cfg.test_frac:g}-val{data_cfg.val_frac:g}-seed{seed}.json")


def split_for(dataset, data_cfg, seed: int = 0) -> dict:
    """The split of a loaded ``Dataset`` at ``split_path(data_cfg, dataset, seed)``, made once then reused."""
    if dataset.labels is None:
        raise DataError("a split needs labels: set data.labels to a CSV with columns image_id,label[,lesion_id]")
    return Split.for_dataset(dataset, data_cfg, seed).data


def fraction_key(labelled: dict, fraction: float) -> str:
    """The split file's key for ``fraction`` ("0.1" for 0.1); an unknown fraction lists the known ones."""
    for key in labelled:
        if abs(float(key) - fraction) < 1e-9:
            return key
    raise SplitError(f"split.fraction={fraction} is not in the split file; available fractions: "
                     f"{', '.join(sorted(labelled, key=float))}")


class Split:
    """A split file (the dict of ids that :func:`make_split` writes) bound to a dataset's ids and labels.

    Sides of :meth:`rows` (int64 arrays of cache rows): ``labelled`` (the ``fraction`` subset of the
    training side), ``unlabeled`` (the rest of it plus images without a label that no side holds),
    ``val`` (model selection only) and ``test`` (the final score only).
    """

    def __init__(self, data: dict, ids: Sequence[str], labels: Optional[np.ndarray] = None, path=None):
        self.data, self.ids, self.path = data, list(ids), (Path(path) if path else None)
        self.labels = None if labels is None else np.asarray(labels)
        self._row = {i: r for r, i in enumerate(self.ids)}

    @classmethod
    def for_dataset(cls, dataset, data_cfg, seed: int = 0) -> "Split":
        """The split of ``dataset`` at ``split_path(data_cfg, dataset, seed)``, made once then reused. A dataset
        without labels (masks only) gets one pseudo-class, so its split is lesion-grouped only."""
        path = split_path(data_cfg, dataset, seed)
        labels = dataset.labels if dataset.labels is not None else np.zeros(len(dataset.ids), np.int64)
        data = load_or_make_split(path, dataset.ids, labels, dataset.lesion_ids, data_cfg.test_frac,
                                  data_cfg.val_frac, seed)
        return cls(data, dataset.ids, dataset.labels, path)

    @classmethod
    def read(cls, path, ids: Sequence[str], key: str = "data.exclude_split") -> "Split":
        """A split file another run wrote (its ids need not all be in ``ids``); ``key`` names the setting."""
        path = Path(path)
        if not path.is_file():
            raise SplitError(f"{key} '{path}' does not exist; give the split JSON that `ssl-derm finetune` "
                             "wrote (its path is in that run's metrics.json) or leave the key unset")
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise SplitError(f"{key} '{path}' is not JSON ({e}); is it a ssl-derm split file?") from None
        if not isinstance(data, dict) or not data.get("test"):
            raise SplitError(f"{key} '{path}' has no 'test' ids; is it a ssl-derm split file?")
        return cls(data, ids, None, path)

    @classmethod
    def of(cls, split, dataset) -> "Split":
        """``split`` as a Split of ``dataset``: a Split as it is, or a split dict bound to the dataset."""
        return split if isinstance(split, Split) else cls(split, dataset.ids, dataset.labels)

    def side_ids(self, side: str) -> list:
        return list(self.data.get(side, []))

    def rows_outside(self, side: str = "test") -> np.ndarray:
        """Every cache row whose id is not on ``side`` (pretraining leaves the test side out)."""
        held = set(self.side_ids(side))
        return np.array([r for r, i in enumerate(self.ids) if i not in held], dtype=np.int64)

    def side_rows(self, *sides: str) -> np.ndarray:
        """Sorted cache rows of sides of the file (train, val, test); every id must be in the dataset."""
        missing = [i for side in sides for i in self.side_ids(side) if i not in self._row]
        if missing:
            raise SplitError(f"{len(missing)} ids of the split file are not in the dataset (first: {missing[:3]}); "
                             "the split belongs to another dataset: delete it or set data.split_file")
        return np.array(sorted(self._row[i] for side in sides for i in self.side_ids(side)), dtype=np.int64)

    def rows(self, fraction: float = 1.0, redraw_seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Cache rows per side (see the class docstring), checking that the sides are disjoint and that every
        split id is in the dataset. ``redraw_seed``: draw the labelled subset anew from the training side with
        this seed (nested and class-stratified like the file's), so seeds also vary which images carry a
        label; the train/val/test sides stay those of the file."""
        self.side_rows("train", "val", "test")  # the missing-id check, over all sides before any other
        train, val, test = (self.side_rows(s) for s in ("train", "val", "test"))
        labels = self.labels
        if redraw_seed is not None and labels is not None:
            subsets = nested_labelled(train, labels, redraw_seed)
            labelled = subsets[fraction_key(subsets, fraction)]
        elif fraction >= 1.0 and not any(abs(float(k) - 1.0) < 1e-9 for k in self.data.get("labelled", {})):
            labelled = train
        else:
            key = fraction_key(self.data.get("labelled", {}), fraction)
            labelled = np.array(sorted(self._row[i] for i in self.data["labelled"][key]), dtype=np.int64)
        if labels is not None:
            labelled = labelled[labels[labelled] >= 0]
        if not np.isin(labelled, train).all():
            raise SplitError("the split file's labelled subset is not inside its training side; delete the split "
                             "file to rebuild it")
        held = np.union1d(val, test)
        if np.intersect1d(train, held).size or np.intersect1d(val, test).size:
            raise SplitError("the split file's train/val/test sides overlap; delete it to rebuild it")
        unlabeled = np.setdiff1d(train, labelled)
        if labels is not None:  # images without a label that no side holds are unlabeled training data
            unlabeled = np.union1d(unlabeled, np.setdiff1d(np.flatnonzero(labels < 0), held))
        rows = {"labelled": labelled, "unlabeled": unlabeled, "val": val, "test": test}
        assert not np.intersect1d(np.union1d(labelled, unlabeled), held).size  # the test side stays untouched
        return rows


def split_rows(ids, labels: Optional[np.ndarray], split: dict, fraction: float,
               redraw_seed: Optional[int] = None) -> Dict[str, np.ndarray]:
    """``Split(split, ids, labels).rows(fraction, redraw_seed)``: a split dict's cache rows per side."""
    return Split(split, ids, labels).rows(fraction, redraw_seed)
