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
    proc = run_app(eval_main, ["zsl-eval", "generator=anything"], tmp_path)  # the default: under outputs/
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        "error: paths.log_dir=outputs: its disk is full (0.0 MiB free); free space there, or give another "
        "directory (paths.log_dir=<dir>)"]
    assert run_app(train_main, ["zsl-train", "--cfg", "job"], tmp_path).returncode == 0  # shows, writes nothing
    # $ZSL_OUTPUT_DIR moves the default run directories (conf/paths): its disk is the one that counts
    full = tmp_path / "full"
    monkeypatch.setattr(common, "free_bytes", lambda path: 0 if str(path).startswith(str(full)) else 10**12)
    monkeypatch.setenv("ZSL_OUTPUT_DIR", str(tmp_path / "roomy"))
    assert run_app(train_main, ["zsl-train", "--cfg", "job"], full).returncode == 0
    proc = run_app(train_main, ["zsl-train", *TINY, "generator.epochs=1", "selections=[paper]", "logger=none"], full)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the current directory's disk is full, not the output's
    monkeypatch.setenv("ZSL_OUTPUT_DIR", str(full / "out"))
    proc = run_app(train_main, ["zsl-train", *TINY], tmp_path)
    assert proc.returncode == 2 and f"paths.log_dir={full / 'out'}: its disk is full" in proc.stderr
    # an interpolated directory is Hydra's to resolve: no literal "${...}" directory is made for a check
    proc = run_app(train_main, ["zsl-train", "hydra.run.dir=runs/${generator.name}", *TINY, "generator.epochs=1",
                                "selections=[paper]", "logger=none"], tmp_path)
    assert proc.returncode == 0 and (tmp_path / "runs" / "cvae" / "results.json").exists(), proc.stderr[-2000:]
    assert not any("${" in str(p) for p in tmp_path.rglob("*"))


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


