"""``ssl-derm segment``: images -> ``masks/<id>.png`` (each image's original size) and ``metrics.json``.

    run_segment(load_config(SegmentConfig, "configs/segment/default.yaml", overrides), out_dir) -> metrics

Masks (``data.masks``, or the synthetic set's own) are read only by :mod:`ssl_derm.segmenters.scoring`,
after every prediction is made. metrics.json holds the means (``mean``), per-image values
(``per_image``), seconds per image, the skin-tone counts (``skin_tone``; per image in ``skin_tone.csv``:
the ITA of the skin around the final masks, :mod:`ssl_derm.segmenters.skin_tone`), and one entry per stage (``stages``: the method's masks, then each
self-training round; a round's seconds per image include its training). Overlay grids go to
``overlays_<stage>.png`` and TensorBoard (``tb/``).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ssl_derm.data import load_dataset
from ssl_derm.data.dataset import SYNTHETIC, synthetic_folder
from ssl_derm.encoder_files import adopt_encoder_file
from ssl_derm.encoders import create_encoder
from ssl_derm.engine.logger import Logger
from ssl_derm.errors import DataError
from ssl_derm.metrics.segmentation import METRICS
from ssl_derm.runs import prepare_out_dir, resolve_device, seed_everything, torch_threads, write_metrics
from ssl_derm.segmenters.base import build_segmenter, method_name, segmenter_class
from ssl_derm.segmenters.config import SegmentConfig, check_segment_config
from ssl_derm.segmenters.overlay import save_overlay_grid
from ssl_derm.segmenters.pipeline import predict_all
from ssl_derm.segmenters.scoring import score_predictions, write_masks


def resolve_data(cfg: SegmentConfig):
    """-> (DataConfig without masks, masks folder or None). The synthetic set brings its own masks."""
    data = copy.deepcopy(cfg.data)
    masks_dir = data.masks
    if list(data.images) == [SYNTHETIC]:
        root = synthetic_folder(data)
        data.images = [str(root / "images")]
        masks_dir = masks_dir or str(root / "masks")
    data.masks, data.labels = None, None  # the segmenters must never see masks
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise DataError(f"data.masks '{masks_dir}' is not a folder; give the folder of <id>.png masks or leave it unset")
    return data, masks_dir


def _rows(n: int, cfg: SegmentConfig) -> np.ndarray:
    k = cfg.segment.max_images
    if 0 < k < n:
        return np.sort(np.random.default_rng(cfg.seed).choice(n, k, replace=False))
    return np.arange(n)


def _summary(stages: dict) -> str:
    head = f"{'stage':<22}{'n':>6}" + "".join(f"{k[:12]:>14}" for k in METRICS) + f"{'s/image':>10}"
    lines = [head, "-" * len(head)]
    for name, st in stages.items():
        m = st.get("mean") or {}
        vals = "".join(f"{m[k]:>14.4f}" if k in m else f"{'-':>14}" for k in METRICS)
        lines.append(f"{name:<22}{m.get('n', st['n_images']):>6}{vals}{st['seconds_per_image']:>10.4f}")
    return "\n".join(lines)


def run_segment(cfg: SegmentConfig, out_dir, existing: str = "error") -> dict:
    """Segment ``cfg.data.images``, write masks and overlays into ``out_dir``, score them when masks are
    known; returns the metrics dict (also in ``out_dir/metrics.json``). ``existing``: what to do with a
    finished run in ``out_dir`` (see :mod:`ssl_derm.runs.finished`)."""
    check_segment_config(cfg)
    segmenter_class(cfg.segment.method)  # an unknown method fails before any image is decoded
    with torch_threads(cfg.train.num_threads):  # for this run only: the caller's setting comes back afterwards
        return _run(cfg, out_dir, existing)


def _run(cfg: SegmentConfig, out_dir, existing: str) -> dict:
    from ssl_derm.commands.checks import segment_unused_keys
    from ssl_derm.runs.fingerprint import fingerprint
    from ssl_derm.runs.finished import check_out_path, resolve_existing

    uses_encoder = segmenter_class(method_name(cfg.segment.method)).needs_encoder or cfg.selftrain.rounds > 0
    segment_unused_keys(cfg, uses_encoder)
    from_file = adopt_encoder_file(cfg, image_size=False) if uses_encoder else {}  # data.image_size: the masks' size
    check_out_path(out_dir)
    device = resolve_device(cfg.device)
    data_cfg, masks_dir = resolve_data(cfg)
    ds = load_dataset(data_cfg)
    fp = fingerprint(cfg, ds, None, cfg.encoder.checkpoint if uses_encoder else None)
    done = resolve_existing(out_dir, cfg, fp, existing)
    if done is not None:
        return done
    out = prepare_out_dir(out_dir, cfg)
    seed_everything(cfg.seed)
    rows = _rows(len(ds), cfg)
    ids = [ds.ids[r] for r in rows]
    sizes = [ds.orig_sizes[r] for r in rows]
    name = method_name(cfg.segment.method)
    encoder = None
    if segmenter_class(name).needs_encoder:
        encoder = create_encoder(cfg.encoder.name, ds.image_size, cfg.encoder.checkpoint, init=cfg.encoder.init).to(device).eval()
    segmenter = build_segmenter(cfg, encoder)
    logger = Logger(out)
    overlay_rows = list(range(min(cfg.segment.overlay_n, len(rows))))

    scores, masks, seconds = predict_all(segmenter, ds.images, rows, cfg.segment.batch_size)
    stages = {name: {"n_images": len(rows), "seconds_per_image": seconds / max(len(rows), 1)}}
    resumed = 0
    results = {name: masks}  # masks of every stage are scored; scores are only needed by the next round
    model = None
    for r in range(1, cfg.selftrain.rounds + 1):
        from ssl_derm.segmenters.selftrain import predict_round, train_round

        t0 = time.perf_counter()
        model = train_round(cfg, ds.images, rows, scores, masks, device, logger, r, out_dir=out)
        resumed = max(resumed, getattr(model, "resumed_from_step", 0))
        scores, masks = predict_round(model, cfg, ds.images, rows, device)
        stage = f"selftrain_{r}"
        stages[stage] = {"n_images": len(rows), "n_teaching": model.n_teaching,
                         "seconds_per_image": (time.perf_counter() - t0) / max(len(rows), 1)}
        results[stage] = masks
    final = list(stages)[-1]
    from ssl_derm.serve.export import export_segment_run

    export_segment_run(out, cfg, ds.image_size, model, encoder)  # model.json (+ weights) for `ssl-derm predict`
    if cfg.segment.write_masks:
        write_masks(out / "masks", ids, results[final], sizes, cfg.segment.upsample)

    # --- scoring: the first time any mask file is read
    metrics = {"method": name, "image_size": ds.image_size, "n_images": len(rows),
               "encoder": cfg.encoder.name if encoder is not None or cfg.selftrain.rounds else None,
               "encoder_checkpoint": cfg.encoder.checkpoint, "encoder_from_file": sorted(from_file),
               "device": str(device), "resumed_from_step": resumed}
    from ssl_derm.metrics.skin_tone import distribution, write_skin_tone_csv
    from ssl_derm.segmenters.skin_tone import rows_ita

    ita = rows_ita(ds.images, rows, results[final], cfg.segment.batch_size)  # skin around this run's lesions
    write_skin_tone_csv(out / "skin_tone.csv", ids, ita)
    metrics["skin_tone"] = distribution(ita)
    small_images = np.asarray(ds.images[rows[overlay_rows]]) if overlay_rows else None
    for k, (stage, m) in enumerate(results.items()):
        true_small = None
        if masks_dir is not None:
            res, small = score_predictions(ids, m, sizes, masks_dir, cfg.segment.upsample, overlay_rows)
            stages[stage].update(res)
            if res["mean"]["n"] == 0 and k == 0:
                print(f"[ssl-derm] no mask in '{masks_dir}' matched an image id (e.g. {ids[:2]}; "
                      f"{res['missing_examples'][:2]}): nothing scored")
            if small and len(small) == len(overlay_rows):
                true_small = np.stack([small[i] for i in overlay_rows])
            for key, v in res["mean"].items():
                if key != "n":
                    logger.scalar(f"segment/{stage}/{key}", v, k)
        if small_images is not None:
            save_overlay_grid(out / f"overlays_{stage}.png", small_images, m[overlay_rows], true_small,
                              logger=logger, tag=f"segment/overlays/{stage}", step=k)
    logger.close()
    metrics["stages"] = {s: {k: v for k, v in st.items() if k != "per_image"} for s, st in stages.items()}
    metrics["seconds_per_image"] = stages[name]["seconds_per_image"]
    metrics["mean"] = stages[final].get("mean")
    metrics["per_image"] = stages[final].get("per_image")
    per = metrics["per_image"] or {}
    if per and metrics["mean"]:  # bootstrap intervals of the means, resampling images
        from ssl_derm.metrics.bootstrap import mean_cis

        ids_ = list(per)
        metrics["mean"].update(mean_cis({k: [per[i][k] for i in ids_] for k in ("jaccard", "dice") if k in per[ids_[0]]}))
    metrics["fingerprint"] = fp
    metrics["encoder_sha256"] = metrics["fingerprint"]["encoder_sha256"]
    write_metrics(out, metrics)
    print(_summary(stages))
    if masks_dir is None:
        print(f"[ssl-derm] no data.masks given: wrote {len(ids)} masks to {out / 'masks'}, nothing scored")
    return metrics
