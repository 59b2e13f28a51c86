"""Throughput benchmark: how close ssl-derm's input path gets to the bare training step, and how it
compares with lightly's standard JPEG + DataLoader path, in one run on one device.

(a) ceiling: the training step (forward, backward, optimiser step; bf16 autocast on CUDA) on view
    tensors that already sit on the device;
(b) ssl-derm: the uint8 decode-once cache (memmap) -> ``engine.CacheBatches`` (resident on the GPU when
    the cache fits, else pinned host batches copied non_blocking) -> kornia/fused preset -> step;
(c) lightly: JPEG files -> ``lightly.data.LightlyDataset`` with lightly's transform for the method
    (SimCLRTransform, DINOTransform, MAETransform) in DataLoader workers -> device -> step.

    from ssl_derm.commands.bench import run_throughput
    r = run_throughput("simclr", "resnet50", 224, 256, 50, "cuda")   # r["ratio_b_a"], r["ratio_b_c"]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch

from ssl_derm.augment import build_preset
from ssl_derm.config import AugmentConfig, DataConfig, plugin_settings
from ssl_derm.encoders import create_encoder
from ssl_derm.errors import ConfigError, DeviceError
from ssl_derm.methods import build_method

TINY_METHOD = dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64, dino_out_dim=256, decoder_dim=64,
                   decoder_depth=1, mask_patch_size=16)  # each method takes the keys it has


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[int], int], steps: int, warmup: int, device: torch.device) -> float:
    """Run ``fn(step) -> images`` warmup + steps times; images per second over the timed steps."""
    for s in range(warmup):
        fn(s)
    _sync(device)
    t0, seen = time.perf_counter(), 0
    for s in range(warmup, warmup + steps):
        seen += fn(s)
    _sync(device)
    return seen / (time.perf_counter() - t0)


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


def run_throughput(method: str, encoder: str, image_size: int, batch_size: int, steps: int, device,
                   data_root: Optional[str] = None, quick: bool = False, workers: Optional[int] = None,
                   n_images: Optional[int] = None, warmup: int = 3) -> dict:
    """Measure (a), (b), (c) above; print img/s of each and the ratios b/a and b/c; return them as a dict.

    ``quick``: tiny method heads and few images, for CPU/CI (the sizes given are still used).
    ``workers``: DataLoader workers for (c) (default min(8, CPUs)). ``n_images``: synthetic images to write.
    """
    from lightly.data import LightlyDataset

    from ssl_derm.augment.multi_crop import local_size
    from ssl_derm.data import load_dataset
    from ssl_derm.engine.batches import CacheBatches

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device} was asked for but no CUDA device is available; use --device cpu")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    n_images = n_images or (max(2 * batch_size, 32) if quick else max(8 * batch_size, 512))
    torch.manual_seed(0)
    enc = create_encoder(encoder, image_size)
    settings = plugin_settings("method", method, TINY_METHOD if quick else {}, lenient=True)
    m = build_method(settings, enc, steps + warmup).to(device)
    aug = AugmentConfig()
    preset = build_preset(m.default_preset, aug, image_size).to(device)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    amp = device.type == "cuda"
    m.train()

    def train_step(views: List[torch.Tensor], step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = m.training_step(views, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.on_step_end(step)

    result = {"method": method, "encoder": encoder, "image_size": image_size, "batch_size": batch_size,
              "steps": steps, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "n_images": n_images, "workers": workers, "quick": quick}
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

        # (a) ceiling: fixed views on the device
        batches = CacheBatches(ds.images, batch_size, device, seed=0)
        fixed = preset(batches.get(0))
        result["ceiling_img_s"] = _timed(lambda s: (train_step(fixed, s), batch_size)[1], steps, warmup, device)

        # augmentation alone, for the record
        x0 = batches.get(0)
        result["augment_only_img_s"] = _timed(lambda s: (preset(x0), batch_size)[1], steps, warmup, device)

        # (b) ssl-derm: cache -> device -> preset -> step
        result["resident_on_gpu"] = batches.resident is not None
        try:
            result["sslderm_img_s"] = _timed(lambda s: (train_step(preset(batches.get(s)), s), batch_size)[1],
                                             steps, warmup, device)
        finally:
            batches.close()

        # (c) lightly: JPEG files -> LightlyDataset + transform in workers -> device -> step
        tf = _lightly_transform(method, image_size, aug, local_size(image_size, aug.local_crop_size))
        loader = torch.utils.data.DataLoader(
            LightlyDataset(input_dir=str(src), transform=tf), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        if len(loader) == 0:
            raise ConfigError(f"batch_size={batch_size} is larger than the {len(ds)} images in {src}")

        def batches_c():
            while True:
                yield from loader

        it = batches_c()

        def lightly_step(s: int) -> int:
            views, _, _ = next(it)
            train_step([v.to(device, non_blocking=True) for v in views], s)
            return batch_size

        result["lightly_img_s"] = _timed(lightly_step, steps, warmup, device)
        del it, loader

    result["ratio_b_a"] = result["sslderm_img_s"] / result["ceiling_img_s"]
    result["ratio_b_c"] = result["sslderm_img_s"] / result["lightly_img_s"]
    print(format_result(result))
    return result


def format_result(r: dict) -> str:
    return "\n".join([
        f"throughput {r['method']}/{r['encoder']} {r['image_size']}px batch {r['batch_size']}, {r['steps']} timed steps "
        f"on {r['device']} ({r['n_images']} images, {r['workers']} loader workers{', quick' if r['quick'] else ''})",
        f"  (a) ceiling, views already on device : {r['ceiling_img_s']:9.1f} img/s",
        f"  (b) ssl-derm cache -> preset -> step : {r['sslderm_img_s']:9.1f} img/s"
        f"  (cache {'resident on GPU' if r['resident_on_gpu'] else 'memmap -> host batches'})",
        f"  (c) lightly JPEG + DataLoader        : {r['lightly_img_s']:9.1f} img/s",
        f"      augmentation alone (preset)      : {r['augment_only_img_s']:9.1f} img/s",
        f"  b/a = {r['ratio_b_a']:.3f}   b/c = {r['ratio_b_c']:.2f}",
    ])


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--method", default="simclr")
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-root", default=None, help="folder of JPEGs (default: synthetic lesions in a temp dir)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for lightly's path")
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
                       n_images=args.n_images, **kw)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, r)
    return r
