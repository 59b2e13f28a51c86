"""DenseCL: SimCLR's global contrast plus a dense contrast between the two views' feature maps.

Wang et al. (2021) add to the global term a per-location one: each location of view 0's last feature
map is matched to the location of view 1 whose *backbone* feature is most similar (the crops differ,
so the grid cells do not line up), and their dense projections must agree against the others. It is
the CNN route to features that change across an image, which annotation-free segmentation needs
(:mod:`ssl_derm.segmenters.gharawi` and the self-training U-Net read them).

Built on lightly: ``DenseCLProjectionHead`` (the per-location MLP), ``select_most_similar`` (the
matching) and ``NTXentLoss``. Negatives are in-batch, as SimCLR's: the other cells of the batch, one
direction (view 0 -> 1, then 1 -> 0) at a time (all ranks under DDP), not the paper's momentum queue: lightly keeps a loss's
memory bank out of the state dict, so a resumed run would not continue the run it stopped.
Works on any encoder with a spatial map: a CNN's last stage (stride 32: at least 4x4 cells from
128 px up) or a ViT's patch-token grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import DenseCLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import select_most_similar

from ssl_derm.config import MethodSettings
from ssl_derm.errors import ConfigError
from ssl_derm.methods.base import Method, Projector, fp32
from ssl_derm.registry import register


@dataclass
class DenseCLSettings(Projector, MethodSettings):
    name: str = "densecl"
    temperature: float = 0.2  # both NT-Xent terms
    dense_weight: float = 0.5  # loss = (1 - w) * global + w * dense (the paper's lambda)

    def check(self) -> None:
        self.at_least(0, "temperature", strict=True)
        self.at_least(1, "proj_hidden_dim", "proj_dim")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ConfigError(f"config key 'method.dense_weight': must be in [0, 1], got {self.dense_weight}")


def dense_pairs(feats: torch.Tensor, dense: torch.Tensor):
    """Each view-0 location with its best-matching view-1 location, and the other way round.

    feats (2B, C, h, w): backbone maps of both views (view 0 first); dense (2B, h*w, D) their dense
    projections. -> (queries, keys), both (2*B*h*w, D): row i of keys is the positive of row i of queries.
    """
    f = feats.detach().flatten(2).transpose(1, 2)  # (2B, hw, C): matching reads no gradient
    f0, f1 = f.chunk(2)
    d0, d1 = dense.chunk(2)
    k1 = select_most_similar(f0, f1, d1)  # (B, hw, D): for each view-0 cell, view 1's nearest
    k0 = select_most_similar(f1, f0, d0)
    q = torch.cat([d0, d1]).flatten(0, 1)
    k = torch.cat([k1, k0]).flatten(0, 1)
    return q, k


@register("method", "densecl", settings=DenseCLSettings)
class DenseCL(Method):
    """views: [x0, x1] (B,3,H,W). Loss: (1 - w) NT-Xent(global) + w NT-Xent(matched dense cells)."""

    default_preset = "two_view"
    sync_batchnorm_needed = True

    def __init__(self, encoder, cfg, max_steps):
        super().__init__(encoder, cfg, max_steps)
        self.projection = SimCLRProjectionHead(encoder.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.dense_projection = DenseCLProjectionHead(encoder.dense_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)
        self.dense_criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def dense_loss(self, feats: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """NT-Xent of each view's cells against their matches in the other view, one direction at a time:
        in one batch of both directions, a positive would also stand among its own query's negatives."""
        q, k = dense_pairs(feats, dense)
        (q0, q1), (k1, k0) = q.chunk(2), k.chunk(2)
        return 0.5 * (self.dense_criterion(q0, k1) + self.dense_criterion(q1, k0))

    def training_step(self, views, step):
        self.expect_views(views, 2)
        enc = self.encoder
        ff = enc.forward_features(torch.cat(views))
        feats = enc.to_dense(ff)  # (2B, C, h, w)
        z0, z1 = self.projection(enc.pool(ff)).float().chunk(2)
        dense = self.dense_projection(feats.flatten(2).transpose(1, 2))  # (2B, hw, D)
        w = self.cfg.dense_weight
        with fp32(feats.device):
            g, d = self.criterion(z0, z1), self.dense_loss(feats, dense.float())
        return (1 - w) * g + w * d, {"loss_global": float(g.detach()), "loss_dense": float(d.detach()), "cells": float(feats.shape[-1] * feats.shape[-2])}
