"""Where images, labels and masks come from: folder trees, label CSVs, mask folders, all joined by image id.

An image id is the file stem (``ISIC_0024306.jpg`` -> ``ISIC_0024306``): the same id in two folders is the
same image (ISIC sets overlap), so pooled roots are deduplicated by id, first root wins.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ssl_derm.errors import DataError

# Cells that mean "no value" (pandas writes NaN as 'nan' once a column is cast to str): an empty lesion_id
# must not make one lesion of every image without one.
MISSING_CELLS = ("", "nan", "none", "null", "n/a")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = ("", "_segmentation")  # <id>.png and <id>_segmentation.png (ISIC challenge naming)


def _few(items: Sequence, k: int = 5) -> str:
    items = list(items)
    more = f" ... and {len(items) - k} more" if len(items) > k else ""
    return ", ".join(str(x) for x in items[:k]) + more


@dataclass
class ImageList:
    """Image files found under some roots, one per id, in a fixed order (root order, then sorted path)."""

    ids: List[str]
    paths: List[str]
    duplicates: List[tuple] = field(default_factory=list)  # (skipped path, id, path kept)

    def __len__(self) -> int:
        return len(self.ids)


def _dir_key(path) -> Optional[tuple]:
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _walk_images(root: Path) -> List[str]:
    """Image files under ``root``, following symlinked folders but each real folder once (by device and
    inode): two links to a parent would otherwise be walked an exponential number of times."""
    out = []
    seen = {_dir_key(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            key = _dir_key(os.path.join(dirpath, d))
            if key is not None and key not in seen:
                seen.add(key)
                keep.append(d)
        dirnames[:] = keep
        # Dot files are skipped: macOS leaves '._name.jpg' resource forks next to real images.
        out.extend(os.path.join(dirpath, f) for f in filenames
                   if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS))
    return sorted(out)


def list_images(roots: Sequence[str]) -> ImageList:
    """Recursively list jpg/jpeg/png/bmp/tif/tiff files under each root; keep the first file of each id."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    ids: List[str] = []
    paths: List[str] = []
    seen: Dict[str, str] = {}
    dups = []
    for root in roots:
        r = Path(root).expanduser()
        if r.is_file() and r.suffix.lower() in IMAGE_EXTS:
            found = [str(r)]
        elif r.is_dir():
            found = _walk_images(r)
        else:
            raise DataError(f"image folder '{root}' does not exist (config key data.images)")
        for p in found:
            image_id = Path(p).stem
            if image_id in seen:
                dups.append((p, image_id, seen[image_id]))
                continue
            seen[image_id] = p
            ids.append(image_id)
            paths.append(p)
    return ImageList(ids, paths, dups)


@dataclass
class LabelTable:
    """Rows of a label CSV keyed by image id. ``label`` is '' where the cell is empty (= unlabelled)."""

    path: str
    label: Dict[str, str]
    lesion_id: Dict[str, str]
    split: Dict[str, str]
    has_lesion_id: bool
    has_split: bool
    no_lesion_id: List[str] = field(default_factory=list)  # ids whose lesion_id cell is empty or NaN

    def classes(self) -> List[str]:
        """Class names, numerically sorted when they are all integers, otherwise alphabetically."""
        names = {v for v in self.label.values() if v != ""}
        if names and all(n.lstrip("-").isdigit() for n in names):
            return sorted(names, key=int)
        return sorted(names)


def read_labels(path: str) -> LabelTable:
    """Read ``image_id,label[,lesion_id][,split]`` (other columns ignored; an empty label = unlabelled)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"labels file '{path}' does not exist (config key data.labels)")
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image_id", "label") if c not in cols]
        if missing:
            raise DataError(f"labels file '{path}' has no column {' or '.join(repr(m) for m in missing)}; "
                            f"its columns are: {', '.join(cols) or '(none: empty file)'}; "
                            "expected a header 'image_id,label[,lesion_id][,split]'")
        reader.fieldnames = cols
        label, lesion, split, conflicts, no_lesion = {}, {}, {}, [], []
        for row in reader:
            image_id = Path((row.get("image_id") or "").strip()).stem  # tolerate 'x.jpg' in the id column
            if not image_id:
                continue
            lab = (row.get("label") or "").strip()
            lab = "" if lab.lower() == "nan" else lab  # a NaN label is no label
            if image_id in label and label[image_id] != lab:
                conflicts.append(f"{image_id} ({label[image_id]!r} vs {lab!r})")
                continue
            label[image_id] = lab
            lesion_id = (row.get("lesion_id") or "").strip()
            if lesion_id.lower() not in MISSING_CELLS:
                lesion[image_id] = lesion_id
            elif "lesion_id" in cols:
                no_lesion.append(image_id)
            if (row.get("split") or "").strip().lower() not in MISSING_CELLS:
                split[image_id] = row["split"].strip()
    if conflicts:
        raise DataError(f"labels file '{path}' gives {len(conflicts)} image ids two different labels: "
                        f"{_few(conflicts)}; keep one row per image_id")
    return LabelTable(str(p), label, lesion, split, "lesion_id" in cols, "split" in cols, no_lesion)


def find_masks(folder: Optional[str]) -> Dict[str, str]:
    """Map image id -> mask file for ``<id>.png`` or ``<id>_segmentation.png`` (any image extension) in a folder tree."""
    if folder is None:
        return {}
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise DataError(f"mask folder '{folder}' does not exist (config key data.masks)")
    out: Dict[str, str] = {}
    for f in _walk_images(p):
        stem = Path(f).stem
        for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
            if suffix and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        out.setdefault(stem, f)
    return out
