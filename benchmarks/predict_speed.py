"""``ssl-derm predict``: throughput (images/s) of a finetuned classifier and of the self-trained U-Net, and
peak memory (max RSS of the predict process) of the classifier on a small and a large folder (the U-Net
too with ``--memory-segmenter``), to show that memory does not grow with the folder (images are streamed).

    python benchmarks/predict_speed.py --work /tmp/predict_bench              # CPU: 1,000 / 20,000 images
    python benchmarks/predict_speed.py --work /tmp/pb --n-speed 200 --n-memory 2000 --device cuda

The models are trained for a few steps only (speed does not depend on how well they were trained); the
images are the synthetic set written at ``--file-size`` px (the large folder: hard links to those files
under new names, see :func:`linked_folder`). Each predict runs in its own process, whose
max RSS comes from ``os.wait4``. Prints one line per measurement and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ssl_derm(*args: str, threads: int) -> dict:
    """Run ``python -m ssl_derm.cli ARGS`` -> {"seconds", "max_rss_mb"}; raises on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ssl_derm.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ssl-derm {' '.join(args[:3])} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "max_rss_mb": usage.ru_maxrss / 1024}


def synth(folder: Path, n: int, size: int, threads: int) -> Path:
    if not (folder / "labels.csv").is_file():
        ssl_derm("data", "synth", "--out", str(folder), "--n", str(n), "--size", str(size), threads=threads)
    return folder / "images"


def linked_folder(src: Path, dst: Path, n: int) -> Path:
    """``n`` files named ``<id>_c<k>.jpg``: hard links to the files of ``src`` taken in turn. Each file is
    decoded and predicted like any other, so the memory figure is that of ``n`` images, without spending
    minutes of a shared CPU drawing ``n`` new lesions."""
    files = sorted(src.glob("*.jpg"))
    if len(list(dst.glob("*.jpg"))) != n:
        dst.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            f = files[k % len(files)]
            target = dst / f"{f.stem}_c{k // len(files)}.jpg"
            if not target.exists():
                os.link(f, target)
    return dst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/ssl_derm_predict_bench")
    ap.add_argument("--n-speed", type=int, default=1000)
    ap.add_argument("--n-memory", type=int, default=20000)
    ap.add_argument("--file-size", type=int, default=64, help="side of the synthetic image files (px)")
    ap.add_argument("--image-size", type=int, default=64, help="data.image_size of the models")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-segmenter", action="store_true", help="also run the U-Net on the large folder")
    a = ap.parse_args(argv)
    work = Path(a.work)
    small = synth(work / f"synth_{a.n_speed}", a.n_speed, a.file_size, a.threads)
    big = linked_folder(small, work / f"linked_{a.n_memory}", a.n_memory)
    common = [f"data.image_size={a.image_size}", f"data.cache_dir={work / 'cache'}", f"encoder.name={a.encoder}",
              "encoder.checkpoint=none", f"device={a.device}", f"train.num_threads={a.threads}"]
    clf, seg = work / "clf", work / "seg"
    if not (clf / "model.json").is_file():
        ssl_derm("finetune", "--config", "finetune/finetune", "--out", str(clf), f"data.images=[{small}]",
                 f"data.labels={small.parent / 'labels.csv'}", "split.fraction=1.0", "train.max_steps=5",
                 "train.batch_size=16", *common, threads=a.threads)
    if not (seg / "model.json").is_file():
        ssl_derm("segment", "--config", "segment/selftrain", "--out", str(seg), f"data.images=[{small}]",
                 f"selftrain.image_size={a.image_size}", "train.max_steps=5", "train.batch_size=16", *common,
                 threads=a.threads)
    rows = []
    runs = [("finetuned classifier", clf, small), ("self-trained U-Net", seg, small), ("finetuned classifier", clf, big)]
    if a.memory_segmenter:
        runs.append(("self-trained U-Net", seg, big))
    for name, model, images in runs:
        n = int(sum(1 for _ in images.iterdir()))
        out = work / f"pred_{model.name}_{n}"
        r = ssl_derm("predict", "--model", str(model), "--images", str(images), "--out", str(out), f"device={a.device}",
                     f"batch_size={a.batch_size}", f"num_threads={a.threads}", "workers=2", "overlays=0", threads=a.threads)
        summary = json.loads((out / "predict.json").read_text())
        rows.append((name, n, summary["images_per_second"], r["seconds"], r["max_rss_mb"]))
        print(f"{name:<22} {n:>6} images  {summary['images_per_second']:>8.1f} img/s (predict loop)  "
              f"{r['seconds']:>7.1f} s process  max RSS {r['max_rss_mb']:>7.0f} MB", flush=True)
    print(f"\n{a.encoder}, files {a.file_size} px, models at {a.image_size} px, device {a.device}, "
          f"{a.threads} threads, batch {a.batch_size}\n")
    print("| model | images | img/s (predict loop) | process seconds | max RSS (MB) |")
    print("|---|---|---|---|---|")
    for name, n, ips, sec, rss in rows:
        print(f"| {name} | {n:,} | {ips:.1f} | {sec:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
