"""Thin entry point: ``python finetune/main.py --config configs/finetune/<protocol>.yaml --out DIR [k=v ...]``.

Same as ``ssl-derm finetune`` (kNN, linear, finetune, FixMatch, mean teacher, few-mask segmentation).
"""
import sys

from ssl_derm.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
