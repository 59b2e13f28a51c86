"""``ssl-derm demo`` (``make demo``): the whole pipeline on the built-in synthetic lesions in minutes on CPU.

1. segment lesions with no annotations (the default method and an Otsu baseline), scored on the exact masks;
2. a small sweep: pretrain a small encoder (SimCLR, resnet18) on the images without labels, then classify
   with few labels, pretrained against random initialisation (kNN and linear probe at several label
   fractions, two seeds);
3. write ``report.md`` with the tables and PNGs, and print where it is.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from ssl_derm.config import load_config
from ssl_derm.commands.sweep import run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package (package data)

# Sized so that the whole demo stays within 5 minutes on 2 CPU cores, install included: 32 px (ResNet-18's
# cost here is per pixel; 48 px took 295 s), 120 steps, two label fractions, two values of C (124 s on 2026-11-29).
BUDGETS = {
    "full": {"n": 1200, "size": 32, "pretrain_steps": 120, "batch": 64, "seeds": [0, 1], "seg_n": 200,
             "fractions": [0.05, 1.0], "encoder": "resnet18"},
    "quick": {"n": 160, "size": 32, "pretrain_steps": 4, "batch": 16, "seeds": [0], "seg_n": 24, "fractions": [0.05, 1.0],
              "encoder": "resnet18"},
}


def _data_keys(data: str | None, b: dict, cache: Path) -> dict:
    if data:
        root = Path(data)
        keys = {"data.images": [str(root / "images") if (root / "images").is_dir() else str(root)]}
        if (root / "labels.csv").is_file():
            keys["data.labels"] = str(root / "labels.csv")
        if (root / "masks").is_dir():
            keys["data.masks"] = str(root / "masks")
    else:
        keys = {"data.images": ["synthetic"], "data.synthetic_n": b["n"]}
    keys.update({"data.image_size": b["size"], "data.cache_dir": str(cache)})
    return keys


def _as_overrides(keys: dict) -> list:
    return [f"{k}={json.dumps(v)}" for k, v in keys.items()]


def run_demo(out="runs/demo", data: str | None = None, quick: bool = False) -> Path:
    t0 = time.time()
    b = BUDGETS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_keys = _data_keys(data, b, out / "cache")

    print("[1/2] annotation-free segmentation (no masks used; they only score)")
    from ssl_derm.segmenters.config import SegmentConfig
    from ssl_derm.commands.segment import run_segment

    seg = {}
    for name in ("default", "otsu_blue"):
        cfg_path = CONFIGS / "segment" / f"{name}.yaml"
        scfg = load_config(SegmentConfig, cfg_path, _as_overrides(data_keys) + [f"segment.max_images={b['seg_n']}"])
        seg[name] = run_segment(scfg, out / "segment" / name)

    t_seg = time.time() - t0
    print(f"[2/2] pretraining (SimCLR, resnet18), then few-label classification: pretrained vs random init "
          f"(segmentation took {t_seg:.0f} s)")
    sweep_file = out / "label_efficiency.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "out": str(out / "label_efficiency"),
        "seeds": b["seeds"],
        "downstream": "finetune",
        "metrics": ["balanced_accuracy", "accuracy"],
        "common": {**data_keys, "encoder.name": b["encoder"]},
        "pretrain": {"set": {
            "method.name": "simclr", "train.max_steps": b["pretrain_steps"], "train.batch_size": b["batch"],
            "train.lr": 0.6, "train.optimizer": "lars", "train.weight_decay": 1e-6, "train.warmup_steps": 10,
            "method.proj_hidden_dim": 512, "method.proj_dim": 64, "method.temperature": 0.2,
            "train.ckpt_every": 60, "monitor.every_steps": 60}},
        # two values of the probe's C instead of four: the linear cells are most of the cells' time
        "finetune": {"config": str(CONFIGS / "finetune" / "knn.yaml"),
                     "set": {"split.redraw_labelled": True, "protocol.linear_C": [0.1, 1.0]}},
        "grid": {"init": ["pretrained", "random"], "finetune.protocol.name": ["knn", "linear"],
                 "finetune.split.fraction": b["fractions"]},
    }, sort_keys=False))
    sweep_root = run_sweep(sweep_file)
    report = write_report(out, seg, sweep_root, time.time() - t0)
    print(f"demo finished in {time.time() - t0:.0f} s; report: {report}")
    return report


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, seg: dict, sweep_root: Path, seconds: float) -> Path:
    """report.md with the tables and the PNGs (copied next to it so the folder stands alone)."""
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    parts = ["# ssl-derm demo report", "",
             f"Built-in synthetic dermoscopy lesions; whole run {seconds:.0f} s on this machine.", ""]
    pre_dirs = sorted((sweep_root / "pretrain").glob("*/metrics.json"))
    if pre_dirs:
        pm = json.loads(pre_dirs[0].read_text())
        parts += ["## Pretraining", "", _table(["method", "encoder", "image size", "steps", "final loss", "img/s"], [[
            pm["method"], pm["encoder"], pm["image_size"], pm["steps"], f"{pm['final_loss']:.3f}",
            f"{pm['img_per_s']:.0f}"]]), ""]
        for i, h in enumerate(pm.get("knn_monitor", [])):
            if i == 0:
                parts += ["Online kNN monitor (validation split):", "",
                          "| step | kNN top-1 | kNN balanced acc |", "|---|---|---|"]
            parts.append(f"| {h['step']} | {h['knn_top1']:.3f} | {h['knn_balanced_acc']:.3f} |")
        parts.append("")
    parts += ["## Annotation-free segmentation", "", _table(
        ["method", "mean Jaccard", "mean Dice", "thresholded Jaccard"],
        [[name, *(f"{_mean(m, k):.3f}" for k in ("jaccard", "dice", "thresholded_jaccard"))] for name, m in seg.items()]), ""]
    for name in seg:
        for png in sorted((out / "segment" / name).glob("*.png"))[:1]:
            shutil.copy(png, figs / f"segment_{name}.png")
            parts += [f"![{name} overlays](figures/segment_{name}.png)", ""]
    parts += ["## Few labels: pretrained vs random init", "", *_comparison(sweep_root), "",
              "Every cell (mean ± std over seeds; each seed draws its own labelled subset):", "",
              (sweep_root / "results.md").read_text(), ""]
    for png in sorted((sweep_root / "plots").glob("*.png")):
        shutil.copy(png, figs / f"label_efficiency_{png.name}")
        parts += [f"![{png.stem}](figures/label_efficiency_{png.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report


def _comparison(sweep_root: Path, metric: str = "balanced_accuracy") -> list:
    """Markdown lines: how many protocol x fraction settings the pretrained encoder leads (means over seeds),
    then the sweep's paired report (label_efficiency.md: differences paired by seed, 95% intervals)."""
    import csv

    with open(sweep_root / "label_efficiency.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(metric) not in (None, "")]
    means: dict = {}
    for r in rows:
        means.setdefault((r["protocol"], r["fraction"]), {}).setdefault(r["init"], []).append(float(r[metric]))
    both = [m for m in means.values() if "pretrained" in m and "random" in m]
    ahead = sum(sum(m["pretrained"]) / len(m["pretrained"]) > sum(m["random"]) / len(m["random"]) for m in both)
    return [f"Balanced accuracy on the held-out test split, mean over seeds: the pretrained encoder is ahead of "
            f"random initialisation in **{ahead} of {len(both)}** protocol x label-fraction cells.", "",
            (sweep_root / "label_efficiency.md").read_text()]


def _mean(metrics: dict, key: str) -> float:
    """Segmentation metrics keep means under ``mean`` (per-image values under ``per_image``)."""
    m = metrics.get("mean", metrics)
    return float(m.get(key, float("nan")))
