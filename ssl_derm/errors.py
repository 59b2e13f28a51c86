"""Errors that a user can fix: one base class, so the CLI prints them as one line without a traceback.

``ssl-derm`` exits 2 for a :class:`ConfigError` (a key, a value or a file of the config) and 1 for every
other :class:`UserError`; anything else is a bug and keeps the "[Type; set SSL_DERM_DEBUG=1 ...]" hint.
Each message names the key, file or value and what to do. The classes stay subclasses of the builtin
errors that callers and tests caught before (``ValueError``, ``RuntimeError``), so nothing that catches
those changes behaviour.
"""
from __future__ import annotations


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
