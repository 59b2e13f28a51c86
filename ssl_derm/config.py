"""Configs: YAML files loaded into dataclasses, with ``key.sub=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key and what is allowed, so a
typo never passes silently. Every command has one top-level dataclass (``PretrainConfig``,
``FinetuneConfig``, ``SegmentConfig``...) built from the shared sections below.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ssl_derm.config_values import flatten
from ssl_derm.errors import ConfigError
from ssl_derm.packaged import is_packaged
from ssl_derm.plugins import (_coerce, _from_dict, plugin, plugin_section, plugin_settings, prune_foreign,  # noqa: F401  (re-exported)
                              require_at_least)


# ----------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    images: List[str] = field(default_factory=lambda: ["synthetic"])  # folders; "synthetic" = built-in set
    masks: Optional[str] = None  # folder of <id>.png masks
    labels: Optional[str] = None  # CSV image_id,label[,lesion_id][,split]
    image_size: int = 64  # side of the square cache images
    cache_dir: Optional[str] = None  # default: $SSL_DERM_CACHE or ~/.cache/ssl-derm
    on_bad: str = "skip"  # skip | error
    synthetic_n: int = 600  # images in the built-in synthetic set
    split_file: Optional[str] = None  # default: <cache_dir>/splits/<key>.json
    exclude_split: Optional[str] = None  # pretraining: leave out the "test" ids of this split file
    test_frac: float = 0.2  # share of the labelled images held out as the test side (lesion-grouped)
    val_frac: float = 0.1  # share held out as the validation side (model selection only)
    # external test set (finetune): scored as `external` in metrics.json, never trained or selected on
    test_images: List[str] = field(default_factory=list)  # folders
    test_labels: Optional[str] = None  # CSV image_id,label[,lesion_id][,split] of the external images
    test_masks: Optional[str] = None  # folder of <id>.png masks (fewmask_seg)
    label_map: Dict[str, Any] = field(default_factory=dict)  # external label -> training class (null: leave out)


@dataclass
class ScoringData:
    """``data.*`` of the commands that score an exported model on a folder (``predict``, ``robustness``)."""

    labels: Optional[str] = None  # CSV image_id,label: score a classifier
    masks: Optional[str] = None  # folder of <id>.png masks: score a segmenter


@dataclass
class EncoderConfig:
    name: str = "resnet18"  # any timm model name (resnet18, vit_small_patch16_224, ...)
    checkpoint: Optional[str] = None  # exported encoder (.safetensors/.pth) or "none"
    init: str = "none"  # starting weights: none | timm (timm's own, downloaded on request) | PATH (a timm state dict)
    pretrained: bool = False  # hub weights cannot be downloaded: True is an error
    drop_path_rate: float = 0.0  # stochastic depth of timm models that have it (ViTs, ConvNeXt)


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimiser steps of the run (the cosine schedule spans them)
    batch_size: int = 64  # images per micro-batch and rank
    lr: float = 1e-3  # base LR for batch 256, scaled linearly by batch_size/256
    min_lr: float = 1e-6  # end of the cosine schedule
    weight_decay: float = 0.05  # decoupled weight decay; timm's param groups leave biases and norms out
    optimizer: str = "adamw"  # any timm optimizer name: adamw, lars, sgd, lamb...
    warmup_steps: int = 50  # linear LR warm-up from 0
    clip_grad: float = 3.0  # 0 disables
    precision: str = "auto"  # bf16 | fp16 (with a GradScaler) | fp32 | auto: bf16 on CUDA, fp32 on the CPU
    amp: Optional[bool] = None  # deprecated alias: true = precision auto, false = fp32 (use train.precision)
    accumulate: int = 1  # micro-batches of batch_size per optimiser step (gradient accumulation)
    channels_last: bool = False  # NHWC memory format for CNNs on the GPU
    ckpt_every: int = 200  # 0: no checkpoints (and no resume) for this run
    log_every: int = 10  # steps between TensorBoard scalar logs
    image_log_every: int = 500  # steps between the view grids logged to TensorBoard
    compile: bool = False  # torch.compile the model
    resume: bool = True  # continue from <out>/checkpoints/last.pt when present
    num_threads: int = 0  # CPU threads; 0 = torch default
    dist_timeout_min: int = 60  # torchrun process-group timeout: rank 0 may build a large cache meanwhile


@dataclass
class AugmentConfig:
    preset: str = ""  # empty: the method's default preset
    crop_scale_min: float = 0.2  # random resized crop: smallest area fraction of a global view
    crop_scale_max: float = 1.0  # random resized crop: largest area fraction of a global view
    local_crop_scale_min: float = 0.05  # multi_crop preset: smallest area fraction of a local view
    local_crop_scale_max: float = 0.3  # multi_crop preset: largest area fraction of a local view
    local_crop_size: int = 0  # 0: half the image size (rounded to 8)
    n_local_crops: int = 6  # multi_crop preset: local views per image (DINO, iBOT, SwAV)
    rotation: float = 180.0  # degrees either way: dermoscopy has no up
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    brightness: float = 0.3  # colour jitter strength of brightness
    contrast: float = 0.3  # colour jitter strength of contrast
    saturation: float = 0.2  # colour jitter strength of saturation
    hue: float = 0.03  # mild: colour carries diagnosis in dermoscopy
    jitter_p: float = 0.8  # probability that colour jitter is applied
    grayscale_p: float = 0.1  # probability of a grey view
    blur_p: float = 0.3  # probability of a Gaussian blur
    solarize_p: float = 0.0  # probability of solarisation
    blur_sigma_min: float = 0.1  # smallest blur sigma (px)
    blur_sigma_max: float = 2.0  # largest blur sigma (px)
    padding_mode: str = "reflection"  # what rotated/cropped views see outside the image: reflection | zeros | border
    masked_crop_scale_min: float = 0.5  # "masked" preset (MAE/SimMIM): light crops that keep most of the lesion
    lesion_crop_p: float = 0.0  # pretraining: share of views whose crop is moved to keep the lesion centre in frame
    weak_crop_scale_min: float = 0.8  # "weak_strong" preset: the weak view is nearly the whole image
    strong_magnitude: float = 2.0  # strong view: brightness/contrast/saturation jitter times this (hue stays mild)
    strong_solarize_p: float = 0.2  # weak_strong preset: solarisation probability of the strong view
    posterize_p: float = 0.2  # weak_strong preset: posterisation probability of the strong view
    erase_p: float = 0.5  # weak_strong preset: random-erasing probability of the strong view
    erase_scale_max: float = 0.15  # largest erased area fraction (smallest: 0.02)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # per-channel normalisation mean (RGB, 0-1 scale)
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # per-channel normalisation std (RGB, 0-1 scale)


@dataclass
class MethodSettings:
    """What every method's settings hold; each method extends it beside its code (``methods/<name>.py``)
    and registers the subclass with itself, so ``method.*`` is checked against the chosen method."""

    name: str = "simclr"  # a registered method
    export: str = "student"  # student | teacher (the momentum teacher of BYOL/MoCo v3/DINO; DINO evaluates it)
    # the lesion-vs-skin term (methods/lesion_term.py), any two-view method: loss += lesion_weight * BCE of a
    # linear read-out of the stride-``lesion_stride`` feature map against each view's annotation-free mask
    lesion_weight: float = 0.0
    lesion_stride: int = 16  # stride of the feature map the lesion-vs-skin term reads

    def at_least(self, minimum, *keys: str, strict: bool = False) -> None:
        require_at_least("method", self, minimum, *keys, strict=strict)


@dataclass
class MonitorConfig:
    every_steps: int = 0  # 0 disables the online kNN monitor
    k: int = 20  # neighbours of the online kNN monitor
    temperature: float = 0.07  # softmax temperature of its similarity weights
    max_images: int = 2000  # images the monitor embeds (a seeded subset)


# ----------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from None
    return key.split("."), value


def set_nested(d: dict, path: list, value) -> None:
    for p in path[:-1]:
        if not isinstance(d.get(p, {}), dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{p}' is not a section")
        d = d.setdefault(p, {})
    d[path[-1]] = value


def read_yaml(path) -> dict:
    from ssl_derm.packaged import resolve_config

    p = resolve_config(path)  # a file, or a packaged name such as finetune/linear
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a folder; give a YAML file, e.g. {p / 'config.yaml'} or a packaged "
                          "name such as finetune/linear (`ssl-derm configs list`)")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(cls, path=None, overrides=(), base: Optional[dict] = None, lenient=False):
    """Build ``cls`` from defaults <- ``base`` <- YAML file <- overrides, checking every key.

    ``lenient``: in a plug-in section, drop keys that the chosen plug-in lacks but another plug-in of its
    kind has (a sweep or a table that switches protocols or methods over one base config); a key that no
    plug-in has is still an error. ``True`` drops them wherever they come from; ``"file"`` only from
    ``base`` and the YAML file, so an override of another plug-in's key is still an error."""
    data: dict = {}
    if base:
        data = _merge(data, base)
    from_file = read_yaml(path) if path else {}
    data = _merge(data, from_file)
    over: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        set_nested(over, keys, value)
    if lenient == "file":
        data = prune_foreign(cls, data, _merge(data, over))
    cfg = _from_dict(cls, _merge(data, over), lenient=lenient is True)
    validate(cfg)
    # the keys a user set (overrides, and a config file of their own; a packaged file gives defaults):
    # values read from an encoder file may fill the others (ssl_derm.encoder_files.adopt_encoder_file)
    explicit = set(flatten(over))
    if path and not is_packaged(path):
        explicit |= set(flatten(from_file))
    cfg.explicit_keys = frozenset(explicit)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_CHOICES = {"on_bad": ("skip", "error"), "device": ("auto", "cpu", "cuda"), "export": ("student", "teacher"),
            "precision": ("auto", "bf16", "fp16", "fp32")}


