"""``zsl_gen.runtime.keep_freed_memory``: glibc's malloc keeps large freed blocks for the next step."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process (malloc settings are per process): where does glibc put a live 40 MB tensor, and what
# does it keep after the tensor is freed? mallinfo2: hblkhd = bytes in mmap'd blocks (returned to the kernel
# on free), fordblks = free bytes the heap keeps for reuse.
_CHILD = """
import ctypes, json, sys, torch
from zsl_gen.runtime import keep_freed_memory, release_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "on" else False
base = libc.mallinfo2().hblkhd
x = torch.ones(10_000_000)  # 40 MB
alive = libc.mallinfo2().hblkhd - base
del x
kept = libc.mallinfo2().fordblks
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
before_release = rss()
released = release_freed_memory()
print(json.dumps({"applied": applied, "mmapped_while_alive": alive, "kept_after_free": kept,
                  "released": released, "rss_drop": before_release - rss()}))
"""


def _child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory tunes glibc's malloc; this platform has another libc")
def test_large_blocks_come_from_the_heap_and_stay_there_after_free():
    default, kept = _child("off"), _child("on")
    assert not default["applied"] and kept["applied"]
    assert default["mmapped_while_alive"] >= 40_000_000  # the default: a fresh mmap, unmapped on free
    assert default["kept_after_free"] < 40_000_000
    assert kept["mmapped_while_alive"] < 1_000_000  # kept: served from the heap ...
    assert kept["kept_after_free"] >= 40_000_000  # ... and kept there for the next step
    assert kept["released"] and kept["rss_drop"] >= 30_000_000  # until an evaluation gives it back


def test_keep_freed_memory_is_a_no_op_off_glibc(monkeypatch):
    from zsl_gen import runtime

    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert runtime.keep_freed_memory() is False
    assert runtime.release_freed_memory() is False
