"""An exported classifier as one ``nn.Module``: a timm classifier, an encoder + linear probe on several
stages, or an encoder + weighted-kNN feature bank (see :mod:`ssl_derm.serve.export` for the file layout).

``forward(x)``: (B, 3, S, S) normalised float -> (B, K) logits (kNN: log vote shares), so
``softmax(forward(x))`` are the class probabilities the run computed. ``predict(images)`` takes uint8
images of any size and does the rest.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ssl_derm.errors import ModelFileError
from ssl_derm.serve.views import d4_views, load_strict, square_uint8


def _timm(meta: dict, num_classes: int) -> nn.Module:
    import timm

    kwargs = dict(meta.get("timm_create_kwargs") or {})
    kwargs["num_classes"] = num_classes
    return timm.create_model(meta["timm_name"], pretrained=False, **kwargs)


class Classifier(nn.Module):
    """Attributes: ``classes`` (names in output order), ``image_size``, ``meta`` (model.json), ``tta``
    (the model's own view averaging; ``predict(..., tta="d4")`` adds it to any model)."""

    def __init__(self, meta: dict, state: dict):
        super().__init__()
        from ssl_derm.encoders import Encoder

        self.meta, self.head_kind = meta, meta["head"]
        self.classes = [str(c) for c in meta["classes"]]
        self.num_classes = int(meta["num_classes"])
        self.image_size = int(meta["image_size"])
        self.stages = int(meta.get("feature_stages", 1))
        self.tta = meta.get("feature_tta", "none")
        self.pool = meta.get("feature_pool", "avg")  # absent from older model.json format 1 files: avg
        self.calibration_t = float(meta.get("temperature", 1.0))  # format 1 has none: uncalibrated
        if not self.calibration_t > 0:
            raise ModelFileError(f"model.json has temperature {meta.get('temperature')!r}; it must be > 0 "
                                 "(export the run again)")
        self._segmenter = None  # the default segmenter, built on the first batch that needs lesion masks
        self.register_buffer("mean", torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if self.head_kind == "timm":
            self.net = _timm(meta, self.num_classes)
            load_strict(self.net, state, f"timm classifier '{meta['timm_name']}'")
            return
        enc_state = {k: v for k, v in state.items() if not k.startswith(("probe.", "knn."))}
        model = _timm(meta, 0)
        load_strict(model, enc_state, f"timm encoder '{meta['timm_name']}'")
        self.encoder = Encoder(model, meta["timm_name"], self.image_size)
        if self.head_kind == "linear":
            w = state["probe.weight"]
            self.probe = nn.Linear(w.shape[1], w.shape[0])
            load_strict(self.probe, {"weight": w, "bias": state["probe.bias"]}, "linear probe")
        else:  # knn
            self.register_buffer("bank", state["knn.bank"].float())
            self.register_buffer("bank_labels", state["knn.labels"].long())
            cw = state.get("knn.class_weights")
            self.register_buffer("class_weights", cw.float() if cw is not None else None)
            self.k, self.temperature = int(meta["knn_k"]), float(meta["knn_temperature"])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> normalised float32, as the run's ``ssl_derm.augment.normalize``."""
        return (x.float() / 255.0 - self.mean) / self.std

    def _features(self, x: torch.Tensor, tta: str, masks: Optional[torch.Tensor]) -> torch.Tensor:
        from ssl_derm.models.features import pooled

        views = [v for _, _, v in d4_views(x)] if tta == "d4" else [x]
        weights = [None] * len(views)
        if self.pool != "avg":
            weights = [w for _, _, w in d4_views(masks)] if tta == "d4" else [masks]
        return sum(pooled(self.encoder, v, self.stages, self.pool, w).float() for v, w in zip(views, weights)) / len(views)

    def lesion_masks(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float (B, 1, S, S): the default segmenter's masks, as the run's cache held."""
        from ssl_derm.segmenters.archive_masks import default_masks, default_segmenter

        if self._segmenter is None:
            self._segmenter = default_segmenter()
        m = default_masks(x_uint8.permute(0, 2, 3, 1).cpu().numpy(), self._segmenter)
        return torch.from_numpy(m.astype(np.float32))[:, None]

    def forward(self, x: torch.Tensor, tta: Optional[str] = None, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, K) logits divided by the run's temperature (model.json), averaged
        over ``tta`` views (default: the model's own). ``masks`` (B, 1, S, S): the lesion masks, for a
        model whose ``feature_pool`` is lesion or both."""
        return self._logits(x, tta, masks) / self.calibration_t

    def _logits(self, x: torch.Tensor, tta: Optional[str], masks: Optional[torch.Tensor]) -> torch.Tensor:
        if self.pool != "avg" and masks is None:
            raise ValueError(f"this classifier pools its features over the lesion (feature_pool={self.pool}): "
                             "pass masks, or use predict/predict_batch, which compute them")
        tta = self.tta if tta in (None, "none") else tta
        if self.head_kind == "timm":  # a linear head: the mean of the views' logits = the probe on mean features
            views = [v for _, _, v in d4_views(x)] if tta == "d4" else [x]
            return sum(self.net(v).float() for v in views) / len(views)
        f = self._features(x, tta, None if masks is None else masks.to(x.device, x.dtype))
        if self.head_kind == "linear":
            return self.probe(f)
        from ssl_derm.evaluate.knn import weighted_knn_probs

        p = weighted_knn_probs(self.bank, self.bank_labels, f, self.num_classes, self.k, self.temperature,
                               self.class_weights)
        return p.clamp_min(1e-12).log()

    @torch.no_grad()
    def predict_batch(self, x_uint8: torch.Tensor, tta: Optional[str] = None) -> torch.Tensor:
        """uint8 (B, 3, S, S) on any device -> (B, K) float32 probabilities on the CPU."""
        dev = self.mean.device
        masks = self.lesion_masks(x_uint8).to(dev) if self.pool != "avg" else None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = self(self.normalize(x_uint8.to(dev)), tta, masks)
        return logits.float().softmax(1).cpu()

    @torch.no_grad()
    def predict(self, images, tta: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
        """uint8 images ((N,H,W,3) array or list of (H_i,W_i,3)) -> (N, K) probabilities, columns as
        :attr:`classes`; each image is resized to ``image_size`` as the run's cache did."""
        arr, _ = square_uint8(images, self.image_size)
        out = [self.predict_batch(torch.from_numpy(arr[i:i + batch_size]).permute(0, 3, 1, 2), tta)
               for i in range(0, len(arr), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_classes), np.float32)
