"""Ctrl-C, SIGTERM and a full disk in zsl-train and zsl-eval: one error line, a failure exit status, and
no half-written output or temporary file left in the run directory."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import TINY, run_app, zsl_train

ENV = {**os.environ, "WANDB_MODE": "disabled"}
FULL_DISK_ERRORS = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def leftovers(root: Path) -> list[str]:
    """Temporary files and directories (``atomic_write``'s, the export's) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name != ".hydra"
                  and not str(p.relative_to(root)).startswith(".hydra"))


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def kill_self_then(real):
    """``real`` after a SIGTERM to this process: the handler runs at the next bytecode, inside the writer."""
    def wrapper(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return wrapper


def test_sigterm_while_exporting_exits_143_and_leaves_no_partial_export(tmp_path, monkeypatch):
    # the export comes after training, where Lightning's own handler is gone: exit_on_sigterm's is in place
    import zsl_gen.export as export

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(export, "save_file", kill_self_then(export.save_file))
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert any("stopped by SIGTERM" in line for line in error_lines(proc.stderr))
    run = tmp_path / "run"
    assert not (run / "generator").exists() and not (run / "results.json").exists()
    assert leftovers(run) == [] and signal.getsignal(signal.SIGTERM) == before


def test_a_full_disk_while_exporting_is_one_line_naming_the_export(tmp_path, monkeypatch):
    import safetensors

    import zsl_gen.export as export

    def full_disk(*args, **kwargs):
        raise safetensors.SafetensorError(FULL_DISK_ERRORS)

    monkeypatch.setattr(export, "save_file", full_disk)
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and f"{tmp_path / 'run' / 'generator'}: could not write it (the disk is full)" in lines[0]
    assert leftovers(tmp_path / "run") == [] and not (tmp_path / "run" / "generator").exists()


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    # torch's zip writer reports a full disk as a RuntimeError of its own ("unexpected pos ..."): the free
    # space left decides that the disk is to blame
    import torch

    import zsl_gen.errors as errors

    real_save = torch.save

    def full_disk(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        monkeypatch.setattr(errors, "free_bytes", lambda path: 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 11904 vs 11798")

    monkeypatch.setattr(torch, "save", full_disk)
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "best-epoch000.ckpt: could not write it (the disk is full)" in lines[0], lines
    assert leftovers(tmp_path / "run") == []


def test_a_bug_inside_a_writer_stays_a_bug_while_the_disk_has_room(tmp_path):
    from zsl_gen.data._io import atomic_write

    def buggy(fh):
        raise TypeError("not a disk problem")

    with pytest.raises(TypeError, match="not a disk problem"):
        atomic_write(tmp_path / "x.bin", buggy)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_a_writer_that_names_no_file_is_one_line(tmp_path, monkeypatch):
    # Lightning's CSV logger, a W&B file: a plain OSError without a file name, from outside zsl-gen's writers
    from zsl_gen.callbacks import LogRunConfig

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LogRunConfig, "setup", full_disk)
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "the disk is full" in lines[0] and str(tmp_path / "run") in lines[0], lines


def test_a_full_run_directory_disk_is_refused_before_hydra_writes_anything(tmp_path, monkeypatch):
    import zsl_gen.cli.common as common
    from zsl_gen.cli.evaluate import main as eval_main
    from zsl_gen.cli.train import main as train_main

    monkeypatch.setattr(common, "free_bytes", lambda path: 20_000)
    proc = zsl_train(tmp_path, *TINY)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [f"error: hydra.run.dir={tmp_path / 'run'}: its disk is full (0.0 MiB free); "
                                        "free space there, or give another directory (hydra.run.dir=<dir>)"]
    assert not (tmp_path / "run").exists()
    proc = run_app(train_main, ["zsl-train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=1,2"], tmp_path)
    assert proc.returncode == 2 and "(hydra.sweep.dir=<dir>)" in proc.stderr and not (tmp_path / "sweep").exists()
    proc = run_app(eval_main, ["zsl-eval", "generator=anything"], tmp_path)  # the current directory's disk
    assert proc.returncode == 2 and "error: the current directory" in proc.stderr and "disk is full" in proc.stderr
    assert run_app(train_main, ["zsl-train", "--cfg", "job"], tmp_path).returncode == 0  # shows, writes nothing


def test_ctrl_c_during_training_exits_130_naming_the_resume_and_gives_sigint_back(tmp_path, monkeypatch):
    # Lightning ends a Ctrl-C with sys.exit(1) and leaves SIGINT ignored (a notebook could not interrupt again)
    from zsl_gen.systems.cvae import ConditionalVAE

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ConditionalVAE, "training_step", interrupted)
    try:
        proc = zsl_train(tmp_path, *TINY, "logger=none")
    finally:
        now = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, before)
    assert proc.returncode == 130, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted (Ctrl-C)") and "ckpt_path=" in lines[0]
    assert now == before and leftovers(tmp_path / "run") == []


def test_ctrl_c_in_zsl_eval_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from zsl_gen.cli.evaluate import main as eval_main
    from zsl_gen.cli.train import main as train_main

    assert run_app(train_main, ["zsl-train", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "generator.epochs=1",
                                "selections=[paper]", "logger=none"], tmp_path).returncode == 0
    import zsl_gen.data._io as io_module

    real_fsync, calls = io_module.os.fsync, []

    def ctrl_c_on_the_second_file(fd):  # curves.json written, results.json cut off
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", ctrl_c_on_the_second_file)
    proc = run_app(eval_main, ["zsl-eval", f"generator={tmp_path / 'run' / 'generator'}",
                               f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert proc.returncode == 130 and error_lines(proc.stderr) == ["error: interrupted (Ctrl-C)"], proc.stderr
    assert not (tmp_path / "eval" / "results.json").exists() and leftovers(tmp_path / "eval") == []


def test_report_user_errors_turns_disk_errors_without_a_file_name_into_one_line(capsys):
    from zsl_gen.cli.common import report_user_errors

    @report_user_errors
    def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    @report_user_errors
    def other():
        raise OSError(errno.EINVAL, "Invalid argument")  # not the disk's: a bug, with its traceback

    with pytest.raises(SystemExit) as stop:
        full()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: No space left on device: free space on the disk")
    with pytest.raises(OSError):
        other()


def test_a_real_sigterm_mid_training_exits_143_with_one_line_and_a_loadable_last_checkpoint(tmp_path):
    # the real signal, with Lightning's handler and zsl-gen's both in the process: training stops at the next
    # batch (never inside torch.save, whose cleanup would turn the exit into a RuntimeError traceback)
    import torch

    run = tmp_path / "run"
    last = run / "checkpoints" / "test" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "zsl_gen.cli.train", "generator=cvae", "generator.epochs=400",
                             "selections=[paper]", "classifier.epochs=2", "generator.syn_num=50", "logger=none",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists() and proc.poll() is None, proc.communicate()[1][-3000:] if proc.poll() is not None else ""
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM") and "ckpt_path=" in lines[0]
    assert leftovers(run) == [] and not (run / "results.json").exists()
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 0


def test_an_interrupt_inside_a_writer_whose_cleanup_fails_stays_an_interrupt(tmp_path):
    # torch.save interrupted mid-record: its zip writer's __exit__ then fails with "unexpected pos", which
    # would replace the Ctrl-C (or SIGTERM's SystemExit) by a RuntimeError traceback
    from zsl_gen.data._io import atomic_write

    def writer(fh):
        try:
            fh.write(b"partial")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 0")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.ckpt", writer)
    assert list(tmp_path.iterdir()) == []
