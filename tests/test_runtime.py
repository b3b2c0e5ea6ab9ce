"""``zsl_gen.runtime``: glibc's malloc keeps large freed blocks for the next step (``keep_freed_memory``);
optimiser state, weights and image features wait in a file during an evaluation (``Offload``)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile

import pytest
import torch

from zsl_gen import runtime
from zsl_gen.runtime import Offload, evaluation_offload

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


# ---- Offload: optimiser state, weights and features wait in a file during an evaluation ----------------
def _adam_with_state(seed: int = 0):
    torch.manual_seed(seed)
    weights = [torch.nn.Parameter(torch.randn(300, 400)), torch.nn.Parameter(torch.randn(10))]
    optimizer = torch.optim.Adam(weights, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        sum((w ** 2).sum() for w in weights).backward()
        optimizer.step()
    return weights, optimizer


def _moved(tensor: torch.Tensor) -> bool:
    return tensor.untyped_storage().nbytes() == 0


def test_offloaded_state_leaves_memory_and_comes_back_bit_for_bit(tmp_path):
    weights, optimizer = _adam_with_state()
    state = optimizer.state[weights[0]]
    before = {k: v.clone() for k, v in state.items()}
    moments = dict(state)
    small = optimizer.state[weights[1]]["exp_avg"]
    with evaluation_offload([optimizer], tmp_path) as offload:
        assert offload.moved_bytes == 2 * 300 * 400 * 4
        assert _moved(state["exp_avg"]) and _moved(state["exp_avg_sq"])  # out of memory while the block runs
        assert not _moved(small)  # small tensors are not worth a file
        assert list(tmp_path.iterdir()) == []  # the file is unlinked: nothing left behind, even on a crash
    assert all(state[k] is moments[k] for k in moments)  # the same tensors, their memory back in place
    assert set(state) == set(before) and all(torch.equal(state[k], before[k]) for k in before)
    # and training goes on exactly as without the round trip
    reference_weights, reference = _adam_with_state()
    for opt, ws in ((optimizer, weights), (reference, reference_weights)):
        opt.zero_grad()
        sum((w ** 3).sum() for w in ws).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, reference_weights))


def test_offload_moves_weights_in_place_and_skips_what_others_may_still_read(tmp_path):
    """Every reference to a moved tensor sees its bytes again afterwards (a parameter, a view of it, a
    bfloat16 tensor); a view of part of a storage, a numpy-backed tensor and a tensor handed in twice are
    left alone or moved once."""
    import numpy as np

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(256, 512))
    view = weight.detach()[:3]
    half = torch.randn(400, 400).to(torch.bfloat16)
    whole = torch.randn(512, 512)
    part = whole[:300]  # the rest of `whole` may be in use elsewhere
    shared = torch.from_numpy(np.ones((300, 300), dtype=np.float32))  # numpy owns this memory
    copies = {name: t.detach().clone() for name, t in
              {"weight": weight, "view": view, "half": half, "whole": whole, "shared": shared}.items()}
    with Offload(tmp_path) as offload:
        moved = offload([weight, weight, half, part, shared])
        assert moved == 256 * 512 * 4 + 400 * 400 * 2
        assert _moved(weight) and _moved(view) and _moved(half)
        assert not _moved(whole) and not _moved(shared)
    for name, t in {"weight": weight, "view": view, "half": half, "whole": whole, "shared": shared}.items():
        assert torch.equal(t, copies[name]), name
    assert weight.requires_grad and isinstance(weight, torch.nn.Parameter)


def test_offload_restores_everything_when_the_block_raises(tmp_path):
    weights, optimizer = _adam_with_state()
    before = optimizer.state[weights[0]]["exp_avg_sq"].clone(), weights[0].detach().clone()
    with pytest.raises(KeyError):
        with evaluation_offload([optimizer], tmp_path) as offload:
            offload(weights)
            raise KeyError("evaluation failed")
    assert torch.equal(optimizer.state[weights[0]]["exp_avg_sq"], before[0])
    assert torch.equal(weights[0], before[1])


def test_unwritable_offload_directory_keeps_everything_in_memory(tmp_path, caplog):
    weights, optimizer = _adam_with_state()
    moment = optimizer.state[weights[0]]["exp_avg"]
    with evaluation_offload([optimizer], tmp_path / "missing") as offload:
        assert offload.moved_bytes == 0 and not _moved(moment)
        assert offload(weights) == 0 and not _moved(weights[0])
    assert "kept in memory: cannot write them" in caplog.text
    with evaluation_offload([optimizer], None) as offload:  # offloading off
        assert offload(weights) == 0 and not _moved(moment) and not _moved(weights[0])
    # 2 moments x 120 000 fp32 = 0.96 MB: below a 1 MB threshold nothing goes, weights included
    with evaluation_offload([optimizer], tmp_path, min_bytes=2**20) as offload:
        assert offload(weights) == 0 and not _moved(moment) and not _moved(weights[0])
    with evaluation_offload([optimizer], tmp_path, min_bytes=900_000) as offload:
        assert _moved(moment) and offload(weights) == 480_000 and _moved(weights[0])


def test_a_resumed_optimizers_state_is_moved_too(tmp_path):
    """``torch.load`` (a resumed run's checkpoint) gives the optimiser state storages torch cannot resize:
    the evaluation's offload copies them into memory of their own first instead of leaving 0.96 MB behind."""
    import io

    weights, optimizer = _adam_with_state()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = torch.optim.Adam(weights, lr=1e-2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    state = resumed.state[weights[0]]
    assert not state["exp_avg"].untyped_storage().resizable()  # what made the state stay before
    before = {k: v.clone() for k, v in state.items()}
    moments = dict(state)
    with evaluation_offload([resumed], tmp_path) as offload:
        assert offload.moved_bytes == 2 * 300 * 400 * 4 and _moved(state["exp_avg"])
    assert all(state[k] is moments[k] and torch.equal(state[k], before[k]) for k in before)


class _FailingFile:
    """A temporary file whose ``write`` fails after ``writes`` calls (a full disk) or whose reads come up
    short (a truncated file)."""

    open_file = staticmethod(tempfile.TemporaryFile)  # the real one, before a test patches it

    def __init__(self, writes: int = 10**9, short_reads: bool = False, flushes: int = 10**9,
                 reads: int = 10**9, **kwargs):
        self.file, self.writes, self.short_reads = self.open_file(**kwargs), writes, short_reads
        self.flushes, self.reads = flushes, reads

    def write(self, data):
        if self.writes == 0:
            raise OSError(28, "No space left on device")
        self.writes -= 1
        return self.file.write(data)

    def flush(self):  # a buffered writer reports a short last write only here
        if self.flushes == 0:
            raise OSError(28, "No space left on device")
        self.flushes -= 1
        return self.file.flush()

    def readinto(self, buffer):
        if self.reads == 0:
            raise KeyboardInterrupt
        self.reads -= 1
        return 0 if self.short_reads else self.file.readinto(buffer)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_keeps_the_rest_in_memory_and_restores_what_was_moved(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runtime.tempfile, "TemporaryFile", lambda **kw: _FailingFile(writes=1, **kw))
    first, second, third = (torch.randn(300, 300) for _ in range(3))
    copies = [t.clone() for t in (first, second, third)]
    with Offload(tmp_path) as offload:
        assert offload([first, second]) == 300 * 300 * 4
        assert _moved(first) and not _moved(second)
        assert offload([third]) == 0 and not _moved(third)  # one warning, then nothing more is tried
    assert caplog.text.count("kept in memory: cannot write them") == 1
    assert all(torch.equal(t, c) for t, c in zip((first, second, third), copies))


def test_an_unreadable_offload_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.tempfile, "TemporaryFile", lambda **kw: _FailingFile(short_reads=True, **kw))
    weight = torch.randn(300, 300)
    with pytest.raises(RuntimeError, match=r"cannot read the weights, optimizer state or features moved .* resume it from its last"):
        with Offload(tmp_path) as offload:
            offload([weight])


# ---- StreamingCheckpointIO: checkpoints written without an in-memory copy -------------------------------
# resident memory sampled every millisecond (the kernel's high-water mark is updated lazily)
_CHILD_SAVE = """
import json, os, sys, threading, time, torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from zsl_gen.callbacks import StreamingCheckpointIO

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

state = {"weights": torch.ones(50_000_000)}  # 200 MB
writer = StreamingCheckpointIO() if sys.argv[1] == "streaming" else TorchCheckpointIO()
samples, done = [], threading.Event()

def sample():
    while not done.is_set():
        samples.append(resident_mb())
        time.sleep(0.001)

before = resident_mb()
thread = threading.Thread(target=sample)
thread.start()
writer.save_checkpoint(state, sys.argv[2])
done.set()
thread.join()
print(json.dumps({"extra_mb": max(samples) - before}))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/statm")
def test_streaming_checkpoints_need_no_second_copy_of_the_state(tmp_path):
    extra = {}
    for writer in ("streaming", "lightning"):
        out = subprocess.run([sys.executable, "-c", _CHILD_SAVE, writer, str(tmp_path / f"{writer}.ckpt")],
                             capture_output=True, text=True, check=True)
        extra[writer] = json.loads(out.stdout)["extra_mb"]
    assert extra["lightning"] > 150  # Lightning's own writer buffers the whole 200 MB checkpoint
    assert extra["streaming"] < 30
    for writer in extra:
        assert torch.equal(torch.load(tmp_path / f"{writer}.ckpt", weights_only=True)["weights"], torch.ones(50_000_000))


def test_a_failed_checkpoint_save_keeps_the_previous_file_and_leaves_nothing_else(tmp_path, monkeypatch):
    from zsl_gen.callbacks import StreamingCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint({"epoch": 1}, target)

    def interrupted(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(OSError, match="last.ckpt: could not write it \\(the disk is full\\)"):
        StreamingCheckpointIO().save_checkpoint({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_a_checkpoint_save_removes_what_a_killed_save_of_it_left(tmp_path):
    from zsl_gen.callbacks import StreamingCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    # atomic_write's temporary names: a SIGKILL mid-write leaves one of them (as large as the checkpoint)
    (target.parent / ".last.ckpt.k3x9_q.tmp").write_bytes(b"half a checkpoint")
    (target.parent / ".best-epoch002.ckpt.a1b2.tmp").write_bytes(b"another checkpoint's")
    (target.parent / ".notes.txt.x1.tmp").write_bytes(b"not a checkpoint's")
    StreamingCheckpointIO().save_checkpoint({"epoch": 3}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 3}
    assert sorted(p.name for p in target.parent.iterdir()) == [".notes.txt.x1.tmp", "last.ckpt"]
    StreamingCheckpointIO().save_checkpoint({"epoch": 4}, target.parent / "state")  # not a Lightning checkpoint
    assert (target.parent / ".notes.txt.x1.tmp").exists()


def test_a_write_that_fails_only_at_the_flush_keeps_that_tensor(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runtime.tempfile, "TemporaryFile", lambda **kw: _FailingFile(flushes=1, **kw))
    first, second = torch.randn(300, 300), torch.randn(300, 300)
    copies = first.clone(), second.clone()
    with Offload(tmp_path) as offload:
        assert offload([first, second]) == 300 * 300 * 4 and _moved(first) and not _moved(second)
    assert "kept in memory" in caplog.text
    assert torch.equal(first, copies[0]) and torch.equal(second, copies[1])


def test_an_interrupted_read_back_stays_an_interrupt_and_leaves_no_half_restored_tensor(tmp_path, monkeypatch,
                                                                                         caplog):
    monkeypatch.setattr(runtime.tempfile, "TemporaryFile", lambda **kw: _FailingFile(reads=1, **kw))
    tensors = [torch.randn(300, 300) for _ in range(3)]
    first = tensors[0].clone()
    with pytest.raises(KeyboardInterrupt):
        with Offload(tmp_path) as offload:
            offload(tensors)
    assert torch.equal(tensors[0], first)  # read back before the interrupt
    assert _moved(tensors[1]) and _moved(tensors[2])  # empty, never garbage
    assert "resume it from its last.ckpt" in caplog.text
