"""What both exported model kinds do with their inputs: square uint8 batches, the eight D4 views and
their inverse, and strict state-dict loading that names the model file."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ssl_derm.errors import DataError, ModelFileError


def load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict(strict) with a one-line error that says which model did not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"the weights in model.safetensors do not fit the {what} model.json describes: "
                             f"{str(e).splitlines()[0][:300]}") from None


def square_uint8(images: Union[np.ndarray, Sequence[np.ndarray]], size: int) -> Tuple[np.ndarray, List[tuple]]:
    """Images (an (N,H,W,3) uint8 array or a list of (H_i,W_i,3)/(H_i,W_i) uint8 arrays) ->
    ((N, size, size, 3) uint8 resized as the run's cache does (PIL bilinear), [(h_i, w_i)] original sizes)."""
    out, sizes = [], []
    for i, a in enumerate(images):
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise DataError(f"image {i} has shape {a.shape} and dtype {a.dtype}; give uint8 (H, W, 3) RGB arrays")
        a = a[..., :3]
        sizes.append(a.shape[:2])
        if a.shape[:2] != (size, size):
            a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))
        out.append(a)
    return (np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)), sizes


def d4_views(x: torch.Tensor) -> List[Tuple[int, bool, torch.Tensor]]:
    """The 8 rotations/flips of (B, C, H, W): [(k, flipped, view)]; :func:`d4_undo` maps outputs back."""
    return [(k, f, torch.rot90(x.flip(3) if f else x, k, dims=(2, 3))) for f in (False, True) for k in range(4)]


def d4_undo(y: torch.Tensor, k: int, flipped: bool) -> torch.Tensor:
    """Invert one :func:`d4_views` transform on a (B, C, H, W) output map."""
    y = torch.rot90(y, -k, dims=(2, 3))
    return y.flip(3) if flipped else y
