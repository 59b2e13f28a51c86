"""Starting weights for an encoder (``encoder.init``): a local timm state dict, or timm's own pretrained
weights fetched by timm on request.

``encoder.init=PATH``: a ``.safetensors`` file, or a torch file read with ``weights_only=True`` (a bare
state dict, or one under ``state_dict``/``model``, as timm's ``load_state_dict`` reads it). Its keys must
be those of ``timm.create_model(encoder.name)``: a missing, unknown or wrongly shaped key is an error that
names the file and how many keys do not match; the classifier (``fc.*``, ``head.*``...) is dropped. The
state dict then goes through timm's own loading (``pretrained_cfg_overlay=dict(state_dict=...)``), so a
ViT's position embedding is resampled to ``data.image_size`` as timm does for its own weights.

``encoder.init=timm``: ``timm.create_model(name, pretrained=True)``. Without a network (or with
``HF_HUB_OFFLINE=1``) only weights already in the Hugging Face cache are used; otherwise it is a
one-line error, after a reachability check of a few seconds instead of the hub client's minute of retries.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Dict

import timm
import torch
from torch import nn

from ssl_derm.encoder_files import state_mismatch
from ssl_derm.errors import EncoderError

HUB_HOST = "huggingface.co"


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (safetensors, or a torch file read with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any reader failure is the file's fault here)
        raise EncoderError(f"encoder.init '{path}' cannot be read as a safetensors file or a torch state dict "
                           f"(weights_only=True): {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderError(f"encoder.init '{path}' does not hold a state dict of tensors (name -> tensor); "
                           "save one with safetensors.torch.save_file(model.state_dict(), PATH)")
    return timm.models.clean_state_dict(obj)  # drops DDP 'module.' and torch.compile '_orig_mod.' prefixes


def check_keys(state: Dict[str, torch.Tensor], model: nn.Module, path: Path, name: str) -> Dict[str, torch.Tensor]:
    """``state`` less the classifier; an error naming ``path`` when any other key does not fit ``model``
    (:func:`ssl_derm.encoder_files.state_mismatch`)."""
    missing, unknown, shape = state_mismatch({k: tuple(v.shape) for k, v in state.items()}, model)
    bad = len(missing) + len(unknown) + len(shape)
    if bad:
        example = (missing + unknown + shape)[0]
        raise EncoderError(
            f"encoder.init '{path}': {bad} of {len(model.state_dict())} keys do not match timm model '{name}' "
            f"({len(missing)} missing, "
            f"{len(unknown)} unknown, {len(shape)} of another shape; e.g. '{example}'). Give a state dict of "
            f"timm.create_model('{name}'), or set encoder.name to the model it came from")
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own}


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Make huggingface_hub read only its local cache while inside (as HF_HUB_OFFLINE=1 would)."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_timm_pretrained(name: str, create, **kwargs) -> nn.Module:
    """``create(name, pretrained=True, **kwargs)``: timm's own weights, or a one-line EncoderError."""
    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is None or not (pcfg.url or pcfg.hf_hub_id or pcfg.file):
        raise EncoderError(f"encoder.init=timm: timm publishes no pretrained weights for '{name}'; "
                           "use encoder.init=none or encoder.init=PATH")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not hub_reachable()
    try:
        with _hub_offline(offline):
            return create(name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001  (network, cache and hub errors all mean: no weights here)
        where = ("the machine is offline and they are not in the Hugging Face cache" if offline
                 else "the download failed")
        raise EncoderError(f"encoder.init=timm: timm's pretrained weights for '{name}' cannot be loaded ({where}: "
                           f"{type(e).__name__}). Run once where the hub is reachable, or give encoder.init=PATH "
                           "to a local state dict") from None
