"""Throughput benchmark: how close ssl-derm's input path gets to the bare training step, and how it
compares with lightly's standard JPEG + DataLoader path, in one run on one device.

Every path runs the same step through the same :class:`~ssl_derm.engine.Engine` that ``ssl-derm
pretrain`` uses (``methods.step.MethodStep``: precision ``train.precision=auto``, clipping, the
schedule, the method's momentum update after each step); only the source of the views differs:

(a) ceiling: views that already sit on the device (one augmented batch, reused);
(b) ssl-derm: the uint8 decode-once cache (memmap) -> ``engine.CacheBatches`` -> preset on the device
    -> step, twice on CUDA: resident (the cache copied to the GPU once) and streamed (pinned host
    batches from a prefetch thread, as for an archive larger than the GPU budget);
(c) lightly: JPEG files -> ``lightly.data.LightlyDataset`` with lightly's transform for the method
    (SimCLRTransform, DINOTransform, MAETransform) in DataLoader workers (16 by default, as a GPU node
    would run it; at least 4 batches per worker per epoch are needed for a steady figure) -> step.

    from ssl_derm.commands.bench import run_throughput
    r = run_throughput("simclr", "resnet50", 224, 256, 50, "cuda")   # r["ratio_b_a"], r["ratio_b_c"]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ssl_derm.augment import build_preset
from ssl_derm.config import AugmentConfig, DataConfig, TrainConfig, plugin_settings
from ssl_derm.encoders import create_encoder
from ssl_derm.engine import Engine, Hook
from ssl_derm.errors import ConfigError, DeviceError
from ssl_derm.methods import build_method
from ssl_derm.methods.step import MethodStep, cache_step

TINY_METHOD = dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64, dino_out_dim=256, decoder_dim=64,
                   decoder_depth=1, mask_patch_size=16)  # each method takes the keys it has
LIGHTLY_WORKERS = 16
BATCHES_PER_WORKER = 4  # per epoch: fewer and the loader's start-up shows in every epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock(Hook):
    """Times the steps after ``warmup`` (the device synchronised at both ends)."""

    def __init__(self, warmup: int, steps: int, device):
        self.warmup, self.end, self.device = warmup, warmup + steps, device
        self.t0 = self.t1 = None

    def after_step(self, engine, done: int) -> None:
        if done in (self.warmup, self.end):
            _sync(self.device)
            if done == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()

    def on_end(self, engine) -> None:
        if self.t0 is None or self.t1 is None:
            raise ConfigError("the throughput bench needs at least one warm-up and one timed step")


class _Momentum(Hook):
    """The method's own after-step work (a momentum teacher), as pretraining runs it."""

    def __init__(self, method):
        self.method = method

    def after_step(self, engine, done: int) -> None:
        self.method.on_step_end(done - 1)


def _engine_img_s(method, step_fn: Callable, batch_size: int, steps: int, warmup: int, device,
                  precision: str = "auto", compile: bool = False) -> dict:
    """{"img_s", "precision"}: ``steps`` timed pretraining steps after ``warmup`` through the Engine."""
    cfg = TrainConfig(max_steps=warmup + steps, batch_size=batch_size, ckpt_every=0, log_every=10 ** 9,
                      precision=precision, compile=compile, warmup_steps=0)
    clock = _Clock(warmup, steps, device)
    engine = Engine(method, cfg, device, forward=MethodStep(method), hooks=[_Momentum(method), clock],
                    progress=False, compile_modules=[method.encoder])
    engine.fit(step_fn)
    return {"img_s": batch_size * steps / (clock.t1 - clock.t0), "precision": engine.precision.kind}


def _lightly_transform(method: str, image_size: int, aug: AugmentConfig, local: int):
    from lightly.transforms import DINOTransform, MAETransform, SimCLRTransform

    from ssl_derm.registry import get

    preset = get("method", method).default_preset  # the lightly transform that makes the same kind of views
    if preset == "multi_crop":
        return DINOTransform(global_crop_size=image_size, local_crop_size=local, n_local_views=aug.n_local_crops)
    if preset == "masked":
        return MAETransform(input_size=image_size)
    return SimCLRTransform(input_size=image_size)


def _source_images(data_root: Optional[str], n: int, src_size: int, tmp: Path) -> Path:
    """The JPEG folder both paths read: ``data_root`` or synthetic lesions written to ``tmp``."""
    if data_root:
        return Path(data_root)
    from ssl_derm.data import write_synthetic

    return write_synthetic(tmp / "src", n, src_size, seed=0, quiet=True) / "images"


