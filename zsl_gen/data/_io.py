"""File plumbing shared by the readers and writers: cached sha256 checksums and atomic writes."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from zsl_gen.errors import WriteError, write_failure

_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20, cached: bool = True) -> str:
    """Hex sha256 of a file, read in chunks; cached by ``(resolved path, size, mtime)`` so repeated loads are
    cheap, unless ``cached=False`` (an integrity check, which must read what is on disk now)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if cached and key in _SHA256_CACHE:
        return _SHA256_CACHE[key]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while True:
            block = fh.read(chunk_size)
            if not block:
                break
            h.update(block)
    digest = h.hexdigest()
    _SHA256_CACHE[key] = digest
    return digest


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fh)`` into a temporary file beside ``path``, then rename it.

    A crash or an exception leaves either the old file or no file, never a half-written one. Inside
    ``files_as_one_set()`` the rename waits for the end of the block, with the other files'. A failure of the
    disk rather than of ``write`` (an ``OSError``, or any error while the disk is full: torch's and
    safetensors' writers report a full disk as their own errors) is raised as ``WriteError`` naming the file.
    An interruption (Ctrl-C, SIGTERM) stays one, even where the writer's cleanup raised an error of its own.
    """
    path = Path(path)
    tmp = None
    handled = sys.exc_info()[1]  # an exception being handled by the caller (a save in an `except` block)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        staged = _STAGED.get()
        if staged is None:
            os.replace(tmp, path)
        else:
            staged.append((Path(tmp), path))
    except BaseException as err:
        # Ctrl-C or SIGTERM inside a writer whose cleanup then failed on the cut-off file (torch.save's zip
        # writer: "unexpected pos"): the interruption is what happened
        interrupt = err.__context__ if isinstance(err, Exception) and err.__context__ is not handled and \
            isinstance(err.__context__, (KeyboardInterrupt, SystemExit)) else None
        # before the temporary file goes: it is what filled the disk
        failure = write_failure(path, err) if interrupt is None else None
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if interrupt is not None:
            raise interrupt from None
        if failure is None:
            raise
        raise failure from err
    return path


# the (temporary file, destination) pairs of the open ``files_as_one_set`` block; None outside one
_STAGED: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("staged", default=None)


@contextlib.contextmanager
def files_as_one_set() -> Iterator[None]:
    """Make the ``atomic_write`` calls inside the block replace their files together, at its end: until then
    each is a temporary file beside its destination. An exception, Ctrl-C or SIGTERM during the block (the
    long part: writing) leaves every earlier file as it was and no temporary file. The renames at the end
    run to completion: a Ctrl-C or SIGTERM arriving then takes effect right after them (``signals_deferred``),
    so a dataset directory never ends with one new file beside an old one, which would validate as a dataset
    neither run made."""
    if _STAGED.get() is not None:  # nested: the outer block renames
        yield
        return
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        try:
            yield
        finally:
            _STAGED.reset(token)
        in_the_way = [path for _, path in staged if path.is_dir()]
        if in_the_way:  # the one rename that fails in a directory that took the temporary files: before any
            raise WriteError(f"{in_the_way[0]} is a directory, where a file goes; remove it or write to another "
                             "directory")
        with signals_deferred():
            for tmp, path in staged:
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:  # (all of them: the renamed ones are gone)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block to its end with Ctrl-C and SIGTERM noted instead of acted on, then deliver them to the
    handlers in place before (Python runs handlers in the main thread only, whichever thread the kernel
    picked, so swapping the handlers holds them back everywhere; blocking the signal would hold back only
    the calling thread's). Outside the main thread nothing can interrupt the block: it just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # (None: a handler installed from C, which could not be put back)
            previous[signum] = signal.signal(signum, lambda n, frame: arrived.append(n))
    try:
        yield
    finally:
        _restore(list(previous.items()))
        # SIGTERM first: it ends the process (143) whatever a Ctrl-C alongside would have done
        for signum in sorted(set(arrived), key=lambda n: n != signal.SIGTERM):
            signal.raise_signal(signum)


def _restore(handlers: list[tuple[int, Any]]) -> None:
    """Put ``handlers`` back, each even if putting back an earlier one raised (``signal.signal`` runs a
    pending signal's handler first: a Ctrl-C arriving now raises there)."""
    if handlers:
        (signum, handler), rest = handlers[0], handlers[1:]
        try:
            signal.signal(signum, handler)
        finally:
            _restore(rest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new temporary directory beside ``path`` (to be renamed onto it), with the permissions a plain
    ``mkdir`` would give (``mkdtemp``'s are 0700, which the renamed result would keep)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished directory ``tmp`` (from ``temp_dir_beside(out)``) onto ``out``. An existing ``out``
    (the caller has checked it may be replaced) is first renamed aside and deleted afterwards: renames only, so
    an interruption leaves the earlier directory or the new one, never a half-deleted mix."""
    old = None
    try:
        if out.exists():
            old = temp_dir_beside(out)
            os.rename(out, old / out.name)
        tmp.rename(out)
    except BaseException:
        if old is not None and not out.exists() and (old / out.name).exists():
            os.rename(old / out.name, out)  # the earlier one back in place
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` for UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
