"""Thin entry point: ``python pretrain/main.py --config configs/pretrain/simclr_resnet18.yaml --out DIR [k=v ...]``.

Same as ``ssl-derm pretrain``; launch with ``torchrun --nproc_per_node N pretrain/main.py ...`` for DDP.
"""
import sys

from ssl_derm.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
