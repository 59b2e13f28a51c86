"""``ssl-derm label-efficiency``: the same recipe with a pretrained and a randomly initialised encoder, per
protocol, label fraction and seed; a front for the packaged sweep ``configs/sweeps/label_efficiency.yaml``.

    ssl-derm label-efficiency --config configs/finetune/knn.yaml --out runs/le \\
        --checkpoint runs/pretrain/encoder.safetensors --fractions 0.01,0.1,1.0 \\
        --protocols knn,linear,finetune,fixmatch --seeds 0,1,2 data.images=[...] data.labels=...

is ``ssl-derm sweep configs/sweeps/label_efficiency.yaml --out runs/le checkpoint=runs/pretrain/encoder.safetensors
grid.finetune.protocol.name=[knn,...] grid.finetune.split.fraction=[0.01,...] seeds=[0,1,2]`` with the finetune
config of ``--config`` and its overrides. Each cell is a full ``run_finetune`` run folder under ``<out>/cells/``;
finished cells are skipped, so an interrupted table resumes. The data and the split are loaded once, and kNN /
linear share one feature extraction per encoder. Writes the sweep's tables and ``label_efficiency.csv`` /
``label_efficiency.md`` (mean +- std over seeds, pretrained against random, and their paired difference) over
every finished cell of the folder (:mod:`ssl_derm.commands.sweep.paired`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional, Sequence

from ssl_derm.config import parse_override, read_yaml, to_dict
from ssl_derm.errors import ConfigError
from ssl_derm.registry import names
from ssl_derm.runs import flatten

INITS = ("pretrained", "random")


def label_efficiency_spec(base_cfg, checkpoint, fractions: Sequence[float], protocols: Sequence[str],
                          seeds: Sequence[int], inits=INITS,
                          protocol_overrides: Optional[Dict[str, Sequence[str]]] = None) -> dict:
    """The packaged sweep with this table's grid: ``base_cfg`` (a loaded finetune config) is the finetune
    stage's base, and the keys its user set stay set (an encoder file fills only the others)."""
    spec = read_yaml("sweeps/label_efficiency")
    values = flatten(to_dict(base_cfg))
    user = {k: v for k, v in values.items() if k in getattr(base_cfg, "explicit_keys", ())}
    per = {}
    for protocol, texts in (protocol_overrides or {}).items():
        per[protocol] = {".".join(k): v for k, v in map(parse_override, texts)}
    spec["finetune"] = {"base": to_dict(base_cfg), "set": user, **({"per_protocol": per} if per else {})}
    spec["seeds"] = [int(s) for s in seeds]
    spec["grid"] = {"init": list(inits), "finetune.protocol.name": list(protocols),
                    "finetune.split.fraction": [float(f) for f in fractions]}
    if "pretrained" in inits:
        spec["checkpoint"] = str(checkpoint)
    return spec


def run_label_efficiency(base_cfg, checkpoint, fractions: Sequence[float], protocols: Sequence[str],
                         seeds: Sequence[int], out_dir, dataset=None, split=None, inits=INITS,
                         protocol_overrides: Optional[Dict[str, Sequence[str]]] = None) -> list:
    """Run every missing cell, then write the tables; returns the rows of ``label_efficiency.csv``.

    ``checkpoint``: the exported encoder for the "pretrained" rows (``None`` only with inits=("random",)).
    ``protocol_overrides``: ``{"fixmatch": ["train.max_steps=200", ...]}``, applied on top of ``base_cfg``
    for that protocol only (budgets differ per protocol; pretrained and random always share them).
    """
    known = names("protocol")
    bad = [p for p in protocols if p not in known]
    if bad:
        raise ConfigError(f"unknown protocol(s) {', '.join(bad)}; available: {', '.join(known)}")
    if "pretrained" in inits and (not checkpoint or not Path(checkpoint).exists()):
        raise ConfigError(f"--checkpoint '{checkpoint}' does not exist; give the encoder.safetensors of `ssl-derm pretrain`")
    from ssl_derm.commands.sweep import run_sweep

    spec = label_efficiency_spec(base_cfg, checkpoint, fractions, protocols, seeds, inits, protocol_overrides)
    data = (dataset, split) if dataset is not None and split is not None else None
    root = run_sweep(spec, out=out_dir, data=data)
    with open(root / "label_efficiency.csv", newline="") as f:
        return list(csv.DictReader(f))
