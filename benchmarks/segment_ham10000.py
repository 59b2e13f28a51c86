"""Annotation-free segmentation on HAM10000: every method and baseline, one table.

Each entry runs ``run_segment`` with a config from configs/segment/ (masks are read only to score,
at each image's original size) and prints mean Jaccard, Dice, thresholded Jaccard and seconds per
image (prediction only, on this machine's CPU with ``train.num_threads`` threads):

    .venv/bin/python benchmarks/segment_ham10000.py --out runs/seg_ham10000             # everything
    .venv/bin/python benchmarks/segment_ham10000.py --only default,otsu_blue --max-images 500
    .venv/bin/python benchmarks/segment_ham10000.py --only kmeans_features,gharawi \\
        --checkpoint runs/pretrain_pooled/encoder.safetensors --size 64

Expensive entries (per-image network optimisation, self-training) run on a seeded subset unless
--max-images says otherwise (``n`` in the table). Finished entries (a metrics.json) are reused, so
the script resumes; writes <out>/segment_ham10000.md.

Recorded 2026-11-26, CPU only (2 shared cores, 1 torch thread, load average 4-9, so s/image varies about
3x between runs), cache 128 px, scored at each image's original 200x150 size. "checkpoint": SimCLR
resnet18 from `ssl-derm pretrain` on the pooled archive (64 px, 800 steps: runs/pretrain_pooled).
Subsets are seeded (the first 200 / 1000 of one permutation); on the same 200 images the default got
0.7416 (otsu_blue 0.6099, kmeans_color 0.6295), on the same 1000 images 0.7774. The default's row is from
2026-11-29 (local contrast, lesion_bias, EM round picked by edges; same conditions): 0.7717 on the
200, 0.8068 on the 1000; the self-training rows still start from the 2026-11-26 default (0.7690).

| method | images | mean Jaccard | mean Dice | thresholded Jaccard | s/image (CPU) | checkpoint |
|---|---|---|---|---|---|---|
| default (contrast_em, with the convex hull: 2026-11-29) | 8019 | 0.8097 | 0.8795 | 0.7571 | 0.026 | no |
| default without the convex hull (`--set segment.convex_hull=false`) | 8019 | 0.7994 | 0.8725 | 0.7357 | 0.028-0.046 | no |
| otsu_gray | 8019 | 0.5838 | 0.6862 | 0.4449 | 0.009 | no |
| otsu_blue | 8019 | 0.6411 | 0.7322 | 0.5421 | 0.007 | no |
| kmeans_color | 8019 | 0.6681 | 0.7649 | 0.5651 | 0.020 | no |
| kmeans_features_random | 1000 | 0.4704 | 0.6016 | 0.1794 | 0.084 | no |
| kmeans_features | 1000 | 0.5007 | 0.6093 | 0.3504 | 0.081 | yes |
| gharawi_random (per image, 20 steps) | 200 | 0.6491 | 0.7529 | 0.4748 | 0.64 | no |
| gharawi_random_batch (per batch of 50, 60 steps) | 200 | 0.5319 | 0.6501 | 0.3095 | 2.14 | no |
| gharawi_random_refine_em | 200 | 0.7335 | 0.8164 | 0.6390 | 0.64 | no |
| gharawi | 200 | 0.6568 | 0.7607 | 0.4861 | 0.74 | yes |
| gharawi_refine_em | 200 | 0.7344 | 0.8172 | 0.6350 | 0.79 | yes |
| selftrain_random, round 1 (on the 2026-11-26 default's masks) | 8019 | 0.7947 | 0.8717 | 0.7262 | 0.065 | no |
| selftrain_random_2rounds, round 2 | 8019 | 0.7985 | 0.8718 | 0.7399 | 0.062 | no |
| selftrain, round 1 | 8019 | 0.7912 | 0.8671 | 0.7251 | 0.062 | yes |

Self-training s/image = (training 600 steps of batch 32 at 64 px + predicting all images) / 8019.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "ssl_derm" / "configs" / "segment"

# name -> (config file, extra overrides, default subset size (0 = all images), needs the checkpoint)
CPU_SELFTRAIN = ["selftrain.image_size=64", "train.max_steps=600"]  # ~8 min per round on 1-2 CPU cores
ENTRIES = {
    "default": ("default.yaml", [], 0, False),
    "otsu_gray": ("otsu_gray.yaml", [], 0, False),
    "otsu_blue": ("otsu_blue.yaml", [], 0, False),
    "kmeans_color": ("kmeans_color.yaml", [], 0, False),
    "kmeans_features_random": ("kmeans_features.yaml", ["encoder.checkpoint=none"], 1000, False),
    "kmeans_features": ("kmeans_features.yaml", [], 1000, True),
    "gharawi_random": ("gharawi.yaml", ["encoder.checkpoint=none"], 200, False),
    "gharawi_random_batch": ("gharawi.yaml", ["encoder.checkpoint=none", "segment.per_image=false",
                                              "segment.iters=60", "segment.batch_size=50"], 200, False),
    "gharawi_random_refine_em": ("gharawi.yaml", ["encoder.checkpoint=none", "segment.refine_em=true"], 200, False),
    "gharawi": ("gharawi.yaml", [], 200, True),
    "gharawi_refine_em": ("gharawi.yaml", ["segment.refine_em=true"], 200, True),
    "selftrain_random": ("selftrain.yaml", ["encoder.checkpoint=none", *CPU_SELFTRAIN], 0, False),
    "selftrain_random_2rounds": ("selftrain.yaml", ["encoder.checkpoint=none", "selftrain.rounds=2", *CPU_SELFTRAIN],
                                 0, False),
    "selftrain": ("selftrain.yaml", CPU_SELFTRAIN, 0, True),
    # only the 30% most reliable pseudo-masks teach (selftrain.select_frac)
    "selftrain_random_select": ("selftrain.yaml", ["encoder.checkpoint=none", "selftrain.select_frac=0.3", *CPU_SELFTRAIN],
                                0, False),
    "selftrain_select": ("selftrain.yaml", ["selftrain.select_frac=0.3", *CPU_SELFTRAIN], 0, True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "seg_ham10000"))
    ap.add_argument("--only", default="", help="comma-separated entries (default: all; " + ", ".join(ENTRIES) + ")")
    ap.add_argument("--checkpoint", default="", help="encoder.safetensors from `ssl-derm pretrain` (entries that "
                    "need it are skipped without one)")
    ap.add_argument("--encoder", default="resnet18", help="encoder.name matching --checkpoint")
    ap.add_argument("--size", type=int, default=128, help="cache size data.image_size")
    ap.add_argument("--max-images", type=int, default=-1, help="subset size for every entry (-1: per-entry default)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every entry")
    ap.add_argument("--table-only", action="store_true", help="run nothing; tabulate the finished entries in --out")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from ssl_derm.config import load_config
    from ssl_derm.segmenters.config import SegmentConfig
    from ssl_derm.commands.segment import run_segment

    names = [n for n in (args.only.split(",") if args.only else ENTRIES) if n]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        ap.error(f"unknown entries {unknown}; choose from {', '.join(ENTRIES)}")
    out = Path(args.out)
    for name in [] if args.table_only else names:
        cfg_file, extra, subset, needs_ckpt = ENTRIES[name]
        if needs_ckpt and not args.checkpoint:
            print(f"[skip] {name}: needs --checkpoint")
            continue
        n = subset if args.max_images < 0 else args.max_images
        over = [f"data.images=[{args.data}/images]", f"data.masks={args.data}/masks", f"data.image_size={args.size}",
                f"segment.max_images={n}", f"train.num_threads={args.threads}"]
        if args.checkpoint and needs_ckpt:
            over += [f"encoder.checkpoint={args.checkpoint}", f"encoder.name={args.encoder}"]
        run_dir = out / name
        if not (run_dir / "metrics.json").is_file():
            print(f"== {name} ({cfg_file}, {n or 'all'} images)")
            run_segment(load_config(SegmentConfig, CONFIGS / cfg_file, over + extra + args.set), run_dir)
    rows = []  # every finished entry in --out, in ENTRIES order
    for name in ENTRIES:
        if not (out / name / "metrics.json").is_file():
            continue
        m = json.loads((out / name / "metrics.json").read_text())
        for stage, st in m["stages"].items():
            if st.get("mean"):
                label = name if len(m["stages"]) == 1 else f"{name} [{stage}]"
                rows.append((label, st["mean"], st["seconds_per_image"], m.get("encoder_checkpoint")))
    lines = ["| method | images | mean Jaccard | mean Dice | thresholded Jaccard | s/image (CPU) | checkpoint |",
             "|---|---|---|---|---|---|---|"]
    for name, mean, sec, ckpt in rows:
        lines.append(f"| {name} | {mean['n']} | {mean['jaccard']:.4f} | {mean['dice']:.4f} | "
                     f"{mean['thresholded_jaccard']:.4f} | {sec:.3f} | {'yes' if ckpt and ckpt != 'none' else 'no'} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segment_ham10000.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
