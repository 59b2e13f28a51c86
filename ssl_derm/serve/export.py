"""Trained models leave the run folder as ``model.safetensors`` + ``model.json``.

``model.json`` (``format_version`` 5; versions 1 to 4 still load: see :data:`READABLE_VERSIONS`) always
holds ``kind`` (classifier | segmenter), ``protocol`` (or segmenter ``method``), ``image_size`` (the
square size images are decoded at, as in the run's cache), ``mean``/``std`` and ``encoder_sha256`` (sha256 of the encoder file the run started from; null for random
init). Classifiers add ``classes`` (output order), ``num_classes`` and ``head``:

- ``timm``: the safetensors file is a whole timm classifier (finetune, FixMatch, the mean teacher's
  teacher, and the linear/label-spreading probe folded into the timm head when the probe read the pooled
  output). ``timm_create_kwargs`` are what :func:`timm.create_model` needs. timm drops a head whose class
  count differs from the pretrained config's (1000) unless the overlay says ``num_classes`` too, so::

      timm.create_model(m["timm_name"], pretrained=True, **m["timm_create_kwargs"],
                        pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=m["num_classes"]))

- ``linear``: the probe read several stages (``feature_stages`` > 1) or pooled over the lesion
  (``feature_pool`` lesion or both: predict runs the default segmenter first), which no timm head can: the file
  holds the encoder (timm keys, no classifier) and ``probe.weight``/``probe.bias``; ``timm_loadable`` false.
- ``knn``: the encoder plus ``knn.bank`` (N, D) L2-normalised features, ``knn.labels`` (N,) and
  ``knn.class_weights`` (K,) when the run balanced classes; ``knn_k`` and ``knn_temperature``.

``temperature`` (format 2): the logits are divided by it before the softmax (1.0 unless the run set
``protocol.calibrate: temperature``, which fits it on the val side); plain timm users divide too.
``feature_tta`` (none | d4) is part of the model: predict averages over those views (logits for a timm
head, which equals the probe on averaged features; features for ``linear``/``knn``).
Segmenters: ``net`` (the self-training or few-mask U-Net: ``arch`` rebuilds
:class:`ssl_derm.models.unet.SegModel`) or ``classical`` (``segment_config`` re-runs the method).
Files are written to a temp name and renamed; ``model.json`` goes last, so its presence means complete.
"""
from __future__ import annotations

import copy
import functools
import inspect
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from ssl_derm.config import to_dict
from ssl_derm.encoder_files import file_sha256, save_safetensors
from ssl_derm.errors import written_whole
from ssl_derm.models.trained import TRAINED, FeatureProbe, KNNBank, SegNet, TimmClassifier
from ssl_derm.runs import write_json

FORMAT_VERSION = 5
# 1: no temperature (read as 1.0); 1-2: a classical segmenter's segment_config predates the acquisition-shift
# steps of contrast_em, which such a file runs without (ssl_derm.segmenters.config.BEFORE_SHIFT_STEPS);
# 1-3: it predates segment.hair_fill, segment.mask_opening and segment.max_work_size, and runs with hair filled
# by a closing, no opening and every step at its cache size (BEFORE_FORMAT_4); 1-4: it predates contrast_em's
# segment.pale_rim and runs without it (BEFORE_FORMAT_5; all through
# ssl_derm.segmenters.config.older_format_settings)
READABLE_VERSIONS = (1, 2, 3, 4, 5)


def timm_kwargs(model: torch.nn.Module, image_size: int) -> dict:
    """Constructor kwargs a timm model needs besides its name: ``img_size`` for ViT-like models."""
    params = inspect.signature(type(model).__init__).parameters
    return {"img_size": int(image_size)} if "img_size" in params else {}


