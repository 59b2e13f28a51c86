"""The U-Net segmentation model shared by few-mask finetuning, self-training and exported segmenters.

A timm encoder's ``forward_intermediates`` feed a small U-Net decoder: (B, 3, H, W) normalised -> (B, 1, H, W)
logits; :func:`dice_bce_loss` is the loss all three train it with.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ssl_derm.errors import EncoderError


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
            raise EncoderError(f"encoder.name '{encoder.name}' has no forward_intermediates in timm; few-mask "
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
