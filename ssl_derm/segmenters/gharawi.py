"""``gharawi``: the Gharawi-style self-supervised segmenter (network and losses in gharawi_net.py).

For each image (``segment.per_image: true``, a fresh network per image, as Kim et al.) or each batch
(one network per batch), the network is optimised for ``segment.iters`` SGD steps on
similarity + ``spatial_weight`` * spatial-consistency, stopping early once at most ``min_clusters``
clusters remain. The argmax clusters are then split into lesion and skin without labels
(:func:`ssl_derm.segmenters.prior.choose_lesion_clusters`) and cleaned up like every method's. The score
is the softmax mass of the lesion clusters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_derm.config import TrainConfig
from ssl_derm.engine import Engine, Hook
from ssl_derm.errors import ConfigError
from ssl_derm.registry import register
from ssl_derm.segmenters.base import Segmenter
from ssl_derm.segmenters.config import SegmenterSettings
from ssl_derm.segmenters.colour import uint8_batch
from ssl_derm.segmenters.gharawi_net import GharawiNet, clustering_losses
from ssl_derm.segmenters.prep import Prepared, smooth_lab
from ssl_derm.segmenters.prior import choose_lesion_clusters

MOMENTUM = 0.9


@torch.no_grad()
def encoder_levels(encoder, images: np.ndarray, aug_cfg, device, max_stride: int = 16) -> list:
    """uint8 (N,S,S,3) -> the frozen encoder's maps [(N, C_l, h_l, w_l)]: a CNN's stages of stride 4 up
    to ``max_stride`` (16: the early, local ones; 32 adds the last stage, which a dense method such as
    DenseCL trains per location), or a ViT's patch-token grid."""
    from ssl_derm.augment import normalize

    x = normalize(uint8_batch(images).to(device), aug_cfg)
    model = encoder.model
    was = model.training
    model.eval()
    try:
        if encoder.is_vit or not hasattr(model, "forward_intermediates"):
            return [encoder.forward_dense(x).float()]
        maps = model.forward_intermediates(x, intermediates_only=True)
        size = x.shape[-1]
        keep = [m.float() for m in maps if 4 <= size // m.shape[-1] <= max_stride]
        return keep or [maps[-1].float()]
    finally:
        model.train(was)


class _FewClusters(Hook):
    """Stops the fit once every image's argmax map uses at most ``n`` clusters."""

    def __init__(self, n: int, box: dict):
        self.n, self.box = n, box

    def after_step(self, engine, done: int) -> None:
        if max(len(torch.unique(t)) for t in self.box["target"]) <= self.n:
            engine.stop = True


@dataclass
class GharawiSettings(SegmenterSettings):
    """Hybrid CNN/Transformer features + contextual attention + differentiable clustering."""

    method: str = "gharawi"
    max_clusters: int = 8  # width of the cluster head (argmax labels may use fewer)
    min_clusters: int = 3  # stop early once this few clusters remain
    feat_dim: int = 32  # width of the pixel features (divisible by heads)
    transformer_layers: int = 1  # transformer layers of the contextual attention
    heads: int = 4  # attention heads
    iters: int = 40  # optimisation steps per image (per_image) or per batch
    work_size: int = 64  # the clustering runs at this size (px), its responses are upsampled to the cache size
    lr: float = 0.1  # learning rate of the clustering optimisation
    position_weight: float = 0.0  # scale of the x, y inputs of the pixel branch (0: colour only, as Kim et al.)
    spatial_weight: float = 1.0  # weight of the spatial-consistency (L1 response difference) loss
    per_image: bool = True  # optimise a fresh model per image; false: one model per batch
    max_feature_stride: int = 16  # deepest CNN stage read: 16 = strides 4-16; 32 adds the last stage

    def check(self) -> None:
        super().check()
        self.at_least(1, "min_clusters", "feat_dim", "heads", "work_size")
        self.at_least(2, "max_clusters")  # skin and lesion
        self.at_least(4, "max_feature_stride")
        if self.feat_dim % self.heads:
            raise ConfigError(f"config key 'segment.feat_dim' ({self.feat_dim}) must be divisible by "
                              f"'segment.heads' ({self.heads})")


@register("segmenter", "gharawi", settings=GharawiSettings)
class Gharawi(Segmenter):
    needs_encoder = True

    def _optimise(self, lab: torch.Tensor, levels: list) -> torch.Tensor:
        """Fit a fresh network to these images; -> softmax responses (B, K, S, S)."""
        s = self.s
        net = GharawiNet([lv.shape[1] for lv in levels], s.feat_dim, s.max_clusters, s.transformer_layers,
                         s.heads, s.position_weight).to(lab.device)
        opt = torch.optim.SGD(net.parameters(), lr=s.lr, momentum=MOMENTUM)
        box = {}

        def step_fn(module, step: int, micro: int):
            sim, spatial, box["target"] = clustering_losses(module(lab, levels))
            return sim + s.spatial_weight * spatial, {}

        # the engine's step and precision path, light: fp32, a fixed LR, no clipping, checkpoints or logs
        cfg = TrainConfig(max_steps=s.iters, clip_grad=0.0, precision="fp32", ckpt_every=0, resume=False,
                          log_every=s.iters + 1)
        Engine(net, cfg, lab.device, optimizer=opt, schedule=False, hooks=[_FewClusters(s.min_clusters, box)],
               progress=False).fit(step_fn)
        with torch.no_grad():
            return net(lab, levels).softmax(1)

    def segment(self, images: np.ndarray, prep: Prepared):
        dev = next(self.encoder.parameters()).device
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.cfg.seed)  # the same images give the same masks, whatever ran before
        levels = encoder_levels(self.encoder, images, self.cfg.augment, dev, self.s.max_feature_stride)
        size = images.shape[1]
        lab_t = torch.from_numpy(prep.lab).to(dev)
        work = min(self.s.work_size, size)
        if work != size:  # per-pixel optimisation costs grow with the pixel count: cluster smaller
            lab_t = F.interpolate(lab_t, size=(work, work), mode="bilinear", align_corners=False, antialias=True)
        groups = [[i] for i in range(len(images))] if self.s.per_image else [list(range(len(images)))]
        probs = []
        for g in groups:
            with torch.enable_grad():
                p = self._optimise(lab_t[g], [lv[g] for lv in levels])
            probs.append(F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False).cpu())
        torch.random.set_rng_state(gen_state)
        probs = torch.cat(probs).numpy()  # (N, K, S, S)
        labels = probs.argmax(1)
        lab = smooth_lab(prep.lab, self.s.smooth_sigma)
        n = len(images)
        scores, masks = np.zeros((n, size, size), np.float32), np.zeros((n, size, size), bool)
        for i in range(n):
            lb = np.where(prep.valid[i], labels[i], -1)
            masks[i] = choose_lesion_clusters(lb, lab[i], prep.valid[i], prep.ring[i])
            lesion_ids = np.unique(labels[i][masks[i]])
            scores[i] = probs[i][lesion_ids].sum(0) if len(lesion_ids) else 0.0
        return scores, masks
