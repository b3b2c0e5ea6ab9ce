"""Shared CLI plumbing: user errors are printed as one clear line, without a traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

from zsl_gen.errors import ZSLGenError

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
