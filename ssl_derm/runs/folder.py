"""What every command does around its work: the run folder, seeds, device, metrics.json."""
from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from ssl_derm import __version__
from ssl_derm.config import dump_yaml, to_dict
from ssl_derm.errors import DeviceError, written_whole
from ssl_derm.runs.diff import field_defaults, flatten  # noqa: F401  (flatten: re-exported)


def code_version() -> dict:
    """Package version plus the git commit (and whether the tree was dirty) when run from a checkout."""
    info = {"ssl_derm": __version__, "torch": torch.__version__}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def prepare_out_dir(out, cfg) -> Path:
    """Create the run folder and write the resolved config and the code version into it.

    A folder with checkpoints that this run would resume keeps its config.yaml unless the configs agree
    (up to the step budget and logging keys): a refused resume must not leave the new config behind."""
    out = Path(out)
    train = getattr(cfg, "train", None)
    if (out / "checkpoints").is_dir() and (out / "config.yaml").is_file() and getattr(train, "resume", False):
        import yaml

        from ssl_derm.runs.resume import check_resume_config

        check_resume_config(out / "checkpoints", yaml.safe_load((out / "config.yaml").read_text()), to_dict(cfg),
                            field_defaults(cfg))
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    write_json(out / "version.json", code_version())
    return out


def write_json(path, obj) -> None:
    """Atomic JSON write (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with written_whole(tmp, path):
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
        os.replace(tmp, path)


def write_npy(path, array: np.ndarray) -> None:
    """Atomic ``np.save`` (a full disk leaves no truncated array that still loads)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with written_whole(tmp, path):
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)


def write_png(array: np.ndarray, path) -> None:
    """One uint8 image (a mask, an overlay) as PNG through a temp name: a full disk leaves no truncated
    mask that looks like a result."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with written_whole(tmp, path):
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def write_metrics(out, metrics: dict) -> Path:
    path = Path(out) / "metrics.json"
    write_json(path, metrics)
    return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={name} was asked for but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int):
    """``n`` > 0 torch CPU threads inside the block (0: leave the setting), the caller's number after it."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

