"""Run an exported classifier or segmenter on clean and shifted copies of the same images, and score each.

Images (and masks) are decoded once at a working size ``image_size`` (square, as the run's cache does) and
stay in memory as uint8; each batch goes to the device as float, every shift of ``shifts.py`` is applied
there at each severity, the result is resized to the model's own ``image_size`` (antialiased bilinear, as
the cache's PIL resize) and rounded to uint8, and the model predicts it. A segmenter's masks are scored at
the working size against the true masks after the same shift (zoom moves them), per image: Jaccard and
Dice. A classifier's probabilities are scored with balanced accuracy and macro AUROC.

Drops are clean minus shifted (> 0: the shift hurts); intervals are 95% bootstrap intervals over images,
and a drop's interval comes from the same resamples of the clean and shifted scores (a paired bootstrap).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.config import ScoringData
from ssl_derm.errors import ConfigError
from ssl_derm.robustness.shifts import SEVERITIES, get_shift, shift_names

SEG_METRICS = ("jaccard", "dice")
CLS_METRICS = ("balanced_accuracy", "macro_auroc")
CLEAN = ("clean", 0)


@dataclass
class RobustnessConfig:
    """Overrides of ``ssl-derm robustness`` (``key=value``)."""

    device: str = "auto"  # auto (cuda when there is one), cpu or cuda: where the shifts and the model run
    seed: int = 0  # seeds every random shift (hair, ink, colour direction); image i gets seed + i
    image_size: int = 256  # working size the shifts run at (square); the model then sees its own size
    batch_size: int = 32  # images shifted and predicted at once
    max_images: int = 0  # >0: a seeded random subset of this many images
    shifts: List[str] = field(default_factory=list)  # empty: every registered shift
    num_threads: int = 0  # >0: torch CPU threads for this run
    workers: int = 2  # decoding threads
    data: ScoringData = field(default_factory=ScoringData)

    def check(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"config key 'image_size': must be >= 16 px, got {self.image_size}")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'batch_size': must be >= 1, got {self.batch_size}")
        known = shift_names()
        bad = [s for s in self.shifts if s not in known]
        if bad:
            raise ConfigError(f"config key 'shifts': unknown shift(s) {', '.join(bad)}; available: {', '.join(known)}")


def conditions(names: List[str]) -> List[Tuple[str, int]]:
    """[("clean", 0), (shift, 1), (shift, 2), (shift, 3), ...] for the chosen shift names."""
    return [CLEAN] + [(n, s) for n in names for s in SEVERITIES]


def to_model_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """float (B,3,H,W) in [0,1] -> uint8 (B,3,size,size), resized as the cache does (antialiased bilinear)."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def overlap_scores(pred: torch.Tensor, true: torch.Tensor) -> Dict[str, np.ndarray]:
    """bool (B,H,W) each -> {"jaccard": (B,), "dice": (B,)}; both empty counts 1 (as seg_metrics)."""
    p, t = pred.flatten(1).float(), true.flatten(1).float()
    tp = (p * t).sum(1)
    union = p.sum(1) + t.sum(1) - tp
    tot = p.sum(1) + t.sum(1)
    one = torch.ones_like(tp)
    j = torch.where(union > 0, tp / union.clamp_min(1), one)
    d = torch.where(tot > 0, 2 * tp / tot.clamp_min(1), one)
    return {"jaccard": j.cpu().numpy().astype(np.float64), "dice": d.cpu().numpy().astype(np.float64)}


def _segment(model, x_uint8: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """uint8 (B,3,s,s) -> bool (B,H,W): the segmenter's masks back at the working size (bilinear > 0.5)."""
    small = model.predict_small(x_uint8.permute(0, 2, 3, 1).cpu().numpy())
    m = torch.from_numpy(small.astype(np.float32))[:, None]
    if m.shape[-2:] != hw:
        m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
    return m[:, 0] > 0.5


def run_conditions(model, images: np.ndarray, masks: Optional[np.ndarray], names: List[str], seed: int,
                   batch_size: int, device: torch.device, progress=None) -> Dict[Tuple[str, int], object]:
    """Predict every image under every condition.

    images: uint8 (N,H,W,3) at the working size; masks: bool (N,H,W) for a segmenter, None for a classifier.
    Returns {(shift, severity): per-image scores {metric: (N,)} (segmenter) or probabilities (N,K) (classifier)}.
    """
    conds = conditions(names)
    is_seg = model.meta["kind"] == "segmenter"
    parts: Dict[Tuple[str, int], list] = {c: [] for c in conds}
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        seeds = list(range(seed + start, seed + start + len(x)))
        m = None
        if is_seg:
            m = torch.from_numpy(np.ascontiguousarray(masks[start:start + batch_size])).to(device)[:, None].float()
        for name, sev in conds:
            xs, ms = (x, m) if name == "clean" else get_shift(name).apply(x, m, sev, seeds)
            inp = to_model_size(xs, model.image_size)
            if is_seg:
                pred = _segment(model, inp, tuple(xs.shape[-2:]))
                parts[(name, sev)].append(overlap_scores(pred, ms[:, 0].cpu() > 0.5))
            else:
                parts[(name, sev)].append(model.predict_batch(inp).numpy().astype(np.float64))
            if progress is not None:
                progress.update(len(x))
    if is_seg:
        return {c: {k: np.concatenate([p[k] for p in v]) for k in SEG_METRICS} for c, v in parts.items()}
    return {c: np.concatenate(v) for c, v in parts.items()}


def check_robustness_config(cfg: RobustnessConfig) -> RobustnessConfig:
    """The range and name checks of ``ssl-derm robustness``'s keys; returns ``cfg``."""
    cfg.check()
    return cfg
