"""Read an exported run folder (``model.json`` + ``model.safetensors``) and rebuild its model.

:func:`load_model` returns a :class:`~ssl_derm.serve.classifier.Classifier` or a
:class:`~ssl_derm.serve.segmenter.Segmenter`; every way a folder can be unusable is a
:class:`ModelFileError` that names the folder or file and what to do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import torch

from ssl_derm.errors import ModelFileError  # noqa: F401  (raised here, imported from here by callers)
from ssl_derm.serve.export import FORMAT_VERSION

KINDS = ("classifier", "segmenter")
CLASSIFIER_HEADS = ("timm", "linear", "knn")
SEGMENTER_TYPES = ("net", "classical")


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
    if version != FORMAT_VERSION:
        raise ModelFileError(f"'{path}' has format_version {version!r}; this ssl-derm reads version {FORMAT_VERSION} "
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
