"""``ssl-derm segment`` config: the shared data/encoder/train/augment sections plus the chosen segmenter's settings.

Loaded with :func:`ssl_derm.config.load_config` (unknown keys are errors); :func:`check_segment_config`
checks values with a closed set of choices or a range. Pixel sizes (hair kernel, skin ring) are given
for a 128-pixel image and scaled with ``data.image_size``, so one config works at any cache size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ssl_derm.config import AugmentConfig, ConfigError, DataConfig, EncoderConfig, TrainConfig, plugin
from ssl_derm.plugins import require_at_least

DEFAULT_METHOD = "contrast_em"  # the best method that needs no checkpoint (benchmarks/segment_ham10000.py)
COMPONENT_CHOICES = ("central", "largest", "all")
UPSAMPLE_CHOICES = ("bilinear", "nearest")
HAIR_FILL_CHOICES = ("average", "closing")


# contrast_em's settings before its acquisition-shift steps (hair-line inpainting, light flattening, white
# balance, the lightest part of the skin ring): what an exported segmenter of model.json format 1-2 ran with
BEFORE_SHIFT_STEPS = {"hair_lines": 0.0, "colour_constancy": 0.0, "flatten_light": False, "ring_light": 1.0}
# what an exported segmenter of model.json format 1-3 ran with for the keys that format 4 added: hair pixels
# filled by a closing, no opening of the mask before the clean-up, every step at the cache size
BEFORE_FORMAT_4 = {"hair_fill": "closing", "mask_opening": 0.0, "max_work_size": 0}
# and of format 1-4 for contrast_em's key that format 5 added: no pale rim joins a lesion that reaches the ring
BEFORE_FORMAT_5 = {"pale_rim": 0.0}


def older_format_settings(version: int) -> dict:
    """The ``segment.*`` values a classical segmenter exported as model.json ``version`` ran with for keys that
    later versions added (its segment_config lacks them; the current defaults would change its masks)."""
    out = {}
    if version < 3:
        out.update(BEFORE_SHIFT_STEPS)
    if version < 4:
        out.update(BEFORE_FORMAT_4)
    if version < 5:
        out.update(BEFORE_FORMAT_5)
    return out


@dataclass
class SegmenterSettings:
    """What every segmenter's settings hold: the shared steps around it (prepare: hair removal, field of
    view, skin ring; refine: the colour EM; clean up: component, holes; outputs). Each segmenter extends
    it beside its code and registers the subclass with itself, so ``segment.*`` is checked against the
    chosen segmenter."""

    method: str = DEFAULT_METHOD  # a registered segmenter; "default" means DEFAULT_METHOD
    batch_size: int = 64  # images per predict call
    max_images: int = 0  # >0: a seeded random subset of this many images (quick evaluations)
    max_work_size: int = 0  # >0: larger images are segmented shrunk to this size (px), masks brought back; 0 = off
    # prepare (ssl_derm/segment/prep.py): lesion prior inputs
    hair_kernel: int = 5  # grey closing that removes thin dark hairs (px at 128; 0 = off)
    hair_lines: float = 0.0  # oriented line closings this long (px at 128) find and inpaint thicker hairs; 0 = off
    hair_threshold: float = 0.08  # their top-hat spread (grey, 0-1) above which a pixel is hair
    hair_fill: str = "average"  # what replaces them: average (of the non-hair pixels around) | closing (format 1-3)
    colour_constancy: float = 0.0  # shades-of-grey white balance with this Minkowski p before Lab; 0 = off
    flatten_light: bool = False  # divide out a smooth illumination fall-off fitted to the skin ring
    vignette: bool = True  # leave out the dark dermoscope border (a fitted circle)
    ring: List[float] = field(default_factory=lambda: [2.0, 10.0])  # skin ring: px inside the field of view
    smooth_sigma: float = 1.0  # Gaussian pre-smoothing of the Lab image (px at 128)
    # refine: finish the method's masks with the colour EM of ssl_derm/segment/em.py (contrast_em always uses it)
    refine_em: bool = False
    em_iters: int = 3  # EM iterations of that refinement
    # clean up (ssl_derm/segment/cleanup.py)
    component: str = "central"  # central | largest | all: which connected component is the lesion
    fill_holes: bool = True  # fill holes inside the lesion component
    convex_hull: bool = False  # the component's convex hull: fills bays as well as holes (contrast_em: on)
    mask_opening: float = 0.0  # first, an opening with a disc this wide in radius (px at 128): spurs go; 0 = off
    upsample: str = "bilinear"  # to the original size: bilinear score of the mask > 0.5, or nearest
    # outputs
    write_masks: bool = True
    overlay_n: int = 32  # images in the overlay grid (PNG and TensorBoard)

    def check(self) -> None:
        """Choice and range checks of the shared keys; a segmenter adds its own."""
        if self.component not in COMPONENT_CHOICES:
            raise ConfigError(f"config key 'segment.component': {self.component!r} is not one of {', '.join(COMPONENT_CHOICES)}")
        if self.convex_hull and self.component == "all":
            raise ConfigError("config key 'segment.convex_hull': needs one lesion component, but "
                              "'segment.component' is 'all' (the hull would join them); set component to "
                              "central or largest, or convex_hull to false")
        if self.upsample not in UPSAMPLE_CHOICES:
            raise ConfigError(f"config key 'segment.upsample': {self.upsample!r} is not one of {', '.join(UPSAMPLE_CHOICES)}")
        if len(self.ring) != 2 or not 0 <= self.ring[0] < self.ring[1]:
            raise ConfigError(f"config key 'segment.ring': give [inner, outer] px with 0 <= inner < outer, got {self.ring}")
        if self.hair_lines < 0 or not 0 < self.hair_threshold < 1 or self.colour_constancy < 0:
            raise ConfigError("config keys 'segment.hair_lines' (>= 0, 0 = off), 'segment.hair_threshold' (in (0, 1)) "
                              f"and 'segment.colour_constancy' (>= 0, 0 = off): got {self.hair_lines}, "
                              f"{self.hair_threshold} and {self.colour_constancy}")
        if self.hair_fill not in HAIR_FILL_CHOICES:
            raise ConfigError(f"config key 'segment.hair_fill': {self.hair_fill!r} is not one of {', '.join(HAIR_FILL_CHOICES)}")
        if self.max_work_size != 0 and self.max_work_size < 16:
            raise ConfigError(f"config key 'segment.max_work_size': must be 0 (off) or >= 16 px, got {self.max_work_size}")
        if self.mask_opening < 0:
            raise ConfigError(f"config key 'segment.mask_opening': must be >= 0 px (0 = off), got {self.mask_opening}")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'segment.batch_size': must be >= 1, got {self.batch_size}")

    def at_least(self, minimum: int, *keys: str) -> None:
        """ConfigError unless every ``segment.<key>`` is >= ``minimum``."""
        require_at_least("segment", self, minimum, *keys)


@dataclass
class SelfTrainSection:
    rounds: int = 0  # 0: no self-training; each round trains on the previous round's masks
    image_size: int = 96  # training/prediction size of the segmentation network
    ignore_band: float = 0.2  # pixels whose pseudo score is within this of 0.5 are left out of the loss
    boundary_px: int = 2  # and a band this wide (px at 128) around the pseudo-mask outline
    decoder_widths: List[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])  # U-Net decoder widths, deepest first
    max_images: int = 0  # >0: train on a random subset of this many images (all images are predicted)
    # each round teaches with the most reliable pseudo-masks only (ssl_derm/segment/selftrain.py, reliable_rows):
    select_frac: float = 1.0  # this fraction of the images, ranked by the mean margin |2 score - 1| of their scores
    select_strata: int = 5  # ranked within this many mask-area quantile bins, so the lesion-size mix is kept
    encoder_lr_mult: float = 1.0  # the encoder's LR relative to the decoder's (e.g. 0.1 keeps pretrained features; 0 freezes them)


@dataclass
class SegmentConfig:
    """``ssl-derm segment``: images (+ masks, read only to score) -> masks and metrics.json."""

    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    seed: int = 0  # seeds subsets, clustering and training
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=128))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    segment: SegmenterSettings = plugin("segmenter", DEFAULT_METHOD, aliases={"default": DEFAULT_METHOD})
    selftrain: SelfTrainSection = field(default_factory=SelfTrainSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1000, batch_size=32, lr=2e-3,
                                                                   warmup_steps=50, ckpt_every=0, weight_decay=1e-4))
    augment: AugmentConfig = plugin("preset", "", optional=True, base=AugmentConfig)  # "": the method's own preset


def check_segment_config(cfg: SegmentConfig) -> SegmentConfig:
    """Choice and range checks the generic loader cannot know; returns ``cfg``."""
    cfg.segment.check()
    if not 0 <= cfg.selftrain.ignore_band < 0.5:
        raise ConfigError(f"config key 'selftrain.ignore_band': must be in [0, 0.5), got {cfg.selftrain.ignore_band}")
    if not 0 < cfg.selftrain.select_frac <= 1:
        raise ConfigError(f"config key 'selftrain.select_frac': must be in (0, 1] (1 = every image teaches), "
                          f"got {cfg.selftrain.select_frac}")
    if cfg.selftrain.select_strata < 1:
        raise ConfigError(f"config key 'selftrain.select_strata': must be >= 1 (1 = one ranking over all images), "
                          f"got {cfg.selftrain.select_strata}")
    if not 0 <= cfg.selftrain.encoder_lr_mult <= 1:
        raise ConfigError(f"config key 'selftrain.encoder_lr_mult': must be in [0, 1] (1 = the decoder's LR, "
                          f"0 = a frozen encoder), got {cfg.selftrain.encoder_lr_mult}")
    if cfg.selftrain.rounds < 0 or cfg.selftrain.image_size < 16:
        raise ConfigError("config keys 'selftrain.rounds' must be >= 0 and 'selftrain.image_size' >= 16")
    return cfg
