"""Read an exported run folder (``model.json`` + ``model.safetensors``) and rebuild its model.

:func:`load_model` returns a :class:`~ssl_derm.serve.classifier.Classifier` or a
:class:`~ssl_derm.serve.segmenter.Segmenter`; every way a folder can be unusable is a
:class:`ModelFileError` that names the folder or file and what to do.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Tuple

import torch

from ssl_derm.errors import ModelFileError  # noqa: F401  (raised here, imported from here by callers)
from ssl_derm.serve.export import FORMAT_VERSION, READABLE_VERSIONS

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
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"'{path}' has format_version {version!r}; this ssl-derm reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}: export it again with this version "
                             f"(it writes {FORMAT_VERSION}), or use the ssl-derm that wrote it")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ModelFileError(f"'{path}' has kind {kind!r}; known kinds: {', '.join(KINDS)}")
    for key in ("image_size", "mean", "std") + (("classes", "num_classes", "head") if kind == "classifier"
                                                 else ("segmenter", "postprocess")):
        if key not in meta:
            raise ModelFileError(f"'{path}' has no key '{key}' that a {kind} needs; the export is incomplete: run again")
    check_model_meta(path, meta)
    for name in meta.get("files", []):
        if not (d / name).is_file():
            raise ModelFileError(f"'{d / name}' is missing (model.json lists it); copy the whole run folder, "
                                 "or run again")
    return d, meta


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_model_meta(path: Path, meta: dict) -> None:
    """The one validation of a model.json's values (types, ranges, lengths, names), so that a hand-edited
    or damaged file fails here with the field named, not as NaN probabilities or every image "bad"."""
    def bad(key, why):
        raise ModelFileError(f"'{path}' field '{key}' {why}; export the model again (or fix the field)")

    size = meta["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        bad("image_size", f"must be a positive integer, not {size!r}")
    for key in ("mean", "std"):
        v = meta[key]
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
            bad(key, f"must be a list of 3 finite numbers (one per RGB channel), not {v!r}")
    if any(x <= 0 for x in meta["std"]):
        bad("std", f"must be positive in every channel (images are divided by it), not {meta['std']!r}")
    files = meta.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and f and "/" not in f and f != ".." for f in files):
        bad("files", f"must list file names inside the model folder, not {files!r}")
    if meta["kind"] == "classifier":
        if meta["head"] not in CLASSIFIER_HEADS:
            bad("head", f"is {meta['head']!r}; known: {', '.join(CLASSIFIER_HEADS)}")
        classes, n = meta["classes"], meta["num_classes"]
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, (str, int)) for c in classes) \
                or len({str(c) for c in classes}) != len(classes):
            bad("classes", f"must be a list of at least 2 distinct class names, not {classes!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n != len(classes):
            bad("num_classes", f"is {n!r} but 'classes' names {len(classes)}; they must agree")
        if meta["head"] == "knn":
            for key, ok in (("knn_k", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
                            ("knn_temperature", lambda v: _is_number(v) and v > 0)):
                if not ok(meta.get(key)):
                    bad(key, f"must be positive, not {meta.get(key)!r}")
    else:
        if meta["segmenter"] not in SEGMENTER_TYPES:
            bad("segmenter", f"is {meta['segmenter']!r}; known: {', '.join(SEGMENTER_TYPES)}")
        if not isinstance(meta["postprocess"], dict):
            bad("postprocess", f"must be a mapping, not {meta['postprocess']!r}")
        if "threshold" in meta and not (_is_number(meta["threshold"]) and 0 <= meta["threshold"] <= 1):
            bad("threshold", f"must be a number in [0, 1], not {meta['threshold']!r}")
    needs_timm = meta["kind"] == "classifier" or meta.get("uses_encoder")
    name = meta.get("timm_name")
    if needs_timm or name is not None:
        import timm

        if not isinstance(name, str) or not timm.is_model(name):
            bad("timm_name", f"is {name!r}, which is not a timm model name (timm {timm.__version__})")
    arch = meta.get("arch")
    if meta["kind"] == "segmenter" and meta["segmenter"] == "net":
        import timm

        if not isinstance(arch, dict) or not isinstance(arch.get("encoder"), str) or not timm.is_model(arch["encoder"]):
            bad("arch.encoder", f"must name a timm model, not {(arch or {}).get('encoder') if isinstance(arch, dict) else arch!r}")
        if not isinstance(arch.get("net_size"), int) or arch["net_size"] <= 0:
            bad("arch.net_size", f"must be a positive integer, not {arch.get('net_size')!r}")


def check_head_outputs(path: Path, meta: dict, state: dict) -> None:
    """The weights' outputs against model.json's ``classes`` (a list shorter than the head would index
    past it on every prediction)."""
    n = len(meta["classes"])
    rows = None
    if meta["head"] == "linear" and "probe.weight" in state:
        rows = int(state["probe.weight"].shape[0])
    elif meta["head"] == "knn" and "knn.labels" in state and len(state["knn.labels"]):
        rows = int(state["knn.labels"].max()) + 1
        rows = n if rows <= n else rows
    if rows is not None and rows != n:
        raise ModelFileError(f"'{path}' field 'classes' names {n} classes but the {meta['head']} head in "
                             f"model.safetensors has {rows} outputs; export the model again")


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

        state = load_weights(d)
        check_head_outputs(d / "model.json", meta, state)
        model = Classifier(meta, state)
    else:
        from ssl_derm.serve.segmenter import Segmenter

        model = Segmenter(meta, load_weights(d) if meta.get("files") else {})
    model.run_dir = d
    return model.to(torch.device(device)).eval()
