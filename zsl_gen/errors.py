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
    """Bytes this process may still write on the disk holding ``path`` (its nearest existing ancestor): for
    root, the blocks reserved for root count; None if unknown."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except AttributeError:  # (no statvfs: Windows)
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                continue
        except OSError:
            continue
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        return (st.f_bfree if root else st.f_bavail) * st.f_frsize
    return None


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_failure(path: str | os.PathLike, err: BaseException, *, only_disk: bool = False) -> WriteError | None:
    """``err``, raised while writing ``path``, as a ``WriteError`` naming ``path`` and saying why, when the disk
    or directory is to blame: an ``OSError`` about a file beside ``path`` (its temporary one), or a writer's
    own report of a full disk (torch's and safetensors' errors, numpy's short write: a message saying so, or
    a ``RuntimeError`` / errno-less ``OSError`` while less than ``DISK_FULL_BYTES`` are free). None for
    everything else (a bug, Ctrl-C, one of zsl-gen's own errors, a source file the writer failed to read):
    those stay as they are.

    ``only_disk``: ``err`` came from anywhere in a command, not from one write: only an ``OSError`` of a full
    disk or quota, a read-only file system or a file too large for it counts (not a dataset file that
    vanished, nor a full /dev/shm's message from a DataLoader worker)."""
    if not isinstance(err, Exception) or isinstance(err, ZSLGenError):
        return None
    path = Path(path)
    free = None
    if only_disk:
        if not (isinstance(err, OSError) and err.errno in (*DISK_ERRNOS, *NOT_WRITABLE_ERRNOS, errno.EFBIG)):
            return None
        full = err.errno in DISK_ERRNOS
    else:
        if isinstance(err, OSError) and err.filename and \
                not Path(os.path.abspath(err.filename)).is_relative_to(path.absolute().parent):
            return None  # another file's: what the writer read from (a source file, an archive)
        unsaid = isinstance(err, RuntimeError) or (isinstance(err, OSError) and err.errno is None)
        free = free_bytes(path) if unsaid else None
        full = (isinstance(err, OSError) and err.errno in DISK_ERRNOS) or \
            any(m in str(err) for m in DISK_FULL_MESSAGES) or (free is not None and free < DISK_FULL_BYTES)
        if not (full or isinstance(err, OSError)):
            return None
    if full:
        return WriteError(f"{path}: could not write it (the disk is full): free space there, or write to another "
                          "directory")
    if err.errno in NOT_WRITABLE_ERRNOS:
        return WriteError(f"{path}: could not write it ({err.strerror or err}): write to another directory, or "
                          "make this one writable")
    free = free_bytes(path) if free is None else free
    space = "" if free is None else f"; {free / 2**20:.1f} MiB free on that disk"
    return WriteError(f"{path}: could not write it ({err.strerror or err}{space}): check the directory and the "
                      "free space, or write to another directory")


DISK_FULL_BYTES = 1 << 20  # less free than this after a failed write: the disk is the cause
# how writers that wrap the OSError in their own exception say it (safetensors: "... (os error 28)")
# (numpy's short write: "Not enough free space to write N bytes")
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "Not enough free space")
