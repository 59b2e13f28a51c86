"""The default segmenter under acquisition shift on HAM10000 masks: its shift table, and the same for the
default without its steps against shift (``--before``: hair lines, illumination flattening, white balance
and the lightest-ring skin seed off, i.e. the default as it was before them).

    .venv/bin/python benchmarks/robustness_ham10000.py --data ../shared/data --out runs/robustness_ham10000 \\
        [--max-images 200] [--image-size 200]

Each entry exports a default-segmenter run folder (``ssl-derm segment`` on a few synthetic images: a
classical segmenter's run folder holds only its config) and runs ``ssl-derm robustness`` on a seeded subset of
HAM10000 (``max_images``, seed 0), the shifts at a 200-px working size, the segmenter at its 128-px cache
size, Jaccard at the working size. Prints each table (Jaccard per shift and severity, drop from clean) and
writes <out>/<entry>/robustness.csv, metrics.json, robustness.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ssl_derm.cli import main as cli

BEFORE = ["segment.hair_lines=0", "segment.flatten_light=false", "segment.colour_constancy=0",
          "segment.ring_light=1.0"]
ENTRIES = {"default": [], "before": BEFORE}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/robustness_ham10000")
    ap.add_argument("--max-images", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=200)
    ap.add_argument("--only", default="default,before")
    args = ap.parse_args(argv)
    out, ham = Path(args.out), Path(args.data) / "ham10000"
    if not cli(["data", "synth", "--out", str(out / "synth"), "--n", "8", "--size", "64"]) == 0:
        raise SystemExit("could not write the synthetic images the run folders are exported from")
    for name in args.only.split(","):
        run = out / f"{name}_run"
        if not (run / "model.json").is_file():
            cli(["segment", "--out", str(run), f"data.images=[{out / 'synth/images'}]", "segment.write_masks=false",
                 *ENTRIES[name]])
        print(f"\n## {name}")
        cli(["robustness", "--model", str(run), "--images", str(ham / "images"), "--out", str(out / name),
             f"data.masks={ham / 'masks'}", f"max_images={args.max_images}", f"image_size={args.image_size}",
             "num_threads=1", "device=cpu"])


if __name__ == "__main__":
    main()
