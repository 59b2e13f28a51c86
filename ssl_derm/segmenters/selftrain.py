"""Self-training: a U-Net-style network on a (pretrained) encoder learns the pseudo-masks of the whole
unlabeled archive, then predicts new masks; ``selftrain.rounds`` rounds, each on the last round's masks.

Why it can beat its teacher: the per-image methods see one image at a time, the network sees all of
them and averages their mistakes away. Two things keep it from copying the mistakes:

- low-confidence pixels are left out of the loss: where the pseudo score is within
  ``ignore_band`` of 0.5, where the cleaned mask disagrees with the score (a removed blob, a filled
  hole) and a ``boundary_px`` band around the pseudo outline, where the methods are least sure;
- with ``select_frac`` < 1, only the images whose pseudo-masks look most reliable teach: ranked by the
  mean margin of their scores, within mask-area strata (:func:`reliable_rows`);
- kornia augmentation, applied jointly to image, mask and loss weights (flips, rotation, scale; colour
  jitter on the image only), so it must recognise lesions, not memorise pixels.

The network is :class:`ssl_derm.models.unet.SegModel` (timm encoder + U-Net decoder).
"""
from __future__ import annotations

from typing import Tuple

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ssl_derm.augment import normalize
from ssl_derm.encoders import create_encoder
from ssl_derm.engine import Engine, Stateful
from ssl_derm.models.features import to_device
from ssl_derm.models.unet import SegModel
from ssl_derm.segmenters.cleanup import clean_masks
from ssl_derm.segmenters.colour import scaled_px


def loss_weights(scores: np.ndarray, masks: np.ndarray, band: float, boundary_px: float) -> np.ndarray:
    """Which pixels teach: float32 (N, S, S) in {0, 1} from scores float (N,S,S) in [0,1], masks bool (N,S,S)."""
    confident = np.where(masks, scores >= 0.5 + band, scores <= 0.5 - band)
    r = int(round(scaled_px(boundary_px, masks.shape[-1])))
    if r > 0:
        st = ndi.generate_binary_structure(2, 1)
        for i, m in enumerate(masks):
            edge = ndi.binary_dilation(m, st, iterations=r) & ~ndi.binary_erosion(m, st, iterations=r)
            confident[i] &= ~edge
    return confident.astype(np.float32)


