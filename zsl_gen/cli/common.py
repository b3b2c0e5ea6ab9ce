"""Shared CLI plumbing: user errors are printed as one clear line, without a traceback."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

from zsl_gen.errors import ConfigError, ZSLGenError

F = TypeVar("F", bound=Callable)


def report_user_errors(fn: F) -> F:
    """Run ``fn``; a ``ZSLGenError`` becomes ``error: <message>`` on stderr and exit status 2. A reader that
    closed stdout early (``zsl-data info ... | head -1``) ends the command quietly, as for any Unix tool."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ZSLGenError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:
            # stdout is gone: point it at /dev/null so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, what the shell reports for a tool killed by the closed pipe

    return wrapper  # type: ignore[return-value]


def override_key(override: str) -> str:
    """The key a Hydra command-line override sets, adds or deletes: ``++a.b=1``, ``+a.b=1``, ``~a.b`` → ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def check_output_path(path: Path, what: str, *, directory: bool) -> None:
    """Refuse, before any work is done, an output ``path`` that cannot be written: an existing path of the
    other kind (a file where a directory is asked for, or the reverse), an existing ancestor that is a file,
    or a nearest existing ancestor this process may not write into. ``what``: the flag or key naming it.
    """
    path = Path(path)
    name = f"{what}{path}" if what.endswith("=") else f"{what} {path}"
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            fix = "give a directory path (it is created)" if directory else f"give a file path, e.g. {path / 'out.json'}"
            raise ConfigError(f"{name}: {'exists and is a file' if directory else 'is a directory'}; {fix}")
        return
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name}: {parent} is a file, not a directory; give a {kind} path whose parent "
                                  "directories are directories")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{name}: no permission to create it in {parent}; choose another path")
            return
