"""Resuming an interrupted zsl-train run from its last.ckpt: a real SIGKILL mid-training, then the same
numbers as an uninterrupted run; bad ckpt_path values are one clear line."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, zsl_train

ARGS = ("generator=cvae", "generator.system.hidden_dim=256", "selections=[paper,val]", "classifier.epochs=2",
        "generator.syn_num=50")
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def start(tmp_path: Path, run_dir: Path, epochs: int, *extra: str) -> subprocess.Popen:
    """`zsl-train` in its own process group (so a kill takes any child with it), output to <run_dir>.out."""
    log = open(f"{run_dir}.out", "w")  # noqa: SIM115 (closed by the process's end)
    return subprocess.Popen(["zsl-train", *ARGS, f"generator.epochs={epochs}", f"hydra.run.dir={run_dir}", *extra],
                            cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_killed_run_resumes_to_the_uninterrupted_numbers(tmp_path):
    ref_dir, int_dir, res_dir = tmp_path / "ref", tmp_path / "int", tmp_path / "res"
    last = int_dir / "checkpoints" / "test" / "last.ckpt"
    for epochs in (12, 40, 120):  # more epochs when the run finished before the kill landed
        ref = start(tmp_path, ref_dir, epochs)  # the uninterrupted reference, alongside
        interrupted = start(tmp_path, int_dir, epochs)
        try:
            deadline = time.monotonic() + 300
            while not last.exists() and interrupted.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert last.exists(), Path(f"{int_dir}.out").read_text()[-3000:]
            time.sleep(1.0)
            stop(interrupted)
        except BaseException:
            stop(ref)
            stop(interrupted)
            raise
        # killed with the test split unfinished (not between its completion record and results.json) and
        # mid-training: a kill that lands after the last epoch's checkpoint, while the split is still being
        # evaluated or exported, trains nothing on resume (the test after the next covers it), so here it
        # counts as "finished first" too
        unfinished = not (int_dir / "results.json").exists() and not (int_dir / "splits" / "test.json").exists()
        if unfinished and torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1 < epochs:
            break
        stop(ref)  # finished first: not an interruption; again with a longer schedule
        for d in (ref_dir, int_dir):
            subprocess.run(["rm", "-rf", str(d)], check=True)
    else:
        pytest.fail("the run always finished training within 1 s of its first test-split checkpoint")

    # really killed mid-training: the test split was left unfinished, at an epoch before the last
    assert not (int_dir / "results.json").exists() and not (int_dir / "splits" / "test.json").exists()
    assert (int_dir / "splits" / "val.json").exists()
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
    assert 1 <= stopped_at < epochs

    assert ref.wait(timeout=600) == 0, Path(f"{ref_dir}.out").read_text()[-3000:]
    resumed = subprocess.run(["zsl-train", *ARGS, f"generator.epochs={epochs}", f"hydra.run.dir={res_dir}",
                              f"ckpt_path={last}"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (res_dir / "train.log").read_text()
    assert f"split=val: finished in {int_dir}, read back" in log and f"resuming from {last}" in log
    # only the epochs after the checkpoint were trained again
    assert f"Restored all states from the checkpoint at {last}" in log + resumed.stdout + resumed.stderr

    ref_results, res_results = read(ref_dir / "results.json"), read(res_dir / "results.json")
    assert res_results["results"] == ref_results["results"]
    assert read(res_dir / "curves.json") == read(ref_dir / "curves.json")
    assert len(read(res_dir / "curves.json")["test"]["epochs"]) == epochs
    # and the exported generator is the same network, bit for bit
    import yaml

    ref_meta = yaml.safe_load((ref_dir / "generator" / "generator.yaml").read_text())
    res_meta = yaml.safe_load((res_dir / "generator" / "generator.yaml").read_text())
    assert res_meta["weights_sha256"] == ref_meta["weights_sha256"]


# a test-split-only run without loggers: what the extend/continue tests start from
PAPER_ONLY = (*ARGS[:2], "selections=[paper]", *ARGS[3:], "logger=none")


def finished_run(tmp_path: Path, epochs: int, *extra: str) -> Path:
    """A finished ``PAPER_ONLY`` run of ``epochs`` epochs in ``<tmp_path>/short``; its test ``last.ckpt``."""
    short = zsl_train(tmp_path / "short", *PAPER_ONLY, *extra, f"generator.epochs={epochs}")
    assert short.returncode == 0, short.stderr[-2000:]
    return tmp_path / "short" / "run" / "checkpoints" / "test" / "last.ckpt"


def test_a_finished_run_extends_to_a_longer_schedule_with_the_uninterrupted_numbers(tmp_path, monkeypatch):
    # generator.epochs raised + ckpt_path= the finished split's last.ckpt: training continues from its end
    # (e.g. a truncated CPU run later taken to the published schedule) instead of reading the split back
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = PAPER_ONLY
    last = finished_run(tmp_path, 2)
    extended = zsl_train(tmp_path / "extended", *args, "generator.epochs=4", f"ckpt_path={last}")
    assert extended.returncode == 0, extended.stderr[-2000:]
    log = (tmp_path / "extended" / "run" / "train.log").read_text()
    assert f"split=test of {tmp_path / 'short' / 'run'} finished 2 epochs: extending it to 4" in log
    straight = zsl_train(tmp_path / "straight", *args, "generator.epochs=4")
    assert straight.returncode == 0, straight.stderr[-2000:]
    ext, ref = tmp_path / "extended" / "run", tmp_path / "straight" / "run"
    assert read(ext / "curves.json")["test"]["epochs"] == [1, 2, 3, 4]
    assert read(ext / "curves.json") == read(ref / "curves.json")
    assert read(ext / "results.json")["results"] == read(ref / "results.json")["results"]
    import yaml

    ext_meta = yaml.safe_load((ext / "generator" / "generator.yaml").read_text())
    ref_meta = yaml.safe_load((ref / "generator" / "generator.yaml").read_text())
    assert ext_meta["epochs"] == 4 and ext_meta["weights_sha256"] == ref_meta["weights_sha256"]
    # the same schedule again reads the finished split back (nothing retrained)
    again = zsl_train(tmp_path / "again", *args, "generator.epochs=2", f"ckpt_path={last}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "split=test: finished in" in (tmp_path / "again" / "run" / "train.log").read_text()
    assert not (tmp_path / "again" / "run" / "checkpoints").exists()
    # a shorter schedule cannot be read back: its curves, selections and export would hold epochs past it
    shorter = zsl_train(tmp_path / "shorter", *args, "generator.epochs=1", f"ckpt_path={last}")
    lines = [line for line in shorter.stderr.splitlines() if line.strip()]
    assert shorter.returncode == 2 and len(lines) == 1, shorter.stderr[-2000:]
    assert (f"cannot resume with generator.epochs=1: split=test of {tmp_path / 'short' / 'run'} finished epoch 2; "
            "a resumed run cannot shorten the schedule: resume with generator.epochs=2") in lines[0]


def test_a_schedule_off_the_eval_grid_checkpoints_its_last_epoch_and_extends_as_one_run(tmp_path, monkeypatch):
    # generator.epochs=3 with eval_every=2: epoch 3 is evaluated (the last) and so must be checkpointed, or
    # last.ckpt (resumed and exported from) would be epoch 2's generator under epoch 3's numbers
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = (*PAPER_ONLY, "eval_every=2")
    last = finished_run(tmp_path, 3, "eval_every=2")
    run = tmp_path / "short" / "run"
    assert read(run / "curves.json")["test"]["epochs"] == [2, 3]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1 == 3
    best = torch.load(next((run / "checkpoints" / "test").glob("best-epoch*.ckpt")), map_location="cpu",
                      weights_only=True)
    h = read(run / "curves.json")["test"]["H"]
    assert best["epoch"] + 1 == (3 if max(map(max, h[1])) > max(map(max, h[0])) else 2)  # the last epoch competes
    # extended to 4: epoch 3 (evaluated only as the old last epoch) is off the new schedule
    extended = zsl_train(tmp_path / "extended", *args, "generator.epochs=4", f"ckpt_path={last}")
    assert extended.returncode == 0, extended.stderr[-2000:]
    straight = zsl_train(tmp_path / "straight", *args, "generator.epochs=4")
    assert straight.returncode == 0, straight.stderr[-2000:]
    ext, ref = tmp_path / "extended" / "run", tmp_path / "straight" / "run"
    assert read(ext / "curves.json")["test"]["epochs"] == [2, 4]
    assert read(ext / "curves.json") == read(ref / "curves.json")
    assert read(ext / "results.json")["results"] == read(ref / "results.json")["results"]


def test_a_changed_learning_rate_applies_to_the_continued_training(tmp_path, monkeypatch):
    # the README's "continue a stopped split with a lower generator.system.lr": the restored optimiser state
    # must not bring the old rate back
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = PAPER_ONLY
    last = finished_run(tmp_path, 2)
    rates = {}
    for name, lr in (("same", None), ("lower", "5e-4")):
        extra = [f"generator.system.lr={lr}"] if lr else []
        proc = zsl_train(tmp_path / name, *args, "generator.epochs=3", f"ckpt_path={last}", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        state = torch.load(tmp_path / name / "run" / "checkpoints" / "test" / "last.ckpt", map_location="cpu",
                           weights_only=True)
        rates[name] = {g["lr"] for opt in state["optimizer_states"] for g in opt["param_groups"]}
    assert rates == {"same": {1e-3}, "lower": {5e-4}}
    same, lower = (read(tmp_path / n / "run" / "curves.json")["test"] for n in ("same", "lower"))
    assert same["H"][:2] == lower["H"][:2] and same["H"][2] != lower["H"][2]  # epoch 3 trained at the new rate


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    # killed after the test split's final epoch was checkpointed, while it was still being evaluated and exported
    # (no splits/test.json, no results.json): the resume trains nothing and reports the uninterrupted numbers
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = (*ARGS, "logger=none", "generator.epochs=3")
    full = zsl_train(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr[-2000:]
    ref = tmp_path / "full" / "run"
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    (cut / "results.json").unlink()
    (cut / "splits" / "test.json").unlink()
    shutil.rmtree(cut / "generator")
    last = cut / "checkpoints" / "test" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1 == 3
    resumed = zsl_train(tmp_path / "resumed", *args, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    res = tmp_path / "resumed" / "run"
    log = (res / "train.log").read_text()
    assert f"split=val: finished in {cut}, read back" in log and f"resuming from {last}" in log
    assert f"Restored all states from the checkpoint at {last}" in log + resumed.stdout + resumed.stderr
    assert "epoch 3/3" in full.stdout and "epoch 1/3" not in resumed.stdout  # nothing trained again
    assert read(res / "results.json")["results"] == read(ref / "results.json")["results"]
    assert read(res / "curves.json") == read(ref / "curves.json")
    import yaml

    res_meta = yaml.safe_load((res / "generator" / "generator.yaml").read_text())
    ref_meta = yaml.safe_load((ref / "generator" / "generator.yaml").read_text())
    assert res_meta["weights_sha256"] == ref_meta["weights_sha256"]


def test_extending_the_test_split_past_a_shorter_finished_val_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = (*ARGS, "logger=none")
    first = zsl_train(tmp_path / "first", *args, "generator.epochs=2")
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "first" / "run"
    proc = zsl_train(tmp_path / "ext", *args, "generator.epochs=4",
                     f"ckpt_path={run / 'checkpoints' / 'test' / 'last.ckpt'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"cannot resume split=test to generator.epochs=4: split=val of {run} finished 2 epochs; extend it "
            f"first, from {run / 'checkpoints' / 'val' / 'last.ckpt'}") in proc.stderr
    assert not (tmp_path / "ext" / "run" / "checkpoints").exists()


# ---- bad ckpt_path values ---------------------------------------------------------------------------------------



def checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(64, 64)}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such checkpoint (give <run dir>/checkpoints/<split>/last.ckpt)"),
    ("elsewhere", "expected <run dir>/checkpoints/<val|test>/last.ckpt of a zsl-train run"),
    ("wrong_split", "expected <run dir>/checkpoints/<val|test>/last.ckpt of a zsl-train run"),
    ("truncated", "unreadable checkpoint"),
    ("bit_flipped", "corrupt checkpoint (the stored checksum of "),
    ("val_unfinished", "cannot resume: split=val of"),
])
def test_bad_ckpt_path_is_one_clear_line(tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paths = {"missing": tmp_path / "old" / "checkpoints" / "test" / "last.ckpt",
             "elsewhere": tmp_path / "old" / "last.ckpt",
             "wrong_split": tmp_path / "old" / "checkpoints" / "train" / "last.ckpt",
             "truncated": tmp_path / "old" / "checkpoints" / "test" / "last.ckpt",
             "bit_flipped": tmp_path / "old" / "checkpoints" / "test" / "last.ckpt",
             "val_unfinished": tmp_path / "old" / "checkpoints" / "test" / "last.ckpt"}
    path = paths[case]
    if case != "missing":
        path.parent.mkdir(parents=True)
        data = checkpoint_bytes()
        if case == "bit_flipped":  # one byte in the middle of the weights: torch.load reads it without a word
            data = bytearray(data)
            data[len(data) // 2] ^= 0x10
            torch.load(io.BytesIO(bytes(data)), weights_only=True)
        path.write_bytes(data[: len(data) // 2] if case == "truncated" else bytes(data))
    proc = zsl_train(tmp_path, "generator=cvae", "generator.epochs=2", "generator.system.hidden_dim=64",
                     f"ckpt_path={path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert str(path) in lines[0] or (case == "val_unfinished" and str(tmp_path / "old") in lines[0])
    if case == "truncated":
        assert "truncated" in lines[0] and "resume from another checkpoint or start over" in lines[0]
    if case == "val_unfinished":
        assert str(tmp_path / "old" / "checkpoints" / "val" / "last.ckpt") in lines[0]
    if case == "missing":  # e.g. killed in the test split's first epoch: split=val's checkpoint is named
        val_last = tmp_path / "old" / "checkpoints" / "val" / "last.ckpt"
        val_last.parent.mkdir(parents=True)
        val_last.write_bytes(checkpoint_bytes())
        again = zsl_train(tmp_path / "again", "generator=cvae", f"ckpt_path={path}")
        assert again.returncode == 2 and f"; this run has {val_last})" in again.stderr, again.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "results.json").exists()


def test_resuming_with_other_settings_never_relabels_the_old_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = (*TINY, "selections=[paper]", "logger=none")
    first = zsl_train(tmp_path / "first", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "first" / "run" / "checkpoints" / "test" / "last.ckpt"
    # nothing would train: the old numbers would be reported as seed 7's, or under 3 classifier epochs
    for change, shown in (("seed=7", "seed: 0 -> 7"), ("classifier.epochs=3", "classifier.epochs: 2 -> 3"),
                          ("generator=fclswgan", "generator.name: 'cvae' -> 'fclswgan'")):
        proc = zsl_train(tmp_path / change.replace("=", "_"), *args, change, f"ckpt_path={last}")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and shown in lines[0], proc.stderr[-2000:]
        assert "Resume with the old run's overrides" in lines[0]
        assert not (tmp_path / change.replace("=", "_") / "run" / "results.json").exists()
    # where training continues, a new seed, data or classifier would make one run of two settings (its
    # epochs 1-2 under seed 0, the rest under seed 1: "seed 1" in zsl-report): refused
    for change, shown in (("seed=1", "seed: 0 -> 1"), ("dataset.synthetic.seed=1", "dataset.synthetic.seed: 0 -> 1"),
                          ("classifier.epochs=3", "classifier.epochs: 2 -> 3")):
        proc = zsl_train(tmp_path / ("x" + change.replace("=", "_")), *args, "generator.epochs=3", change,
                         f"ckpt_path={last}")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and shown in lines[0], proc.stderr[-2000:]
        assert "a split continues only on its run's data, seed, evaluation and classifier settings" in lines[0]
        key = change.split("=")[0]
        assert f"overrides.yaml) and {key}={shown.split(': ')[1].split(' ->')[0]}, or start" in lines[0]  # restores it
    # an optimisation setting may change: the continuation trains, and results.json says what changed
    extended = zsl_train(tmp_path / "extended", *args, "generator.epochs=3", "generator.system.beta1=0.9",
                         f"ckpt_path={last}")
    assert extended.returncode == 0, extended.stderr[-2000:]
    results = read(tmp_path / "extended" / "run" / "results.json")
    assert read(tmp_path / "extended" / "run" / "curves.json")["test"]["epochs"] == [1, 2, 3]
    (warning,) = results["warnings"]
    assert "continues from" in warning and "generator.system.beta1: 0.5 -> 0.9" in warning
    # fp32 for the last epochs of a bf16 run (here the reverse: the precision group sets both trainer and classifier)
    monkeypatch.setattr("zsl_gen.runtime.native_bf16", lambda device="cpu": True)
    precision = zsl_train(tmp_path / "precision", *args, "generator.epochs=3", "precision=bf16", f"ckpt_path={last}")
    assert precision.returncode == 0, precision.stderr[-2000:]
    # a run made before split=val left out the test images (no such key in its config) continues with its
    # own overrides: with the test split alone the setting changes nothing
    config = tmp_path / "first" / "run" / ".hydra" / "config.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "val_excludes_test" not in line))
    older = zsl_train(tmp_path / "older", *args, "generator.epochs=3", f"ckpt_path={last}")
    assert older.returncode == 0, older.stderr[-2000:]
    # a layer size the checkpoint does not have: one line, before anything trains
    proc = zsl_train(tmp_path / "wider", *args, "generator.epochs=3", "generator.system.hidden_dim=32",
                     f"ckpt_path={last}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"error: {last}: its network does not fit this run's generator settings (" in lines[0]
    assert "(64,) saved, (32,) now" in lines[0] and not (tmp_path / "wider" / "run" / "checkpoints").exists()
    # the old run's own settings (trainer, logger and memory settings may differ) read it back as before
    again = zsl_train(tmp_path / "again", *args, "keep_freed_memory=false", f"ckpt_path={last}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert read(tmp_path / "again" / "run" / "results.json")["results"] == \
        read(tmp_path / "first" / "run" / "results.json")["results"]


def test_a_resume_reads_the_settings_from_its_checkpoint_and_names_a_damaged_split_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    last = finished_run(tmp_path, 2)
    run = tmp_path / "short" / "run"
    # other selections need splits the old run never trained: named as such, not as an unfinished split
    proc = zsl_train(tmp_path / "sel", *PAPER_ONLY, "selections=[paper,val]", "generator.epochs=2", f"ckpt_path={last}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"selections=[paper,val] differ from {run}'s selections=[paper]" in lines[0]
    assert "resume with selections=[paper]" in lines[0]
    # a multirun job resuming inside its own directory has its .hydra/config.yaml rewritten by Hydra to the new
    # settings first: the checkpoint's copy decides
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 7"))
    proc = zsl_train(tmp_path / "inplace", *PAPER_ONLY, "generator.epochs=3", "seed=7", f"ckpt_path={last}")
    assert proc.returncode == 2 and "seed: 0 -> 7" in proc.stderr, proc.stderr[-2000:]
    # without the run's .hydra/ (hydra.output_subdir=null, or removed) the checkpoint's copy of the settings decides
    shutil.rmtree(run / ".hydra")
    proc = zsl_train(tmp_path / "seed", *PAPER_ONLY, "generator.epochs=3", "seed=7", f"ckpt_path={last}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "seed: 0 -> 7" in lines[0] and "its settings: the settings stored in its checkpoint" in lines[0]
    # a damaged completion record of the split read back: one line naming it
    record = run / "splits" / "test.json"
    for damage in (record.read_text()[:40], "{}", '{"epochs": ["two"]}', '{"epochs": [2]}'):
        record.write_text(damage)
        proc = zsl_train(tmp_path / "damaged", *PAPER_ONLY, "generator.epochs=2", f"ckpt_path={last}")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"error: {record}: damaged split record" in lines[0] and "restore it, or start a new run" in lines[0]


def test_a_changed_amsgrad_cannot_continue_the_optimiser_state(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ("generator=cadavae", "classifier.epochs=2", "selections=[paper]", "logger=none",
            "generator.system.latent_dim=8")
    first = zsl_train(tmp_path / "first", *args, "generator.epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "first" / "run" / "checkpoints" / "test" / "last.ckpt"
    proc = zsl_train(tmp_path / "next", *args, "generator.epochs=2", "generator.system.amsgrad=false",
                     f"ckpt_path={last}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == ("error: generator.system: amsgrad=False differs from the checkpoint's amsgrad=True, whose "
                        "optimiser state it cannot continue; resume with the run's own setting")


def test_resuming_on_other_data_files_is_refused(tmp_path, monkeypatch):
    # data_dir may move, the files may not change: the checkpoint records their sha256
    from dataclasses import replace

    import numpy as np

    from zsl_gen.data import make_synthetic
    from zsl_gen.data.byo import save_byo

    monkeypatch.setenv("WANDB_MODE", "disabled")
    raw = make_synthetic(seed=0, n_classes=12, n_unseen=3, n_val_classes=3, feature_dim=32, semantic_dim=8)
    save_byo(raw, tmp_path / "data")
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    save_byo(replace(raw, features=raw.features * np.float32(0.5)), tmp_path / "other")
    args = (*TINY, "selections=[paper]", "logger=none", "dataset=byo")
    first = zsl_train(tmp_path / "first", *args, f"data_dir={tmp_path / 'data'}")
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "first" / "run" / "checkpoints" / "test" / "last.ckpt"
    moved = zsl_train(tmp_path / "m", *args, "generator.epochs=3", f"data_dir={tmp_path / 'moved'}", f"ckpt_path={last}")
    assert moved.returncode == 0, moved.stderr[-2000:]
    other = zsl_train(tmp_path / "o", *args, "generator.epochs=3", f"data_dir={tmp_path / 'other'}", f"ckpt_path={last}")
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-2000:]
    assert lines[0].startswith(f"error: {last}: trained on other data files than this run reads (")
    assert not (tmp_path / "o" / "run" / "checkpoints").exists()


def test_extending_a_capped_default_run_is_not_a_changed_setting():
    """`zsl-train generator.epochs=300 ckpt_path=...` on a run of the simulated set's default (capped to 30):
    the command line lifts the cap (++dataset.max_generator_epochs=null), which only extends the schedule."""
    from omegaconf import OmegaConf

    from zsl_gen.pipeline import changed_settings

    old = OmegaConf.create({"seed": 0, "dataset": {"name": "synthetic", "max_generator_epochs": 30},
                            "generator": {"epochs": 300, "system": {"lr": 0.001}}})
    new = OmegaConf.create({"seed": 0, "dataset": {"name": "synthetic", "max_generator_epochs": None},
                            "generator": {"epochs": 300, "system": {"lr": 0.001}}})
    assert changed_settings(old, new) == {}
    new.generator.system.lr = 0.0003
    assert changed_settings(old, new) == {"generator.system.lr": (0.001, 0.0003)}
    # a run made before split=val left out the test images has no such key: it behaved as `false`
    new.dataset.val_excludes_test = True
    assert changed_settings(old, new)["dataset.val_excludes_test"] == (False, True)
    old.dataset.val_excludes_test = False
    new.dataset.val_excludes_test = False
    assert "dataset.val_excludes_test" not in changed_settings(old, new)
