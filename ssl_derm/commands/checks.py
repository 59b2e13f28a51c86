"""Keys a run would not use, and labelled data that cannot be scored: said out loud, never ignored.

- a key that chooses weights or a model the run will not build (``encoder.checkpoint`` / ``encoder.name``
  for a segmenter without an encoder) is an error naming it;
- a data key the command ignores in this mode (``data.masks`` for a classification protocol,
  ``data.labels`` for ``segment``) is a one-line warning, so shared command lines and sweep ``common:``
  blocks keep working;
- labelled data with fewer than two classes is an error (every score would be trivially perfect).
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ssl_derm.config import ConfigError, EncoderConfig
from ssl_derm.data.sources import DataError


def warn(key: str, command: str, why: str) -> None:
    print(f"[ssl-derm] warning: {key} is ignored by `ssl-derm {command}` ({why})", file=sys.stderr)


def finetune_ignored_data_keys(cfg, seg: bool) -> None:
    """Warn about data keys a finetune protocol does not read."""
    synthetic = list(cfg.data.images) == ["synthetic"]
    if not seg and cfg.data.masks and not synthetic:
        warn("data.masks", "finetune", f"protocol {cfg.protocol.name} classifies; masks are read by fewmask_seg")
    if seg and cfg.data.test_labels:
        warn("data.test_labels", "finetune", "fewmask_seg scores data.test_masks")


def segment_unused_keys(cfg, uses_encoder: bool) -> None:
    """``ssl-derm segment``: encoder keys without an encoder are errors; labels are a warning."""
    if not uses_encoder:
        default = EncoderConfig()
        if cfg.encoder.checkpoint and str(cfg.encoder.checkpoint).lower() != "none":
            raise ConfigError(f"encoder.checkpoint='{cfg.encoder.checkpoint}' is set, but segmenter "
                              f"'{cfg.segment.method}' uses no encoder (and selftrain.rounds=0): drop the key, or pick "
                              "a segmenter with an encoder (gharawi, kmeans_features, vit_attention) or selftrain.rounds>0")
        if cfg.encoder.name != default.name:
            raise ConfigError(f"encoder.name='{cfg.encoder.name}' is set, but segmenter '{cfg.segment.method}' uses no "
                              "encoder (and selftrain.rounds=0): drop the key or pick a segmenter with an encoder")
    if cfg.selftrain.rounds == 0:
        default = type(cfg.selftrain)()
        for f in dataclasses.fields(default):
            if f.name != "rounds" and getattr(cfg.selftrain, f.name) != getattr(default, f.name):
                warn(f"selftrain.{f.name}", "segment", "it sets up self-training, and selftrain.rounds is 0")
    if cfg.data.labels:
        warn("data.labels", "segment", "segmentation reads images and, for scoring, data.masks")
    for key in ("test_images", "test_labels", "test_masks"):
        if getattr(cfg.data, key, None):
            warn(f"data.{key}", "segment", "external test sets are scored by `ssl-derm finetune`")


def check_two_classes(dataset, key: str = "data.labels") -> None:
    """Fewer than two labelled classes -> a DataError naming ``key``."""
    if dataset.labels is None:
        return
    present = np.unique(np.asarray(dataset.labels)[np.asarray(dataset.labels) >= 0])
    if len(present) < 2:
        names = [dataset.classes[i] for i in present]
        raise DataError(f"{key} gives {len(present)} class(es) ({', '.join(names) or 'none'}) to the images found: "
                        "classification needs at least two")
