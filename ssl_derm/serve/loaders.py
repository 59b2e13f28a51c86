"""Read an exported run folder (``model.json`` + ``model.safetensors``) and rebuild its model.

:func:`load_model` returns a :class:`~ssl_derm.serve.classifier.Classifier` or a
:class:`~ssl_derm.serve.segmenter.Segmenter`; every way a folder can be unusable is a
:class:`ModelFileError` that names the folder or file and what to do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ssl_derm.errors import DataError
from ssl_derm.serve.export import FORMAT_VERSION, READABLE_VERSIONS

KINDS = ("classifier", "segmenter")
CLASSIFIER_HEADS = ("timm", "linear", "knn")
SEGMENTER_TYPES = ("net", "classical")


class ModelFileError(DataError):
    """A run folder has no usable exported model; the message names the folder or file."""


def read_model_json(run_dir) -> Tuple[Path, dict]:
    """(folder, model.json as a dict), checked: the file exists, parses, has a known version and kind,
    and the weights it lists are there."""
    d = Path(run_dir).expanduser()
    if d.is_file() and d.name in ("model.json", "model.safetensors"):
        d = d.parent
    if not d.is_dir():
        raise ModelFileError(f"model folder '{run_dir}' does not exist; give the --out folder of a "
                             "`ssl-derm finetune` or `ssl-derm segment` run")
    path = d / "model.json"
    if not path.is_file():
        raise ModelFileError(f"'{d}' has no model.json: give the folder of a finished `ssl-derm finetune` or "
                             "`ssl-derm segment` run (runs made before models were exported have none: run again)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(f"'{path}' is not valid JSON ({e}); the export was damaged: run again") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"'{path}' must hold a JSON object, not {type(meta).__name__}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"'{path}' has format_version {version!r}; this ssl-derm reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (it writes {FORMAT_VERSION}) "
                             "(export it again with this version, or use the ssl-derm that wrote it)")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ModelFileError(f"'{path}' has kind {kind!r}; known kinds: {', '.join(KINDS)}")
    for key in ("image_size", "mean", "std") + (("classes", "num_classes", "head") if kind == "classifier"
                                                 else ("segmenter", "postprocess")):
        if key not in meta:
            raise ModelFileError(f"'{path}' has no key '{key}' that a {kind} needs; the export is incomplete: run again")
    for name in meta.get("files", []):
        if not (d / name).is_file():
            raise ModelFileError(f"'{d / name}' is missing (model.json lists it); copy the whole run folder, "
                                 "or run again")
    return d, meta


def load_weights(run_dir: Path) -> dict:
    """The state dict in ``model.safetensors`` (safetensors: no pickle, no code runs)."""
    from safetensors.torch import load_file

    path = Path(run_dir) / "model.safetensors"
    try:
        return load_file(str(path))
    except Exception as e:  # a truncated or foreign file
        raise ModelFileError(f"'{path}' cannot be read as safetensors ({str(e)[:200]}); copy it again or rerun") from None


def load_model(run_dir, device="cpu"):
    """The exported classifier or segmenter of ``run_dir``, in eval mode on ``device``."""
    d, meta = read_model_json(run_dir)
    if meta["kind"] == "classifier":
        from ssl_derm.serve.classifier import Classifier

        if meta["head"] not in CLASSIFIER_HEADS:
            raise ModelFileError(f"'{d / 'model.json'}' has head {meta['head']!r}; known: {', '.join(CLASSIFIER_HEADS)}")
        model = Classifier(meta, load_weights(d))
    else:
        from ssl_derm.serve.segmenter import Segmenter

        if meta["segmenter"] not in SEGMENTER_TYPES:
            raise ModelFileError(f"'{d / 'model.json'}' has segmenter {meta['segmenter']!r}; "
                                 f"known: {', '.join(SEGMENTER_TYPES)}")
        model = Segmenter(meta, load_weights(d) if meta.get("files") else {})
    model.run_dir = d
    return model.to(torch.device(device)).eval()


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
