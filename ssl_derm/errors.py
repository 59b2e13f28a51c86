"""Errors that a user can fix: one base class, so the CLI prints them as one line without a traceback.

``ssl-derm`` exits 2 for a :class:`ConfigError` (a key, a value or a file of the config) and 1 for every
other :class:`UserError`; anything else is a bug and keeps the "[Type; set SSL_DERM_DEBUG=1 ...]" hint.
Each message names the key, file or value and what to do. The classes stay subclasses of the builtin
errors that callers and tests caught before (``ValueError``, ``RuntimeError``), so nothing that catches
those changes behaviour.
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input that the user can fix; ``exit_code`` is what ``ssl-derm`` returns for it."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message names the key and what is allowed."""

    exit_code = 2


class MethodError(ConfigError):
    """A method cannot run with this encoder or these settings; the message says what to change."""


class AugmentError(ConfigError):
    """A bad augmentation setting or input; the message names the key or the tensor and what to do."""


class DataError(UserError, ValueError):
    """Data on disk is missing or wrong; the message names the file, key or ids and what to do."""


class ModelFileError(DataError):
    """A run folder has no usable exported model; the message names the folder or file."""


class SplitError(DataError):
    """The split does not fit the dataset or the requested label fraction."""


class EncoderError(UserError, ValueError):
    """An encoder name, checkpoint or architecture does not fit what the run asks of it."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss...); the message says what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another run."""


class DeviceError(UserError, RuntimeError):
    """The requested device is not available on this machine."""


class UnknownNameError(ConfigError, KeyError):
    """A method, preset, protocol or segmenter name that is not registered; the message lists the names.
    A KeyError too, for callers of ``registry.get`` that catch that."""

    __str__ = BaseException.__str__  # KeyError would quote the message


class DiskFullError(UserError, OSError):
    """The disk (or quota) of an output folder is full; the message names the folder and the space needed."""


class RunFolderError(UserError, RuntimeError):
    """An output folder cannot be used: not creatable, a file, held by another process, or a finished run
    of another config; the message names the folder and what to do."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_free_space(folder, need: int, what: str) -> None:
    """Refuse, before writing, when ``folder``'s disk has less than ``need`` bytes free (a memory-mapped
    file on a full disk dies of SIGBUS with no message at all, so the cache asks first)."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise DiskFullError(f"not enough disk space in '{folder}' for {what}: {_mb(need)} needed, {_mb(free)} free; "
                            "free some space or point the folder elsewhere")


def disk_full(e: OSError, path=None) -> DiskFullError:
    """The one message for ENOSPC/EDQUOT: the folder that filled up and the space left there."""
    target = Path(path or getattr(e, "filename", None) or ".")
    folder = target if target.is_dir() else target.parent
    try:
        free = _mb(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    return DiskFullError(f"no space left on the disk of '{folder}' while writing '{target.name}' ({free} free); "
                         "free some space or write the output elsewhere; no partial file was kept")


@contextmanager
def written_whole(tmp, path=None):
    """Write ``tmp`` inside the block (the caller renames it into place): on any error the temp file is
    removed, so nothing half-written stays behind, and ENOSPC/EDQUOT becomes one :class:`DiskFullError`."""
    tmp = Path(tmp)
    try:
        yield tmp
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UserError) and e.errno in NO_SPACE:
            raise disk_full(e, path or tmp) from None
        raise


def as_user_error(e: BaseException):
    """``e`` as a :class:`UserError` when it is one, or an OSError the user fixes (a full disk, a path that
    cannot be made or written); None for anything else (a bug)."""
    if isinstance(e, UserError):
        return e
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return disk_full(e)
    if isinstance(e, OSError) and e.filename and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"'{e.filename}': {e.strerror}; check its permissions, or use a folder you can write to")
    return None
