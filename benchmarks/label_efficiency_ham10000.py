"""Label efficiency on HAM10000: kNN, linear, label spreading, finetune, FixMatch, mean teacher and self-distillation
at 1, 10 and 100% of the labels, pretrained encoder against random initialisation, on the data layer's lesion-grouped split
(test 20% of lesions, val 10%, labelled subsets nested inside train).

CPU-sized by default (64 px, short budgets); on a GPU raise --size and the budgets:

    .venv/bin/python benchmarks/label_efficiency_ham10000.py --out runs/le_ham10000 \\
        --checkpoint runs/pretrain_pooled/encoder.safetensors --seeds 0
    .venv/bin/python benchmarks/label_efficiency_ham10000.py --inits random ...   # no checkpoint yet

Writes <out>/label_efficiency.{csv,md} and one run folder per cell (metrics.json, confusion matrix,
TensorBoard); finished cells are skipped, so the script resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def budgets(args) -> dict:
    """Per-protocol overrides: the same for the pretrained and the random encoder."""
    ft = [f"train.max_steps={args.finetune_steps}", f"train.batch_size={args.batch}", "protocol.eval_every=50",
          f"train.warmup_steps={min(20, args.finetune_steps // 5)}"]
    fm = [f"train.max_steps={args.fixmatch_steps}", f"train.batch_size={args.fixmatch_batch}",
          f"protocol.mu={args.mu}", "protocol.eval_every=50", f"train.warmup_steps={min(20, args.fixmatch_steps // 5)}",
          "train.lr=0.004"]
    # the teacher phase is the finetune cell's budget (same seed and draws: its test score is that cell's);
    # the student trains as long on the labelled images plus mu x as many unlabeled ones
    ds = [*ft, f"protocol.teacher_steps={args.finetune_steps}", f"protocol.mu={args.mu}"]
    return {"finetune": ft, "fixmatch": fm, "meanteacher": fm, "distill": ds}


def route_overrides(overrides, protocols):
    """Split the command line's ``key=value`` overrides: ``protocol.*`` keys go to each chosen protocol that
    has the key (``protocol.feature_pool`` to kNN and linear, ``protocol.head_init`` to finetune...), the
    rest to the base config. -> (base list, {protocol: list}); a protocol key no chosen protocol has is an error."""
    import dataclasses

    from ssl_derm.registry import settings_class

    keys = {p: {f.name for f in dataclasses.fields(settings_class("protocol", p))} for p in protocols}
    base, routed = [], {p: [] for p in protocols}
    for o in overrides:
        key = o.split("=", 1)[0]
        if not key.startswith("protocol.") or key == "protocol.name":
            base.append(o)
            continue
        takers = [p for p in protocols if key.split(".", 1)[1] in keys[p]]
        if not takers:
            raise SystemExit(f"override '{o}': none of the protocols {', '.join(protocols)} has the key '{key}'")
        for p in takers:
            routed[p].append(o)
    return base, routed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "label_efficiency_ham10000"))
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "pretrain_pooled" / "encoder.safetensors"))
    ap.add_argument("--inits", default="pretrained,random")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fractions", default="0.01,0.1,1.0")
    ap.add_argument("--protocols", default="knn,linear,labelprop,finetune,fixmatch")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fixmatch-steps", type=int, default=100)
    ap.add_argument("--fixmatch-batch", type=int, default=16)
    ap.add_argument("--mu", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: rebuild the tables from the finished cells of the given grid")
    ap.add_argument("overrides", nargs="*", help="extra key.sub=value overrides for every cell (protocol.* keys: "
                    "for the chosen protocols that have them)")
    args = ap.parse_args(argv)

    from ssl_derm.evaluate.config import load_finetune_config
    from ssl_derm.commands.label_efficiency import label_efficiency_spec, run_label_efficiency
    from ssl_derm.commands.sweep import plan_cells, write_tables

    data = Path(args.data)
    inits = tuple(args.inits.split(","))
    fractions, protocols = [float(f) for f in args.fractions.split(",")], args.protocols.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if "pretrained" in inits and not Path(args.checkpoint).is_file() and not args.table_only:
        print(f"no checkpoint at {args.checkpoint}: running the random-init rows only", file=sys.stderr)
        inits = tuple(i for i in inits if i != "pretrained")
    base_overrides, routed = route_overrides(args.overrides, protocols)
    base = load_finetune_config(ROOT / "ssl_derm" / "configs" / "finetune" / "finetune.yaml", [
        f"data.images=[{data / 'images'}]", f"data.labels={data / 'labels.csv'}", f"data.image_size={args.size}",
        f"encoder.name={args.encoder}", f"device={args.device}", f"train.num_threads={args.threads}",
        "protocol.balance=weighted_loss", "protocol.linear_C=[0.01,0.1,1.0]", *base_overrides])
    per_protocol = {p: [*budgets(args).get(p, []), *routed[p]] for p in protocols}
    if args.table_only:
        spec = label_efficiency_spec(base, args.checkpoint, fractions, protocols, seeds, inits, per_protocol)
        write_tables(Path(args.out), spec, plan_cells(spec))
        print((Path(args.out) / "label_efficiency.md").read_text())
        return 0
    rows = run_label_efficiency(base, args.checkpoint if "pretrained" in inits else None, fractions, protocols,
                                seeds, args.out, inits=inits, protocol_overrides=per_protocol)
    print((Path(args.out) / "label_efficiency.md").read_text())
    print(f"{len(rows)} cells in {Path(args.out) / 'label_efficiency.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
