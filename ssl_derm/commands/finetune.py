"""``ssl-derm finetune``: data + split + encoder -> one protocol -> metrics.json, confusion matrix, TensorBoard.

    ssl-derm finetune --config configs/finetune/linear.yaml --out runs/lin encoder.checkpoint=PATH|none \\
        data.images=[../shared/data/ham10000/images] data.labels=../shared/data/ham10000/labels.csv \\
        split.fraction=0.1 seed=0

metrics.json holds the test side's scores at the top level (balanced_accuracy is the headline; ece, brier,
nll, aurc and the per-skin-tone ``skin_tone`` block of :mod:`ssl_derm.metrics.audit` beside it), the val
side's under ``val``, and the run's facts (protocol, fraction, image counts per side, encoder) beside them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ssl_derm.commands.checks import check_two_classes, finetune_ignored_data_keys
from ssl_derm.encoder_files import adopt_encoder_file
from ssl_derm.encoders import create_encoder
from ssl_derm.engine import distributed as D
from ssl_derm.errors import ConfigError, DataError, SplitError
from ssl_derm.evaluate import external
from ssl_derm.evaluate.calibrate import calibrate
from ssl_derm.metrics.audit import side_scores
from ssl_derm.metrics.bootstrap import classification_cis, mean_cis
from ssl_derm.evaluate.config import FinetuneConfig, check_finetune_config
from ssl_derm.data.splits import Split
from ssl_derm.evaluate.context import Context
from ssl_derm.segmenters.archive_masks import masks_for
from ssl_derm.segmenters.skin_tone import skin_tone_source
from ssl_derm.models.features import FeatureCache
from ssl_derm.runs.finished import check_out_path, resolve_existing
from ssl_derm.metrics.classification import classification_metrics, save_confusion_png, summary_line
from ssl_derm.runs.fingerprint import fingerprint
from ssl_derm.registry import get
from ssl_derm.runs import prepare_out_dir, resolve_device, seed_everything, write_json, write_metrics
from ssl_derm.runs.folder import write_npy



def load_data_and_split(cfg: FinetuneConfig):
    """(dataset, :class:`Split`) from ``cfg.data`` and the split file (made once, then reused)."""
    from ssl_derm.data import load_dataset

    seg = cfg.protocol.segments
    finetune_ignored_data_keys(cfg, seg)
    ds = load_dataset(cfg.data, need_labels=not seg, need_masks=seg)
    if not seg:
        check_two_classes(ds, "data.labels")
    if cfg.split.mode == "given":
        from ssl_derm.data.given_split import given_split

        split = given_split(ds, seed=cfg.split.seed) if ds.labels is not None else None
        if split is None:
            raise ConfigError("split.mode=given needs data.labels with a 'split' column")
        return ds, Split.of(split, ds)
    return ds, Split.for_dataset(ds, cfg.data, seed=cfg.split.seed)


def encoder_key(cfg: FinetuneConfig) -> str:
    """Identifies the encoder's initial weights (for the feature cache): the checkpoint, or the seed."""
    ck = cfg.encoder.checkpoint
    src = f"ckpt:{Path(ck).resolve()}" if ck and str(ck).lower() != "none" else f"random:seed{cfg.seed}"
    return f"{cfg.encoder.name}@{cfg.data.image_size}:{src}"


