"""Atomic, safely loadable training checkpoints.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that it loads with
``torch.load(weights_only=True)``: the RNG states are converted from numpy/python objects to plain types.
"""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import torch

from ssl_derm.errors import CheckpointError, written_whole


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` through a temp file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per process: one writer per node may share a filesystem with another node's
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with written_whole(tmp, path):
        torch.save(state, tmp)
        os.replace(tmp, path)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load (on the CPU unless told otherwise; the engine always resumes from a CPU load: the numpy RNG
    key tensor must stay a CPU tensor, and Adam's ``step`` counters stay off the GPU when the optimiser
    state is loaded, its values moving to each parameter's device in ``Optimizer.load_state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or objects that are not safe to unpickle
        raise CheckpointError(f"checkpoint '{path}' cannot be loaded safely: {str(e)[:300]}") from None


def rng_state() -> dict:
    """Torch, CUDA, numpy and python RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this rank's own GPU only: a resume may see fewer GPUs than the save did
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (this rank's own state)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda.cpu())


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x
