"""The same image under two ids, and the same lesion on two sides: what an id check does not see.

Content is compared on the decoded cache rows (a byte-identical file decodes to the same pixels at the
same size), so no source file is read again: one hash of S*S*3 bytes per row.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def row_hashes(images: np.ndarray, rows: Optional[Sequence[int]] = None) -> List[bytes]:
    """blake2b digests of the rows ``rows`` (default all) of a (N, S, S, 3) uint8 array."""
    rows = range(len(images)) if rows is None else rows
    return [hashlib.blake2b(np.ascontiguousarray(images[r]).tobytes(), digest_size=16).digest() for r in rows]


def same_pixels(images_a: np.ndarray, ids_a: Sequence[str], rows_a: Sequence[int],
                images_b: np.ndarray, ids_b: Sequence[str], rows_b: Sequence[int]) -> List[Tuple[str, str]]:
    """[(id in a, id in b)] of rows whose decoded pixels are identical (ids may differ)."""
    if images_a.shape[1:] != images_b.shape[1:]:
        return []
    first: Dict[bytes, str] = {}
    for r, h in zip(rows_a, row_hashes(images_a, rows_a)):
        first.setdefault(h, ids_a[r])
    return [(first[h], ids_b[r]) for r, h in zip(rows_b, row_hashes(images_b, rows_b)) if h in first]


def shared_groups(groups: Optional[Sequence[str]], ids: Sequence[str], rows_a: Sequence[int],
                  rows_b: Sequence[int]) -> List[str]:
    """Lesion ids that rows of both sides carry (an image without a lesion id is its own group)."""
    if groups is None:
        return []
    a = {groups[r] for r in rows_a if groups[r] != ids[r]}
    return sorted(a & {groups[r] for r in rows_b if groups[r] != ids[r]})


def pairs_text(pairs: Sequence[Tuple[str, str]], k: int = 3) -> str:
    more = f" ... and {len(pairs) - k} more" if len(pairs) > k else ""
    return ", ".join(f"{a} = {b}" for a, b in pairs[:k]) + more