class _Ceiling:
    """The ceiling's batch source and preset at once: the same device batch and its views every step."""

    last_masks = None

    def __init__(self, x: torch.Tensor, views):
        self.x, self.views = x, views

    def get(self, step: int) -> torch.Tensor:
        return self.x

    def __call__(self, x: torch.Tensor):
        return self.views


def run_throughput(method: str, encoder: str, image_size: int, batch_size: int, steps: int, device,
                   data_root: Optional[str] = None, quick: bool = False, workers: Optional[int] = None,
                   n_images: Optional[int] = None, warmup: int = 3, precision: str = "auto",
                   compile: bool = False) -> dict:
    """Measure (a), (b), (c) above; print img/s of each and the ratios; return them as a dict.

    ``quick``: tiny method heads and few images, for CPU/CI (the sizes given are still used).
    ``workers``: DataLoader workers for (c) (default 16). ``n_images``: synthetic images to write
    (default: enough for 4 batches per worker per epoch).
    """
    from lightly.data import LightlyDataset

    from ssl_derm.augment.multi_crop import local_size
    from ssl_derm.data import load_dataset
    from ssl_derm.engine.batches import CacheBatches

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device} was asked for but no CUDA device is available; use --device cpu")
    workers = LIGHTLY_WORKERS if workers is None else workers
    n_images = n_images or (max(2 * batch_size, 32) if quick else BATCHES_PER_WORKER * max(workers, 1) * batch_size)
    torch.manual_seed(0)
    enc = create_encoder(encoder, image_size)
    settings = plugin_settings("method", method, TINY_METHOD if quick else {}, lenient=True)
    m = build_method(settings, enc, 10 ** 6).to(device)
    aug = AugmentConfig()
    preset = build_preset(m.default_preset, aug, image_size).to(device)
    timed = dict(batch_size=batch_size, steps=steps, warmup=warmup, device=device, precision=precision,
                 compile=compile)

    result = {"method": method, "encoder": encoder, "image_size": image_size, "batch_size": batch_size,
              "steps": steps, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "workers": workers, "quick": quick, "compile": compile}
    with tempfile.TemporaryDirectory(prefix="ssl-derm-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        src = _source_images(data_root, n_images, image_size if quick else round(image_size * 2), tmp)
        result["jpeg_write_s"] = 0.0 if data_root else time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = load_dataset(DataConfig(images=[str(src)], image_size=image_size, cache_dir=str(tmp / "cache")),
                          progress=False)
        result["cache_build_s"] = time.perf_counter() - t0
        result["n_images"] = len(ds)

        # (a) ceiling: one augmented batch, already on the device
        streamed = CacheBatches(ds.images, batch_size, device, seed=0, resident_fraction=0.0)
        try:
            x0 = streamed.get(0)
        finally:
            streamed.close()
        with torch.no_grad():
            ceiling = _Ceiling(x0, preset(x0))
        r = _engine_img_s(m, cache_step(ceiling, ceiling), **timed)
        result["ceiling_img_s"], result["precision"] = r["img_s"], r["precision"]
        result["augment_only_img_s"] = _augment_img_s(preset, x0, steps, warmup, device)

        # (b) ssl-derm: cache -> device -> preset -> step, resident (CUDA) and streamed
        result["resident_on_gpu"] = False
        if device.type == "cuda":
            resident = CacheBatches(ds.images, batch_size, device, seed=0)
            try:
                if resident.resident is not None:
                    result["resident_on_gpu"] = True
                    result["sslderm_resident_img_s"] = _engine_img_s(m, cache_step(resident, preset), **timed)["img_s"]
            finally:
                resident.close()
        streamed = CacheBatches(ds.images, batch_size, device, seed=0, resident_fraction=0.0)
        try:
            result["sslderm_streamed_img_s"] = _engine_img_s(m, cache_step(streamed, preset), **timed)["img_s"]
        finally:
            streamed.close()
        result["sslderm_img_s"] = result.get("sslderm_resident_img_s", result["sslderm_streamed_img_s"])

        # (c) lightly: JPEG files -> LightlyDataset + transform in workers -> device -> step
        tf = _lightly_transform(method, image_size, aug, local_size(image_size, aug.local_crop_size))
        loader = torch.utils.data.DataLoader(
            LightlyDataset(input_dir=str(src), transform=tf), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        if len(loader) == 0:
            raise ConfigError(f"batch_size={batch_size} is larger than the {len(ds)} images in {src}")
        result["lightly_batches_per_epoch"] = len(loader)
        result["lightly_batches_per_worker"] = len(loader) / max(workers, 1)
        if workers and len(loader) < BATCHES_PER_WORKER * workers:
            print(f"bench: lightly's epoch has {len(loader)} batches for {workers} workers (fewer than "
                  f"{BATCHES_PER_WORKER} each): its figure includes worker start-up; give more images (--n-images)")
        result["lightly_img_s"] = _engine_img_s(m, _LightlySteps(loader, device).step_fn, **timed)["img_s"]
        del loader

    result["ratio_b_a"] = result["sslderm_img_s"] / result["ceiling_img_s"]
    result["ratio_b_c"] = result["sslderm_img_s"] / result["lightly_img_s"]
    result["ratio_streamed_a"] = result["sslderm_streamed_img_s"] / result["ceiling_img_s"]
    result["ratio_streamed_c"] = result["sslderm_streamed_img_s"] / result["lightly_img_s"]
    print(format_result(result))
    return result


def _augment_img_s(preset, x0: torch.Tensor, steps: int, warmup: int, device) -> float:
    """The preset alone on one device batch, for the record."""
    with torch.no_grad():
        for _ in range(warmup):
            preset(x0)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            preset(x0)
        _sync(device)
    return x0.shape[0] * steps / (time.perf_counter() - t0)


class _LightlySteps:
    """The engine's step function on batches of lightly's DataLoader (one epoch after another)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device
        self.it = iter(loader)

    def step_fn(self, module, step: int, micro: int):
        try:
            views, _, _ = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            views, _, _ = next(self.it)
        views = [v.to(self.device, non_blocking=True) for v in views]
        loss, logs = module(views, step, None)
        return loss, {**logs, "batch_size": views[0].shape[0]}


def format_result(r: dict) -> str:
    return "\n".join([
        f"throughput {r['method']}/{r['encoder']} {r['image_size']}px batch {r['batch_size']}, {r['steps']} timed steps "
        f"on {r['device']} ({r['n_images']} images, {r['workers']} loader workers, {r['lightly_batches_per_epoch']} batches "
        f"per epoch, {r['precision']}{', compiled' if r['compile'] else ''}{', quick' if r['quick'] else ''})",
        f"  (a) ceiling, views already on device : {r['ceiling_img_s']:9.1f} img/s",
        f"  (b) ssl-derm cache -> preset -> step : {r['sslderm_img_s']:9.1f} img/s"
        f"  (cache {'resident on GPU' if r['resident_on_gpu'] else 'memmap -> host batches'})",
        f"      streamed (pinned host batches)   : {r['sslderm_streamed_img_s']:9.1f} img/s",
        f"  (c) lightly JPEG + DataLoader        : {r['lightly_img_s']:9.1f} img/s",
        f"      augmentation alone (preset)      : {r['augment_only_img_s']:9.1f} img/s",
        f"  b/a = {r['ratio_b_a']:.3f}   b/c = {r['ratio_b_c']:.2f}   streamed/a = {r['ratio_streamed_a']:.3f}"
        f"   streamed/c = {r['ratio_streamed_c']:.2f}",
    ])


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--method", default="simclr")
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-root", default=None, help="folder of JPEGs (default: synthetic lesions in a temp dir)")
    p.add_argument("--workers", type=int, default=None, help=f"DataLoader workers for lightly's path (default {LIGHTLY_WORKERS})")
    p.add_argument("--precision", default="auto", help="train.precision of every path: auto | bf16 | fp16 | fp32")
    p.add_argument("--compile", action="store_true", help="train.compile=true on every path")
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 with --quick, as shared CI cores thrash with more)")
    p.add_argument("--quick", action="store_true", help="CPU/CI: resnet18 at 64 px, batch 16, 4 steps")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    return p


def main(argv=None) -> dict:
    args = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> dict:
    from ssl_derm.runs import resolve_device, write_json

    kw = dict(method=args.method, encoder=args.encoder, image_size=args.image_size, batch_size=args.batch_size,
              steps=args.steps)
    if args.quick:  # tiny defaults unless given explicitly
        defaults = add_arguments(argparse.ArgumentParser()).parse_args([])
        tiny = dict(encoder="resnet18", image_size=64, batch_size=16, steps=4)
        kw.update({k: v for k, v in tiny.items() if kw[k] == getattr(defaults, k)})
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    r = run_throughput(device=resolve_device(args.device), data_root=args.data_root, quick=args.quick,
                       workers=args.workers if args.workers is not None else (2 if args.quick else None),
                       n_images=args.n_images, precision=args.precision, compile=args.compile, **kw)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, r)
    return r
