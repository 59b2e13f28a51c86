"""``ssl-derm pretrain``: config -> data cache -> encoder + method -> the engine -> exported encoder.

The run folder gets ``config.yaml``, ``version.json``, ``metrics.json``, ``checkpoints/last.pt``,
``tb/`` (TensorBoard) and ``encoder.safetensors`` (its metadata names the timm model and image size), which plain timm loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_derm.augment import build_preset, denormalize
from ssl_derm.config import PretrainConfig
from ssl_derm.data import load_dataset
from ssl_derm.data.splits import Split
from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.engine import CacheBatches, Engine, Hook, Logger
from ssl_derm.engine import distributed as D
from ssl_derm.errors import ConfigError
from ssl_derm.methods import build_method, lesion_term
from ssl_derm.runs import prepare_out_dir, resolve_device, seed_everything, write_metrics


def train_rows(dataset, exclude_split) -> np.ndarray:
    """Cache rows to pretrain on: all, less the test side of ``data.exclude_split`` (so an image that a
    downstream protocol scores is never seen in pretraining, not even without its label)."""
    if not exclude_split:
        return np.arange(len(dataset.ids))
    split = Split.read(exclude_split, dataset.ids)
    rows = split.rows_outside("test")
    print(f"pretrain: leaving out {len(dataset.ids) - len(rows)} test image(s) of {split.path.name}")
    return rows


def export_target(method, which: str):
    """The encoder that is monitored and exported: the online one, or the momentum teacher."""
    if which == "teacher":
        if not hasattr(method, "teacher_encoder"):
            raise ConfigError(f"method.export=teacher: method '{method.cfg.name}' has no momentum teacher; "
                              "use method.export=student")
        return method.teacher_encoder
    return method.encoder


class _Step(nn.Module):
    """Routes DDP's forward to ``method.training_step`` so its gradient-sync hooks fire."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, step, masks=None):
        return lesion_term.training_step(self.method, views, step, masks)


class _MethodHooks(Hook):
    """The method's own after-step work (momentum teachers) and, every ``train.image_log_every``
    steps, the first views as image grids (rank 0)."""

    def __init__(self, method, last_views: dict, logger, every: int, denorm):
        self.method, self.last_views, self.logger, self.every, self.denorm = method, last_views, logger, every, denorm

    def after_step(self, engine, done: int) -> None:
        self.method.on_step_end(done - 1)
        if self.logger is not None and self.every and (done - 1) % self.every == 0 and engine.main:
            for i, v in enumerate(self.last_views.get("views", [])[:2]):
                self.logger.image_grid(f"views/{i}", self.denorm(v[:16]), done - 1)


