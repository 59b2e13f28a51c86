"""``ssl-derm segment`` config: the shared data/encoder/train/augment sections plus the method's knobs.

Loaded with :func:`ssl_derm.config.load_config` (unknown keys are errors); :func:`check_segment_config`
checks values with a closed set of choices or a range. Pixel sizes (hair kernel, skin ring) are given
for a 128-pixel image and scaled with ``data.image_size``, so one config works at any cache size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ssl_derm.config import AugmentConfig, ConfigError, DataConfig, EncoderConfig, TrainConfig

DEFAULT_METHOD = "contrast_em"  # the best method that needs no checkpoint (benchmarks/segment_ham10000.py)
COMPONENT_CHOICES = ("central", "largest", "all")
UPSAMPLE_CHOICES = ("bilinear", "nearest")


@dataclass
class SegmentSection:
    method: str = DEFAULT_METHOD  # a registered segmenter; "default" means DEFAULT_METHOD
    batch_size: int = 64  # images per predict call
    max_images: int = 0  # >0: a seeded random subset of this many images (quick evaluations)
    # shared lesion prior and clean-up (ssl_derm/segment/prior.py, cleanup.py)
    hair_kernel: int = 5  # grey closing that removes thin dark hairs (px at 128; 0 = off)
    vignette: bool = True  # leave out the dark dermoscope border (a fitted circle)
    ring: List[float] = field(default_factory=lambda: [2.0, 10.0])  # skin ring: px inside the field of view
    component: str = "central"  # central | largest | all: which connected component is the lesion
    fill_holes: bool = True
    upsample: str = "bilinear"  # to the original size: bilinear score of the mask > 0.5, or nearest
    # contrast_em: Gaussian skin/lesion colour classes in Lab, initialised by contrast to the skin ring
    smooth_sigma: float = 1.0  # Gaussian pre-smoothing of the Lab image (px at 128)
    em_iters: int = 3
    # k-means baselines
    n_clusters: int = 2
    feature_size: int = 32  # k-means on dense features: grid the features are resized to
    # attention maps (ViT): keep the patches holding this share of the CLS attention (DINO)
    attention_mass: float = 0.6
    # gharawi: hybrid CNN/Transformer features + contextual attention + differentiable clustering
    max_clusters: int = 8  # width of the cluster head (argmax labels may use fewer)
    min_clusters: int = 3  # stop early once this few clusters remain
    feat_dim: int = 32
    transformer_layers: int = 1
    heads: int = 4
    iters: int = 40  # optimisation steps per image (per_image) or per batch
    work_size: int = 64  # the clustering runs at this size (px), its responses are upsampled to the cache size
    lr: float = 0.1
    position_weight: float = 0.0  # scale of the x, y inputs of the pixel branch (0: colour only, as Kim et al.)
    spatial_weight: float = 1.0  # weight of the spatial-consistency (L1 response difference) loss
    per_image: bool = True  # optimise a fresh model per image; false: one model per batch
    refine_em: bool = False  # finish gharawi/kmeans masks with contrast_em's colour EM
    # outputs
    write_masks: bool = True
    overlay_n: int = 32  # images in the overlay grid (PNG and TensorBoard)


@dataclass
class SelfTrainSection:
    rounds: int = 0  # 0: no self-training; each round trains on the previous round's masks
    image_size: int = 96  # training/prediction size of the segmentation network
    ignore_band: float = 0.2  # pixels whose pseudo score is within this of 0.5 are left out of the loss
    boundary_px: int = 2  # and a band this wide (px at 128) around the pseudo-mask outline
    decoder_widths: List[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])
    max_images: int = 0  # >0: train on a random subset of this many images (all images are predicted)


@dataclass
class SegmentConfig:
    """``ssl-derm segment``: images (+ masks, read only to score) -> masks and metrics.json."""

    device: str = "auto"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=128))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    segment: SegmentSection = field(default_factory=SegmentSection)
    selftrain: SelfTrainSection = field(default_factory=SelfTrainSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1000, batch_size=32, lr=2e-3,
                                                                   warmup_steps=50, ckpt_every=0, weight_decay=1e-4))
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def check_segment_config(cfg: SegmentConfig) -> SegmentConfig:
    """Choice and range checks the generic loader cannot know; returns ``cfg``."""
    s = cfg.segment
    if s.component not in COMPONENT_CHOICES:
        raise ConfigError(f"config key 'segment.component': {s.component!r} is not one of {', '.join(COMPONENT_CHOICES)}")
    if s.upsample not in UPSAMPLE_CHOICES:
        raise ConfigError(f"config key 'segment.upsample': {s.upsample!r} is not one of {', '.join(UPSAMPLE_CHOICES)}")
    if len(s.ring) != 2 or not 0 <= s.ring[0] < s.ring[1]:
        raise ConfigError(f"config key 'segment.ring': give [inner, outer] px with 0 <= inner < outer, got {s.ring}")
    for key in ("batch_size", "n_clusters", "max_clusters", "min_clusters", "feat_dim", "heads", "feature_size", "work_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"config key 'segment.{key}': must be >= 1, got {getattr(s, key)}")
    if s.n_clusters < 2 or s.max_clusters < 2:
        raise ConfigError("config keys 'segment.n_clusters' and 'segment.max_clusters' must be >= 2 (skin and lesion)")
    if s.feat_dim % s.heads:
        raise ConfigError(f"config key 'segment.feat_dim' ({s.feat_dim}) must be divisible by 'segment.heads' ({s.heads})")
    if not 0 < s.attention_mass < 1:
        raise ConfigError(f"config key 'segment.attention_mass': must be in (0, 1), got {s.attention_mass}")
    if not 0 <= cfg.selftrain.ignore_band < 0.5:
        raise ConfigError(f"config key 'selftrain.ignore_band': must be in [0, 0.5), got {cfg.selftrain.ignore_band}")
    if cfg.selftrain.rounds < 0 or cfg.selftrain.image_size < 16:
        raise ConfigError("config keys 'selftrain.rounds' must be >= 0 and 'selftrain.image_size' >= 16")
    return cfg
