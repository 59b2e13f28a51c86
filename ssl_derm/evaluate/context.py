"""What a protocol gets: the config, the encoder, the device, the cache arrays and the split as cache rows.

Sides (``rows[side]``, int64 arrays of cache rows):
- ``labelled``: the ``split.fraction`` subset of the training side (nested subsets from the split file);
- ``unlabeled``: the rest of the training side plus images without a label that no other side holds;
- ``val``: model selection and early stopping only;
- ``test``: the final score only; no protocol trains or selects on it.
- ``external`` (only with ``data.test_images``): another archive's images, scored like ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ssl_derm.evaluate.config import FinetuneConfig
from ssl_derm.evaluate.features import FeatureCache

SIDES = ("labelled", "unlabeled", "val", "test")


class SplitError(ValueError):
    """The split does not fit the dataset or the requested label fraction."""


@dataclass
class Context:
    cfg: FinetuneConfig
    encoder: Any  # ssl_derm.encoders.Encoder
    device: torch.device
    dataset: Any  # .images (N,S,S,3) uint8, .labels (N,) int64 (-1 unlabelled), .classes, .masks or None
    rows: Dict[str, np.ndarray]
    out_dir: Path
    logger: Any = None  # ssl_derm.engine.logger.Logger or None
    feature_cache: Optional[FeatureCache] = None
    cache_key: Optional[str] = None  # identifies the encoder's weights for the feature cache
    extras: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def image_size(self) -> int:
        return int(self.dataset.images.shape[1])

    @property
    def scored(self) -> tuple:
        """Sides a protocol predicts: val (selection), test and, with data.test_images, external."""
        return ("val", "test") + (("external",) if "external" in self.rows else ())

    def labels(self, side: str) -> np.ndarray:
        return np.asarray(self.dataset.labels)[self.rows[side]].astype(np.int64)

    def features(self, side: str, l2: bool = True, stages: Optional[int] = None, tta: Optional[str] = None) -> torch.Tensor:
        """(len(rows[side]), D) frozen features of one side (cached per encoder when a cache is given),
        of the kind ``protocol.feature_stages``/``feature_tta`` ask for unless ``stages``/``tta`` say otherwise."""
        p = self.cfg.protocol
        cache = self.feature_cache or FeatureCache()
        key = self.cache_key if self.feature_cache is not None else None
        return cache.get(key, self.encoder, self.dataset.images, self.rows[side], self.cfg.augment, self.device,
                         p.feature_batch_size, l2, p.feature_stages if stages is None else stages,
                         p.feature_tta if tta is None else tta)

    def log(self, tag: str, value, step: int) -> None:
        if self.logger is not None:
            self.logger.scalar(tag, value, step)


def fraction_key(labelled: dict, fraction: float) -> str:
    """The split file's key for ``fraction`` ("0.1" for 0.1); an unknown fraction lists the known ones."""
    for key in labelled:
        if abs(float(key) - fraction) < 1e-9:
            return key
    raise SplitError(f"split.fraction={fraction} is not in the split file; available fractions: "
                     f"{', '.join(sorted(labelled, key=float))}")


def split_rows(ids, labels: Optional[np.ndarray], split: dict, fraction: float,
               redraw_seed: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Turn a split dict of ids into cache rows per side (see the module docstring), checking that
    the sides are disjoint and that every split id is in the dataset.

    ``redraw_seed``: draw the labelled subset anew from the training side with this seed (nested and
    class-stratified like the split file's), so that seeds also vary which images carry a label; the
    train/val/test sides stay those of the split file."""
    row = {i: r for r, i in enumerate(ids)}
    missing = [i for side in ("train", "val", "test") for i in split.get(side, []) if i not in row]
    if missing:
        raise SplitError(f"{len(missing)} ids of the split file are not in the dataset (first: {missing[:3]}); "
                         "the split belongs to another dataset: delete it or set data.split_file")

    def to_rows(id_list):
        return np.array(sorted(row[i] for i in id_list), dtype=np.int64)

    train, val, test = (to_rows(split[s]) for s in ("train", "val", "test"))
    if redraw_seed is not None and labels is not None:
        from ssl_derm.data.splits import nested_labelled

        subsets = nested_labelled(train, np.asarray(labels), redraw_seed)
        labelled = subsets[fraction_key(subsets, fraction)]
    elif fraction >= 1.0 and not any(abs(float(k) - 1.0) < 1e-9 for k in split.get("labelled", {})):
        labelled = train
    else:
        labelled = to_rows(split["labelled"][fraction_key(split.get("labelled", {}), fraction)])
    if labels is not None:
        labelled = labelled[np.asarray(labels)[labelled] >= 0]
    if not np.isin(labelled, train).all():
        raise SplitError("the split file's labelled subset is not inside its training side; delete the split file to rebuild it")
    held = np.union1d(val, test)
    if np.intersect1d(train, held).size or np.intersect1d(val, test).size:
        raise SplitError("the split file's train/val/test sides overlap; delete it to rebuild it")
    unlabeled = np.setdiff1d(train, labelled)
    if labels is not None:  # images without a label that no side holds are unlabeled training data
        extra = np.flatnonzero(np.asarray(labels) < 0)
        unlabeled = np.union1d(unlabeled, np.setdiff1d(extra, held))
    rows = {"labelled": labelled, "unlabeled": unlabeled, "val": val, "test": test}
    assert not np.intersect1d(np.union1d(labelled, unlabeled), held).size  # the test side stays untouched
    return rows
