"""Time the decode-once cache: build (cold), reuse (warm), and random-batch reads.

    python benchmarks/cache_speed.py                      # the four shared sets pooled, 128 px
    python benchmarks/cache_speed.py --roots DIR... --size 64 --cache-dir /tmp/c --workers 1

Each run builds into a fresh folder under --cache-dir (deleted first), so build times are always cold
decodes; reads are from the page cache (the file was just written), which is the steady state of training.

Recorded (2 CPU cores shared with other jobs, load average 4-11, so ranges; 4 shared sets, 128 px):
    11,115 distinct ids (2,127 duplicate files skipped), listing 0.15-0.2 s
    build 7.0-16.8 s (660-1,600 img/s) with 2 threads; 1 thread 822 img/s vs 2 threads 847 img/s at load 4-5
    disk 522 MiB (the raw array; sources 56 MiB of JPEG); reuse (stat + hash, no decode) 0.23-0.6 s
    Dataset.batch(256 random) 12k-22k img/s (the NHWC->NCHW copy dominates); raw memmap rows 93k-290k img/s
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from ssl_derm.config import DataConfig
from ssl_derm.data import ImageCache, list_images, load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_ROOTS = [str(SHARED / s / "images") for s in ("ham10000", "isic2017", "isic_uda1", "isic_skin9")]


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", nargs="+", default=DEFAULT_ROOTS)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cache-dir", default="/tmp/ssl-derm-bench-cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args(argv)

    cache_dir = Path(args.cache_dir) / f"w{args.workers}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    found = list_images(args.roots)
    t_list = time.perf_counter() - t0
    print(f"roots: {len(args.roots)}; distinct ids: {len(found)}; duplicate files skipped: {len(found.duplicates)}; "
          f"listing {t_list:.2f} s")
    src_bytes = sum(Path(p).stat().st_size for p in found.paths)

    cache = ImageCache(args.size, str(cache_dir), workers=args.workers)
    t0 = time.perf_counter()
    cached = cache.images(found.ids, found.paths)
    t_build = time.perf_counter() - t0
    n = len(cached.ids)
    print(f"build: {n} images at {args.size}px with {args.workers} decode threads in {t_build:.1f} s "
          f"({n / t_build:.0f} img/s); {len(cached.bad)} bad files")
    print(f"disk: cache entry {_du(cached.dir) / 2**20:.0f} MiB (array {n * args.size ** 2 * 3 / 2**20:.0f} MiB) "
          f"vs source files {src_bytes / 2**20:.0f} MiB")

    cfg = DataConfig(images=list(args.roots), image_size=args.size, cache_dir=str(cache_dir))
    t0 = time.perf_counter()
    ds = load_dataset(cfg, progress=False)  # a cache hit: lists, stats and hashes the files, decodes nothing
    print(f"reuse: load_dataset on the built cache in {time.perf_counter() - t0:.2f} s")

    rng = np.random.default_rng(0)
    idx = [rng.integers(0, len(ds), args.batch) for _ in range(args.batches)]
    ds.batch(idx[0])  # warm-up
    for name, fn in (("Dataset.batch -> torch uint8 (B,3,S,S)", lambda i: ds.batch(i)),
                     ("raw memmap fancy index (B,S,S,3)", lambda i: np.asarray(ds.images[i]))):
        t0 = time.perf_counter()
        for i in idx:
            fn(i)
        dt = time.perf_counter() - t0
        print(f"read: {name}: {args.batches * args.batch / dt:,.0f} img/s "
              f"({dt / args.batches * 1000:.1f} ms per batch of {args.batch})")


if __name__ == "__main__":
    main()
