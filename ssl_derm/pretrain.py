"""``ssl-derm pretrain``: config -> data cache -> encoder + method -> fit -> exported encoder.

The run folder gets ``config.yaml``, ``version.json``, ``metrics.json``, ``checkpoints/last.pt``,
``tb/`` (TensorBoard) and ``encoder.safetensors`` (+ ``encoder.json``), which plain timm loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ssl_derm.augment import build_preset, denormalize
from ssl_derm.config import PretrainConfig
from ssl_derm.data import load_dataset
from ssl_derm.data.splits import split_for
from ssl_derm.encoders import create_encoder, export_encoder
from ssl_derm.engine import CacheBatches, Logger, fit
from ssl_derm.engine import distributed as D
from ssl_derm.methods import build_method
from ssl_derm.runs import prepare_out_dir, resolve_device, seed_everything, write_json, write_metrics


def train_rows(dataset, exclude_split) -> np.ndarray:
    """Cache rows to pretrain on: all, less the test side of ``data.exclude_split`` (so an image that a
    downstream protocol scores is never seen in pretraining, not even without its label)."""
    rows = np.arange(len(dataset.ids))
    if not exclude_split:
        return rows
    path = Path(exclude_split)
    if not path.is_file():
        raise ValueError(f"data.exclude_split '{path}' does not exist; give the split JSON that `ssl-derm finetune` "
                         "wrote (its path is in that run's metrics.json) or leave the key unset")
    test = set(json.loads(path.read_text()).get("test", []))
    if not test:
        raise ValueError(f"data.exclude_split '{path}' has no 'test' ids; is it a ssl-derm split file?")
    keep = np.array([i not in test for i in dataset.ids])
    print(f"pretrain: leaving out {int((~keep).sum())} test image(s) of {path.name}")
    return rows[keep]


def export_target(method, which: str):
    """The encoder that is monitored and exported: the online one, or the momentum teacher."""
    if which == "teacher":
        if not hasattr(method, "teacher_encoder"):
            raise ValueError(f"method.export=teacher: method '{method.cfg.name}' has no momentum teacher; "
                             "use method.export=student")
        return method.teacher_encoder
    return method.encoder


def run_pretrain(cfg: PretrainConfig, out_dir) -> dict:
    device = D.init_distributed(resolve_device(cfg.device))
    main = D.is_main()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed + D.rank())
    out = Path(out_dir)
    from ssl_derm.evaluate.external import warn_unused_test_keys
    from ssl_derm.evaluate.finished import check_out_path

    check_out_path(out)
    if main:
        warn_unused_test_keys(cfg, "pretrain")
        prepare_out_dir(out, cfg)
    if not main:  # rank 0 first: it writes the caches, the synthetic set and the split file that the others then read
        D.barrier()
    dataset = load_dataset(cfg.data)
    use_monitor = bool(cfg.monitor.every_steps and dataset.labels is not None and (dataset.labels >= 0).sum() > 1)
    split = split_for(dataset, cfg.data, seed=0) if use_monitor else None  # the split file the finetune protocols use
    if main:
        D.barrier()
    encoder = create_encoder(cfg.encoder.name, cfg.data.image_size, cfg.encoder.checkpoint,
                             cfg.encoder.pretrained, cfg.encoder.drop_path_rate)
    method = build_method(cfg.method, encoder, cfg.train.max_steps).to(device)
    exported = export_target(method, cfg.method.export)
    preset = cfg.augment.preset or method.default_preset
    augment = build_preset(preset, cfg.augment, cfg.data.image_size).to(device)
    rows = train_rows(dataset, cfg.data.exclude_split)
    batches = CacheBatches(dataset.images, cfg.train.batch_size, device, seed=cfg.seed,
                           rank=D.rank(), world=D.world_size(), indices=rows)
    logger = Logger(out, enabled=main)

    monitor = None
    if use_monitor:
        from ssl_derm.monitor import KNNMonitor

        knn = KNNMonitor(exported, dataset, split, cfg.monitor, cfg.augment, device)
        monitor = knn if main else None

    try:
        summary = fit(method, batches, augment, cfg.train, out, device, logger=logger, monitor=monitor,
                      denormalize=lambda v: denormalize(v, cfg.augment))
        metrics = {"method": cfg.method.name, "encoder": cfg.encoder.name, "image_size": cfg.data.image_size,
                   "n_images": len(rows), "n_excluded": len(dataset.ids) - len(rows), "preset": preset, "world_size": D.world_size(), **summary}
        if monitor is not None:
            if not knn.history or knn.history[-1]["step"] != cfg.train.max_steps:
                logger.scalars(knn.evaluate(cfg.train.max_steps), cfg.train.max_steps, prefix="monitor/")
            metrics["knn_monitor"] = knn.history
        if main:
            path = export_encoder(exported, out / "encoder.safetensors")
            write_json(out / "encoder.json", {"timm_name": cfg.encoder.name, "img_size": cfg.data.image_size,
                                              "file": path.name, "method": cfg.method.name,
                                              "exported": cfg.method.export})
            metrics["encoder_file"] = str(path)
            from ssl_derm.fingerprint import file_sha256, fingerprint

            metrics["fingerprint"] = fingerprint(cfg, dataset, None, cfg.encoder.checkpoint)
            metrics["encoder_sha256"] = metrics["fingerprint"]["encoder_sha256"]  # the encoder it started from
            metrics["exported_encoder_sha256"] = file_sha256(path)
            write_metrics(out, metrics)
            print(f"pretrain: {cfg.method.name}/{cfg.encoder.name} {summary['steps']} steps, final loss "
                  f"{summary['final_loss']:.4f}, {summary['img_per_s']:.1f} img/s; encoder -> {path}")
        return metrics
    finally:
        batches.close()
        logger.close()
        D.barrier()
