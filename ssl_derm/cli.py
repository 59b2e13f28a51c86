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

CONFIGS = Path(__file__).resolve().parent / "configs"  # shipped inside the package (package data)


def _add_run_args(p: argparse.ArgumentParser, default_config: str | None = None, force: bool = False) -> None:
    p.add_argument("--config", default=default_config, help="YAML config file" +
                   (f" (default: {default_config})" if default_config else ""))
    p.add_argument("--out", required=True, help="output folder for this run")
    if force:
        p.add_argument("--force", action="store_true", help="discard the checkpoints in --out and start over "
                       "(without it a run resumes from <out>/checkpoints, and refuses if the config changed)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")


def _listed(text: str, kind, ok, what: str) -> list:
    """``"a,b"`` -> [kind(a), kind(b)]; argparse turns the error into a usage line naming the option (exit 2)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(ok(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}")
    return values


def _fractions(text: str) -> list:
    return _listed(text, float, lambda f: 0 < f <= 1, "label fractions in (0, 1], e.g. 0.01,0.1,1.0")


def _seeds(text: str) -> list:
    return _listed(text, int, lambda s: s >= 0, "integer seeds >= 0, e.g. 0,1,2")


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
    p.add_argument("--out", help="also write OUT/skin_tone.csv: each image's ITA (skin around the default "
                   "segmenter's lesion) and its skin-tone group")
    p.add_argument("--size", type=int, default=128, help="with --out: the size images are segmented at")
    p.add_argument("--cache-dir", help="with --out: image cache folder (default: $SSL_DERM_CACHE or ~/.cache/ssl-derm)")

    _add_run_args(sub.add_parser("pretrain", help="self-supervised pretraining"), _default("pretrain/simclr_resnet18.yaml"), force=True)
    _add_run_args(sub.add_parser("finetune", help="kNN / linear / finetune / semi-supervised / few-mask segmentation"),
                  _default("finetune/linear.yaml"), force=True)
    _add_run_args(sub.add_parser("segment", help="annotation-free lesion segmentation"), _default("segment/default.yaml"),
                  force=True)
    p = sub.add_parser("label-efficiency", help="pretrained vs random init across label fractions")
    _add_run_args(p, _default("finetune/linear.yaml"))
    p.add_argument("--checkpoint", required=True, help="exported encoder (encoder.safetensors)")
    p.add_argument("--fractions", default="0.01,0.1,1.0", type=_fractions, help="label fractions in (0, 1], comma-separated")
    p.add_argument("--protocols", default="knn,linear")
    p.add_argument("--seeds", default="0", type=_seeds, help="integer seeds, comma-separated")

    p = sub.add_parser("sweep", help="grid of runs x seeds, resumable, with tables and plots")
    p.add_argument("config", help="configs/sweeps/<name>.yaml")
    p.add_argument("--out", help="sweep folder (default: the config's out key)")
    p.add_argument("--workers", type=int, default=1, help="cells run at once, each in its own process "
                   "(pretrainings still run one at a time first); e.g. 2 on 2 CPU cores")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("demo", help="pretrain, segment and finetune on synthetic data; writes a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", help="image folder with labels.csv (and masks/) instead of the synthetic set")
    p.add_argument("--quick", action="store_true", help="smallest budget (for tests)")

    p = sub.add_parser("predict", help="run an exported classifier or segmenter on image folders")
    p.add_argument("--model", required=True, help="run folder with model.json (a finetune or segment run)")
    p.add_argument("--images", required=True, nargs="+", help="image folders (recursive) or files")
    p.add_argument("--out", required=True, help="output folder: predictions.csv or masks/, bad_files.txt")
    p.add_argument("--tta", choices=("none", "d4"), help="average over the 8 rotations/flips")
    p.add_argument("overrides", nargs="*", help="device=cpu, batch_size=64, data.labels=CSV, data.masks=DIR ...")

    p = sub.add_parser("robustness", help="score an exported classifier or segmenter under acquisition shifts")
    p.add_argument("--model", required=True, help="run folder with model.json (a finetune or segment run)")
    p.add_argument("--images", required=True, nargs="+", help="image folders (recursive) or files")
    p.add_argument("--out", required=True, help="output folder: robustness.csv, metrics.json, robustness.png")
    p.add_argument("overrides", nargs="*", help="data.masks=DIR or data.labels=CSV, image_size=256, "
                   "shifts=[zoom,blur], max_images=500, device=cpu ...")

    cfgs = sub.add_parser("configs", help="the configs shipped with the package").add_subparsers(
        dest="configs_command", required=True)
    cfgs.add_parser("list", help="print the names of the packaged configs")
    cfgs.add_parser("show", help="print one packaged config").add_argument("name", help="e.g. finetune/linear")

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    from ssl_derm.commands.bench import add_arguments

    add_arguments(bench.add_parser("throughput", help="training-step ceiling vs ssl-derm's cache->GPU->kornia path "
                                   "vs lightly's standard JPEG path"))
    return ap


def load_run_config(cls, args, default_rel: str):
    """The command's config: ``--config`` is checked strictly; the keys of the default file (``default_rel``
    under configs/) are read leniently, so an override that picks another plug-in (``method.name=byol`` over
    simclr_resnet18.yaml) drops the default plug-in's own keys instead of failing on them, while an override
    of another plug-in's key is still an error. For finetune the default is
    configs/finetune/<protocol.name>.yaml where that file exists."""
    from ssl_derm.config import load_config

    path, default = args.config, _default(default_rel)
    if path != default:
        return load_config(cls, path, args.overrides)
    picked = [o.split("=", 1)[1].strip() for o in args.overrides if o.startswith("protocol.name=")]
    if picked and default_rel.startswith("finetune/"):
        path = _default(f"finetune/{picked[-1]}.yaml") or path
    return load_config(cls, path, args.overrides, lenient="file")


def _locked(out, command: str):
    """The run-folder lock on ``out`` for the command's duration (rank 0 only: the ranks of one torchrun
    job share their --out)."""
    import contextlib

    if out is None or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    from ssl_derm.runs.lock import run_folder_lock

    return run_folder_lock(out, f"ssl-derm {command}")


def _run(args) -> int:
    if args.command == "data":
        if args.data_command == "synth":
            from ssl_derm.data import write_synthetic

            write_synthetic(args.out, n=args.n, size=args.size, seed=args.seed)
            return 0
        from ssl_derm.data import run_check

        rc = run_check(args.paths, masks=args.masks, labels=args.labels)
        if args.out:
            from ssl_derm.segmenters.skin_tone import write_folder_skin_tone

            write_folder_skin_tone(args.paths, args.out, args.size, args.cache_dir)
        return rc
    if args.command in ("configs", "bench"):
        return _run_tool(args)
    work = _command(args)  # the config is read (and refused) before the folder is made or locked
    out = args.out
    if args.command == "sweep" and out is None:
        from ssl_derm.commands.sweep import load_sweep

        out = load_sweep(args.config, args.overrides).get("out") or "runs/sweep"
    with _locked(out, args.command):
        if getattr(args, "force", False) and os.environ.get("RANK", "0") == "0":
            from ssl_derm.runs.resume import discard_checkpoints

            discard_checkpoints(args.out)  # under the lock, after the config is known to load
        work()
    return 0


def _command(args):
    """The command's work as a function of nothing, with its config already loaded."""
    if args.command == "pretrain":
        from ssl_derm.config import PretrainConfig
        from ssl_derm.commands.pretrain import run_pretrain

        cfg = load_run_config(PretrainConfig, args, "pretrain/simclr_resnet18.yaml")
        return lambda: run_pretrain(cfg, args.out)
    if args.command == "finetune":
        from ssl_derm.evaluate.config import FinetuneConfig
        from ssl_derm.commands.finetune import run_finetune

        cfg = load_run_config(FinetuneConfig, args, "finetune/linear.yaml")
        return lambda: run_finetune(cfg, args.out, existing="force" if args.force else "error")
    if args.command == "label-efficiency":
        from ssl_derm.evaluate.config import FinetuneConfig
        from ssl_derm.commands.label_efficiency import run_label_efficiency

        cfg = load_run_config(FinetuneConfig, args, "finetune/linear.yaml")
        return lambda: run_label_efficiency(cfg, args.checkpoint, args.fractions, args.protocols.split(","),
                                            args.seeds, args.out)
    if args.command == "segment":
        from ssl_derm.segmenters.config import SegmentConfig
        from ssl_derm.commands.segment import run_segment

        cfg = load_run_config(SegmentConfig, args, "segment/default.yaml")
        return lambda: run_segment(cfg, args.out, existing="force" if args.force else "error")
    if args.command == "sweep":
        from ssl_derm.commands.sweep import run_sweep

        return lambda: run_sweep(args.config, out=args.out, overrides=args.overrides, workers=args.workers)
    if args.command == "demo":
        from ssl_derm.commands.demo import run_demo

        return lambda: run_demo(args.out, data=args.data, quick=args.quick)
    if args.command == "predict":
        from ssl_derm.commands.predict import run_predict

        return lambda: run_predict(args.model, args.images, args.out, args.overrides, tta=args.tta)
    if args.command == "robustness":
        from ssl_derm.commands.robustness import run_robustness

        return lambda: run_robustness(args.model, args.images, args.out, args.overrides)
    raise AssertionError(args.command)


