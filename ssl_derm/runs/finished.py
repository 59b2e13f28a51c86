"""What a command (``finetune``, ``segment``, a sweep cell) does with an output folder that already holds a
finished run: one rule for all of them, decided by the run's fingerprint.

``existing`` (how the caller wants an earlier ``metrics.json`` treated):

- ``"error"`` (the CLI's default): the same fingerprint -> leave the run as it is and say so; another
  fingerprint -> stop with a message naming what differs (config keys, data, encoder file);
- ``"force"`` (``--force``): clear the old outputs (metrics, TensorBoard events, checkpoints) and rerun;
- ``"stale"`` (sweep and label-efficiency cells): the same fingerprint -> reuse; another -> move the
  folder aside to ``<cell>.stale-N`` and rerun, so a table never mixes fingerprints.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import yaml

from ssl_derm.config import ConfigError
from ssl_derm.runs.fingerprint import config_diff, move_aside, recorded

EXISTING = ("error", "force", "stale")
# what any command writes into its run folder (globs), cleared by --force so no file of the old run is left
# beside the new one's
OUTPUTS = ("metrics.json", "tb", "checkpoints", "test_probs.npy", "test_ids.json", "external_probs.npy",
           "external_ids.json", "*.png", "model.json", "model.safetensors", "masks", "*.csv")


def check_out_path(out) -> None:
    """``--out`` must be a folder (or not exist yet)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out '{out}' is an existing file, not a folder: give a folder for the run's outputs")
    check_writable(out)


def check_writable(out) -> None:
    """``--out`` can be made and written: a temp folder in the nearest existing parent is made and removed
    (before any work; ``/proc/x`` or a read-only mount fail here with the folder named, not at the end)."""
    import tempfile

    from ssl_derm.errors import RunFolderError

    out = Path(out).expanduser().absolute()
    base = next((p for p in (out, *out.parents) if p.exists()), None)
    if base is None or not base.is_dir():
        raise RunFolderError(f"--out '{out}' cannot be created: '{base}' is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=base))
    except OSError as e:
        raise RunFolderError(f"--out '{out}' cannot be created or written ({e.strerror} in '{base}'): "
                             "give a folder you can write to") from None


def clear_outputs(out: Path, patterns=OUTPUTS) -> None:
    """Remove every file and folder of ``out`` that ``patterns`` (globs) match."""
    for pattern in patterns:
        for p in Path(out).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _differences(out: Path, cfg, old: dict, new: dict) -> str:
    from ssl_derm.config import to_dict

    parts = []
    cfg_file = out / "config.yaml"
    if old.get("config_sha256") != new["config_sha256"]:
        old_cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
        diff = config_diff(old_cfg or {}, to_dict(cfg))
        parts.append("config keys " + ("; ".join(diff) if diff else "(config.yaml missing or unreadable)"))
    if old.get("data_sha256") != new["data_sha256"]:
        parts.append("the data (image files, labels or split)")
    if old.get("encoder_sha256") != new["encoder_sha256"]:
        parts.append(f"the encoder file (sha256 {str(old.get('encoder_sha256'))[:12]} there, "
                     f"{str(new['encoder_sha256'])[:12]} now)")
    if old.get("derived_sha256") != new.get("derived_sha256"):
        parts.append("what it derives from the images (the annotation-free lesion masks' recipe: another default "
                     "segmenter)")
    return ", ".join(parts) or "its fingerprint (recorded by an older version)"


def resolve_existing(out, cfg, fp: dict, existing: str = "error") -> Optional[dict]:
    """None: go ahead and run. A dict: the finished run's metrics, which already fit ``fp``; do not rerun."""
    if existing not in EXISTING:
        raise ValueError(f"existing={existing!r} is not one of {EXISTING}")
    out = Path(out)
    old = recorded(out)
    if old is None:  # nothing finished here
        return None
    if existing == "force":
        clear_outputs(out)
        return None
    if old.get("sha256") == fp["sha256"]:
        print(f"[ssl-derm] {out} already holds this run (fingerprint {fp['sha256'][:12]}); left as it is "
              "(--force reruns it)", file=sys.stderr)
        return json.loads((out / "metrics.json").read_text())
    what = _differences(out, cfg, old, fp)
    if existing == "stale":
        dest = move_aside(out)
        print(f"[ssl-derm] {out.name}: results are stale (differ in {what}); moved to {dest.name}, rerunning",
              file=sys.stderr)
        return None
    raise ConfigError(f"--out '{out}' holds a finished run that differs in {what}; give a new --out, or --force "
                      "to replace it")