def validate(cfg, prefix: str = "") -> None:
    """Check values that have a closed set of choices or a range; a section with a ``check()`` method
    (a plug-in's settings) checks its own."""
    if hasattr(cfg, "check"):
        cfg.check()
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            validate(v, key + ".")
        elif isinstance(v, float) and not math.isfinite(v):  # nan/inf reached the optimiser or sklearn unnamed
            raise ConfigError(f"config key '{key}': must be a finite number, got {v}")
        elif key in ("data.test_frac", "data.val_frac") and not 0 <= v < 1:
            raise ConfigError(f"config key '{key}': must be in [0, 1), got {v}")
        elif f.name in _CHOICES and v not in _CHOICES[f.name] and not (f.name == "device" and str(v).startswith("cuda:")):
            raise ConfigError(f"config key '{key}': {v!r} is not one of {', '.join(_CHOICES[f.name])}")
        elif f.name in ("image_size", "batch_size") and v <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {v}")
        elif f.name in ("accumulate", "dist_timeout_min") and v < 1:
            raise ConfigError(f"config key '{key}': must be >= 1, got {v}")
        elif key == "train.lr" and v <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {v}")
        elif f.name in ("max_steps",) and v < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {v}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg, path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@dataclass
class PretrainConfig:
    """``ssl-derm pretrain``: an unlabeled archive -> an encoder."""

    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    seed: int = 0  # seeds initialisation, augmentation and batch order
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = plugin("preset", "", optional=True, base=AugmentConfig)  # "": the method's own preset
    method: MethodSettings = plugin("method", "simclr")
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