def run_finetune(cfg: FinetuneConfig, out_dir, dataset=None, split: Union[Split, dict, None] = None,
                 feature_cache: Optional[FeatureCache] = None, quiet: bool = False, existing: str = "error") -> dict:
    """Run ``cfg.protocol.name`` and write its results into ``out_dir``; returns the metrics dict.

    ``dataset``/``split`` skip loading (the label-efficiency table loads them once for all cells);
    ``feature_cache`` lets frozen-feature protocols share one extraction per encoder; ``existing``: what
    to do with a finished run in ``out_dir`` (see :mod:`ssl_derm.runs.finished`).
    """
    from_file = adopt_encoder_file(cfg)  # encoder.name / data.image_size that the encoder file states
    check_finetune_config(cfg)
    protocol = get("protocol", cfg.protocol.name)  # an unknown name fails before any work
    check_out_path(out_dir)
    device = D.init_distributed(resolve_device(cfg.device), cfg.train.dist_timeout_min)  # under torchrun
    main = D.is_main()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    t0 = time.time()
    if dataset is None or split is None:
        if not main:  # rank 0 first: it writes the cache and the split file that the others then read
            D.barrier()
        dataset, split = load_data_and_split(cfg)
        if main:
            D.barrier()
    if int(dataset.images.shape[1]) != cfg.data.image_size:
        raise DataError(f"the dataset's images are {dataset.images.shape[1]} px but data.image_size={cfg.data.image_size}")
    split = Split.of(split, dataset)
    ext = external.load_external(cfg, dataset, need_masks=cfg.protocol.segments)
    derived = None
    if getattr(cfg.protocol, "feature_pool", "avg") != "avg":  # the lesion masks' recipe is part of the result
        from ssl_derm.segmenters.archive_masks import recipe

        derived = {"lesion_masks": recipe()}
    fp = fingerprint(cfg, dataset, split.data, cfg.encoder.checkpoint, ext, derived)
    # decided on rank 0, broadcast: a rank that returned here alone would leave the others in a collective
    done = D.from_rank0(lambda: resolve_existing(out_dir, cfg, fp, existing))
    if done is not None:
        return done
    out = prepare_out_dir(out_dir, cfg) if main else Path(out_dir)
    redraw = cfg.seed if cfg.split.redraw_labelled else None
    rows = split.rows(cfg.split.fraction, redraw_seed=redraw)
    if not len(rows["test"]) and ext is None and not cfg.protocol.segments:
        raise SplitError(_no_test_advice(cfg))  # before training: nothing would be scored
    cache_key = encoder_key(cfg)
    ita_source = skin_tone_source(dataset, ext)  # per-image ITA: the pool's cached beside its image cache
    if ext is not None:  # external rows go behind the pool's, so the split's rows keep their numbers
        dataset, rows["external"] = external.attach(dataset, ext)
        cache_key += f"+external:{ext.key}:{len(ext.ids)}"
    seed_everything(cfg.seed)  # random-init weights depend on the seed only
    encoder = create_encoder(cfg.encoder.name, cfg.data.image_size, cfg.encoder.checkpoint,
                             drop_path_rate=cfg.encoder.drop_path_rate, init=cfg.encoder.init).to(device)
    if D.world_size() > 1:  # the same initial weights on every rank, then each rank its own augmentations
        seed_everything(cfg.seed + 1000 * D.rank())
    from ssl_derm.engine.logger import Logger

    logger = Logger(out, enabled=main)
    ctx = Context(cfg=cfg, encoder=encoder, device=device, dataset=dataset, rows=rows, out_dir=out,
                  logger=logger, feature_cache=feature_cache, cache_key=cache_key, mask_source=masks_for,
                  ita_source=ita_source)
    try:
        result = protocol(ctx)
        metrics = _metrics(ctx, result, logger) if main else {}
        if main:
            from ssl_derm.serve.export import export_protocol_run

            export_protocol_run(ctx, out)  # model.safetensors + model.json, for `ssl-derm predict`
    finally:
        logger.close()
    metrics.update({
        "protocol": cfg.protocol.name, "fraction": cfg.split.fraction, "seed": cfg.seed,
        "n_per_side": {side: int(len(r)) for side, r in rows.items()},
        "encoder": {"name": cfg.encoder.name, "checkpoint": cfg.encoder.checkpoint or "none",
                    "image_size": cfg.data.image_size, "from_encoder_file": sorted(from_file)},
        "labelled_subset": f"redrawn with seed {cfg.seed}" if cfg.split.redraw_labelled else "split file",
        "balance": getattr(cfg.protocol, "balance", "none"), "info": result.get("info", {}), "seconds": round(time.time() - t0, 1),
        "resumed_from_step": int(result.get("info", {}).get("resumed_from_step", 0)),
        "world_size": D.world_size(), "fingerprint": fp, "encoder_sha256": fp["encoder_sha256"],
    })
    if not main:
        return metrics
    write_metrics(out, metrics)
    if not quiet:
        head = f"[{cfg.protocol.name} {cfg.split.fraction:g} seed={cfg.seed} " \
               f"{'pretrained' if cfg.encoder.checkpoint and str(cfg.encoder.checkpoint).lower() != 'none' else 'random'}] "
        print(head + _summary(metrics) + f" -> {out / 'metrics.json'}", flush=True)
    return metrics


def _summary(metrics: dict) -> str:
    def one(m: dict, side: str) -> str:
        if "confusion_matrix" in m:
            return summary_line(m, side + " ")
        return f"{side} dice={m.get('dice', float('nan')):.4f} jaccard={m.get('jaccard', float('nan')):.4f}"
    parts = [one(metrics, "test")] if "confusion_matrix" in metrics or "dice" in metrics else []
    if isinstance(metrics.get("external"), dict):
        parts.append(one(metrics["external"], "external"))
    return "; ".join(parts)


