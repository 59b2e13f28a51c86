"""MAE: a plain ViT encodes a random 1 - mask_ratio of its patches; a small transformer decoder
(lightly's MaskedVisionTransformerDecoderTIMM) predicts the per-patch normalised pixels of the rest."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from lightly.models.utils import get_at_index, patchify, repeat_token, set_at_index
from torch import nn

from ssl_derm.config import MethodSettings
from ssl_derm.methods.base import Method, MethodError, fp32, freeze_unused, plain_vit, vit_tokens
from ssl_derm.registry import register


def decoder_heads(dim: int) -> int:
    """Most heads (<= 16) of at least 32 channels each that divide ``dim``."""
    return next((h for h in (16, 8, 4, 2) if dim % h == 0 and dim // h >= 32), 1)


@dataclass
class MAESettings(MethodSettings):
    name: str = "mae"
    mask_ratio: float = 0.75  # share of patches the encoder never sees
    decoder_dim: int = 256  # width of the MAE decoder's tokens
    decoder_depth: int = 2  # transformer blocks in the MAE decoder


@register("method", "mae", settings=MAESettings)
class MAE(Method):
    """views: [x] (B,3,H,W) at the encoder's image size. Loss: MSE on masked patches only."""

    default_preset = "masked"
    sync_batchnorm_needed = False

    def __init__(self, encoder, cfg, max_steps):
        if not plain_vit(encoder):
            raise MethodError(
                f"method 'mae' needs a plain ViT encoder (e.g. vit_small_patch16_224), got '{encoder.name}': MAE drops "
                "masked patches before the encoder, which a CNN, Swin or hybrid (CNN-stem) encoder cannot do; "
                "use method.name=simmim for those")
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise MethodError(f"config key 'method.mask_ratio': {cfg.mask_ratio} must be in (0, 1)")
        super().__init__(encoder, cfg, max_steps)
        # timm ViT parts after the token sequence (fc_norm, head) never get a gradient here; DDP needs
        # every trainable parameter to get one, so they are frozen as SimMIM does
        self.frozen = freeze_unused(encoder, dense=True)
        vit = encoder.model
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.num_patches = int(vit.patch_embed.num_patches)
        self.n_prefix = int(vit.num_prefix_tokens)
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches, embed_dim=cfg.decoder_dim, depth=cfg.decoder_depth,
            num_heads=decoder_heads(cfg.decoder_dim), num_prefix_tokens=self.n_prefix)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch_size ** 2 * 3)

    def random_keep(self, batch: int, device):
        """-> idx_keep (B, prefix + kept) over the full sequence, idx_mask (B, masked) over patches."""
        n_keep = max(1, int(self.num_patches * (1 - self.cfg.mask_ratio)))
        order = torch.rand(batch, self.num_patches, device=device).argsort(dim=1)
        prefix = torch.arange(self.n_prefix, device=device).expand(batch, -1)
        return torch.cat([prefix, order[:, :n_keep] + self.n_prefix], 1), order[:, n_keep:]

    def training_step(self, views, step):
        self.expect_views(views, 1)
        x = views[0]
        b, side = x.shape[0], x.shape[-1]
        if (side // self.patch_size) ** 2 != self.num_patches or x.shape[-2] != side:
            raise MethodError(f"method 'mae': views are {tuple(x.shape[-2:])} but the encoder was built for "
                              f"{self.encoder.img_size} px; set data.image_size to the encoder's image size")
        idx_keep, idx_mask = self.random_keep(b, x.device)
        tokens = self.decoder_embed(vit_tokens(self.encoder, x, idx_keep=idx_keep))
        seq = repeat_token(self.decoder.mask_token, (b, self.n_prefix + self.num_patches))
        seq = set_at_index(seq, idx_keep, tokens.type_as(seq))
        decoded = self.decoder.decode(self.decoder.add_pos_embed(seq))
        pred = self.decoder_pred(get_at_index(decoded, idx_mask + self.n_prefix))
        target = get_at_index(patchify(x, self.patch_size), idx_mask)
        with fp32(x.device):
            target = target.float()
            # normalised-pixel target (MAE's norm_pix_loss): each patch to zero mean, unit variance
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            loss = F.mse_loss(pred.float(), target)
        return loss, {}
