"""``ssl-derm finetune`` config: the shared sections plus the split and the protocol's own knobs.

Loaded with :func:`ssl_derm.config.load_config`, so unknown keys are errors; :func:`check_finetune_config`
adds the checks for values with a closed set of choices or a range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ssl_derm.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    EncoderConfig,
    TrainConfig,
    load_config,
)
from ssl_derm.evaluate.features import TTA_CHOICES

BALANCE_CHOICES = ("none", "weighted_loss", "balanced_sampler")
HEAD_INIT_CHOICES = ("random", "linear_probe")
THRESHOLD_MODES = ("fixed", "freematch")
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
class ProtocolSection:
    name: str = "knn"  # knn | linear | labelprop | finetune | fixmatch | meanteacher | fewmask_seg
    balance: str = "none"  # none | weighted_loss | balanced_sampler
    feature_batch_size: int = 256  # frozen-feature extraction batch
    # frozen features (kNN, linear, label spreading): pooled outputs of the last n stages concatenated
    # (1 = the encoder's pooled output), averaged over test-time views (none | d4: 8 rotations/flips)
    feature_stages: int = 1
    feature_tta: str = "none"
    eval_every: int = 100  # steps between validation passes (model selection only)
    # weighted kNN (DINO eval_knn): cosine similarity, exp(sim / T) votes of the k nearest
    knn_k: int = 20
    knn_temperature: float = 0.07
    # linear probe: logistic regression on standardised frozen features; C picked on the val side
    linear_C: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    linear_max_iter: int = 2000
    # label spreading on frozen features, then the linear probe on labelled + pseudo-labelled images
    labelprop_k: int = 10  # neighbours of the kNN graph
    labelprop_alpha: float = 0.2  # how far spread labels may move off the given ones (sklearn LabelSpreading)
    labelprop_threshold: float = 0.0  # pseudo-labels with a lower confidence are dropped (each is weighted by it)
    # finetuning
    llrd: float = 1.0  # layer-wise learning-rate decay (timm layer_decay); 1 turns it off
    # random | linear_probe: LP-FT (Kumar et al. 2022): the head starts as the linear probe fitted on
    # the frozen features (C picked on val, as protocol `linear`), so finetuning starts from the probe
    # and the initial state is a model-selection candidate too (finetune, FixMatch, mean teacher)
    head_init: str = "random"
    label_smoothing: float = 0.0
    # semi-supervised (FixMatch, mean teacher)
    threshold: float = 0.95  # FixMatch: pseudo-labels only where the weak view's confidence reaches this
    # fixed: `threshold` throughout | freematch: FreeMatch's self-adaptive thresholds (Wang et al. 2023), from
    # 1/K up to the model's own EMA confidence, scaled per class; short budgets and few labels, where a fixed
    # 0.95 is rarely reached and the unlabeled images go unused
    threshold_mode: str = "fixed"
    threshold_momentum: float = 0.999  # freematch: EMA momentum of the confidence estimates (per step)
    mu: int = 7  # unlabeled images per labelled image in a step
    lambda_u: float = 1.0  # weight of the unlabeled loss
    ema: float = 0.999  # mean teacher: EMA decay of the teacher
    rampup_steps: int = 0  # mean teacher: sigmoid ramp-up of lambda_u over these steps
    # few-mask segmentation
    seg_decoder_channels: List[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    seg_freeze_encoder: bool = False
    seg_threshold: float = 0.5  # probability threshold of the predicted mask


@dataclass
class FinetuneConfig:
    """``ssl-derm finetune``: an encoder (pretrained or random) + labels -> metrics.json."""

    device: str = "auto"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, batch_size=32, lr=1e-3,
                                                                   warmup_steps=20, ckpt_every=0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    split: SplitSection = field(default_factory=SplitSection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)


def check_finetune_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """Range and choice checks that the generic loader cannot know about; returns ``cfg``."""
    p = cfg.protocol
    if p.balance not in BALANCE_CHOICES:
        raise ConfigError(f"config key 'protocol.balance': {p.balance!r} is not one of {', '.join(BALANCE_CHOICES)}")
    if cfg.split.mode not in SPLIT_MODES:
        raise ConfigError(f"config key 'split.mode': {cfg.split.mode!r} is not one of {', '.join(SPLIT_MODES)}")
    if not 0.0 < cfg.split.fraction <= 1.0:
        raise ConfigError(f"config key 'split.fraction': must be in (0, 1], got {cfg.split.fraction}")
    if not 0.0 <= p.threshold <= 1.0:
        raise ConfigError(f"config key 'protocol.threshold': must be in [0, 1], got {p.threshold}")
    if p.threshold_mode not in THRESHOLD_MODES:
        raise ConfigError(f"config key 'protocol.threshold_mode': must be one of {', '.join(THRESHOLD_MODES)}, "
                          f"got '{p.threshold_mode}'")
    if not 0.0 <= p.threshold_momentum < 1.0:
        raise ConfigError(f"config key 'protocol.threshold_momentum': must be in [0, 1), got {p.threshold_momentum}")
    if p.mu < 1:
        raise ConfigError(f"config key 'protocol.mu': must be >= 1 unlabeled image per labelled one, got {p.mu}")
    if p.feature_stages < 1:
        raise ConfigError(f"config key 'protocol.feature_stages': must be >= 1 (1 = the pooled output), got {p.feature_stages}")
    if p.feature_tta not in TTA_CHOICES:
        raise ConfigError(f"config key 'protocol.feature_tta': {p.feature_tta!r} is not one of {', '.join(TTA_CHOICES)}")
    if p.head_init not in HEAD_INIT_CHOICES:
        raise ConfigError(f"config key 'protocol.head_init': {p.head_init!r} is not one of {', '.join(HEAD_INIT_CHOICES)}")
    if not 0.0 < p.llrd <= 1.0:
        raise ConfigError(f"config key 'protocol.llrd': must be in (0, 1] (1 = no decay), got {p.llrd}")
    if not 0.0 <= p.ema < 1.0:
        raise ConfigError(f"config key 'protocol.ema': must be in [0, 1), got {p.ema}")
    if p.knn_k < 1 or p.knn_temperature <= 0:
        raise ConfigError(f"config keys 'protocol.knn_k'/'protocol.knn_temperature' must be positive, got {p.knn_k}/{p.knn_temperature}")
    if not p.linear_C or any(c <= 0 for c in p.linear_C):
        raise ConfigError(f"config key 'protocol.linear_C': give one or more positive values, got {p.linear_C}")
    if p.labelprop_k < 1 or not 0.0 < p.labelprop_alpha < 1.0 or not 0.0 <= p.labelprop_threshold <= 1.0:
        raise ConfigError("config keys 'protocol.labelprop_k'/'labelprop_alpha'/'labelprop_threshold' need k >= 1, "
                          f"0 < alpha < 1 and 0 <= threshold <= 1, got {p.labelprop_k}/{p.labelprop_alpha}/{p.labelprop_threshold}")
    if p.eval_every < 1:
        raise ConfigError(f"config key 'protocol.eval_every': must be >= 1, got {p.eval_every}")
    if not p.seg_decoder_channels or any(c < 1 for c in p.seg_decoder_channels):
        raise ConfigError(f"config key 'protocol.seg_decoder_channels': give positive widths, got {p.seg_decoder_channels}")
    return cfg


def load_finetune_config(path=None, overrides=(), base=None) -> FinetuneConfig:
    """YAML + ``key.sub=value`` overrides -> a checked :class:`FinetuneConfig`."""
    return check_finetune_config(load_config(FinetuneConfig, path, overrides, base))
