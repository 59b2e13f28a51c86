"""``ssl-derm data check``: decode every file once and say, file by file, what cannot be used and why.

Uses the same decoders as the cache (``decode.py``), so a file this check accepts is a file the cache keeps.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ssl_derm.data import decode
from ssl_derm.data.cache import _ordered_map
from ssl_derm.data.sources import DataError, find_masks, list_images, read_labels

LABEL_WITHOUT_IMAGE = "label without image"
IMAGE_WITHOUT_LABEL = "image without label"
MASK_WITHOUT_IMAGE = "mask without image"
IMAGE_WITHOUT_MASK = "image without mask"


@dataclass
class CheckReport:
    """What ``check_data`` found. ``problems``: (file, reason) for every unusable file or unmatched entry."""

    n_images: int = 0  # image files found (after dedup by id)
    n_images_ok: int = 0
    n_masks: int = 0  # mask files found
    n_masks_ok: int = 0  # valid masks of usable images
    n_label_rows: int = 0
    n_labelled_ok: int = 0  # usable images with a non-empty label
    sizes: Counter = field(default_factory=Counter)  # (w, h) of usable images
    classes: Counter = field(default_factory=Counter)  # label of usable images
    duplicates: List[Tuple[str, str, str]] = field(default_factory=list)  # (skipped, id, kept)
    problems: List[Tuple[str, str]] = field(default_factory=list)
    masks_given: bool = False
    labels_given: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and self.n_images_ok > 0

    def lines(self) -> List[str]:
        out = [f"images: {self.n_images} files, {self.n_images_ok} usable"]
        if self.sizes:
            by_area = sorted(self.sizes, key=lambda s: (s[0] * s[1], s))
            (cw, ch), cn = self.sizes.most_common(1)[0]
            out.append(f"sizes (WxH): min {by_area[0][0]}x{by_area[0][1]}, max {by_area[-1][0]}x{by_area[-1][1]}, "
                       f"most common {cw}x{ch} ({cn} images), {len(self.sizes)} distinct")
        if self.duplicates:
            p, i, kept = self.duplicates[0]
            out.append(f"duplicate ids: {len(self.duplicates)} files skipped, first root wins (e.g. {p} = {kept})")
        if self.masks_given:
            out.append(f"masks: {self.n_masks} files, {self.n_masks_ok} usable for usable images")
        if self.labels_given:
            out.append(f"labels: {self.n_label_rows} rows, {self.n_labelled_ok} usable images labelled")
            if self.classes:
                counts = ", ".join(f"{c} {n}" for c, n in sorted(self.classes.items(), key=lambda t: (-t[1], t[0])))
                out.append(f"classes ({len(self.classes)}): {counts}")
        if self.problems:
            by_reason = Counter(r.split(":")[0] for _, r in self.problems)
            out.append(f"PROBLEMS: {len(self.problems)} ("
                       + ", ".join(f"{r} {n}" for r, n in by_reason.most_common()) + ")")
            out += [f"  {p}: {r}" for p, r in self.problems]
        elif self.n_images_ok == 0:
            out.append("PROBLEMS: no usable images found")
        else:
            out.append(f"OK: all {self.n_images_ok} images usable")
        return out


def check_data(images: Sequence[str], masks: Optional[str] = None, labels: Optional[str] = None,
               workers: int = 2, progress: bool = True) -> CheckReport:
    """Check image folders (recursive, pooled, dedup by id), a mask folder and a labels CSV against each other."""
    rep = CheckReport(masks_given=masks is not None, labels_given=labels is not None)
    if isinstance(images, (str, Path)):
        images = [images]
    found = list_images([str(p) for p in images])
    rep.n_images, rep.duplicates = len(found), found.duplicates
    mask_files: Dict[str, str] = find_masks(masks) if masks is not None else {}
    rep.n_masks = len(mask_files)
    table = None
    if labels is not None:
        try:
            table = read_labels(labels)
            rep.n_label_rows = len(table.label)
        except DataError as e:
            rep.problems.append((str(labels), str(e)))

    bar = tqdm(total=len(found), desc="checking images", unit="img", disable=not progress, mininterval=0.5,
               file=sys.stderr)

    def check_one(args):
        image_id, path = args
        arr, hw, reason = decode.image_worker((path, 32))  # small output size: decode is still complete
        mask_reason = None
        if reason is None and image_id in mask_files:
            _, mask_reason = decode.mask_worker((mask_files[image_id], hw, None))
        return hw, reason, mask_reason

    results = _ordered_map(check_one, list(zip(found.ids, found.paths)), workers)
    for image_id, path, (hw, reason, mask_reason) in zip(found.ids, found.paths, results):
        bar.update(1)
        if reason is not None:
            rep.problems.append((path, reason))
            continue
        rep.n_images_ok += 1
        rep.sizes[(hw[1], hw[0])] += 1
        if masks is not None:
            if image_id not in mask_files:
                rep.problems.append((path, IMAGE_WITHOUT_MASK + f": no {image_id}.png in {masks}"))
            elif mask_reason is not None:
                rep.problems.append((mask_files[image_id], mask_reason))
            else:
                rep.n_masks_ok += 1
        if table is not None:
            lab = table.label.get(image_id)
            if lab:
                rep.n_labelled_ok += 1
                rep.classes[lab] += 1
            else:
                why = "no row" if lab is None else "empty label cell"
                rep.problems.append((path, f"{IMAGE_WITHOUT_LABEL}: {why} for '{image_id}' in {table.path}"))
    bar.close()
    ids = set(found.ids)
    if table is not None:
        rep.problems += [(table.path, f"{LABEL_WITHOUT_IMAGE}: '{i}' has no image file") for i in table.label
                         if i not in ids]
    rep.problems += [(p, MASK_WITHOUT_IMAGE + f": no image with id '{i}'") for i, p in mask_files.items()
                     if i not in ids]
    return rep


def run_check(images: Sequence[str], masks: Optional[str] = None, labels: Optional[str] = None,
              progress: bool = True, out=None) -> int:
    """Print a ``check_data`` report; return 0 when every file is usable, 1 otherwise (never raises for bad data)."""
    out = out or sys.stdout
    try:
        rep = check_data(images, masks, labels, progress=progress)
    except DataError as e:  # a folder or CSV that does not exist: one line, no traceback
        print(f"error: {e}", file=out)
        return 1
    roots = ", ".join(str(p) for p in ([images] if isinstance(images, (str, Path)) else images))
    print(f"data check of {roots}" + (f", masks {masks}" if masks else "") + (f", labels {labels}" if labels else ""),
          file=out)
    for line in rep.lines():
        print(line, file=out)
    return 0 if rep.ok else 1
