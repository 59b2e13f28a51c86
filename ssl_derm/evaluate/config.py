"""``ssl-derm finetune`` config: the shared sections, the split, and the chosen protocol's own settings.

Loaded with :func:`ssl_derm.config.load_config`, so unknown keys are errors; :func:`check_finetune_config`
adds the checks for values with a closed set of choices or a range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

from ssl_derm.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    EncoderConfig,
    TrainConfig,
    load_config,
    plugin,
)
from ssl_derm.metrics.calibration import CALIBRATE_CHOICES
from ssl_derm.models.features import POOL_CHOICES, TTA_CHOICES

BALANCE_CHOICES = ("none", "weighted_loss", "balanced_sampler")
HEAD_INIT_CHOICES = ("random", "linear_probe")
SPLIT_MODES = ("draw", "given")


@dataclass
class SplitSection:
    fraction: float = 0.1  # labelled share of the training side; one of the split file's nested subsets
    seed: int = 0  # seed of the split file (lesion-grouped, stratified); `seed` below seeds training
    # true: the labelled subset is drawn anew with the run's `seed` (nested, class-stratified, inside the
    # split file's training side), so seeds vary the labelled images too, not only the initialisation
    redraw_labelled: bool = False
    # draw: seeded, lesion-grouped train/val/test (data.test_frac, data.val_frac) | given: the `split`
    # column of data.labels (train/val/test, e.g. ISIC 2017's official split)
    mode: str = "draw"


@dataclass
class ProtocolSettings:
    """What every protocol's settings hold. Each protocol declares its settings beside its code
    (``evaluate/<name>.py``), built from this and the shared groups below (one level), and registers them
    with itself, so ``protocol.*`` is checked against the chosen protocol."""

    name: str = "knn"  # a registered protocol: knn | linear | labelprop | finetune | fixmatch | meanteacher | distill | fewmask_seg
    feature_batch_size: int = 256  # batch of frozen-feature extraction and of prediction
    # what the protocol learns from: lesion masks (segmentation) rather than class labels
    segments: ClassVar[bool] = False
    # none | temperature: one temperature fitted on the val side (ssl_derm/metrics/calibration.py) divides
    # the logits of every scored side; model.json stores it and `ssl-derm predict` applies it
    calibrate: str = "none"

    def check(self) -> None:
        """Range and choice checks of every shared group this class holds; a protocol adds its own."""
        for key, (ok, what) in _SHARED_RULES.items():
            if hasattr(self, key) and not ok(getattr(self, key)):
                raise ConfigError(f"config key 'protocol.{key}': {what}, got {getattr(self, key)!r}")


@dataclass
class Balanced:
    balance: str = "none"  # none | weighted_loss | balanced_sampler


@dataclass
class FrozenFeatures:
    """Frozen features (kNN, linear, label spreading): pooled outputs of the last n stages concatenated
    (1 = the encoder's pooled output), averaged over test-time views (none | d4: 8 rotations/flips);
    pooled over the whole image (avg), over the annotation-free lesion mask (lesion), or both side by side."""

    feature_stages: int = 1  # pooled outputs of the last n stages, concatenated (1 = the encoder's pooled output)
    feature_tta: str = "none"  # none | d4: features averaged over the 8 rotations/flips
    feature_pool: str = "avg"  # avg: whole image | lesion: over the annotation-free lesion mask | both, side by side


@dataclass
class LinearProbe:
    """Logistic regression on standardised frozen features; C picked on the val side."""

    linear_C: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])  # inverse regularisation strengths tried; the best on val is kept
    linear_max_iter: int = 2000  # iterations of the logistic-regression solver


@dataclass
class Trained:
    """A network trained on the labelled side with model selection on val (finetune, FixMatch, mean teacher)."""

    eval_every: int = 100  # steps between validation passes (model selection only)
    llrd: float = 1.0  # layer-wise learning-rate decay (timm layer_decay); 1 turns it off
    # random | linear_probe: LP-FT (Kumar et al. 2022): the head starts as the linear probe fitted on
    # the frozen features (C picked on val, as protocol `linear`), so finetuning starts from the probe
    # and the initial state is a model-selection candidate too
    head_init: str = "random"
    label_smoothing: float = 0.0  # cross-entropy label smoothing


@dataclass
class SemiSupervised:
    mu: int = 7  # unlabeled images per labelled image in a step
    lambda_u: float = 1.0  # weight of the unlabeled loss


_SHARED_RULES = {
    "calibrate": (lambda v: v in CALIBRATE_CHOICES, f"must be one of {', '.join(CALIBRATE_CHOICES)}"),
    "feature_batch_size": (lambda v: v >= 1, "must be >= 1"),
    "balance": (lambda v: v in BALANCE_CHOICES, f"must be one of {', '.join(BALANCE_CHOICES)}"),
    "feature_stages": (lambda v: v >= 1, "must be >= 1 (1 = the pooled output)"),
    "feature_tta": (lambda v: v in TTA_CHOICES, f"must be one of {', '.join(TTA_CHOICES)}"),
    "feature_pool": (lambda v: v in POOL_CHOICES, f"must be one of {', '.join(POOL_CHOICES)}"),
    "linear_C": (lambda v: bool(v) and all(c > 0 for c in v), "give one or more positive values"),
    "eval_every": (lambda v: v >= 1, "must be >= 1"),
    "llrd": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1] (1 = no decay)"),
    "head_init": (lambda v: v in HEAD_INIT_CHOICES, f"must be one of {', '.join(HEAD_INIT_CHOICES)}"),
    "mu": (lambda v: v >= 1, "must be >= 1 unlabeled image per labelled one"),
}


@dataclass
class FinetuneConfig:
    """``ssl-derm finetune``: an encoder (pretrained or random) + labels -> metrics.json."""

    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    seed: int = 0  # seeds initialisation and batch order (split.seed seeds the split file)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, batch_size=32, lr=1e-3,
                                                                   warmup_steps=20, ckpt_every=0))
    augment: AugmentConfig = plugin("preset", "", optional=True, base=AugmentConfig)  # "": the method's own preset
    split: SplitSection = field(default_factory=SplitSection)
    protocol: ProtocolSettings = plugin("protocol", "knn")


def check_finetune_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """Range and choice checks that the generic loader cannot know about; returns ``cfg``."""
    if cfg.split.mode not in SPLIT_MODES:
        raise ConfigError(f"config key 'split.mode': {cfg.split.mode!r} is not one of {', '.join(SPLIT_MODES)}")
    if not 0.0 < cfg.split.fraction <= 1.0:
        raise ConfigError(f"config key 'split.fraction': must be in (0, 1], got {cfg.split.fraction}")
    trains = isinstance(cfg.protocol, Trained) or cfg.protocol.segments  # the protocols that run train.max_steps
    if cfg.train.max_steps == 0 and trains:
        raise ConfigError(f"config key 'train.max_steps': 0 trains nothing, and protocol {cfg.protocol.name} would "
                          "export and score its untrained model; set train.max_steps >= 1 (a frozen encoder is "
                          "scored by protocol.name=linear or knn)")
    cfg.protocol.check()
    if type(cfg.protocol).segments and cfg.protocol.calibrate != "none":
        raise ConfigError(f"config key 'protocol.calibrate': {cfg.protocol.name} predicts masks, not class "
                          "probabilities; set protocol.calibrate=none")
    return cfg


def load_finetune_config(path=None, overrides=(), base=None, lenient: bool = False) -> FinetuneConfig:
    """YAML + ``key.sub=value`` overrides -> a checked :class:`FinetuneConfig` (``lenient``: see ``load_config``)."""
    return check_finetune_config(load_config(FinetuneConfig, path, overrides, base, lenient))
