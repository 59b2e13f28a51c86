"""k-means baselines: on colour (Lab) per image, and on a pretrained encoder's dense features.

Each image is clustered on its own (scikit-learn ``KMeans``, ``segment.n_clusters`` clusters); the
lesion clusters are then chosen without labels by :func:`ssl_derm.segmenters.prior.choose_lesion_clusters`
(contrast of the cluster's colour to the skin ring, centrality, not in the ring). The score is the
share of lesion clusters among a pixel's 3x3 neighbours' labels after smoothing, so it lies in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from ssl_derm.registry import register
from ssl_derm.segmenters.base import Segmenter
from ssl_derm.segmenters.config import SegmenterSettings
from ssl_derm.segmenters.colour import uint8_batch
from ssl_derm.segmenters.prep import Prepared, smooth_lab
from ssl_derm.segmenters.prior import choose_lesion_clusters

MAX_FIT_POINTS = 4096  # k-means is fitted on a random subset of pixels, then labels every pixel


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """x: (P, C) points -> (P,) cluster ids."""
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= MAX_FIT_POINTS else x[rng.choice(len(x), MAX_FIT_POINTS, replace=False)]
    with threadpool_limits(1):  # one small problem per image: threads only add start-up cost
        km = KMeans(n_clusters=min(k, len(np.unique(fit, axis=0))), n_init=3, random_state=seed).fit(fit)
        return km.predict(x)


def lesion_from_labels(labels: np.ndarray, prep: Prepared, i: int, lab: np.ndarray):
    """Cluster ids (S, S) of image i -> (score (S,S), lesion bool (S,S))."""
    m = choose_lesion_clusters(labels, lab[i], prep.valid[i], prep.ring[i])
    return ndi.uniform_filter(m.astype(np.float32), 3), m


@dataclass
class KMeansColourSettings(SegmenterSettings):
    method: str = "kmeans_color"
    n_clusters: int = 2  # clusters per image; the lesion is the clusters least like the skin ring

    def check(self) -> None:
        super().check()
        self.at_least(2, "n_clusters")  # skin and lesion


@register("segmenter", "kmeans_color", settings=KMeansColourSettings)
class KMeansColour(Segmenter):
    """k-means on smoothed Lab colour of the field of view."""

    def segment(self, images: np.ndarray, prep: Prepared):
        lab = smooth_lab(prep.lab, self.s.smooth_sigma)
        n, c, size, _ = lab.shape
        scores, masks = np.zeros((n, size, size), np.float32), np.zeros((n, size, size), bool)
        for i in range(n):
            v = prep.valid[i].ravel()
            labels = np.full(size * size, -1)
            labels[v] = kmeans_labels(lab[i].reshape(c, -1)[:, v].T, self.s.n_clusters, self.cfg.seed + i)
            scores[i], masks[i] = lesion_from_labels(labels.reshape(size, size), prep, i, lab)
        return scores, masks


@torch.no_grad()
def dense_features(encoder, images: np.ndarray, aug_cfg, grid: int, device) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, C, grid, grid): the encoder's last three feature maps (CNN) or its
    patch tokens (ViT), each L2-normalised over channels and resized to ``grid``, concatenated."""
    from ssl_derm.augment import normalize

    x = normalize(uint8_batch(images).to(device), aug_cfg)
    model = encoder.model
    was = model.training
    model.eval()
    if encoder.is_vit or not hasattr(model, "forward_intermediates"):
        maps = [encoder.forward_dense(x)]
    else:
        maps = list(model.forward_intermediates(x, intermediates_only=True))[-3:]
    model.train(was)
    maps = [F.interpolate(F.normalize(m.float(), dim=1), size=(grid, grid), mode="bilinear", align_corners=False)
            for m in maps]
    return torch.cat(maps, 1).cpu()


@dataclass
class KMeansFeatureSettings(SegmenterSettings):
    method: str = "kmeans_features"
    n_clusters: int = 2  # clusters per image; the lesion is the clusters least like the skin ring
    feature_size: int = 32  # grid the dense features are resized to

    def check(self) -> None:
        super().check()
        self.at_least(2, "n_clusters")
        self.at_least(1, "feature_size")


@register("segmenter", "kmeans_features", settings=KMeansFeatureSettings)
class KMeansFeatures(Segmenter):
    """k-means on the encoder's dense features (pretrained with ``encoder.checkpoint``, else random)."""

    needs_encoder = True

    def segment(self, images: np.ndarray, prep: Prepared):
        dev = next(self.encoder.parameters()).device
        g = min(self.s.feature_size, images.shape[1])
        feats = dense_features(self.encoder, images, self.cfg.augment, g, dev).numpy()
        lab = smooth_lab(prep.lab, self.s.smooth_sigma)
        n, size = len(images), images.shape[1]
        scores, masks = np.zeros((n, size, size), np.float32), np.zeros((n, size, size), bool)
        for i in range(n):
            labels = kmeans_labels(feats[i].reshape(feats.shape[1], -1).T, self.s.n_clusters, self.cfg.seed + i)
            up = F.interpolate(torch.from_numpy(labels.reshape(1, 1, g, g).astype(np.float32)), size=(size, size),
                               mode="nearest")[0, 0].numpy().astype(np.int64)
            up[~prep.valid[i]] = -1
            scores[i], masks[i] = lesion_from_labels(up, prep, i, lab)
        return scores, masks
