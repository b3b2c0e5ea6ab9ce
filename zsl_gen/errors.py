"""Exception types whose messages are shown to users as-is (the CLIs print them without a traceback).

Every message names the offending file, key or config field and says how to fix it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class ZSLGenError(Exception):
    """Base class of every error zsl-gen reports to a user."""


class DataError(ZSLGenError):
    """A dataset file or its content is missing, malformed or inconsistent."""


class ConfigError(ZSLGenError):
    """A configuration value is invalid."""


class CheckpointError(ZSLGenError):
    """A checkpoint or exported generator is missing, corrupt, tampered with or of the wrong kind."""


class DownloadError(ZSLGenError):
    """A dataset archive could not be fetched or verified."""


class WriteError(ZSLGenError, OSError):
    """An output file could not be written: a full disk, a read-only or vanished directory (an ``OSError``
    too, for code that catches those)."""


class TrainingDiverged(ZSLGenError):
    """Generator training produced non-finite values (NaN/Inf losses, parameters or outputs)."""


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the disk holding ``path`` (its nearest existing ancestor); None if unknown."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def write_failure(path: str | os.PathLike, err: BaseException, *, only_disk: bool = False) -> WriteError | None:
    """``err``, raised while writing ``path``, as a ``WriteError`` saying which file and how much space is
    left, when the disk or directory is to blame: an ``OSError``, or any other error while the disk is full.
    None for everything else (a bug, Ctrl-C, one of zsl-gen's own errors): those stay as they are.

    ``only_disk``: ``err`` came from anywhere in a command (not from one write): only a full disk, a
    read-only one or a file too large for it count, not every ``OSError`` (a dataset file that vanished)."""
    if not isinstance(err, Exception) or isinstance(err, ZSLGenError):
        return None
    free = free_bytes(path)
    full = (free is not None and free < DISK_FULL_BYTES) or any(m in str(err) for m in DISK_FULL_MESSAGES) or \
        (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT))
    if not (full or isinstance(err, OSError) and (not only_disk or err.errno in (errno.EROFS, errno.EFBIG))):
        return None
    name = err.filename if isinstance(err, OSError) and err.filename else path
    if full:
        reason = "the disk is full"
    else:  # an OSError
        reason = (err.strerror or str(err)) + ("" if free is None else f"; {free / 2**20:.1f} MiB free on that disk")
    return WriteError(f"{name}: could not write it ({reason}): free space there, or write to another "
                      "directory")


DISK_FULL_BYTES = 1 << 20  # less free than this after a failed write: the disk is the cause
# how writers that wrap the OSError in their own exception say it (safetensors: "... (os error 28)")
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")
