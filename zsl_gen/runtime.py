"""Process-wide settings that make training faster without changing any result.

``keep_freed_memory``: glibc's ``malloc`` serves every allocation above a threshold (128 KiB, adapting up
to 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step allocates and frees
tensors of tens of MiB every time (a 4096×2360 fp32 weight gradient is 38.7 MB, its bf16 copy 19 MB), so each
one costs its page faults again: on the 2-core benchmark machine a fresh 38.7 MB tensor takes ~12 ms to
fill where one in reused memory takes ~1.7 ms. Raising the mmap and trim thresholds keeps freed memory in
the process for the next step (what tcmalloc/jemalloc, which PyTorch's CPU performance guides recommend
preloading, do by design). The cost: freed memory stays counted in the process's resident size until it is
reused or the process exits (BENCHMARKS.md gives the peak RSS with and without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
# Per-step tensors are at most weight-sized (4096×4096 fp32 = 67 MB); larger, one-off blocks (datasets,
# synthetic features) keep going to mmap and back to the kernel, which bounds the extra resident memory.
KEEP_BYTES = 128 << 20


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose malloc these settings tune), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(threshold_bytes: int = KEEP_BYTES) -> bool:
    """Serve allocations up to ``threshold_bytes`` from the heap and keep up to that much freed memory.

    Returns ``True`` when applied; ``False`` (a no-op) where the C library is not glibc (macOS, Windows,
    musl), whose allocators behave differently.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = min(int(threshold_bytes), 2**31 - 1)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc ``malloc_trim(0)``).

    Called before each evaluation: the blocks training keeps for its next step would otherwise sit under
    the evaluation's own peak (synthetic features, classifier inputs). Training faults them in again once
    afterwards. Returns whether anything was released; ``False`` off glibc.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(libc.malloc_trim(0))


# state tensors below this many elements (Adam's step counters, biases) are not worth a file round trip
_OFFLOAD_MIN_NUMEL = 1 << 16


@contextmanager
def optimizer_state_offloaded(optimizers: Iterable[torch.optim.Optimizer], directory: str | Path | None = None,
                              enabled: bool = True, min_bytes: int = 0) -> Iterator[bool]:
    """Keep the optimisers' large CPU state tensors in an anonymous file for the duration of the block.

    An evaluation needs the weights but not Adam's two moments (twice the weights: tf-VAEGAN at AWA2 shapes,
    557 MB), while the classifier's inputs need room of their own. The moments are written to an unlinked
    temporary file in ``directory`` (the run directory: on disk, not a RAM-backed ``/tmp``), dropped from
    memory, and read back, bit for bit, when the block ends (also when it raises). GPU state and small
    tensors stay where they are, and so does everything when the state to move is below ``min_bytes`` (the
    round trip costs ≈ 1.2 s per GB here, not worth it for small networks). Yields whether anything was
    offloaded; a file that cannot be written (disk full, read-only directory) leaves the state in memory
    with a warning.
    """
    entries = [(state, key) for optimizer in (optimizers if enabled else ()) for state in optimizer.state.values()
               for key, value in state.items()
               if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.numel() >= _OFFLOAD_MIN_NUMEL]
    if sum(state[key].numel() * state[key].element_size() for state, key in entries) < max(min_bytes, 1):
        entries = []
    handle = None
    if entries:
        try:
            handle = tempfile.TemporaryFile(prefix="zsl-gen-optimizer-state-", dir=directory)
            torch.save([state[key] for state, key in entries], handle)
            handle.flush()
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError
            log.warning("optimizer state kept in memory during the evaluation: cannot write it to %s (%s)",
                        directory or tempfile.gettempdir(), err)
            if handle is not None:
                handle.close()
            handle = None
    if handle is None:
        yield False
        return
    for state, key in entries:
        state[key] = torch.empty(0, dtype=state[key].dtype)
    try:
        yield True
    finally:
        handle.seek(0)
        restored = torch.load(handle, weights_only=True)
        handle.close()
        for (state, key), tensor in zip(entries, restored):
            state[key] = tensor


def native_bf16(device: str = "cpu") -> bool:
    """Whether bfloat16 matrix products run in hardware on ``device`` (``"cpu"`` or ``"cuda"``).

    CPU: torch's oneDNN check (avx512_bf16 or AMX). Without them bf16 products fall back to a slow path: on
    an AVX2-only 2-core EPYC, a 300×2048 @ 2048×200 classifier product ran at 1.9 GFLOP/s in bf16 against
    79 in fp32 (42× slower), a Linear layer under autocast 3.8× slower. CUDA: Ampere or newer. Where torch
    offers no check, ``True`` (nothing is refused on a guess).
    """
    if device == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except (TypeError, RuntimeError, AssertionError):  # older signature, or no CUDA
            return True
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return True


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` or the machine type elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
