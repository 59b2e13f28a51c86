"""Cross-dataset table: train on HAM10000, score ISIC 2017's official test split through ``data.label_map``.

    python benchmarks/cross_dataset.py --encoder runs/simclr64/encoder.safetensors --out runs/cross_dataset \\
        [--data ../shared/data] [--size 64] [--protocols linear,knn] [--seeds 0] [--threads 1]

Pretrained (``--encoder``) and random init, per protocol and seed, through ``ssl-derm label-efficiency``
with 100% of the labels: the whole HAM10000 pool trains (``data.test_frac=0``; 10% of its lesions are the
val side that picks C), and the 600 ISIC 2017 test images are the ``external`` set. ISIC 2017's labels map
onto HAM10000's classes as melanoma -> mel, nevus -> nv, seborrheic_keratosis -> bkl (HAM's benign
keratosis-like class holds seborrheic keratoses); a prediction of any other HAM class counts as an error.
Prints the external balanced accuracy with its bootstrap 95% interval per cell (also in <out>/label_efficiency.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssl_derm.config import load_config
from ssl_derm.evaluate.config import FinetuneConfig
from ssl_derm.commands.label_efficiency import run_label_efficiency
from ssl_derm.commands.sweep.paired import finished_cells

LABEL_MAP = {"melanoma": "mel", "nevus": "nv", "seborrheic_keratosis": "bkl"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", required=True, help="encoder.safetensors of `ssl-derm pretrain`")
    ap.add_argument("--out", default="runs/cross_dataset")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--protocols", default="linear,knn")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--encoder-name", default="resnet18")
    ap.add_argument("--inits", default="pretrained,random", help="pretrained,random or one of them")
    args = ap.parse_args(argv)
    d = Path(args.data)
    overrides = [f"data.images=[{d / 'ham10000/images'}]", f"data.labels={d / 'ham10000/labels.csv'}",
                 f"data.image_size={args.size}", "data.test_frac=0", "data.val_frac=0.1",
                 f"data.test_images=[{d / 'isic2017/images'}]", f"data.test_labels={d / 'isic2017/labels.csv'}",
                 f"data.label_map={json.dumps(LABEL_MAP)}", f"encoder.name={args.encoder_name}",
                 f"train.num_threads={args.threads}", "device=cpu" if args.threads else "device=auto"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    cfg = load_config(FinetuneConfig, None, overrides)
    protocols, seeds = args.protocols.split(","), [int(s) for s in args.seeds.split(",")]
    inits = tuple(args.inits.split(","))
    run_label_efficiency(cfg, args.encoder, [1.0], protocols, seeds, args.out, inits=inits)
    print("\n| init | protocol | seed | external balanced accuracy | 95% bootstrap interval | n |")
    print("|---|---|---|---|---|---|")
    for cell in finished_cells(args.out):
        v = cell["values"]
        if v["init"] not in inits or v["finetune.protocol.name"] not in protocols or cell["seed"] not in seeds:
            continue
        e = json.loads((Path(args.out) / "cells" / cell["id"] / "metrics.json").read_text())["external"]
        lo, hi = e["balanced_accuracy_ci"]
        print(f"| {v['init']} | {v['finetune.protocol.name']} | {cell['seed']} | {e['balanced_accuracy']:.3f} "
              f"| [{lo:.3f}, {hi:.3f}] | {e['n']} |")


if __name__ == "__main__":
    main()