def reliable_rows(scores: np.ndarray, masks: np.ndarray, frac: float, strata: int) -> np.ndarray:
    """Positions (sorted int64) of the ``frac`` most reliable pseudo-masks, from scores float (N, S, S) in
    [0, 1] and masks bool (N, S, S).

    Reliability is the mean margin ``|2 score - 1|`` over the image: a mask whose pixels were all decided
    far from 0.5 is more often right (on 2,000 HAM10000 images the default segmenter's margin ranks its
    per-image Jaccard with Spearman 0.58; benchmarks/RESULTS.md). Confident images are mostly small,
    clear lesions, so the ranking runs within ``strata`` bins of equal count by mask area and takes
    ``frac`` of each bin: the teaching set keeps the archive's lesion-size mix.
    """
    n = len(scores)
    if frac >= 1 or n == 0:
        return np.arange(n)
    margin = np.abs(2 * scores.astype(np.float64) - 1).mean(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    order = np.argsort(area, kind="stable")
    keep = []
    for part in np.array_split(order, min(max(strata, 1), n)):
        k = max(1, int(round(frac * len(part))))
        keep.append(part[np.argsort(-margin[part], kind="stable")[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def joint_augmentation(aug_cfg) -> K.AugmentationSequential:
    """Geometry on image, mask and weights together; colour on the image only (kornia skips masks)."""
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=aug_cfg.hflip), K.RandomVerticalFlip(p=aug_cfg.vflip),
        K.RandomAffine(degrees=aug_cfg.rotation, scale=(0.8, 1.2), p=1.0),
        K.ColorJitter(aug_cfg.brightness, aug_cfg.contrast, aug_cfg.saturation, aug_cfg.hue, p=aug_cfg.jitter_p),
        data_keys=["input", "mask", "mask"])


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def weighted_bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE over the weighted pixels + soft Dice on them; all (B, 1, H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp_min(1)
    p = logits.sigmoid() * weight
    t = target * weight
    dice = (2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
    return bce + (1 - dice).mean()


def train_round(cfg, images: np.ndarray, rows: np.ndarray, scores: np.ndarray, masks: np.ndarray, device,
                logger=None, round_idx: int = 1, out_dir=None) -> SegModel:
    """Fit a fresh SegModel on images[rows] (uint8 (N,S,S,3)) with pseudo scores/masks (n,S,S) on the
    engine; with ``out_dir`` and ``train.ckpt_every`` its checkpoints go to
    ``<out_dir>/checkpoints/round<k>/``, so a killed round resumes (earlier rounds reload theirs)."""
    st, t = cfg.selftrain, cfg.train
    weights = loss_weights(scores, masks, st.ignore_band, st.boundary_px)
    gen = np.random.default_rng(cfg.seed + round_idx)
    train_pos = reliable_rows(scores, masks, st.select_frac, st.select_strata)
    if st.max_images and st.max_images < len(train_pos):
        train_pos = np.sort(gen.choice(train_pos, st.max_images, replace=False))
    enc = create_encoder(cfg.encoder.name, st.image_size, cfg.encoder.checkpoint, init=cfg.encoder.init)
    model = SegModel(enc, st.decoder_widths, st.image_size).to(device).train()
    aug = joint_augmentation(cfg.augment).to(device)

    def step_fn(module, step: int, micro: int):
        pos = np.sort(gen.choice(train_pos, min(t.batch_size, len(train_pos)), replace=False))
        x = to_device(torch.from_numpy(np.asarray(images[rows[pos]])), device).permute(0, 3, 1, 2).float().div_(255)
        y = to_device(torch.from_numpy(masks[pos])[:, None], device).float()
        w = to_device(torch.from_numpy(weights[pos])[:, None], device)
        x, y, w = _resize(x, st.image_size, "bilinear"), _resize(y, st.image_size, "nearest"), _resize(w, st.image_size, "nearest")
        with torch.autocast(device.type, enabled=False):  # kornia's sampling grid stays float32
            x, y, w = aug(x, y, w)
        logits = module(normalize(x.clamp(0, 1), cfg.augment))
        return weighted_bce_dice(logits.float(), y, w), {"batch_size": len(pos)}

    ckpt = out_dir / "checkpoints" / f"round{round_idx}" if out_dir is not None and t.ckpt_every else None
    engine = Engine(model, t, device, rank_state={"sampler": Stateful(gen)}, config=cfg, ckpt_dir=ckpt,
                    logger=logger, log_prefix=f"selftrain/round{round_idx}/", name=f"self-training round {round_idx}",
                    sync_batchnorm=True, lr_scales={"backbone": st.encoder_lr_mult} if st.encoder_lr_mult != 1 else None)
    engine.fit(step_fn)
    model.resumed_from_step = engine.start
    model.n_teaching = len(train_pos)
    return model.eval()


@torch.no_grad()
def predict_round(model: SegModel, cfg, images: np.ndarray, rows: np.ndarray, device) -> Tuple[np.ndarray, np.ndarray]:
    """-> (scores float32 (n, S, S), cleaned masks bool (n, S, S)) at the cache size S."""
    size, st = images.shape[1], cfg.selftrain
    scores = np.zeros((len(rows), size, size), np.float32)
    bs = max(cfg.segment.batch_size, 1)
    for i in range(0, len(rows), bs):
        x = torch.from_numpy(np.asarray(images[rows[i:i + bs]])).permute(0, 3, 1, 2).to(device).float().div_(255)
        p = model(normalize(_resize(x, st.image_size, "bilinear"), cfg.augment)).float().sigmoid()
        scores[i:i + bs] = F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
    masks = clean_masks(scores > 0.5, cfg.segment.component, cfg.segment.fill_holes, cfg.segment.convex_hull)
    return scores, masks
