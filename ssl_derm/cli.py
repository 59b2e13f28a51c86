"""``ssl-derm <command>``: one CLI for data, pretraining, segmentation, finetuning, sweeps and the demo.

Training commands take ``--config FILE`` (optional where a default makes sense), ``--out DIR`` and
``key.sub=value`` overrides whose values are parsed as YAML (``data.images=[a,b]``).
Errors are one line naming the key, file or value (set SSL_DERM_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _add_run_args(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    p.add_argument("--config", default=default_config, help="YAML config file" +
                   (f" (default: {default_config})" if default_config else ""))
    p.add_argument("--out", required=True, help="output folder for this run")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")


def _default(rel: str) -> str | None:
    path = CONFIGS / rel
    return str(path) if path.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssl-derm", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or check datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the built-in synthetic dermoscopy set (images/, masks/, labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p = data.add_parser("check", help="report counts, sizes, classes and every bad file; exit 1 if any")
    p.add_argument("paths", nargs="+", help="image folders")
    p.add_argument("--masks")
    p.add_argument("--labels")

    _add_run_args(sub.add_parser("pretrain", help="self-supervised pretraining"), _default("pretrain/simclr_resnet18.yaml"))
    p = sub.add_parser("finetune", help="kNN / linear / finetune / semi-supervised / few-mask segmentation")
    _add_run_args(p, _default("finetune/linear.yaml"))
    p.add_argument("--force", action="store_true", help="rerun even if --out holds a finished run (its outputs are replaced)")
    _add_run_args(sub.add_parser("segment", help="annotation-free lesion segmentation"), _default("segment/default.yaml"))
    p = sub.add_parser("label-efficiency", help="pretrained vs random init across label fractions")
    _add_run_args(p, _default("finetune/linear.yaml"))
    p.add_argument("--checkpoint", required=True, help="exported encoder (encoder.safetensors)")
    p.add_argument("--fractions", default="0.01,0.1,1.0")
    p.add_argument("--protocols", default="knn,linear")
    p.add_argument("--seeds", default="0")

    p = sub.add_parser("sweep", help="grid of runs x seeds, resumable, with tables and plots")
    p.add_argument("config", help="configs/sweeps/<name>.yaml")
    p.add_argument("--out", help="sweep folder (default: the config's out key)")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("demo", help="pretrain, segment and finetune on synthetic data; writes a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", help="image folder with labels.csv (and masks/) instead of the synthetic set")
    p.add_argument("--quick", action="store_true", help="smallest budget (for tests)")

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    from ssl_derm.bench import add_arguments

    add_arguments(bench.add_parser("throughput", help="training-step ceiling vs ssl-derm's cache->GPU->kornia path "
                                   "vs lightly's standard JPEG path"))
    return ap


def _run(args) -> int:
    from ssl_derm.config import load_config

    if args.command == "data":
        if args.data_command == "synth":
            from ssl_derm.data import write_synthetic

            write_synthetic(args.out, n=args.n, size=args.size, seed=args.seed)
            return 0
        from ssl_derm.data import run_check

        return run_check(args.paths, masks=args.masks, labels=args.labels)
    if args.command == "pretrain":
        from ssl_derm.config import PretrainConfig
        from ssl_derm.pretrain import run_pretrain

        run_pretrain(load_config(PretrainConfig, args.config, args.overrides), args.out)
        return 0
    if args.command == "finetune":
        from ssl_derm.evaluate.config import FinetuneConfig
        from ssl_derm.evaluate.run import run_finetune

        run_finetune(load_config(FinetuneConfig, args.config, args.overrides), args.out,
                     existing="force" if args.force else "error")
        return 0
    if args.command == "label-efficiency":
        from ssl_derm.evaluate.config import FinetuneConfig
        from ssl_derm.evaluate.label_efficiency import run_label_efficiency

        cfg = load_config(FinetuneConfig, args.config, args.overrides)
        run_label_efficiency(cfg, args.checkpoint, [float(f) for f in args.fractions.split(",")],
                             args.protocols.split(","), [int(s) for s in args.seeds.split(",")], args.out)
        return 0
    if args.command == "segment":
        from ssl_derm.segment.config import SegmentConfig
        from ssl_derm.segment.run import run_segment

        run_segment(load_config(SegmentConfig, args.config, args.overrides), args.out)
        return 0
    if args.command == "sweep":
        from ssl_derm.sweep import run_sweep

        run_sweep(args.config, out=args.out, overrides=args.overrides)
        return 0
    if args.command == "demo":
        from ssl_derm.demo import run_demo

        run_demo(args.out, data=args.data, quick=args.quick)
        return 0
    if args.command == "bench":
        from ssl_derm.bench import run_from_args

        run_from_args(args)
        return 0
    raise AssertionError(args.command)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("ssl-derm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; the traceback on request
        if os.environ.get("SSL_DERM_DEBUG"):
            raise
        kind = type(e).__name__
        print(f"ssl-derm {args.command}: error: {e}" + ("" if kind in _EXPECTED else
              f"  [{kind}; set SSL_DERM_DEBUG=1 for the traceback]"), file=sys.stderr)
        return 2 if kind in ("ConfigError",) else 1


_EXPECTED = {"ConfigError", "DataError", "EncoderError", "TrainingError", "CheckpointError", "ValueError",
             "FileNotFoundError", "KeyError"}


if __name__ == "__main__":
    sys.exit(main())
