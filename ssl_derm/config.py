"""Configs: YAML files loaded into dataclasses, with ``key.sub=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key and what is allowed, so a
typo never passes silently. Every command has one top-level dataclass (``PretrainConfig``,
``FinetuneConfig``, ``SegmentConfig``...) built from the shared sections below.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what is allowed."""


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
    test_frac: float = 0.2
    val_frac: float = 0.1
    # external test set (finetune): scored as `external` in metrics.json, never trained or selected on
    test_images: List[str] = field(default_factory=list)  # folders
    test_labels: Optional[str] = None  # CSV image_id,label[,lesion_id][,split] of the external images
    test_masks: Optional[str] = None  # folder of <id>.png masks (fewmask_seg)
    label_map: Dict[str, Any] = field(default_factory=dict)  # external label -> training class (null: leave out)


@dataclass
class EncoderConfig:
    name: str = "resnet18"
    checkpoint: Optional[str] = None  # exported encoder (.safetensors/.pth) or "none"
    pretrained: bool = False  # hub weights cannot be downloaded: True is an error
    drop_path_rate: float = 0.0


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3  # base LR for batch 256, scaled linearly by batch_size/256
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # any timm optimizer name: adamw, lars, sgd, lamb...
    warmup_steps: int = 50
    clip_grad: float = 3.0  # 0 disables
    amp: bool = True  # bf16 autocast on CUDA
    ckpt_every: int = 200
    log_every: int = 10
    image_log_every: int = 500
    compile: bool = False  # torch.compile the model
    resume: bool = True  # continue from <out>/checkpoints/last.pt when present
    num_threads: int = 0  # CPU threads; 0 = torch default


@dataclass
class AugmentConfig:
    preset: str = ""  # empty: the method's default preset
    crop_scale_min: float = 0.2
    crop_scale_max: float = 1.0
    local_crop_scale_min: float = 0.05
    local_crop_scale_max: float = 0.3
    local_crop_size: int = 0  # 0: half the image size (rounded to 8)
    n_local_crops: int = 6
    rotation: float = 180.0  # degrees either way: dermoscopy has no up
    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    hue: float = 0.03  # mild: colour carries diagnosis in dermoscopy
    jitter_p: float = 0.8
    grayscale_p: float = 0.1
    blur_p: float = 0.3
    solarize_p: float = 0.0
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    padding_mode: str = "reflection"  # what rotated/cropped views see outside the image: reflection | zeros | border
    masked_crop_scale_min: float = 0.5  # "masked" preset (MAE/SimMIM): light crops that keep most of the lesion
    weak_crop_scale_min: float = 0.8  # "weak_strong" preset: the weak view is nearly the whole image
    strong_magnitude: float = 2.0  # strong view: brightness/contrast/saturation jitter times this (hue stays mild)
    strong_solarize_p: float = 0.2
    posterize_p: float = 0.2
    erase_p: float = 0.5
    erase_scale_max: float = 0.15  # largest erased area fraction (smallest: 0.02)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class MethodConfig:
    name: str = "simclr"
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    pred_hidden_dim: int = 2048  # BYOL / MoCo v3 predictor
    temperature: float = 0.1
    momentum: float = 0.99  # EMA start; cosine schedule to momentum_end
    momentum_end: float = 1.0
    dino_out_dim: int = 4096
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    mask_ratio: float = 0.75  # MAE
    simmim_mask_ratio: float = 0.6
    mask_patch_size: int = 32  # SimMIM mask unit in pixels
    decoder_dim: int = 256
    decoder_depth: int = 2
    export: str = "student"  # student | teacher (the momentum teacher of BYOL/MoCo v3/DINO; DINO evaluates it)


@dataclass
class MonitorConfig:
    every_steps: int = 0  # 0 disables the online kNN monitor
    k: int = 20
    temperature: float = 0.07
    max_images: int = 2000


# ----------------------------------------------------------------------------- loading
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str):
    """Check ``value`` against the annotation ``tp``; convert where it is unambiguous."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, List):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in known:
            raise ConfigError(f"unknown config key '{prefix}{k}'; allowed keys here: {', '.join(sorted(known))}")
    obj = cls()
    for k, v in data.items():
        setattr(obj, k, _coerce(v, hints[k], prefix + k))
    return obj


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
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(cls, path=None, overrides=(), base: Optional[dict] = None):
    """Build ``cls`` from defaults <- ``base`` <- YAML file <- overrides, checking every key."""
    data: dict = {}
    if base:
        data = _merge(data, base)
    if path:
        data = _merge(data, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        set_nested(data, keys, value)
    cfg = _from_dict(cls, data)
    validate(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_CHOICES = {"on_bad": ("skip", "error"), "device": ("auto", "cpu", "cuda"), "export": ("student", "teacher")}


def validate(cfg, prefix: str = "") -> None:
    """Check values that have a closed set of choices or a range."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            validate(v, key + ".")
        elif f.name in _CHOICES and v not in _CHOICES[f.name] and not (f.name == "device" and str(v).startswith("cuda:")):
            raise ConfigError(f"config key '{key}': {v!r} is not one of {', '.join(_CHOICES[f.name])}")
        elif f.name in ("image_size", "batch_size") and v <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {v}")
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

    device: str = "auto"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
