"""Large archives: the decode-once cache and the pretraining batch path at 10k and 50k images.

For each size a synthetic archive of 128 px JPEG lesions is made (in folders of 2,500, under --work;
reused when already there): ``--unique`` images are rendered, and larger archives hard-link those
folders again under other names (the cache decodes every path as its own image; rendering 50k lesions
would take longer than measuring them). Then, in a fresh process so each size has its own peak memory:
the cache build (JPEG -> uint8 memmap) in img/s, and the pretraining data path (``CacheBatches``:
seeded per-epoch permutation, this rank's share, sorted memmap reads into batches) in img/s. Memory
is printed as the peak of anonymous memory (what the process itself holds: flat in the number of
images when nothing scales with it) and the peak RSS (which also counts the memmap's pages the OS
keeps mapped, growing as more of the file is read).

    nice -n 10 python benchmarks/scale_archive.py --sizes 10000 50000 --work /tmp/scale
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 2500


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class PeakAnon:
    """Samples RssAnon every 20 ms in a thread; ``peak`` in MiB."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return max(self.peak, _status_kib("RssAnon")) / 1024


def write_archive(root: Path, n: int, size: int, unique: int) -> list:
    """Folders of JPEGs holding ``n`` images: rendered parts under ``root.parent/unique``, then links."""
    import os

    from ssl_derm.data import write_synthetic

    folders = []
    for i, start in enumerate(range(0, n, CHUNK)):
        count = min(CHUNK, n - start)
        source = root.parent / "unique" / f"part{i % max(unique // CHUNK, 1):03d}"
        if not (source / "images").is_dir():
            write_synthetic(source, CHUNK, size, seed=i, quiet=True)
        folder = root / f"part{i:03d}" / "images"
        if not folder.is_dir():
            tmp = folder.with_name("images.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            for f in sorted((source / "images").iterdir())[:count]:
                name = tmp / f"p{i:03d}_{f.name}"  # ids unique over the archive (the first of a repeated id wins)
                if not name.exists():
                    os.link(f, name)
            tmp.rename(folder)
        folders.append(str(folder))
    return folders


def measure(folders: list, size: int, cache_dir: Path, batch: int, steps: int) -> dict:
    import numpy as np

    from ssl_derm.config import DataConfig
    from ssl_derm.data import load_dataset
    from ssl_derm.engine.batches import CacheBatches

    peak = PeakAnon()
    t0 = time.perf_counter()
    ds = load_dataset(DataConfig(images=folders, image_size=size, cache_dir=str(cache_dir)), progress=False)
    build_s = time.perf_counter() - t0
    build_anon = peak.stop()
    peak = PeakAnon()
    batches = CacheBatches(ds.images, batch, "cpu", seed=0)
    batches.get(0)
    t0 = time.perf_counter()
    total = 0
    for s in range(1, steps + 1):
        total += int(batches.get(s * 7).float().mean() >= 0) * batch  # touch the batch as a preset would
    path_s = time.perf_counter() - t0
    return {"n_images": len(ds), "cache_build_img_s": len(ds) / build_s, "cache_build_s": build_s,
            "cache_build_peak_anon_mib": build_anon, "data_path_img_s": total / path_s,
            "data_path_peak_anon_mib": peak.stop(), "peak_rss_mib": _status_kib("VmHWM") / 1024,
            "cache_gib": float(np.prod(ds.images.shape)) / 2 ** 30}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--work", default="/tmp/ssl-derm-scale")
    p.add_argument("--unique", type=int, default=10000, help="images rendered; larger archives link them again")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # the measuring child process
    a = p.parse_args(argv)
    work = Path(a.work)
    if a.one:
        folders = write_archive(work / f"archive{a.one}", a.one, a.image_size, a.unique)
        r = measure(folders, a.image_size, work / f"cache{a.one}", a.batch_size, a.steps)
        print(json.dumps(r))
        return
    print(f"{'images':>8} {'write s':>8} {'cache img/s':>12} {'build anon MiB':>15} {'path img/s':>11} "
          f"{'path anon MiB':>14} {'peak RSS MiB':>13} {'cache GiB':>10}")
    for n in a.sizes:
        t0 = time.perf_counter()
        write_archive(work / f"archive{n}", n, a.image_size, a.unique)
        write_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", str(work), "--image-size",
                              str(a.image_size), "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--unique", str(a.unique)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n_images']:8d} {write_s:8.1f} {r['cache_build_img_s']:12.0f} {r['cache_build_peak_anon_mib']:15.0f} "
              f"{r['data_path_img_s']:11.0f} {r['data_path_peak_anon_mib']:14.0f} {r['peak_rss_mib']:13.0f} "
              f"{r['cache_gib']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
