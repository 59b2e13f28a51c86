"""One writer per run folder: an exclusive ``flock`` on ``<out>/.lock``, held while a command writes there.

Two identical commands into one ``--out`` would otherwise write the same ``last.pt.tmp``, ``metrics.json``
and checkpoints at once (one died on the other's temp file). The second one now stops at once with a
message naming the process that holds the folder (pid, host and command, written into the lock file).
The operating system drops the lock when the holder exits, however it exits (SIGKILL included), so a
stale ``.lock`` file never blocks a later run; the file itself is left in place (removing it would let
two processes hold locks on two different files of one name).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from ssl_derm.errors import RunFolderError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "a process that wrote no name"
    except OSError:
        return "another process"


@contextmanager
def run_folder_lock(out, command: str = ""):
    """Hold ``<out>/.lock`` (the folder is made) for the block; a folder held by another process is a
    :class:`RunFolderError` naming the holder."""
    from ssl_derm.runs.finished import check_out_path

    out = Path(out)
    check_out_path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderError(f"--out '{out}' is in use: held by {_holder(path)}; wait for that run to end, "
                             "or give another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command or ' '.join(sys.argv[:3])})\n".encode())
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
