"""Few-mask segmentation: a U-Net-style decoder on the encoder's multi-scale features, trained with
``split.fraction`` of the training side's masks and scored per image on the test side.

The skips come from timm's ``forward_intermediates`` of the same (pretrained or random) model: the
five stages of a CNN, or the last four blocks of a ViT (all on the patch grid). The val side picks
the best state (mean Dice); the test side is scored once with :mod:`ssl_derm.evaluate.seg_metrics`.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_derm.engine.optim import build_optimizer, build_scheduler
from ssl_derm.evaluate.features import rows_to_batch
from ssl_derm.registry import register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """Skip maps [(B, c_i, h_i, w_i)] shallow -> deep to (B, 1, H, W) mask logits.

    From the deepest map up: upsample to the next skip's size, concatenate, two 3x3 conv-BN-ReLU;
    a last block at the input resolution and a 1x1 head.
    """

    def __init__(self, skip_channels: List[int], widths: List[int]):
        super().__init__()
        n = len(skip_channels)
        widths = (list(widths) + [widths[-1]] * n)[:n]  # one width per merge plus the last block
        self.blocks = nn.ModuleList()
        cin = skip_channels[-1]
        for i, skip in enumerate(reversed(skip_channels[:-1])):
            self.blocks.append(_block(cin + skip, widths[i]))
            cin = widths[i]
        self.final = _block(cin, widths[-1])
        self.head = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, skips: List[torch.Tensor], out_size) -> torch.Tensor:
        x = skips[-1]
        for block, skip in zip(self.blocks, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip.to(x.dtype)], 1))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.head(self.final(x))


class SegModel(nn.Module):
    """Encoder (a timm model) + U-Net decoder: (B, 3, H, W) normalised -> (B, 1, H, W) logits."""

    def __init__(self, encoder, widths: List[int], image_size: int):
        super().__init__()
        self.backbone = encoder.model
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(f"encoder.name '{encoder.name}' has no forward_intermediates in timm; few-mask "
                             "segmentation needs one (resnet*, convnext*, vit_* and most timm models have it)")
        self.indices = 4 if encoder.is_vit else None  # ViT: last four blocks; CNN: every stage
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            shapes = [f.shape[1] for f in self._skips(torch.zeros(1, 3, image_size, image_size))]
            self.backbone.train(was)
        self.decoder = UNetDecoder(shapes, widths)

    def _skips(self, x):
        return self.backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._skips(x), x.shape[-2:])


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (per image, then mean); logits and target (B, 1, H, W), target in {0, 1}."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - dice).mean()


def flip_rotate(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator):
    """The same random flip and 90-degree rotation of images (B,3,S,S) and masks (B,1,S,S):
    lesions have no up, and these keep image and mask pixel-aligned exactly."""
    k = int(torch.randint(4, (1,), generator=gen))
    x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    if bool(torch.randint(2, (1,), generator=gen)):
        x, m = x.flip(3), m.flip(3)
    return x, m


@torch.no_grad()
def predict_masks(model, images, rows, aug_cfg, device, batch_size: int, threshold: float) -> np.ndarray:
    """(len(rows), S, S) uint8 {0,1} predicted masks."""
    from ssl_derm.augment import normalize

    was = model.training
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        x = normalize(rows_to_batch(images, rows[i:i + batch_size], device), aug_cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prob = model(x).float().sigmoid()
        out.append((prob[:, 0] >= threshold).to(torch.uint8).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.uint8)


def score_masks(pred: np.ndarray, gt: np.ndarray, ids) -> dict:
    """Per-image and mean scores from :mod:`ssl_derm.evaluate.seg_metrics`."""
    from ssl_derm.evaluate import seg_metrics

    return seg_metrics.score_dataset(pred, gt, ids)


@register("protocol", "fewmask_seg")
def run_fewmask_seg(ctx) -> dict:
    cfg, p, t, dev = ctx.cfg, ctx.cfg.protocol, ctx.cfg.train, ctx.device
    masks = ctx.dataset.masks
    if masks is None:
        raise ValueError("protocol fewmask_seg needs masks: set data.masks to the folder of <id>.png lesion masks")
    from ssl_derm.augment import normalize

    lab = ctx.rows["labelled"]
    model = SegModel(ctx.encoder, p.seg_decoder_channels, ctx.image_size).to(dev).train()
    if p.seg_freeze_encoder:
        model.backbone.requires_grad_(False)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = np.asarray(ctx.dataset.ids)
    best, best_state, best_step, history = -math.inf, None, 0, []
    for step in range(t.max_steps):
        rows = rng.choice(lab, size=t.batch_size, replace=len(lab) < t.batch_size)
        x = rows_to_batch(ctx.dataset.images, rows, dev)
        m = torch.from_numpy(np.ascontiguousarray(masks[rows]))[:, None].to(dev)
        x, m = flip_rotate(x, m, gen)
        if p.seg_freeze_encoder:
            model.backbone.eval()  # frozen BatchNorm statistics too
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=t.amp and dev.type == "cuda"):
            loss = dice_bce_loss(model(normalize(x, cfg.augment)), m)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the segmentation loss is {loss.item()} at step {step}; lower train.lr (now {t.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        optimizer.step()
        scheduler.step_update(step + 1)
        if step % max(t.log_every, 1) == 0:
            ctx.log("train/loss", float(loss.detach()), step)
        if len(ctx.rows["val"]) and ((step + 1) % p.eval_every == 0 or step + 1 == t.max_steps):
            val = ctx.rows["val"]
            pred = predict_masks(model, ctx.dataset.images, val, cfg.augment, dev, p.feature_batch_size, p.seg_threshold)
            score = score_masks(pred, np.asarray(masks[val]), ids[val])["mean"]["dice"]
            ctx.log("val/dice", score, step + 1)
            history.append({"step": step + 1, "val_dice": score})
            if score > best:
                best, best_step = score, step + 1
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    test = ctx.rows["test"]
    pred = predict_masks(model, ctx.dataset.images, test, cfg.augment, dev, p.feature_batch_size, p.seg_threshold)
    scores = score_masks(pred, np.asarray(masks[test]), ids[test])
    # scored on the cache's masks (data.image_size square), not at each image's original size
    info = {"n_masks_used": int(len(lab)), "best_step": best_step, "val_history": history,
            "best_val_dice": None if best_state is None else best, "scored_at_px": ctx.image_size}
    out = {"seg": scores, "info": info, "pred_masks": pred}
    if "external" in ctx.rows:  # data.test_images + data.test_masks: scored like the test side
        ext = ctx.rows["external"]
        pred_ext = predict_masks(model, ctx.dataset.images, ext, cfg.augment, dev, p.feature_batch_size, p.seg_threshold)
        out["external_seg"] = score_masks(pred_ext, np.asarray(masks[ext]), ids[ext])
    return out
