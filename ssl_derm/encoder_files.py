"""Checks on an encoder file before timm loads it, so that a load never passes silently.

timm loads an exported state dict with ``strict=False`` semantics for heads and only warns about
unexpected keys: a resnet18 file given to ``encoder.name=vit_tiny_patch16_224`` would load nothing
and leave a random encoder reported as "pretrained". :func:`check_fits` compares the file's keys with
the model's (a classifier head in the file is allowed: the encoder has none) and names the file, the
architecture the file holds (``timm_name`` in the safetensors metadata that ``export_encoder`` writes)
and how many keys do not fit. A truncated or corrupt file is an error naming the file too.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Dict, Optional, Tuple

from torch import nn

from ssl_derm.errors import EncoderError as EncoderFileError  # one error type for the CLI's one-line message

# classifier heads of timm models (the encoder is built with num_classes=0, so it has none)
HEAD_PREFIXES = ("fc.", "head.", "head.fc.", "classifier.", "last_linear.", "head_dist.")



def read_state(path) -> Tuple[Dict[str, tuple], Dict[str, str]]:
    """({key: shape}, metadata) of a .safetensors file or a weights-only torch file; errors name the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, meta
        except Exception as e:  # safetensors raises its own error types for bad headers and short files
            raise EncoderFileError(f"encoder file '{path}' is not a readable safetensors file (corrupt or truncated: "
                                   f"{str(e)[:200]}); export it again with `ssl-derm pretrain`") from None
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderFileError(f"encoder file '{path}' cannot be read as a torch state dict ({str(e)[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EncoderFileError(f"encoder file '{path}' holds a {type(state).__name__}, not a state dict")
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}, {}


def encoder_file(checkpoint) -> Optional[Path]:
    """The file that ``encoder.checkpoint`` names (a run folder means its ``encoder.safetensors``), None for
    random init; a missing file is an error naming the key."""
    if checkpoint is None or str(checkpoint).lower() in ("", "none"):
        return None
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "encoder.safetensors"
    if not path.is_file():
        raise EncoderFileError(f"encoder.checkpoint '{checkpoint}' does not exist; give an encoder.safetensors (or "
                               "the pretraining run folder that holds one), or encoder.checkpoint=none for random init")
    return path


def adopt_encoder_file(cfg, image_size: bool = True) -> dict:
    """Fill ``encoder.name`` (and ``data.image_size``, the size it was trained at, when ``image_size``) from the
    metadata of the file ``encoder.checkpoint`` names, where the user did not set them (``cfg.explicit_keys``,
    recorded by :func:`ssl_derm.config.load_config`). A set ``encoder.name`` that contradicts the file is an
    error naming both; a set image size may differ (finetuning at another resolution is a choice).
    Returns {key: value} of what was taken from the file (changed in ``cfg`` in place)."""
    path = encoder_file(cfg.encoder.checkpoint)
    if path is None:
        return {}
    _, meta = read_state(path)
    explicit = getattr(cfg, "explicit_keys", frozenset())
    taken = {}
    held = meta.get("timm_name")
    if held and held != cfg.encoder.name:
        if "encoder.name" in explicit:
            raise EncoderFileError(f"encoder.name='{cfg.encoder.name}' contradicts encoder.checkpoint '{path}', which "
                                   f"holds a {held}: drop encoder.name (it is read from the file) or give a "
                                   f"{cfg.encoder.name} encoder file")
        cfg.encoder.name = taken["encoder.name"] = held
    size = meta.get("img_size")
    if image_size and size and "data.image_size" not in explicit and int(size) != cfg.data.image_size:
        cfg.data.image_size = taken["data.image_size"] = int(size)
    return taken


# keys whose shape timm adapts when it loads a state dict (a ViT's position embedding at another image size)
ADAPTED = ("pos_embed", "relative_position_bias_table", "relative_position_index", "attn_mask")


def state_mismatch(have: Dict[str, tuple], model: nn.Module) -> Tuple[list, list, list]:
    """(missing, unknown, other-shape) keys of a state dict given as {key: shape} against ``model``: the one
    check of every encoder file and ``encoder.init`` state. The classifier (the model's own
    ``pretrained_cfg`` head and :data:`HEAD_PREFIXES`) and the shapes timm adapts are not counted."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads)) + HEAD_PREFIXES
    have = {k: tuple(s) for k, s in have.items() if not k.startswith(heads)}
    missing = [k for k in own if k not in have and not k.startswith(heads)]
    unknown = [k for k in have if k not in own]
    shape = [k for k in have if k in own and have[k] != own[k] and not k.endswith(ADAPTED)]
    return missing, unknown, shape


def check_fits(path, name: str, model: nn.Module) -> None:
    """Raise :class:`~ssl_derm.encoders.EncoderError` when the file's keys do not fit ``model`` (built as ``name``)."""
    have, meta = read_state(path)
    missing, unknown, shape = state_mismatch(have, model)
    if missing or unknown or shape:
        held = meta.get("timm_name") or "an unknown architecture (no timm_name in its metadata)"
        raise EncoderFileError(
            f"encoder file '{path}' holds {held}, which does not fit encoder.name '{name}': {len(missing)} of the "
            f"model's {len(model.state_dict())} keys are missing, {len(unknown)} keys are unexpected and "
            f"{len(shape)} of another shape (first: {(missing + unknown + shape)[:2]}); set encoder.name to the "
            "architecture the file was exported from")


def file_sha256(path) -> Optional[str]:
    """sha256 hex of a file (an encoder checkpoint), or None for no file. Read once per (path, size, mtime):
    a label-efficiency table asks for the same encoder's hash in every cell (fingerprint and export)."""
    p = encoder_file(path)
    if p is None:
        return None
    st = p.stat()
    return _sha256_of(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_image_size(model: nn.Module, name: str, img_size: int) -> None:
    """``data.image_size`` below the encoder's total stride leaves no feature map: an error naming the key."""
    info = getattr(model, "feature_info", None)
    stride = None
    try:
        stride = int(info[-1]["reduction"]) if info else None
    except (KeyError, IndexError, TypeError):
        stride = None
    if stride is None:
        ps = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        stride = int(ps[0]) if ps is not None else None
    if stride and img_size < stride:
        raise EncoderFileError(f"data.image_size={img_size} is too small for encoder '{name}', which downsamples by "
                               f"{stride}: use data.image_size >= {stride}")
