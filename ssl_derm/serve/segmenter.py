"""An exported segmenter as one ``nn.Module``: the self-training or few-mask U-Net
(:class:`ssl_derm.models.unet.SegModel` rebuilt from ``arch``), or a per-image method
(contrast_em, Otsu, k-means, Gharawi-style...) re-built from its ``segment_config``.

Both follow their run: images at ``image_size`` (the run's cache size) -> lesion probability ->
threshold -> clean-up (the central/largest component, holes filled) -> each image's original size.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_derm.segmenters.cleanup import clean_masks
from ssl_derm.serve.views import d4_undo, d4_views, load_strict, square_uint8


class Segmenter(nn.Module):
    """Attributes: ``image_size``, ``meta`` (model.json), ``method``."""

    def __init__(self, meta: dict, state: dict):
        super().__init__()
        self.meta, self.kind = meta, meta["segmenter"]
        self.method = meta.get("method")
        self.image_size = int(meta["image_size"])
        self.threshold = float(meta.get("threshold", 0.5))
        self.post = meta["postprocess"]
        self.register_buffer("mean", torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if self.kind == "net":
            from ssl_derm.encoders import create_encoder
            from ssl_derm.models.unet import SegModel

            arch = meta["arch"]
            self.net_size = int(arch["net_size"])
            enc = create_encoder(arch["encoder"], self.net_size)  # random: the state dict below replaces it
            self.net = SegModel(enc, arch["decoder_widths"], self.net_size)
            load_strict(self.net, state, f"U-Net on '{arch['encoder']}'")
            self.segmenter = None
        else:
            self.segmenter = self._classical(meta, state)

    @staticmethod
    def _classical(meta: dict, state: dict):
        from ssl_derm.config import load_config
        from ssl_derm.encoders import Encoder
        from ssl_derm.segmenters.base import build_segmenter
        from ssl_derm.segmenters.config import SegmentConfig, check_segment_config, older_format_settings

        seg_cfg = meta["segment_config"]
        older = older_format_settings(int(meta.get("format_version", 1)))
        if older:  # written before these keys: run it as it was trained, not with their new defaults
            seg_cfg = {**seg_cfg, "segment": {**older, **seg_cfg.get("segment", {})}}
        cfg = check_segment_config(load_config(SegmentConfig, base=seg_cfg, lenient=True))
        encoder = None
        if meta.get("uses_encoder"):
            import timm

            model = timm.create_model(meta["timm_name"], pretrained=False, **(meta.get("timm_create_kwargs") or {}))
            load_strict(model, state, f"timm encoder '{meta['timm_name']}'")
            encoder = Encoder(model, meta["timm_name"], int(meta["image_size"])).eval()
        return build_segmenter(cfg, encoder)

    def _apply(self, fn, *args, **kwargs):  # keep a classical segmenter's encoder on the module's device
        out = super()._apply(fn, *args, **kwargs)
        enc = getattr(self.segmenter, "encoder", None)
        if enc is not None:
            enc._apply(fn, *args, **kwargs)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 at ``image_size`` -> (B, 1, S, S) lesion probabilities (U-Net only)."""
        s = x.shape[-1]
        x = x.float() / 255.0
        if self.net_size != s:
            x = F.interpolate(x, size=(self.net_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        p = self.net((x - self.mean) / self.std).float().sigmoid()
        if p.shape[-1] != s:
            p = F.interpolate(p, size=(s, s), mode="bilinear", align_corners=False)
        return p

    def _soft(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, 1, S, S) soft mask: U-Net probability, or a classical method's mask."""
        if self.segmenter is None:
            dev = self.mean.device
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                return self(x.to(dev)).float()
        from ssl_derm.segmenters.pipeline import predict_batch  # prepare -> segment -> refine -> clean up

        _, masks = predict_batch(self.segmenter, x.permute(0, 2, 3, 1).cpu().numpy())
        return torch.from_numpy(masks.astype(np.float32))[:, None]

    @torch.no_grad()
    def predict_small(self, images: np.ndarray, tta: Optional[str] = None) -> np.ndarray:
        """uint8 (N, S, S, 3) at ``image_size`` -> bool (N, S, S) masks; ``tta="d4"`` averages the 8
        rotations/flips (each output rotated back first) before the threshold."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if tta == "d4":
            soft = sum(d4_undo(self._soft(v.contiguous()).cpu(), k, f) for k, f, v in d4_views(x)) / 8.0
        else:
            soft = self._soft(x).cpu()
        masks = (soft[:, 0] >= self.threshold).numpy() if self.segmenter is None or tta == "d4" else soft[:, 0].numpy() > 0.5
        if self.post.get("clean") and (self.segmenter is None or tta == "d4"):
            masks = clean_masks(masks, self.post["component"], self.post["fill_holes"],
                                self.post.get("convex_hull", False))  # absent from model.json format 1 files written before the key existed
        return masks

    def predict(self, images, tta: Optional[str] = None, batch_size: int = 32) -> List[np.ndarray]:
        """uint8 images ((N,H,W,3) array or list of (H_i,W_i,3)) -> list of bool (H_i, W_i) masks, each at
        its image's own size."""
        from ssl_derm.segmenters.scoring import to_original

        arr, sizes = square_uint8(images, self.image_size)
        out: List[np.ndarray] = []
        for i in range(0, len(arr), batch_size):
            small = self.predict_small(arr[i:i + batch_size], tta)
            out.extend(to_original(m, hw, self.post.get("upsample", "bilinear")) for m, hw in zip(small, sizes[i:i + batch_size]))
        return out
