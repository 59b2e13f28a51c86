"""``load_dataset``: config -> cached images (+ labels, masks) as one in-memory-mapped ``Dataset``."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ssl_derm.data.cache import ImageCache, default_cache_dir
from ssl_derm.data.sources import DataError, _few, find_masks, list_images, read_labels
from ssl_derm.data.synth import write_synthetic

SYNTHETIC = "synthetic"
SYNTH_SEED = 0
SYNTH_VERSION = 1  # bump when synth.py changes what it draws, so old synthetic sets are not reused


def _as_index(idx, n: int) -> np.ndarray:
    if isinstance(idx, torch.Tensor):
        idx = idx.detach().cpu().numpy()
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    return np.where(idx < 0, idx + n, idx)


@dataclass
class Dataset:
    """Images decoded once into a cache; every per-image field has one entry per row of ``images``.

    ``images``: (N, S, S, 3) uint8, read-only memory map (rows are read from disk/page cache on demand).
    ``labels``: (N,) int64 indexing ``classes``, -1 = unlabelled; None when no labels were given.
    ``masks``: (N, S, S) uint8 in {0, 1}, all-zero where ``has_mask`` is False; None without a mask folder.
    ``given_split``: the CSV's ``split`` column (e.g. ISIC 2017 train/val/test) or None.
    """

    ids: List[str]
    images: np.ndarray
    paths: List[str]
    orig_sizes: List[Tuple[int, int]]
    labels: Optional[np.ndarray] = None
    classes: Optional[List[str]] = None
    lesion_ids: Optional[List[str]] = None
    masks: Optional[np.ndarray] = None
    has_mask: Optional[np.ndarray] = None
    given_split: Optional[List[str]] = None
    cache_dir: Optional[Path] = None  # the cache root (splits and other entries live here too)
    cache_entry: Optional[Path] = None  # this dataset's image entry inside it
    key: str = ""  # hash of the image files (see cache.py)

    def __post_init__(self):
        if self.classes is None:
            self.classes = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def batch(self, idx, device=None) -> torch.Tensor:
        """Images ``idx`` (ints, array, tensor or slice) -> uint8 (B, 3, S, S), contiguous, on ``device``."""
        rows = self.images[_as_index(idx, len(self))]  # (B, S, S, 3): one copy out of the memory map
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cpu":
            # numpy's uint8 transpose-copy measured 2x faster than torch's permute().contiguous() here.
            return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))
        # Accelerators: move the NHWC bytes as they are and transpose there, where it costs nothing.
        return torch.from_numpy(rows).to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()

    def mask_batch(self, idx, device=None) -> torch.Tensor:
        """Masks ``idx`` -> uint8 (B, 1, S, S) in {0, 1}."""
        if self.masks is None:
            raise DataError("this dataset has no masks: set data.masks to a folder of <id>.png masks")
        t = torch.from_numpy(self.masks[_as_index(idx, len(self))]).unsqueeze(1)
        return t if device is None else t.to(device, non_blocking=True)

    def index_of(self, ids) -> np.ndarray:
        """Row numbers of ``ids`` (e.g. a split's list), int64 (K,); unknown ids are an error."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise DataError(f"{len(missing)} ids are not in this dataset: {_few(missing)}")
        return np.array([pos[i] for i in ids], dtype=np.int64)


def synthetic_folder(data_cfg) -> Path:
    """Write the built-in synthetic set into the cache dir once; return its folder (shared-data layout)."""
    root = default_cache_dir(data_cfg.cache_dir) / (
        f"synthetic-v{SYNTH_VERSION}-n{data_cfg.synthetic_n}-s{data_cfg.image_size}-seed{SYNTH_SEED}")
    if not (root / "labels.csv").exists():  # labels.csv is moved in last: its presence means complete
        write_synthetic(root, data_cfg.synthetic_n, data_cfg.image_size, SYNTH_SEED, quiet=True)
    return root


def load_dataset(data_cfg, need_labels: bool = False, need_masks: bool = False, progress: bool = True) -> Dataset:
    """Images from ``data.images`` (cached at ``data.image_size``), joined with ``data.labels`` and ``data.masks``.

    ``data.images=["synthetic"]`` uses the built-in synthetic lesions with their labels and masks.
    ``need_labels`` / ``need_masks`` turn missing labels / masks into errors instead of None / gaps.
    """
    images, labels_csv, masks_dir = list(data_cfg.images), data_cfg.labels, data_cfg.masks
    if SYNTHETIC in images:
        if len(images) > 1:
            raise DataError(f"data.images={images}: 'synthetic' cannot be pooled with folders; give either "
                            "['synthetic'] or a list of folders")
        root = synthetic_folder(data_cfg)
        images, labels_csv, masks_dir = [str(root / "images")], str(root / "labels.csv"), str(root / "masks")
    if not images:
        raise DataError("data.images is empty: give one or more image folders, or ['synthetic']")
    if need_labels and not labels_csv:
        raise DataError("labels are needed here but data.labels is not set: give a CSV with columns "
                        "image_id,label[,lesion_id][,split] (e.g. data.labels=path/to/labels.csv)")
    if need_masks and not masks_dir:
        raise DataError("masks are needed here but data.masks is not set: give a folder of <id>.png masks "
                        "(e.g. data.masks=path/to/masks)")
    table = read_labels(labels_csv) if labels_csv else None  # read first: a bad CSV fails before decoding
    mask_files = find_masks(masks_dir) if masks_dir else None

    found = list_images(images)
    if found.duplicates:
        p, i, kept = found.duplicates[0]
        print(f"[ssl-derm] {len(found.duplicates)} files share an id with an earlier file and were left out "
              f"(first root wins; e.g. {p} = {kept})", file=sys.stderr)
    cache = ImageCache(data_cfg.image_size, data_cfg.cache_dir, data_cfg.on_bad, progress=progress)
    cached = cache.images(found.ids, found.paths)
    ds = Dataset(ids=cached.ids, images=cached.images, paths=cached.paths, orig_sizes=cached.orig_sizes,
                 cache_dir=cache.root, cache_entry=cached.dir, key=cached.key)

    if table is not None:
        ds.classes = table.classes()
        index = {c: k for k, c in enumerate(ds.classes)}
        ds.labels = np.array([index.get(table.label.get(i, ""), -1) for i in ds.ids], dtype=np.int64)
        if not any(i in table.label for i in ds.ids):
            raise DataError(f"none of the {len(ds)} image ids appear in labels file '{table.path}' "
                            f"(image ids look like {_few(ds.ids, 3)}; label ids like {_few(list(table.label), 3)})")
        unmatched = len(set(table.label) - set(ds.ids))
        if unmatched:  # counted, not listed: a CSV of a whole archive given with one of its folders is common
            print(f"[ssl-derm] warning: {unmatched} of the {len(table.label)} ids in labels file '{table.path}' match "
                  "no image found in data.images", file=sys.stderr)
        if need_labels and (ds.labels < 0).all():
            raise DataError(f"labels file '{table.path}' gives no non-empty label for any of the {len(ds)} images")
        if table.has_lesion_id:
            ds.lesion_ids = [table.lesion_id.get(i, i) for i in ds.ids]  # no lesion id: its own group
            blank = sorted(set(table.no_lesion_id) & set(ds.ids))
            if blank:  # each its own group (as an image without a row): one group for all would put them on one side
                print(f"[ssl-derm] warning: {len(blank)} images have an empty or NaN lesion_id in labels file "
                      f"'{table.path}' ({_few(blank)}); each is its own group in the split: fill in lesion_id "
                      "where images show the same lesion", file=sys.stderr)
        if table.has_split:
            ds.given_split = [table.split.get(i, "") for i in ds.ids]

    if mask_files is not None:
        cm = cache.masks(cached, mask_files)
        ds.masks, ds.has_mask = cm.masks, cm.has_mask
        if need_masks and not cm.has_mask.all():
            missing = [i for i, h in zip(ds.ids, cm.has_mask) if not h]
            raise DataError(f"{len(missing)} of {len(ds)} images have no usable mask in '{masks_dir}': "
                            f"{_few(missing)} (expected <id>.png or <id>_segmentation.png; "
                            "`ssl-derm data check` says why a mask was rejected)")
    return ds