def _run_tool(args) -> int:
    if args.command == "configs":
        from ssl_derm.packaged import CONFIG_DIR, list_configs, show_config

        if args.configs_command == "list":
            print(f"# {CONFIG_DIR}\n" + "\n".join(list_configs()))
        else:
            print(show_config(args.name), end="")
        return 0
    if args.command == "bench":
        from ssl_derm.commands.bench import run_from_args

        run_from_args(args)
        return 0
    raise AssertionError(args.command)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides may also follow an option (``sweep FILE --out DIR k=v``),
    which plain argparse refuses once a positional argument stands before the option."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("ssl-derm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; the traceback on request
        if os.environ.get("SSL_DERM_DEBUG"):
            raise
        return _report(args.command, e)


def _report(command: str, e: Exception) -> int:
    """Print ``e`` as one line on stderr; -> the exit code (2 config error, 1 other user error or a bug)."""
    from ssl_derm.errors import as_user_error

    user = as_user_error(e)  # a full disk or an unwritable path is the user's to fix, wherever it was raised
    e = user or e
    msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
    if user is not None:
        print(f"ssl-derm {command}: error: {msg}", file=sys.stderr)
        return e.exit_code
    print(f"ssl-derm {command}: error: {msg}  [{type(e).__name__}; set SSL_DERM_DEBUG=1 for the traceback]",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
