"""Few-mask segmentation: a U-Net-style decoder on the encoder's multi-scale features, trained with
``split.fraction`` of the training side's masks and scored per image on the test side.

The skips come from timm's ``forward_intermediates`` of the same (pretrained or random) model: the
five stages of a CNN, or the last four blocks of a ViT (all on the patch grid). The val side picks
the best state (mean Dice); the test side is scored once with :mod:`ssl_derm.metrics.segmentation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

import numpy as np
import torch

from ssl_derm.engine import BestState, Engine, Stateful
from ssl_derm.engine.precision import Precision, resolve_precision
from ssl_derm.errors import ConfigError
from ssl_derm.evaluate.config import ProtocolSettings
from ssl_derm.models.features import rows_to_batch, to_device
from ssl_derm.models.unet import SegModel, dice_bce_loss
from ssl_derm.models.trained import SegNet
from ssl_derm.registry import register


def flip_rotate(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator):
    """The same random flip and 90-degree rotation of images (B,3,S,S) and masks (B,1,S,S):
    lesions have no up, and these keep image and mask pixel-aligned exactly."""
    k = int(torch.randint(4, (1,), generator=gen))
    x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    if bool(torch.randint(2, (1,), generator=gen)):
        x, m = x.flip(3), m.flip(3)
    return x, m


@torch.no_grad()
def predict_masks(model, images, rows, aug_cfg, device, batch_size: int, threshold: float,
                  precision: str = "auto") -> np.ndarray:
    """(len(rows), S, S) uint8 {0,1} predicted masks; ``precision`` as ``train.precision``."""
    from ssl_derm.augment import normalize

    was = model.training
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        x = normalize(rows_to_batch(images, rows[i:i + batch_size], device), aug_cfg)
        with _eval_precision(precision, device).autocast():
            prob = model(x).float().sigmoid()
        out.append((prob[:, 0] >= threshold).to(torch.uint8).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.uint8)


def _eval_precision(kind: str, device) -> Precision:
    if kind == "auto":
        kind = "bf16" if device.type == "cuda" else "fp32"
    return Precision(kind, device)


def score_masks(pred: np.ndarray, gt: np.ndarray, ids) -> dict:
    """Per-image and mean scores from :mod:`ssl_derm.metrics.segmentation`."""
    from ssl_derm.metrics import segmentation as seg_metrics

    return seg_metrics.score_dataset(pred, gt, ids)


@dataclass
class FewMaskSegSettings(ProtocolSettings):
    name: str = "fewmask_seg"
    segments: ClassVar[bool] = True
    eval_every: int = 100  # steps between validation passes (model selection only)
    seg_decoder_channels: List[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])  # U-Net decoder widths, deepest first
    seg_freeze_encoder: bool = False  # true: train only the decoder on the frozen encoder
    seg_threshold: float = 0.5  # probability threshold of the predicted mask

    def check(self) -> None:
        super().check()
        if not self.seg_decoder_channels or any(c < 1 for c in self.seg_decoder_channels):
            raise ConfigError(f"config key 'protocol.seg_decoder_channels': give positive widths, got {self.seg_decoder_channels}")



@register("protocol", "fewmask_seg", settings=FewMaskSegSettings)
def run_fewmask_seg(ctx) -> dict:
    cfg, p, t, dev = ctx.cfg, ctx.cfg.protocol, ctx.cfg.train, ctx.device
    masks = ctx.dataset.masks
    if masks is None:
        raise ConfigError("protocol fewmask_seg needs masks: set data.masks to the folder of <id>.png lesion masks")
    from ssl_derm.augment import normalize

    lab = ctx.rows["labelled"]
    model = SegModel(ctx.encoder, p.seg_decoder_channels, ctx.image_size).to(dev).train()
    if p.seg_freeze_encoder:
        model.backbone.requires_grad_(False)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = np.asarray(ctx.dataset.ids)
    kind = resolve_precision(t, dev)

    def step_fn(module, step: int, micro: int):
        rows = rng.choice(lab, size=t.batch_size, replace=len(lab) < t.batch_size)
        x = rows_to_batch(ctx.dataset.images, rows, dev)
        m = to_device(torch.from_numpy(np.ascontiguousarray(masks[rows]))[:, None], dev)
        x, m = flip_rotate(x, m, gen)
        if p.seg_freeze_encoder:
            model.backbone.eval()  # frozen BatchNorm statistics too
        return dice_bce_loss(module(normalize(x, cfg.augment)), m), {"batch_size": len(rows)}

    def val_dice() -> float:
        val = ctx.rows["val"]
        pred = predict_masks(model, ctx.dataset.images, val, cfg.augment, dev, p.feature_batch_size,
                             p.seg_threshold, kind)
        return score_masks(pred, np.asarray(masks[val]), ids[val])["mean"]["dice"]

    best = (BestState(val_dice, lambda: model, p.eval_every, "val_dice", log=ctx.log, log_tag="val/dice")
            if len(ctx.rows["val"]) else None)
    engine = Engine(model, t, dev, hooks=[best] if best else [], config=cfg,
                    rank_state={"rows": Stateful(rng), "flips": Stateful(gen)},
                    ckpt_dir=ctx.out_dir / "checkpoints" if t.ckpt_every else None, logger=ctx.logger,
                    name="fewmask_seg", sync_batchnorm=True)
    summary = engine.fit(step_fn)
    if best is not None:
        best.restore()
    test = ctx.rows["test"]
    pred = predict_masks(model, ctx.dataset.images, test, cfg.augment, dev, p.feature_batch_size, p.seg_threshold, kind)
    scores = score_masks(pred, np.asarray(masks[test]), ids[test])
    # scored on the cache's masks (data.image_size square), not at each image's original size
    info = {"n_masks_used": int(len(lab)), "best_step": best.step if best else 0,
            "val_history": best.history if best else [],
            "best_val_dice": None if best is None or best.state is None else best.best, "scored_at_px": ctx.image_size,
            "resumed_from_step": summary["resumed_from"]}
    ctx.trained = SegNet(model, list(p.seg_decoder_channels), float(p.seg_threshold))  # the selected state
    out = {"seg": scores, "info": info, "pred_masks": pred}
    if "external" in ctx.rows:  # data.test_images + data.test_masks: scored like the test side
        ext = ctx.rows["external"]
        pred_ext = predict_masks(model, ctx.dataset.images, ext, cfg.augment, dev, p.feature_batch_size,
                                 p.seg_threshold, kind)
        out["external_seg"] = score_masks(pred_ext, np.asarray(masks[ext]), ids[ext])
    return out
