"""``vit_attention``: threshold a ViT's last-layer CLS attention (DINO's ``visualize_attention``).

The CLS token's attention over the patches, averaged over heads, is upsampled to the image; the
mask keeps the most-attended pixels that together hold ``segment.attention_mass`` of the attention
(DINO keeps 60%). A self-supervised ViT attends to the salient object, which in dermoscopy is the
lesion; a random ViT gives a near-uniform map, so this baseline needs ``encoder.checkpoint``.
Models without a CLS token use the mean attention each patch receives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.errors import ConfigError, EncoderError
from ssl_derm.registry import register
from ssl_derm.segmenters.base import Segmenter
from ssl_derm.segmenters.config import SegmenterSettings
from ssl_derm.segmenters.colour import uint8_batch
from ssl_derm.segmenters.prep import Prepared


@torch.no_grad()
def cls_attention(encoder, images: np.ndarray, aug_cfg) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, h, w): last block's attention from CLS to each patch, head mean."""
    from ssl_derm.augment import normalize

    model = encoder.model
    attn_mod = model.blocks[-1].attn
    dev = next(model.parameters()).device
    seen = []
    handle = attn_mod.attn_drop.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    fused, was = getattr(attn_mod, "fused_attn", False), model.training
    attn_mod.fused_attn = False  # the fused kernel never materialises the attention matrix
    model.eval()
    try:
        x = normalize(uint8_batch(images).to(dev), aug_cfg)
        model.forward_features(x)
    finally:
        handle.remove()
        attn_mod.fused_attn = fused
        model.train(was)
    if not seen:
        raise EncoderError(f"encoder '{encoder.name}': could not read attention from blocks[-1].attn")
    a = seen[-1].float().mean(1)  # (N, T, T)
    npt = getattr(model, "num_prefix_tokens", 1)
    patches = a[:, 0, npt:] if npt > 0 else a.mean(1)
    h, w = (int(g) for g in model.patch_embed.grid_size)
    return patches.reshape(len(images), h, w).cpu()


def mass_threshold(score: np.ndarray, mass: float) -> np.ndarray:
    """bool mask of the highest values of ``score`` (non-negative) holding ``mass`` of its sum."""
    flat = score.ravel()
    order = np.argsort(flat)[::-1]
    cum = np.cumsum(flat[order]) / max(flat.sum(), 1e-12)
    keep = np.zeros(flat.shape, bool)
    keep[order[: int(np.searchsorted(cum, mass)) + 1]] = True
    return keep.reshape(score.shape)


@dataclass
class ViTAttentionSettings(SegmenterSettings):
    method: str = "vit_attention"
    attention_mass: float = 0.6  # keep the patches holding this share of the CLS attention (DINO)

    def check(self) -> None:
        super().check()
        if not 0 < self.attention_mass < 1:
            raise ConfigError(f"config key 'segment.attention_mass': must be in (0, 1), got {self.attention_mass}")


@register("segmenter", "vit_attention", settings=ViTAttentionSettings)
class ViTAttention(Segmenter):
    needs_encoder = True
    needs_vit = True

    def segment(self, images: np.ndarray, prep: Prepared):
        size = images.shape[1]
        att = cls_attention(self.encoder, images, self.cfg.augment)
        up = F.interpolate(att[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
        up = np.clip(up, 0, None) * prep.valid
        masks = np.stack([mass_threshold(a, self.s.attention_mass) for a in up])
        scores = up / np.maximum(up.reshape(len(up), -1).max(1), 1e-12)[:, None, None]
        return scores.astype(np.float32), masks
