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
from pathlib import Path
from typing import Iterable

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


# tensors below this many bytes (Adam's step counters, biases, labels) are not worth a file round trip
_OFFLOAD_MIN_BYTES = 1 << 18


class Offload:
    """Tensors' memory kept in one unlinked temporary file until the ``with`` block ends, then read back bit
    for bit (also when the block raises).

    An evaluation during training reads the weights only until the classifier's inputs are built and never
    reads Adam's moments, while the classifier's inputs need room of their own (tf-VAEGAN at AWA2 shapes:
    557 MB of moments, 278 MB of weights, 306 MB of image features, 1.38 GB of fp32 classifier inputs).
    ``offload(tensors)`` writes each tensor's storage to the file and frees it *in place*
    (``UntypedStorage.resize_(0)``), so every reference to it, the optimiser's state keys, views and the
    data object all see the same bytes again afterwards. Only hand in tensors the block does not read: torch
    does not check an emptied storage, and a read would crash the process (the tests run whole evaluations
    with everything moved, and compare their numbers with a run that moves nothing). The file lives in
    ``directory`` (the run directory: on disk, not a RAM-backed ``/tmp``) and is unlinked from the start,
    so nothing is left behind even by a crash. ``first``: tensors moved on entering the block.

    Skipped, staying in memory: GPU tensors (a GPU run moves nothing), tensors under 256 KiB, tensors that
    are a view of part of a larger storage (the rest may still be in use) and storages that cannot be resized
    (memory shared with numpy, or read by ``torch.load``: ``own_memory`` copies such tensors first).
    ``directory=None``: moves nothing. A file that cannot be written (disk full, read-only directory) leaves
    the tensors in memory with a warning.
    """

    def __init__(self, directory: str | Path | None, first: Iterable[torch.Tensor] = ()):
        self.directory = directory
        self.moved_bytes = 0
        self._first = list(first)
        self._handle = None
        self._moved: list[tuple[torch.UntypedStorage, int]] = []  # (storage, its size), in file order
        self._seen: set[int] = set()
        self._failed = directory is None

    def __enter__(self) -> "Offload":
        first, self._first = self._first, []
        self(first)
        return self

    def __call__(self, tensors: Iterable[torch.Tensor]) -> int:
        """Move ``tensors`` out of memory until the block ends; returns the bytes moved by this call."""
        moved = 0
        for tensor in tensors:
            if self._failed:
                break
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            if (tensor.device.type != "cpu" or storage._cdata in self._seen or nbytes < max(_OFFLOAD_MIN_BYTES, 1)
                    or tensor.numel() * tensor.element_size() != nbytes or not storage.resizable()):
                continue
            try:
                if self._handle is None:
                    self._handle = tempfile.TemporaryFile(prefix="zsl-gen-offload-", dir=self.directory)
                # the bytes through a ctypes view: Tensor.numpy() would mark the storage non-resizable for good
                self._handle.write(storage_bytes(storage))
                self._handle.flush()  # a full disk must show here, while the bytes are still in memory
            except OSError as err:
                self._failed = True
                log.warning("weights, optimizer state and features kept in memory: cannot write them to %s (%s)",
                            self.directory, err)
                break
            # recorded before it is emptied: an interrupt in between leaves a storage that reads back as itself
            self._seen.add(storage._cdata)
            self._moved.append((storage, nbytes))
            storage.resize_(0)
            moved += nbytes
        self.moved_bytes += moved
        return moved

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        """Read every moved tensor back (what leaving the ``with`` block does)."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        restored = 0
        try:
            handle.seek(0)
            for storage, nbytes in self._moved:
                storage.resize_(nbytes)
                view = memoryview(storage_bytes(storage))
                done = 0
                while done < nbytes:
                    got = handle.readinto(view[done:])
                    if not got:
                        raise OSError(f"the offload file ended after {done} of {nbytes} bytes")
                    done += got
                restored += 1
        except BaseException as err:
            # what is not back stays empty (a read crashes) rather than holding bytes that were never restored
            for storage, _ in self._moved[restored:]:
                storage.resize_(0)
            message = (f"cannot read the weights, optimizer state or features moved to {self.directory} back into "
                       f"memory ({type(err).__name__}: {err}); the run cannot go on: resume it from its last.ckpt "
                       "(ckpt_path=...)")
            if not isinstance(err, Exception):  # an interrupt stays an interrupt
                log.error(message)
                raise
            raise RuntimeError(message) from err
        finally:
            handle.close()
            self._moved.clear()


def storage_bytes(storage: torch.UntypedStorage):
    """A writable ctypes byte array over a CPU storage's memory (no copy), for file I/O or ``np.frombuffer``
    without ``Tensor.numpy()``, which marks the storage as shared with numpy: never resizable again."""
    return (ctypes.c_ubyte * storage.nbytes()).from_address(storage.data_ptr())


def own_memory(tensors: Iterable[torch.Tensor]) -> None:
    """Give each CPU tensor whose storage torch cannot resize a copy of its own that it can, in place (the
    same tensor object): ``torch.load`` hands a resumed run's optimiser state back in such storages, which
    ``Offload`` would otherwise have to leave in memory. One tensor's copy exists at a time."""
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if tensor.device.type == "cpu" and storage.nbytes() and not storage.resizable():
            fresh = torch.empty_like(tensor, memory_format=torch.preserve_format).copy_(tensor)
            tensor.set_(fresh.untyped_storage(), fresh.storage_offset(), fresh.shape, fresh.stride())


def optimizer_state(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The optimisers' state tensors (Adam's moments, step counters), on whatever device."""
    return [value for optimizer in optimizers for state in optimizer.state.values()
            for value in state.values() if isinstance(value, torch.Tensor)]


def optimizer_state_bytes(optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of the optimisers' CPU state; before their first step, when they hold none yet, of the two
    moments Adam will create (twice the CPU weights)."""
    optimizers = list(optimizers)
    state = [t for t in optimizer_state(optimizers) if t.device.type == "cpu"]
    if state:
        return sum(t.numel() * t.element_size() for t in state)
    return 2 * sum(p.numel() * p.element_size() for optimizer in optimizers for group in optimizer.param_groups
                   for p in group["params"] if p.device.type == "cpu")


def large_model_offload(optimizers: Iterable[torch.optim.Optimizer], directory: str | Path | None,
                        min_bytes: int = 0, first: Iterable[torch.Tensor] = ()) -> Offload:
    """An ``Offload`` into ``directory`` (moving ``first`` on entry) when the optimisers' state is at least
    ``min_bytes`` (config ``offload_optimizer_state_mb``: it marks the models big enough for the round trip,
    ≈ 1.2 s per GB here); otherwise, or with ``directory=None``, one that moves nothing."""
    optimizers = list(optimizers)
    big = directory is not None and optimizer_state_bytes(optimizers) >= max(min_bytes, 1)
    return Offload(directory if big else None, first)


def evaluation_offload(optimizers: Iterable[torch.optim.Optimizer], directory: str | Path | None,
                       min_bytes: int = 0) -> Offload:
    """An evaluation's ``large_model_offload``, which moves the optimisers' CPU state on entry. Use it as
    ``with evaluation_offload(...) as offload:`` and hand ``offload`` to ``classifier_inputs``."""
    optimizers = list(optimizers)
    state = optimizer_state(optimizers)
    offload = large_model_offload(optimizers, directory, min_bytes, first=state)
    if offload.directory is not None:
        own_memory(state)
    return offload


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
