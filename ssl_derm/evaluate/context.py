"""What a protocol gets: the config, the encoder, the device, the cache arrays and the split as cache rows.

Sides (``rows[side]``, int64 arrays of cache rows, from :meth:`ssl_derm.data.splits.Split.rows`):
- ``labelled``: the ``split.fraction`` subset of the training side (nested subsets from the split file);
- ``unlabeled``: the rest of the training side plus images without a label that no other side holds;
- ``val``: model selection and early stopping only;
- ``test``: the final score only; no protocol trains or selects on it.
- ``external`` (only with ``data.test_images``): another archive's images, scored like ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from ssl_derm.data.splits import SplitError, fraction_key, split_rows  # noqa: F401  (re-exported)
from ssl_derm.evaluate.config import FinetuneConfig
from ssl_derm.models.features import FeatureCache

SIDES = ("labelled", "unlabeled", "val", "test")


@dataclass
class Context:
    cfg: FinetuneConfig
    encoder: Any  # ssl_derm.encoders.Encoder
    device: torch.device
    dataset: Any  # .images (N,S,S,3) uint8, .labels (N,) int64 (-1 unlabelled), .classes, .masks or None
    rows: Dict[str, np.ndarray]
    out_dir: Path
    logger: Any = None  # ssl_derm.engine.logger.Logger or None
    feature_cache: Optional[FeatureCache] = None
    cache_key: Optional[str] = None  # identifies the encoder's weights for the feature cache
    extras: dict = field(default_factory=dict)
    # dataset -> (N, S, S) uint8 annotation-free lesion masks of every cache row; the command supplies the
    # default segmenter's (protocols do not build segmenters themselves)
    mask_source: Optional[Callable[[Any], np.ndarray]] = None
    # what the protocol trained (one of ssl_derm.models.trained's types), exported by ssl_derm.serve.export
    trained: Any = None
    # (dataset, its lesion masks or None) -> (N,) float32 ITA (degrees, NaN unknown) of the skin around
    # each row's lesion, for the per-skin-tone scores; the command supplies
    # :func:`ssl_derm.segmenters.skin_tone.skin_tone_source`
    ita_source: Optional[Callable[[Any, Any], np.ndarray]] = None

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def image_size(self) -> int:
        return int(self.dataset.images.shape[1])

    @property
    def scored(self) -> tuple:
        """Sides a protocol predicts: val (selection), test and, with data.test_images, external."""
        return ("val", "test") + (("external",) if "external" in self.rows else ())

    def labels(self, side: str) -> np.ndarray:
        return np.asarray(self.dataset.labels)[self.rows[side]].astype(np.int64)

    def features(self, side: str, l2: bool = True, stages: Optional[int] = None, tta: Optional[str] = None,
                 pool: Optional[str] = None) -> torch.Tensor:
        """(len(rows[side]), D) frozen features of one side (cached per encoder when a cache is given),
        of the kind ``protocol.feature_stages``/``feature_tta``/``feature_pool`` ask for (protocols without
        those keys: the pooled output of one view) unless ``stages``/``tta``/``pool`` say otherwise."""
        p = self.cfg.protocol
        cache = self.feature_cache or FeatureCache()
        key = self.cache_key if self.feature_cache is not None else None
        pool = getattr(p, "feature_pool", "avg") if pool is None else pool
        return cache.get(key, self.encoder, self.dataset.images, self.rows[side], self.cfg.augment, self.device,
                         p.feature_batch_size, l2, getattr(p, "feature_stages", 1) if stages is None else stages,
                         getattr(p, "feature_tta", "none") if tta is None else tta, pool,
                         self.lesion_masks() if pool != "avg" else None)

    def lesion_masks(self):
        """(N, S, S) uint8 annotation-free lesion masks of every cache row, from :attr:`mask_source`
        (the command gives :func:`ssl_derm.segmenters.archive_masks.masks_for`)."""
        if "lesion_masks" not in self.extras:
            from ssl_derm.errors import ConfigError

            if "external" in self.rows:
                raise ConfigError("protocol.feature_pool (lesion, both) and data.test_images cannot be used "
                                  "together yet: the lesion masks are cached per image archive; set "
                                  "protocol.feature_pool=avg or score the other archive in its own run")
            if self.mask_source is None:
                raise ConfigError(f"protocol.feature_pool={self.cfg.protocol.feature_pool} needs lesion masks, and "
                                  "this run was given none: run it through `ssl-derm finetune` or pass mask_source")
            self.extras["lesion_masks"] = self.mask_source(self.dataset)
        return self.extras["lesion_masks"]

    def skin_tone(self) -> np.ndarray:
        """(N,) ITA of every row (NaN: unknown) from :attr:`ita_source`; all NaN without one (every
        image then counts as ``unknown`` in the skin-tone block)."""
        if "ita" not in self.extras:
            src = self.ita_source
            # the lesion masks, when feature pooling computed them already, are the ones the ITA needs
            ita = src(self.dataset, self.extras.get("lesion_masks")) if src is not None else None
            self.extras["ita"] = ita if ita is not None else np.full(len(self.dataset.images), np.nan)
        return self.extras["ita"]

    def log(self, tag: str, value, step: int) -> None:
        if self.logger is not None:
            self.logger.scalar(tag, value, step)