def test_a_second_zsl_train_in_a_running_runs_directory_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from zsl_gen.cli.common import hold_run_dir; "
                               f"assert hold_run_dir(Path({str(run)!r})) is None; print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
        assert proc.returncode == 2
        assert error_lines(proc.stderr) == [
            f"error: hydra.run.dir={run}: another zsl-train (pid {holder.pid}) is running in that directory; wait "
            "for it to finish, or give a new directory (two runs in one directory would mix their checkpoints and "
            "results)"]
        assert sorted(p.name for p in run.rglob("*")) == [".hydra", "zsl-train.lock"]  # no config, no log
        # a multirun job whose directory is held: reported, the sweep exits 1, nothing written in it
        from zsl_gen.cli.train import main

        proc = run_app(main, ["zsl-train", "-m", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=run", *TINY,
                              "generator.epochs=1", "selections=[paper]", "logger=none"], tmp_path)
        assert proc.returncode == 1 and f"another zsl-train (pid {holder.pid})" in proc.stderr
        assert not (run / "error.txt").exists() and not (run / "checkpoints").exists()
        # recorded in the sweep directory, where the launching process's report finds it (a submitit job
        # runs in another process), and listed at the end
        assert f"{run}: another zsl-train" in (tmp_path / ".refused-job-0.txt").read_text()
        assert "1 job(s) failed" in proc.stderr
    finally:
        holder.communicate("", timeout=60)  # ends the holder: the kernel drops its lock
    proc = zsl_train(tmp_path / "second", *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # and the finished in-process run gave its directory's lock back (another process can take it)
    taken = subprocess.run([sys.executable, "-c", "from pathlib import Path; from zsl_gen.cli.common import "
                            f"hold_run_dir; print(hold_run_dir(Path({str(tmp_path / 'second' / 'run')!r})))"],
                           capture_output=True, text=True, timeout=120)
    assert taken.stdout.strip() == "None", taken.stderr


def test_a_signal_during_the_renames_of_a_set_comes_after_all_of_them(tmp_path, monkeypatch):
    # the kernel may hand SIGINT to any thread (torch's, OpenBLAS's): the handlers are swapped, not the mask
    import zsl_gen.data._io as io_module
    from zsl_gen.data._io import atomic_write_text, files_as_one_set

    for name in "abc":
        (tmp_path / f"{name}.txt").write_text("old")
    real_replace, renamed = io_module.os.replace, []

    def replace_then_ctrl_c(src, dst):
        real_replace(src, dst)
        renamed.append(dst)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(io_module.os, "replace", replace_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with files_as_one_set():
            for name in "abc":
                atomic_write_text(tmp_path / f"{name}.txt", "new")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "new", "b.txt": "new", "c.txt": "new"}
    assert signal.getsignal(signal.SIGINT) == before


def test_a_save_inside_an_except_block_reports_its_own_failure_not_the_handled_interrupt(tmp_path):
    from zsl_gen.data._io import atomic_write

    def full_disk(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:  # (an on_exception hook saving state, say)
        with pytest.raises(OSError, match="x.bin: could not write it \\(the disk is full\\)"):
            atomic_write(tmp_path / "x.bin", full_disk)


def test_only_disk_errors_count_as_disk_errors(tmp_path, monkeypatch):
    import zsl_gen.errors as errors
    from zsl_gen.errors import WriteError, write_failure

    shm = RuntimeError("unable to write to file </torch_123_456>: No space left on device (28)")
    assert write_failure(tmp_path, shm, only_disk=True) is None  # /dev/shm of a DataLoader worker, not the run's
    assert write_failure(tmp_path, ValueError("a bug"), only_disk=True) is None
    assert write_failure(tmp_path, FileNotFoundError(2, "No such file", "data.mat"), only_disk=True) is None
    assert isinstance(write_failure(tmp_path, OSError(errno.EROFS, "Read-only file system"), only_disk=True),
                      WriteError)
    monkeypatch.setattr(errors, "free_bytes", lambda path: 10)  # the disk full, but the error not the disk's
    assert write_failure(tmp_path / "x", ValueError("a bug"), only_disk=True) is None
    assert write_failure(tmp_path / "x", TypeError("a bug")) is None
    assert "the disk is full" in str(write_failure(tmp_path / "x", RuntimeError("unexpected pos 7 vs 0")))
    monkeypatch.setattr(errors, "free_bytes", lambda path: 10**9)
    assert write_failure(tmp_path / "x", RuntimeError("unexpected pos 7 vs 0")) is None


def test_ddp_and_launcher_ranks_above_zero_do_not_lock_and_a_file_system_without_flock_runs_unlocked(
        tmp_path, monkeypatch, caplog):
    import fcntl

    from zsl_gen.cli.common import hold_given_run_dir, hold_run_dir, is_secondary_rank, release_run_dir

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not is_secondary_rank() and not is_secondary_rank("train")
    assert is_secondary_rank("train_ddp_process_1")  # Lightning's DDP child, as Hydra names its job
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not is_secondary_rank()
    monkeypatch.setenv("NODE_RANK", "1")  # a second node under Lightning's own launcher
    assert is_secondary_rank()
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("RANK", "3")  # torchrun
    assert is_secondary_rank()
    hold_given_run_dir([f"hydra.run.dir={tmp_path / 'ranked'}"])
    assert not (tmp_path / "ranked").exists()  # rank 3 neither locks nor creates rank 0's directory
    monkeypatch.delenv("RANK")

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    try:
        with caplog.at_level("WARNING", logger="zsl_gen"):
            assert hold_run_dir(tmp_path / "nfs") is None
        assert "cannot lock the run directory on this file system (No locks available)" in caplog.text
    finally:
        release_run_dir()


def test_a_sigterm_after_lightnings_last_look_still_stops_the_run(tmp_path, monkeypatch):
    # during the last evaluation (on_train_end) Lightning's handler only notes it, and its loop no longer looks
    from zsl_gen.callbacks import GZSLEvaluation

    real_end = GZSLEvaluation.on_train_end
    monkeypatch.setattr(GZSLEvaluation, "on_train_end", kill_self_then(real_end))
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "selections=[paper]", "logger=none")
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert len(error_lines(proc.stderr)) == 1 and not (tmp_path / "run" / "results.json").exists()


def test_disk_failures_name_the_destination_and_say_what_to_do(tmp_path):
    from zsl_gen.errors import write_failure

    target = tmp_path / "results.json"
    short = OSError("Not enough free space to write 614400 bytes")  # numpy's short write: no errno
    assert "results.json: could not write it (the disk is full)" in str(write_failure(target, short))
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".results.json.x1.tmp"))
    message = str(write_failure(target, read_only))
    assert message.startswith(f"{target}: could not write it (Read-only file system)") and "free" not in message
    source = OSError(errno.EIO, "Input/output error", "/elsewhere/att_splits.mat")  # what the writer read
    assert write_failure(target, source) is None


def test_the_lock_takes_the_run_directory_as_hydra_does_and_leaves_nothing_when_hydra_refuses(tmp_path,
                                                                                                 monkeypatch):
    from zsl_gen.cli.common import hold_given_run_dir, release_run_dir

    monkeypatch.chdir(tmp_path)
    home = Path.home() / "zsl-lock-probe"
    hold_given_run_dir(["hydra.run.dir=~/zsl-lock-probe"])  # quoted on a shell: Hydra does not expand ~
    try:
        assert (tmp_path / "~" / "zsl-lock-probe" / ".hydra" / "zsl-train.lock").exists() and not home.exists()
    finally:
        release_run_dir()
    assert not (tmp_path / "~").exists()  # no job ran: the directories only the lock made are gone
    proc = zsl_train(tmp_path, "generator.epochs=[1")  # Hydra refuses the command line
    assert proc.returncode != 0 and not (tmp_path / "run").exists()


def test_signals_during_deferral_come_after_it_sigterm_first_and_the_handlers_are_back(tmp_path):
    from zsl_gen.cli.common import Terminated, exit_on_sigterm
    from zsl_gen.data._io import signals_deferred

    done = []

    @exit_on_sigterm
    def both_signals():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("block ran to its end")

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(Terminated):
        both_signals()
    assert done == ["block ran to its end"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