def _no_test_advice(cfg) -> str:
    if cfg.split.mode == "given":
        return ("the split's test side is empty: no labelled image has split=test in the split column of "
                f"data.labels '{cfg.data.labels}'; mark test rows there, or give an external test set with "
                "data.test_images and data.test_labels")
    return f"the split's test side is empty (data.test_frac={cfg.data.test_frac:g}): nothing to score; raise data.test_frac"


def _metrics(ctx: Context, result: dict, logger) -> dict:
    if "seg" in result:
        return _seg_metrics(ctx, result, logger)
    probs, calibration = calibrate(ctx, result["probs"])  # protocol.calibrate (none: unchanged)
    metrics = {"calibration": calibration} if calibration else {}
    if "test" in probs:
        metrics.update(_test_metrics(ctx, probs, logger))
    elif "external" not in ctx.rows:  # with an external set, data.test_frac=0 gives the whole pool to train/val
        raise SplitError(_no_test_advice(ctx.cfg))
    if "external" in ctx.rows:
        metrics["external"] = external.score(ctx, probs["external"], logger)
    return metrics


def _test_metrics(ctx: Context, probs: dict, logger) -> dict:
    classes = ctx.dataset.classes
    test = classification_metrics(ctx.labels("test"), probs["test"], classes)
    groups = external.groups_of(ctx.dataset, ctx.rows["test"])
    test.update(classification_cis(ctx.labels("test"), probs["test"], groups))
    test.update(side_scores(ctx.labels("test"), probs["test"], ctx.skin_tone()[ctx.rows["test"]], classes, groups,
                            ctx.out_dir / "calibration.png", ctx.cfg.protocol.name, logger))
    metrics = dict(test)
    if "val" in probs:
        metrics["val"] = classification_metrics(ctx.labels("val"), probs["val"], classes)
    write_npy(ctx.out_dir / "test_probs.npy", probs["test"].astype(np.float32))
    write_json(ctx.out_dir / "test_ids.json", [ctx.dataset.ids[r] for r in ctx.rows["test"]])
    title = f"{ctx.cfg.protocol.name}, {ctx.cfg.split.fraction:g} labels: balanced acc {test['balanced_accuracy']:.3f}"
    save_confusion_png(np.array(test["confusion_matrix"]), classes, ctx.out_dir / "confusion_matrix.png", title, logger)
    for k in ("balanced_accuracy", "accuracy", "macro_f1", "macro_auroc"):
        if test[k] is not None:
            logger.scalar(f"test/{k}", test[k], 0)
    return metrics


def _seg_cis(ctx: Context, per_image: dict) -> dict:
    """Bootstrap intervals of the mean jaccard and dice over the scored images, grouped by lesion."""
    if not per_image:
        return {}
    ids = list(per_image)
    lesion = dict(zip(ctx.dataset.ids, ctx.dataset.lesion_ids)) if ctx.dataset.lesion_ids is not None else None
    groups = [lesion.get(i, i) for i in ids] if lesion else None
    return mean_cis({k: [per_image[i][k] for i in ids] for k in ("jaccard", "dice") if k in per_image[ids[0]]}, groups)


def _seg_metrics(ctx: Context, result: dict, logger) -> dict:
    seg = result["seg"]
    metrics = {k: v for k, v in seg["mean"].items()}
    metrics["per_image"] = seg.get("per_image")
    metrics.update(_seg_cis(ctx, seg.get("per_image") or {}))
    if "external_seg" in result:  # data.test_images + data.test_masks
        ext = result["external_seg"]
        metrics["external"] = {**ext["mean"], **_seg_cis(ctx, ext.get("per_image") or {}),
                               "images": list(ctx.cfg.data.test_images), "per_image": ext.get("per_image")}
    for k, v in seg["mean"].items():
        if isinstance(v, (int, float)):
            logger.scalar(f"test/{k}", v, 0)
    pred = result.get("pred_masks")
    if pred is not None and len(pred):
        n = min(16, len(pred))
        rows = ctx.rows["test"][:n]
        img = torch.from_numpy(np.ascontiguousarray(ctx.dataset.images[rows])).permute(0, 3, 1, 2)
        overlay = img.clone()
        edge = torch.from_numpy(pred[:n]).bool()
        overlay[:, 1][edge] = 255  # predicted lesion tinted green
        logger.image_grid("test/predicted_masks", torch.cat([img, overlay]), 0)
    return metrics
