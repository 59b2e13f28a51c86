"""Which pretraining pays: SSL methods x encoders x label fractions, scored on HAM10000 held-out lesions.

One ``ssl-derm sweep``: every (method, encoder) is pretrained once on the pooled shared archive (the
HAM10000 test side left out), then scored by weighted kNN and the linear probe at 1, 10 and 100% of
the HAM10000 labels against the same encoder at random initialisation. Each pretraining is one piece
sized to fit a 10-minute GPU run at ``--budget gpu``; ``--budget cpu`` is the same grid at a size a
2-core CPU finishes in under an hour (say so when you quote it: it ranks methods after ~1 epoch).

    .venv/bin/python benchmarks/methods_encoders_ham10000.py --budget cpu --out runs/methods_encoders_cpu
    .venv/bin/python benchmarks/methods_encoders_ham10000.py --budget gpu --out runs/methods_encoders_gpu \\
        --methods simclr,mocov3,byol,dino --encoders resnet18,resnet50,vit_small_patch16_224

Resumable (finished cells and pretrainings are reused); writes the sweep's results.csv, results.md
(mean ± std over seeds) and plots under --out, and prints results.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETS = ("ham10000", "isic2017", "isic_uda1", "isic_skin9")

BUDGETS = {
    # image size, pretraining steps and batch, seeds, torch threads (0: torch's default)
    "cpu": {"size": 64, "steps": 150, "batch": 64, "seeds": [0], "threads": 1},
    "gpu": {"size": 128, "steps": 2000, "batch": 256, "seeds": [0, 1, 2], "threads": 0},
}


def sweep_spec(args) -> dict:
    b = BUDGETS[args.budget]
    data = Path(args.data)
    pooled = [str(data / s / "images") for s in SETS if (data / s / "images").is_dir()]
    if not (data / "ham10000" / "labels.csv").is_file():
        raise SystemExit(f"{data / 'ham10000' / 'labels.csv'} not found: give --data the folder that holds ham10000/")
    return {
        "out": str(args.out),
        "seeds": b["seeds"],
        "downstream": "finetune",
        "metrics": ["balanced_accuracy", "accuracy", "macro_f1"],
        "common": {"data.image_size": args.size or b["size"], "train.num_threads": b["threads"], "device": args.device},
        "pretrain": {"set": {"data.images": pooled, "train.max_steps": args.steps or b["steps"],
                             "train.batch_size": b["batch"], "train.ckpt_every": 100, "monitor.every_steps": 0}},
        "finetune": {"config": str(ROOT / "ssl_derm" / "configs" / "finetune" / "linear.yaml"), "set": {
            "data.images": [str(data / "ham10000" / "images")], "data.labels": str(data / "ham10000" / "labels.csv"),
            "protocol.linear_C": [0.01, 0.1, 1.0]}},
        "grid": {"init": ["pretrained", "random"], "encoder.name": args.encoders.split(","),
                 "pretrain.method.name": args.methods.split(","),
                 "finetune.protocol.name": ["knn", "linear"],
                 "finetune.split.fraction": [float(f) for f in args.fractions.split(",")]},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "methods_encoders"))
    ap.add_argument("--methods", default="simclr,mocov3,byol,dino")
    ap.add_argument("--encoders", default="resnet18,vit_tiny_patch16_224")
    ap.add_argument("--fractions", default="0.01,0.1,1.0")
    ap.add_argument("--size", type=int, default=0, help="image size (0: the budget's)")
    ap.add_argument("--steps", type=int, default=0, help="pretraining steps (0: the budget's)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from ssl_derm.commands.sweep import run_sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "methods_encoders.yaml"
    path.write_text(yaml.safe_dump(sweep_spec(args), sort_keys=False))
    root = run_sweep(path)
    print((root / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
