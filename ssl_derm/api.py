"""The Python API: the CLI's commands as functions, for notebooks and scripts.

Each training function takes a config (a YAML path, a packaged name such as ``"finetune/linear"``, a
dict of keys, or the config dataclass itself), overrides (``["train.max_steps=10", ...]`` or
``{"train.max_steps": 10}``) and an output folder, and returns the run's metrics dict::

    import ssl_derm
    m = ssl_derm.finetune("finetune/linear", {"data.images": ["synthetic"]}, out="runs/lin")
    clf = ssl_derm.load_classifier("runs/lin")          # nn.Module; clf.classes, clf.predict(images)
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Union

from ssl_derm.config import ConfigError, load_config as _load

Overrides = Union[None, Sequence[str], Mapping[str, object]]
_KINDS = {"pretrain": ("ssl_derm.config", "PretrainConfig"),
          "finetune": ("ssl_derm.evaluate.config", "FinetuneConfig"),
          "segment": ("ssl_derm.segmenters.config", "SegmentConfig")}


def _override_list(overrides: Overrides) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import yaml

        # a value goes through YAML like a command-line override: lists and numbers keep their type
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)


def _config_class(kind: str):
    import importlib

    if kind not in _KINDS:
        raise ConfigError(f"config kind '{kind}' is not one of {', '.join(_KINDS)}")
    module, name = _KINDS[kind]
    return getattr(importlib.import_module(module), name)


def load_config(config=None, overrides: Overrides = None, kind: Optional[str] = None):
    """A checked config dataclass from a path/packaged name, a dict or a dataclass, plus overrides.

    ``kind`` (pretrain | finetune | segment) picks the dataclass; without it, a dataclass keeps its own
    type and a path is read by the folder it lives in (``.../finetune/x.yaml`` -> finetune)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        cls = type(config)
        return _load(cls, None, _override_list(overrides), base=dataclasses.asdict(config))
    if kind is None:
        from ssl_derm.packaged import resolve_config

        if config is None or isinstance(config, Mapping):
            raise ConfigError("load_config: give kind='pretrain'|'finetune'|'segment' with a dict or no config")
        kind = resolve_config(config).resolve().parent.name
    cls = _config_class(kind)
    if isinstance(config, Mapping):
        return _load(cls, None, _override_list(overrides), base=dict(config))
    return _load(cls, config, _override_list(overrides))


def pretrain(config="pretrain/simclr_resnet18", overrides: Overrides = None, out: str = "runs/pretrain") -> dict:
    """Self-supervised pretraining; the encoder is exported to ``out/encoder.safetensors``."""
    from ssl_derm.commands.pretrain import run_pretrain

    return run_pretrain(load_config(config, overrides, kind="pretrain"), out)


def finetune(config="finetune/linear", overrides: Overrides = None, out: str = "runs/finetune") -> dict:
    """One protocol (kNN, linear, finetune, FixMatch...); the model is exported to ``out/model.*``."""
    from ssl_derm.evaluate.config import check_finetune_config
    from ssl_derm.commands.finetune import run_finetune

    return run_finetune(check_finetune_config(load_config(config, overrides, kind="finetune")), out)


def segment(config="segment/default", overrides: Overrides = None, out: str = "runs/segment") -> dict:
    """Annotation-free segmentation (and self-training); masks and ``out/model.json`` are written."""
    from ssl_derm.commands.segment import run_segment

    return run_segment(load_config(config, overrides, kind="segment"), out)


def predict(model_dir, images, out: str, overrides: Overrides = None, tta: Optional[str] = None) -> dict:
    """``ssl-derm predict``: an exported model on image folders; returns the summary (with ``metrics``
    when ``data.labels``/``data.masks`` are given)."""
    from ssl_derm.commands.predict import run_predict

    images = [images] if isinstance(images, str) or not isinstance(images, Sequence) else list(images)
    return run_predict(model_dir, [str(i) for i in images], out, _override_list(overrides), tta=tta)


def load_classifier(run_dir, device: str = "cpu"):
    """The exported classifier of a finetune run: an ``nn.Module`` with ``.classes`` and
    ``.predict(images) -> (N, K) probabilities`` (uint8 (H, W, 3) images, any size)."""
    from ssl_derm.serve.loaders import ModelFileError, load_model

    model = load_model(run_dir, device)
    if model.meta["kind"] != "classifier":
        raise ModelFileError(f"'{run_dir}' holds a {model.meta['kind']}, not a classifier; use load_segmenter")
    return model


def load_segmenter(run_dir, device: str = "cpu"):
    """The exported segmenter of a segment (or few-mask) run: an ``nn.Module`` with
    ``.predict(images) -> [bool (H_i, W_i) masks]`` at each image's own size."""
    from ssl_derm.serve.loaders import ModelFileError, load_model

    model = load_model(run_dir, device)
    if model.meta["kind"] != "segmenter":
        raise ModelFileError(f"'{run_dir}' holds a {model.meta['kind']}, not a segmenter; use load_classifier")
    return model
