"""The Gharawi-style clustering network: hybrid CNN/Transformer features, contextual attention fusion,
a per-pixel cluster head, and the two unsupervised losses.

After Gharawi, Alahmadi and Ramaswamy (Mathematics 2023, 11(18):3805), whose clustering objective is
Kim, Kanezaki and Tanaka's (IEEE TIP 2020) differentiable feature clustering:

- hierarchical features: the frozen encoder's feature maps (a CNN's stride-4/8/16 stages, or a ViT's
  patch tokens) -- pretrained when ``encoder.checkpoint`` is given, random otherwise -- each projected
  to ``feat_dim``; the coarsest goes through ``transformer_layers`` Transformer layers for long-range
  context (the CNN sees local texture, the Transformer the whole lesion);
- pixel-level features: two 3x3 conv-BN-ReLU layers on per-image standardised Lab colour plus x, y;
- contextual attention: every pixel's feature is a query over the levels (upsampled to the pixel
  grid); softmax weights over levels, a weighted sum of their values, added to the pixel feature;
- head: 1x1 conv to ``max_clusters`` responses + BatchNorm (as Kim et al., so responses stay spread);
- losses: ``similarity`` = cross-entropy of the responses against their own argmax (pixels with
  similar features join the same cluster), ``spatial`` = mean L1 of the responses' horizontal and
  vertical differences (neighbours agree, outlines are smooth).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


def pixel_inputs(lab: torch.Tensor, position_weight: float = 0.0) -> torch.Tensor:
    """(B, 3, S, S) Lab -> (B, 5, S, S): Lab standardised per image and channel, plus x, y in [-1, 1]
    times ``position_weight`` (position pulls clusters into spatial blobs; 0 leaves clustering to colour)."""
    b, _, s, _ = lab.shape
    mu = lab.mean((2, 3), keepdim=True)
    sd = lab.std((2, 3), keepdim=True) + 1e-3
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    pos = torch.stack([xx, yy]).to(lab).expand(b, 2, s, s) * position_weight
    return torch.cat([(lab - mu) / sd, pos], 1)


def _sincos(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (h*w, dim), as MAE's."""
    d = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(d, dtype=torch.float32) / max(d, 1))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    parts = []
    for g in (yy.reshape(-1), xx.reshape(-1)):
        a = g[:, None] * omega[None]
        parts += [a.sin(), a.cos()]
    emb = torch.cat(parts, 1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class ContextualAttention(nn.Module):
    """Pixel features (B, D, S, S) attend over L level maps [(B, D, h_l, w_l)] -> (B, D, S, S)."""

    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Conv2d(dim, dim, 1)
        self.k = nn.Conv2d(dim, dim, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, pix: torch.Tensor, levels: List[torch.Tensor]) -> torch.Tensor:
        size = pix.shape[-2:]
        up = [F.interpolate(lv, size=size, mode="bilinear", align_corners=False) for lv in levels]
        q = self.q(pix)
        logits = torch.stack([(q * self.k(u)).sum(1) for u in up], 1) / q.shape[1] ** 0.5  # (B, L, S, S)
        w = logits.softmax(1)
        ctx = sum(w[:, i:i + 1] * self.v(u) for i, u in enumerate(up))
        return self.out(pix + ctx)


class GharawiNet(nn.Module):
    """Trainable part of the segmenter; the frozen encoder's maps come in precomputed.

    forward(lab (B,3,S,S), levels [(B, C_l, h_l, w_l)]) -> responses (B, K, S, S).
    """

    def __init__(self, level_channels: List[int], dim: int, n_clusters: int, transformer_layers: int, heads: int,
                 position_weight: float = 0.0):
        super().__init__()
        self.position_weight = position_weight
        self.proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
                                   for c in level_channels])
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.context = nn.TransformerEncoder(layer, transformer_layers, enable_nested_tensor=False) \
            if transformer_layers > 0 else None
        self.pixel = nn.Sequential(
            nn.Conv2d(5, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.fuse = ContextualAttention(dim)
        self.head = nn.Sequential(nn.Conv2d(dim, n_clusters, 1), nn.BatchNorm2d(n_clusters))

    def forward(self, lab: torch.Tensor, levels: List[torch.Tensor]) -> torch.Tensor:
        feats = [p(lv) for p, lv in zip(self.proj, levels)]
        if self.context is not None and feats:
            coarse = feats[-1]
            b, d, h, w = coarse.shape
            tokens = coarse.flatten(2).transpose(1, 2) + _sincos(h, w, d).to(coarse)
            feats[-1] = self.context(tokens).transpose(1, 2).reshape(b, d, h, w)
        return self.head(self.fuse(self.pixel(pixel_inputs(lab, self.position_weight)), feats))


def clustering_losses(resp: torch.Tensor):
    """resp: (B, K, S, S) responses -> (similarity loss, spatial-consistency loss, argmax labels (B,S,S))."""
    target = resp.argmax(1).detach()
    sim = F.cross_entropy(resp, target)
    spatial = (resp[:, :, 1:] - resp[:, :, :-1]).abs().mean() + (resp[:, :, :, 1:] - resp[:, :, :, :-1]).abs().mean()
    return sim, spatial, target
