"""The ``ssl-derm`` CLI with one fault, for the torchrun ``--max-restarts`` test of tests/test_multinode.py:

    cli_killed_once.py MARKER STEP COMMAND ARGS...

runs ``ssl-derm COMMAND ARGS...`` where every Engine's rank 1 dies (SIGKILL) after training step STEP,
once (MARKER is written first: the workers that torchrun starts again run through).
"""
import sys
from pathlib import Path

from multinode_worker import KillRank1

from ssl_derm.cli import main
from ssl_derm.engine import Engine


def kill_rank1_once(after: int, marker: Path) -> None:
    init = Engine.__init__

    def with_fault(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.hooks.append(KillRank1(after, marker))

    Engine.__init__ = with_fault


if __name__ == "__main__":
    kill_rank1_once(int(sys.argv[2]), Path(sys.argv[1]))
    sys.exit(main(sys.argv[3:]))
