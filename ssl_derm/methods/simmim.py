"""SimMIM: mask square cells of the image, encode it whole, regress the masked pixels (L1).

Works with any timm encoder. Plain ViTs replace the masked patch tokens by a learnable token after
the patch embedding (as in the paper). CNNs, Swin and hybrids get the mask in pixel space: masked
pixels become a learnable per-channel value (in normalised pixel space) before the encoder. The last
feature map -> 1x1 conv -> pixel shuffle back to full resolution. Encoder parameters after the last
feature map (mobilenetv3's conv_head) get no gradient and are frozen (see ``freeze_unused``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, MethodError, fp32, freeze_unused, plain_vit, vit_tokens
from ssl_derm.registry import register


@dataclass
class SimMIMSettings(MethodSettings):
    name: str = "simmim"
    simmim_mask_ratio: float = 0.6  # share of patches masked and reconstructed
    mask_patch_size: int = 32  # mask unit in pixels


@register("method", "simmim", settings=SimMIMSettings)
class SimMIM(Method):
    """views: [x] (B,3,H,W), H and W multiples of ``mask_patch_size``. Loss: mean L1 over masked pixels."""

    default_preset = "masked"
    sync_batchnorm_needed = False

    def __init__(self, encoder, cfg, max_steps):
        if not 0.0 < cfg.simmim_mask_ratio < 1.0:
            raise MethodError(f"config key 'method.simmim_mask_ratio': {cfg.simmim_mask_ratio} must be in (0, 1)")
        mps = cfg.mask_patch_size
        if mps <= 0 or encoder.img_size % mps:
            raise MethodError(f"config key 'method.mask_patch_size': {mps} must divide the image size "
                              f"{encoder.img_size} (data.image_size)")
        super().__init__(encoder, cfg, max_steps)
        self.frozen = freeze_unused(encoder, dense=True)
        self.token_mask = plain_vit(encoder)
        if self.token_mask:
            patch = int(encoder.model.patch_embed.patch_size[0])
            if mps % patch:
                raise MethodError(f"config key 'method.mask_patch_size': {mps} must be a multiple of the ViT patch "
                                  f"size {patch} for encoder '{encoder.name}'")
            self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.model.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            self.token_scale = mps // patch
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, 3, 1, 1))  # normalised pixels: 0 = the mean colour
        self.scale = encoder.reduction
        self.decoder = nn.Conv2d(encoder.dense_dim, 3 * self.scale ** 2, kernel_size=1)

    def random_mask(self, b: int, h: int, w: int, device) -> torch.Tensor:
        """(B, h, w) float 0/1 mask cells, exactly round(ratio * h * w) ones per image."""
        n = h * w
        n_mask = min(n - 1, max(1, round(self.cfg.simmim_mask_ratio * n))) if n > 1 else 1
        order = torch.rand(b, n, device=device).argsort(dim=1)
        cells = torch.zeros(b, n, device=device).scatter_(1, order[:, :n_mask], 1.0)
        return cells.view(b, h, w)

    def training_step(self, views, step):
        self.expect_views(views, 1)
        x = views[0]
        b, _, h, w = x.shape
        mps = self.cfg.mask_patch_size
        if h % mps or w % mps:
            raise MethodError(f"method 'simmim': view size {h}x{w} is not a multiple of method.mask_patch_size={mps}")
        cells = self.random_mask(b, h // mps, w // mps, x.device)
        pix = cells.repeat_interleave(mps, 1).repeat_interleave(mps, 2).unsqueeze(1)  # (B,1,H,W)
        if self.token_mask:
            tok = cells.repeat_interleave(self.token_scale, 1).repeat_interleave(self.token_scale, 2)
            feats = vit_tokens(self.encoder, x, mask=tok.flatten(1).bool(), mask_token=self.mask_token)
            dense = self.encoder.to_dense(feats)
        else:
            dense = self.encoder.forward_dense(x * (1 - pix) + self.mask_token * pix)
        pred = F.pixel_shuffle(self.decoder(dense), self.scale)
        if pred.shape[-2:] != (h, w):  # image size not a multiple of the encoder's stride
            pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)
        with fp32(x.device):
            err = (pred.float() - x.float()).abs() * pix
            loss = err.sum() / (pix.sum() * 3).clamp(min=1.0)
        return loss, {}
