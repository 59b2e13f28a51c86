"""Thin entry point: ``python finetune/segment.py --out DIR data.images=DIR [k=v ...]`` (``ssl-derm segment``)."""
import sys

from ssl_derm.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