def save_model(out_dir, tensors: Dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``model.safetensors`` (when ``tensors``) and then ``model.json`` atomically; returns model.json."""
    out = Path(out_dir)
    st = out / "model.safetensors"
    if tensors:
        tmp = st.with_name(st.name + ".tmp")
        with written_whole(tmp, st):
            save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                             {"format_version": str(FORMAT_VERSION), "kind": meta["kind"]})
            os.replace(tmp, st)
    elif st.exists():  # a classical segmenter has no weights; a stale file from an earlier run must not linger
        st.unlink()
    write_json(out / "model.json", {"format_version": FORMAT_VERSION, **meta,
                                    "files": ["model.safetensors"] if tensors else []})
    return out / "model.json"


def _common(cfg, encoder_name: str, image_size: int) -> dict:
    return {"timm_name": encoder_name, "image_size": int(image_size), "mean": list(cfg.augment.mean),
            "std": list(cfg.augment.std), "encoder_checkpoint": cfg.encoder.checkpoint,
            "encoder_sha256": file_sha256(cfg.encoder.checkpoint)}


def _encoder_state(encoder) -> Dict[str, torch.Tensor]:
    """The timm keys of an :class:`ssl_derm.encoders.Encoder` (no classifier)."""
    return dict(encoder.model.state_dict())


def _classifier_meta(ctx) -> dict:
    cfg = ctx.cfg
    return {"kind": "classifier", "protocol": cfg.protocol.name, **_common(cfg, ctx.encoder.name, ctx.image_size),
            "classes": [str(c) for c in ctx.dataset.classes], "num_classes": ctx.n_classes,
            "feature_stages": 1, "feature_tta": "none", "feature_pool": "avg", "fraction": cfg.split.fraction,
            "seed": cfg.seed, "temperature": float(ctx.extras.get("temperature", 1.0)),
            "calibrate": getattr(cfg.protocol, "calibrate", "none")}


def _frozen_feature_meta(ctx) -> dict:
    p = ctx.cfg.protocol
    return {**_classifier_meta(ctx), "feature_stages": int(p.feature_stages), "feature_tta": p.feature_tta,
            "feature_pool": p.feature_pool}


def _timm_head(ctx, model: torch.nn.Module, meta: dict, out_dir) -> Path:
    meta.update(head="timm", timm_loadable=True,
                timm_create_kwargs={"num_classes": ctx.n_classes, **timm_kwargs(model, ctx.image_size)})
    return save_model(out_dir, dict(model.state_dict()), meta)


@functools.singledispatch
def _write(trained, ctx, out_dir) -> Path:
    raise TypeError(f"protocol '{ctx.cfg.protocol.name}' trained a {type(trained).__name__}; ctx.trained must be "
                    f"one of {', '.join(t.__name__ for t in TRAINED)} (ssl_derm.models.trained)")


@_write.register
def _(trained: TimmClassifier, ctx, out_dir) -> Path:
    return _timm_head(ctx, trained.model, _classifier_meta(ctx), out_dir)


@_write.register
def _(trained: FeatureProbe, ctx, out_dir) -> Path:
    """Folded into the timm head when the probe read the pooled output; else beside the encoder."""
    from ssl_derm.evaluate.linear import probe_as_linear_layer

    p, meta = ctx.cfg.protocol, _frozen_feature_meta(ctx)
    weight, bias = probe_as_linear_layer(trained.scaler, trained.clf, ctx.n_classes)
    weight, bias = torch.from_numpy(weight), torch.from_numpy(bias)
    if p.feature_stages == 1 and p.feature_pool == "avg":
        model = copy.deepcopy(ctx.encoder.model).cpu()
        model.reset_classifier(ctx.n_classes)
        head = model.get_classifier()
        if isinstance(head, torch.nn.Linear) and tuple(head.weight.shape) == tuple(weight.shape):
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            return _timm_head(ctx, model, meta, out_dir)
    # several stages (or a timm head that is not one linear layer): the probe rides beside the encoder
    tensors = {**_encoder_state(ctx.encoder), "probe.weight": weight, "probe.bias": bias}
    meta.update(head="linear", timm_loadable=False,
                timm_create_kwargs={"num_classes": 0, **timm_kwargs(ctx.encoder.model, ctx.image_size)})
    return save_model(out_dir, tensors, meta)


@_write.register
def _(trained: KNNBank, ctx, out_dir) -> Path:
    tensors = {**_encoder_state(ctx.encoder), "knn.bank": trained.bank.float(),
               "knn.labels": torch.as_tensor(trained.labels, dtype=torch.int64)}
    if trained.class_weights is not None:
        tensors["knn.class_weights"] = trained.class_weights.float()
    meta = _frozen_feature_meta(ctx)
    meta.update(head="knn", timm_loadable=False, knn_k=int(trained.k), knn_temperature=float(trained.temperature),
                timm_create_kwargs={"num_classes": 0, **timm_kwargs(ctx.encoder.model, ctx.image_size)})
    return save_model(out_dir, tensors, meta)


@_write.register
def _(trained: SegNet, ctx, out_dir) -> Path:
    name = ctx.cfg.protocol.name
    return export_seg_net(out_dir, ctx.cfg, trained.model, method=name, net_size=ctx.image_size,
                          widths=trained.decoder_widths, image_size=ctx.image_size, threshold=trained.threshold,
                          clean=False)


def export_seg_net(out_dir, cfg, model, *, method: str, net_size: int, widths, image_size: int,
                   threshold: float, clean: bool, extra: Optional[dict] = None) -> Path:
    """Export a :class:`SegModel` (self-training or few-mask U-Net).

    ``image_size``: the size images are decoded at (the cache); ``net_size``: the size the network runs
    at; scores are resized back to ``image_size``, thresholded, and (``clean``) cleaned up with
    ``segment.component``/``fill_holes``/``convex_hull`` when the config has a ``segment`` section.
    """
    seg = getattr(cfg, "segment", None)
    meta = {"kind": "segmenter", "method": method, "protocol": method, **_common(cfg, cfg.encoder.name, image_size),
            "segmenter": "net", "timm_loadable": False,
            "arch": {"type": "unet", "encoder": cfg.encoder.name, "decoder_widths": [int(w) for w in widths],
                     "net_size": int(net_size)},
            "threshold": float(threshold),
            "postprocess": {"clean": bool(clean and seg is not None),
                            "component": seg.component if seg is not None else "all",
                            "fill_holes": bool(seg.fill_holes) if seg is not None else False,
                            "convex_hull": bool(seg.convex_hull) if seg is not None else False,
                            "upsample": seg.upsample if seg is not None else "bilinear"}}
    meta.update(extra or {})
    return save_model(out_dir, dict(model.state_dict()), meta)


def export_classical_segmenter(out_dir, cfg, encoder=None) -> Path:
    """A per-image segmenter (contrast_em, Otsu, k-means, Gharawi-style...): its settings, and the encoder's
    weights when it reads one, so ``ssl-derm predict`` re-runs it on new images."""
    from ssl_derm.segmenters.base import method_name

    name = method_name(cfg.segment.method)
    meta = {"kind": "segmenter", "method": name, "protocol": name, "segmenter": "classical",
            **_common(cfg, cfg.encoder.name, cfg.data.image_size), "timm_loadable": False,
            "uses_encoder": encoder is not None, "threshold": 0.5,
            "postprocess": {"clean": True, "component": cfg.segment.component, "fill_holes": cfg.segment.fill_holes,
                            "convex_hull": cfg.segment.convex_hull, "upsample": cfg.segment.upsample},
            "segment_config": {k: v for k, v in to_dict(cfg).items() if k not in ("data",)}}
    meta["segment_config"]["data"] = {"image_size": int(cfg.data.image_size)}
    if encoder is not None:
        meta["timm_create_kwargs"] = {"num_classes": 0, **timm_kwargs(encoder.model, cfg.data.image_size)}
    return save_model(out_dir, _encoder_state(encoder) if encoder is not None else {}, meta)


def export_protocol_run(ctx, out_dir) -> Optional[Path]:
    """``ssl-derm finetune``'s export: what the protocol trained (``ctx.trained``), written by its type;
    None for a protocol that trains nothing to serve."""
    return None if ctx.trained is None else _write(ctx.trained, ctx, out_dir)


def export_segment_run(out_dir, cfg, image_size: int, net=None, encoder=None) -> Path:
    """``ssl-derm segment``'s export: the last self-training round's U-Net when there is one, else the
    per-image method with its settings (and its encoder when it reads one)."""
    if net is not None:
        st = cfg.selftrain
        return export_seg_net(out_dir, cfg, net, method=f"selftrain_{st.rounds}", net_size=st.image_size,
                              widths=st.decoder_widths, image_size=image_size, threshold=0.5, clean=True,
                              extra={"pseudo_masks_from": cfg.segment.method})
    return export_classical_segmenter(out_dir, cfg, encoder)