def run_pretrain(cfg: PretrainConfig, out_dir) -> dict:
    device = D.init_distributed(resolve_device(cfg.device), cfg.train.dist_timeout_min)
    main = D.is_main()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed + D.rank())
    out = Path(out_dir)
    from ssl_derm.evaluate.external import warn_unused_test_keys
    from ssl_derm.runs.finished import check_out_path

    check_out_path(out)
    with_lesion = lesion_term.wanted(cfg.method, cfg.augment.preset)  # the lesion-vs-skin term (methods/lesion_term.py)
    if main:
        warn_unused_test_keys(cfg, "pretrain")
        prepare_out_dir(out, cfg)
    if not main:  # rank 0 first: it writes the caches, the synthetic set and the split file that the others then read
        D.barrier()
    dataset = load_dataset(cfg.data)
    images = dataset.images
    if cfg.augment.lesion_crop_p > 0 or with_lesion:  # annotation-free lesion masks ride along as a 4th channel
        from ssl_derm.augment.lesion import WithLesionChannel
        from ssl_derm.segmenters.archive_masks import archive_masks

        images = WithLesionChannel(dataset.images, archive_masks(dataset, progress=main))
    use_monitor = bool(cfg.monitor.every_steps and dataset.labels is not None and (dataset.labels >= 0).sum() > 1)
    # the split file the finetune protocols use
    split = Split.for_dataset(dataset, cfg.data, seed=0) if use_monitor else None
    if main:
        D.barrier()
    encoder = create_encoder(cfg.encoder.name, cfg.data.image_size, cfg.encoder.checkpoint,
                             cfg.encoder.pretrained, cfg.encoder.drop_path_rate, init=cfg.encoder.init)
    method = build_method(cfg.method, encoder, cfg.train.max_steps).to(device)
    exported = export_target(method, cfg.method.export)
    preset = cfg.augment.preset or method.default_preset
    augment = build_preset(preset, cfg.augment, cfg.data.image_size).to(device)
    if with_lesion:  # before the engine: the optimiser and the checkpoints hold its head
        lesion_term.attach(method, preset)
        augment.keep_masks = True
    rows = train_rows(dataset, cfg.data.exclude_split)
    batches = CacheBatches(images, cfg.train.batch_size, device, seed=cfg.seed,
                           rank=D.rank(), world=D.world_size(), indices=rows)
    logger = Logger(out, enabled=main)

    views_box = {}  # the step's views, for the image-logging hook
    hooks = [_MethodHooks(method, views_box, logger, cfg.train.image_log_every, lambda v: denormalize(v, cfg.augment))]
    knn = None
    if use_monitor and main:  # rank 0 only; its history is saved in the checkpoints
        from ssl_derm.evaluate.monitor import KNNMonitor

        knn = KNNMonitor(exported, dataset, split, cfg.monitor, cfg.augment, device, logger)
        hooks.append(knn)
    acc = cfg.train.accumulate

    def step_fn(module, step: int, micro: int):
        x = batches.get(step * acc + micro)
        with torch.no_grad():
            views = augment(x)
        views_box["views"] = views
        loss, logs = module(views, step, augment.last_masks)
        return loss, {**logs, "batch_size": x.shape[0]}

    engine = Engine(method, cfg.train, device, forward=_Step(method), hooks=hooks, config=cfg,
                    ckpt_dir=out / "checkpoints", logger=logger, name="pretrain",
                    sync_batchnorm=getattr(method, "sync_batchnorm_needed", False),
                    compile_modules=[m for m in (method.encoder, getattr(method, "teacher_encoder", None)) if m is not None])
    ok = False
    try:
        summary = engine.fit(step_fn)
        metrics = {"method": cfg.method.name, "encoder": cfg.encoder.name, "image_size": cfg.data.image_size,
                   "n_images": len(rows), "n_excluded": len(dataset.ids) - len(rows), "preset": preset, "world_size": D.world_size(), **summary}
        metrics["resumed_from_step"] = summary["resumed_from"]
        if knn is not None:
            if not knn.history or knn.history[-1]["step"] != cfg.train.max_steps:
                knn.evaluate(cfg.train.max_steps)
            metrics["knn_monitor"] = knn.history
        if main:
            path = export_encoder(exported, out / "encoder.safetensors", method=cfg.method.name,
                                  exported=cfg.method.export)
            metrics["encoder_file"] = str(path)
            from ssl_derm.runs.fingerprint import file_sha256, fingerprint

            metrics["fingerprint"] = fingerprint(cfg, dataset, None, cfg.encoder.checkpoint)
            metrics["encoder_sha256"] = metrics["fingerprint"]["encoder_sha256"]  # the encoder it started from
            metrics["exported_encoder_sha256"] = file_sha256(path)
            write_metrics(out, metrics)
            print(f"pretrain: {cfg.method.name}/{cfg.encoder.name} {summary['steps']} steps, final loss "
                  f"{summary['final_loss']:.4f}, {summary.get('img_per_s', 0.0):.1f} img/s; encoder -> {path}")
        ok = True
        return metrics
    finally:
        batches.close()
        logger.close()
        if ok:  # after a failure the other ranks are not at this barrier: waiting here would hang the job
            D.barrier()
