"""Multiruns (seeds, failing jobs, Optuna, submitit), zsl-report over a multirun, every logger, DDP and debug
configs — the zsl-train app run in this process as its console script would run it."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")
from cli_helpers import TINY, run_app, zsl_train  # noqa: E402



def zsl_multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    from zsl_gen.cli.train import main

    return run_app(main, ["zsl-train", "-m", f"hydra.sweep.dir={tmp_path / 'multi'}", *overrides], tmp_path)


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


# ---- multiruns --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_multirun(tmp_path_factory):
    """`zsl-train -m seed=0,1` (tiny cvae, test split only, CSV logger)."""
    root = tmp_path_factory.mktemp("seeds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        proc = zsl_multirun(root, "seed=0,1", *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    return root / "multi"


def test_multirun_writes_one_run_dir_per_job(seed_multirun):
    assert sorted(p.name for p in seed_multirun.iterdir() if p.is_dir()) == ["0", "1"]
    assert (seed_multirun / "multirun.yaml").is_file()
    for job, seed in (("0", 0), ("1", 1)):
        results = results_of(seed_multirun / job)
        assert results["seed"] == seed and results["config"]["seed"] == seed
        assert f"seed={seed}" in yaml.safe_load((seed_multirun / job / ".hydra" / "overrides.yaml").read_text())
        assert (seed_multirun / job / "generator" / "generator.safetensors").is_file()
        assert not (seed_multirun / job / "error.txt").exists()
    assert results_of(seed_multirun / "0")["results"] != results_of(seed_multirun / "1")["results"]


def test_report_over_a_multirun_gives_mean_and_std_of_its_jobs(seed_multirun, tmp_path, capsys):
    from zsl_gen.cli.report import main

    main([str(seed_multirun), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    papers = [results_of(seed_multirun / job)["results"]["paper"] for job in ("0", "1")]
    rows = {r["selection"]: r for r in csv.DictReader((tmp_path / "r.csv").open())}
    assert set(rows) == {"paper"} and rows["paper"]["n"] == "2" and rows["paper"]["seeds"] == "0 1"
    for metric in ("S", "U", "H", "T1"):
        values = [p["zsl" if metric == "T1" else "gzsl"][metric] for p in papers]
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values))  # sample std of two values
        assert float(rows["paper"][f"{metric}_mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(rows["paper"][f"{metric}_std"]) == pytest.approx(std, abs=1e-4)
    h = [p["gzsl"]["H"] for p in papers]
    h_mean, h_std = sum(h) / 2, abs(h[0] - h[1]) / math.sqrt(2)
    assert "| synthetic | cvae | att | paper (optimistic) | 2 |" in out
    assert f"{h_mean:.2f} ± {h_std:.2f}" in out
    assert "(2 results.json files)" in out


def test_logged_s_u_h_are_one_classifier_epoch_and_gamma(monkeypatch):
    # with calibration, the highest S sits at γ = 0 and the best H elsewhere: the logged triple is the best H's
    from types import SimpleNamespace

    import numpy as np
    import torch

    import zsl_gen.callbacks
    from zsl_gen.callbacks import GZSLEvaluation
    from zsl_gen.eval.types import EvalCurves

    s = np.array([[0.9, 0.6], [0.8, 0.7]])  # 2 classifier epochs x gammas (0, 0.5)
    u = np.array([[0.1, 0.5], [0.2, 0.6]])
    h = 2 * s * u / (s + u)
    monkeypatch.setattr(zsl_gen.callbacks, "train_and_evaluate",
                        lambda *a, **k: EvalCurves(S=s, U=u, H=h, T1=u, gammas=(0.0, 0.5)))
    logged = {}
    data = SimpleNamespace(split="val", train_x=torch.zeros(1))
    module = SimpleNamespace(device=torch.device("cpu"), zero_grad=lambda **k: None, log_dict=lambda d, **k: logged.update(d),
                             classifier_inputs=lambda *a, **k: None)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=1, fast_dev_run=False, optimizers=[])
    evaluation = GZSLEvaluation(data, SimpleNamespace(feature_dtype=torch.float32), syn_num=1)
    evaluation.on_train_epoch_end(trainer, module)
    assert logged["val/H"] == pytest.approx(h[1, 1] * 100) and h[1, 1] == h.max()
    assert logged["val/S"] == pytest.approx(70.0) and logged["val/U"] == pytest.approx(60.0)


def test_csv_logger_writes_per_epoch_s_u_h(seed_multirun):
    metrics = seed_multirun / "0" / "csv" / "test" / "metrics.csv"
    rows = list(csv.DictReader(metrics.open()))
    assert {"test/S", "test/U", "test/H", "test/T1", "epoch"} <= set(rows[0])
    h = [float(r["test/H"]) for r in rows if r["test/H"]]
    assert len(h) == 2  # one evaluation per generator epoch
    # the `paper` selection is the best H measured on test over all epochs: what the logger saw
    paper = results_of(seed_multirun / "0")["results"]["paper"]["gzsl"]
    assert max(h) == pytest.approx(paper["H"], abs=0.01)
    # the logged S and U are those of the logged H (one classifier epoch), not each metric's own maximum
    at_best = next(r for r in rows if r["test/H"] and float(r["test/H"]) == max(h))
    assert float(at_best["test/S"]) == pytest.approx(paper["S"], abs=0.01)
    assert float(at_best["test/U"]) == pytest.approx(paper["U"], abs=0.01)
    # the generator's training loss: one epoch mean per epoch (handed to Lightning at each epoch's last step)
    vae = [float(r["train/vae"]) for r in rows if r.get("train/vae")]
    assert len(vae) == 2 and all(math.isfinite(v) and v > 0 for v in vae)
    # beside the metrics: the run's resolved config (the logger's hyper-parameters)
    hparams = yaml.safe_load((metrics.parent / "hparams.yaml").read_text())
    assert hparams["seed"] == 0 and hparams["generator"]["name"] == "cvae"
    assert hparams["generator"]["system"]["_target_"] == "zsl_gen.systems.cvae.ConditionalVAE"


def test_failing_job_does_not_stop_the_multirun(tmp_path, no_wandb):
    proc = zsl_multirun(tmp_path, "eval_every=0,1", *TINY, "selections=[paper]")
    assert proc.returncode == 1, proc.stderr  # every job ran, but a script must still see the failure
    multi = tmp_path / "multi"
    error = (multi / "0" / "error.txt").read_text()
    assert "config field `eval_every` must be an integer >= 1" in error
    assert not (multi / "0" / "results.json").exists()
    assert results_of(multi / "1")["protocol"]["eval_every"] == 1 and not (multi / "1" / "error.txt").exists()
    # the job's own failure line, then FailedJobsReport's summary naming the failed job's directory
    assert "error: job 0 (eval_every=0" in proc.stderr
    assert "1 job(s) failed; the others' results are in place:" in proc.stderr
    report = proc.stderr.split("1 job(s) failed")[1]
    assert str(multi / "0") in report and "eval_every" in report and str(multi / "1") not in report

    # the same sweep rerun into the same directory, now passing: the stale error.txt goes, exit status 0;
    # an old job directory this sweep does not reach (an earlier, larger sweep) does not count either
    (multi / "7").mkdir()
    (multi / "7" / "error.txt").write_text("from an earlier sweep\n")
    proc = zsl_multirun(tmp_path, "eval_every=2,1", *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert not (multi / "0" / "error.txt").exists() and results_of(multi / "0")["protocol"]["eval_every"] == 2
    assert "failed" not in proc.stderr

    # rerun again, job 1 now failing: its earlier run's results are set aside (not deleted: the rerun failed), so
    # zsl-report cannot count them as its own; job 0 succeeded, so what it set aside is gone
    proc = zsl_multirun(tmp_path, "eval_every=2,0", *TINY, "selections=[paper]")
    assert proc.returncode == 1 and (multi / "1" / "error.txt").is_file()
    assert not any((multi / "1" / name).exists() for name in ("results.json", "curves.json", "splits", "checkpoints"))
    assert (multi / "1" / ".earlier_run" / "results.json").is_file() and (multi / "1" / ".earlier_run" / "generator").is_dir()
    assert not (multi / "0" / ".earlier_run").exists() and (multi / "0" / "results.json").is_file()
    # once more, failing again, after an attempt that left partial outputs: those go, the finished run's stay aside
    kept = (multi / "1" / ".earlier_run" / "results.json").read_text()
    (multi / "1" / "checkpoints").mkdir()
    (multi / "1" / "checkpoints" / "partial.ckpt").write_text("a failed attempt's")
    proc = zsl_multirun(tmp_path, "eval_every=2,0", *TINY, "selections=[paper]")
    assert proc.returncode == 1 and not (multi / "1" / "checkpoints").exists()
    assert (multi / "1" / ".earlier_run" / "results.json").read_text() == kept
    assert not (multi / "1" / ".earlier_run" / "checkpoints" / "partial.ckpt").exists()
    from zsl_gen.cli.report import main as report_main

    report = run_app(report_main, ["zsl-report", str(multi)], tmp_path)
    assert "(1 results.json files)" in report.stdout and f"{multi / '1'}: " in report.stderr


def test_failed_multirun_exit_status_also_under_python_m(tmp_path, no_wandb):
    # under `python -m` the module Hydra imports the callback from is not `__main__`
    import sys

    proc = subprocess.run([sys.executable, "-m", "zsl_gen.cli.train", "-m", f"hydra.sweep.dir={tmp_path / 'multi'}",
                           "eval_every=0", *TINY], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "1 job(s) failed" in proc.stderr


def test_optuna_sweep_maximises_the_returned_validation_h(tmp_path, no_wandb):
    # (a command-line search space replaces the config's syn_num choices: small, for speed)
    proc = zsl_train(tmp_path, "hparams_search=cvae", "hydra.sweeper.n_trials=2", "dataset.max_generator_epochs=1",
                     f"hydra.sweep.dir={tmp_path / 'multi'}", "generator.syn_num=choice(20,50)",
                     "generator.system.hidden_dim=64", "classifier.epochs=2", "classifier.batch_size=32")
    assert proc.returncode == 0, proc.stderr
    multi = tmp_path / "multi"
    best = yaml.safe_load((multi / "optimization_results.yaml").read_text())
    jobs = sorted(p for p in multi.iterdir() if (p / "results.json").is_file())
    assert len(jobs) == 2
    values = {}
    for job in jobs:
        results = results_of(job)
        assert results["protocol"]["selections"] == ["val_split"] and results["protocol"]["generator_epochs"] == 1
        # a trial trains on split=val only: no test run, no test number, no test checkpoint or export
        assert results["protocol"]["splits_run"] == ["val"] and set(results["results"]) == {"val_split"}
        assert not (job / "checkpoints" / "test").exists() and results["generator_export"] is None
        assert results["config"]["generator"]["syn_num"] in (20, 50)
        values[job] = results["results"]["val_split"]["gzsl"]["H"]
    assert all(v > 0 for v in values.values())  # a real objective, not a tie of zeros
    assert best["best_value"] == pytest.approx(max(values.values()))
    # zsl-report over the search labels the trials' numbers as validation scores
    from zsl_gen.cli.report import main as report_main

    report = run_app(report_main, ["zsl-report", str(multi)], tmp_path)
    assert report.returncode == 0, report.stderr
    # two trials are two settings (their hyper-parameters differ), not two seeds of one: one row each, labelled
    assert report.stdout.count("| val_split (scores on split=val) | 1 |") == 2 and "| paper" not in report.stdout
    assert "generator.syn_num=" in report.stdout or "generator.system.lr=" in report.stdout
    winner = results_of(max(values, key=values.get))["config"]
    assert best["best_params"]["generator.syn_num"] == winner["generator"]["syn_num"]
    assert best["best_params"]["generator.system.lr"] == pytest.approx(winner["generator"]["system"]["lr"])


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_job(tmp_path, no_wandb):
    proc = zsl_multirun(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0",
                        *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    multi = tmp_path / "multi"
    assert results_of(multi / "0")["seed"] == 0
    logs = [p for p in (multi / ".submitit").rglob("*_log.out")]
    assert len(logs) == 1
    assert "results:" in logs[0].read_text()  # the job's own output, captured by submitit in another process
    assert list((multi / ".submitit").rglob("*_result.pkl"))


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no sbatch, also on a SLURM login node
    proc = zsl_multirun(tmp_path, "hydra/launcher=slurm_gpu", "trainer=gpu", "seed=0,1")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "hydra/launcher=slurm_gpu submits SLURM jobs, but this machine has no `sbatch`" in lines[0]
    assert "hydra/launcher=submitit_local" in lines[0] and not (tmp_path / "multi").exists()
    from zsl_gen.cli.train import check_launcher

    check_launcher(["~hydra/launcher", "seed=0"])  # a deletion has no value: no launcher to check, no crash
    # showing the launcher's composed config submits nothing: it works off the cluster too
    proc = zsl_train(tmp_path, "hydra/launcher=slurm_gpu", "trainer=gpu", "--cfg", "hydra", "-p", "hydra.launcher")
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "gpus_per_node: 1" in proc.stdout


# ---- loggers ----------------------------------------------------------------------------------------------------
def test_tensorboard_logger_writes_event_files(tmp_path, no_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = zsl_train(tmp_path, "logger=tensorboard", *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert not (run / "csv").exists()  # the group was swapped, not added to
    events = list((run / "tensorboard" / "test").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    h = [e.value for e in acc.Scalars("test/H")]
    assert len(h) == 2
    assert max(h) == pytest.approx(results_of(run)["results"]["paper"]["gzsl"]["H"], abs=0.01)


@pytest.mark.parametrize("logger", ["tensorboard", "many_loggers"])
def test_tensorboard_not_installed_is_one_line_naming_the_install(tmp_path, no_wandb, monkeypatch, logger):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real_find_spec(name, *a))
    proc = zsl_train(tmp_path, f"logger={logger}", *TINY, "selections=[paper]")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ('error: the TensorBoard logger needs the tensorboard package, which is not installed: '
                        'pip install -e ".[tensorboard]" (or use logger=csv, the default)')
    assert not (tmp_path / "run" / "results.json").exists()


def test_wandb_goes_offline_without_credentials(tmp_path, monkeypatch, caplog):
    from omegaconf import OmegaConf

    from zsl_gen.tracking import build_loggers, wandb_has_credentials

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    cfg = compose("logger=wandb", f"paths.output_dir={tmp_path / 'run'}")
    OmegaConf.resolve(cfg.logger)
    assert not wandb_has_credentials()
    (logger,) = build_loggers(cfg, "test", run_name="cvae-synthetic-seed0")
    assert logger._offline and logger._wandb_init["name"] == "cvae-synthetic-seed0-test"
    # the mode goes to wandb.init explicitly (wandb would keep a WANDB_MODE seen earlier in the process)
    assert logger._wandb_init["mode"] == "offline"
    assert f"wandb sync {tmp_path / 'run'}/wandb/offline-run-*" in caplog.text
    # a key (environment or `wandb login`'s netrc) keeps it online; WANDB_MODE=disabled turns it off
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    online = build_loggers(cfg, "test", run_name="x")[0]
    assert wandb_has_credentials() and not online._offline and online._wandb_init["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert build_loggers(cfg, "test", run_name="x")[0]._wandb_init["mode"] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert build_loggers(cfg, "test", run_name="x")[0]._offline  # offline even with a key
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_has_credentials()


def wandb_record(path: Path, timeout: float = 15.0) -> bytes:
    """The bytes of an offline run's .wandb file. (After a run with WANDB_MODE=disabled in the same process,
    wandb 0.31 writes later offline runs' records shortly *after* finish() returns, so wait for them.)"""
    deadline = time.monotonic() + timeout
    while path.stat().st_size < 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.read_bytes()


def test_wandb_offline_multirun_makes_one_finished_run_per_job(tmp_path, monkeypatch):
    import wandb

    import zsl_gen.pipeline

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    finished_runs = []
    real_finish = zsl_gen.pipeline.finish_loggers

    def finish_and_check(loggers):
        real_finish(loggers)
        finished_runs.extend(wandb.run is None for logger in loggers if type(logger).__name__ == "WandbLogger")

    monkeypatch.setattr(zsl_gen.pipeline, "finish_loggers", finish_and_check)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # where W&B stages artifact copies
    proc = zsl_multirun(tmp_path, "logger=wandb", "seed=0,1", *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert finished_runs == [True, True] and wandb.run is None
    # the export is logged as an artifact read in place: no copy of it per run left in W&B's staging directory
    # (only W&B's own small copies of the results tables)
    weights = (multi_dir := tmp_path / "multi" / "0" / "generator" / "generator.safetensors").stat().st_size
    staged = [p.stat().st_size for p in (tmp_path / "wandb_data").rglob("*") if p.is_file()]
    assert weights > 50_000 and all(size < 5_000 for size in staged), (multi_dir, staged)
    assert "anonymous setting" not in proc.stdout + proc.stderr  # no deprecation noise from Lightning's default
    multi = tmp_path / "multi"
    run_ids = []
    for job, seed in (("0", 0), ("1", 1)):
        (offline_dir,) = (multi / job / "wandb").glob("offline-run-*")  # exactly one run, inside the job's dir
        (record,) = offline_dir.glob("run-*.wandb")
        data = wandb_record(record)
        assert f"cvae-synthetic-seed{seed}-test".encode() in data
        assert f"cvae-synthetic-seed{1 - seed}-test".encode() not in data  # job 1 did not log into job 0's run
        run_ids.append(record.stem)
        log_text = (multi / job / "train.log").read_text()
        assert f"wandb sync {multi / job}/wandb/offline-run-*" in log_text
    assert run_ids[0] != run_ids[1]
    assert results_of(multi / "0")["seed"] == 0 and results_of(multi / "1")["seed"] == 1


def test_val_split_run_trains_on_val_only_and_hands_its_loggers_the_final_results(tmp_path, monkeypatch):
    import zsl_gen.pipeline

    seen = []
    monkeypatch.setattr(zsl_gen.pipeline, "log_final_results",
                        lambda loggers, results, export_dir: seen.append(([type(x).__name__ for x in loggers],
                                                                          sorted(results["results"]))))
    proc = zsl_train(tmp_path, "logger=csv", *TINY, "selections=[val_split]")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    results = results_of(run)
    assert results["protocol"]["splits_run"] == ["val"] and list(results["results"]) == ["val_split"]
    assert results["generator_export"] is None and not (run / "generator").exists()
    assert not (run / "checkpoints" / "test").exists() and (run / "preprocessing.json").is_file()
    # the val run's loggers stay open for the final results (a W&B search trial keeps its objective)
    assert seen == [(["CSVLogger"], ["val_split"])]
    assert "test split was not run" in proc.stdout


def test_wandb_disabled_runs_without_writing_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    proc = zsl_train(tmp_path, "logger=wandb", *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in (tmp_path / "wandb_data").rglob("*") if p.is_file()]  # nothing staged for a disabled run
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert results_of(tmp_path / "run")["config"]["logger"]["wandb"]["project"] == "zsl-gen"
    assert not list((tmp_path / "run").rglob("offline-run-*")) and not list((tmp_path / "run").rglob("run-*.wandb"))


# ---- trainers and debug configs -------------------------------------------------------------------------------
def test_ddp_trainer_configs_compose():
    from zsl_gen.config import instantiate

    cfg = compose("trainer=ddp_cpu")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", 2, "cpu")
    trainer = instantiate(cfg.trainer, max_epochs=1, logger=False, enable_progress_bar=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2
    assert trainer.strategy.process_group_backend in (None, "gloo")
    gpu = compose("trainer=ddp")
    assert (gpu.trainer.strategy, gpu.trainer.devices, gpu.trainer.accelerator) == ("ddp", -1, "gpu")


@pytest.mark.slow
def test_ddp_cpu_two_processes_train_one_run(tmp_path):
    # batch_size 512: 3 steps per epoch on both splits, an uneven share for 2 ranks. IndexBatches pads every
    # rank to ceil(3 / 2) = 2 steps; without that, rank 0 runs one more backward than rank 1 and waits
    # forever in DDP's gradient all-reduce (the run would hit the timeout).
    proc = subprocess.run(["zsl-train", f"hydra.run.dir={tmp_path / 'run'}", "trainer=ddp_cpu", *TINY,
                           "generator.system.batch_size=512"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={**os.environ, "WANDB_MODE": "disabled"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    results = results_of(run)
    assert results["config"]["trainer"]["strategy"] == "ddp" and results["config"]["trainer"]["devices"] == 2
    assert set(results["results"]) == {"paper", "val"}
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran the job too
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "train_ddp_process_1.log").read_text() + proc.stdout + proc.stderr
    assert proc.stdout.count("results: ") == 1  # only rank 0 writes and reports
    assert (run / "generator" / "generator.safetensors").is_file()


@pytest.mark.parametrize("debug, expected", [
    ("fdr", {"trainer.fast_dev_run": True, "generator.epochs": 1, "classifier.epochs": 1}),
    ("limit", {"trainer.limit_train_batches": 3, "generator.epochs": 2, "classifier.epochs": 2}),
    ("overfit", {"trainer.overfit_batches": 2, "generator.epochs": 20}),
])
def test_debug_configs_compose(debug, expected):
    from omegaconf import OmegaConf

    cfg = compose(f"debug={debug}", "generator=fclswgan")
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.generator.name == "fclswgan"  # the debug overlay keeps the chosen generator


@pytest.mark.parametrize("epochs", [[], ["generator.epochs=2"]])  # fast_dev_run ends any schedule after one step
def test_debug_fdr_runs_end_to_end(tmp_path, no_wandb, epochs, capsys):
    proc = zsl_train(tmp_path, "debug=fdr", "generator.system.hidden_dim=64", "generator.syn_num=50", *epochs)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    results = results_of(run)
    assert set(results["results"]) == {"paper", "val"}
    assert results["config"]["trainer"]["fast_dev_run"] is True
    assert results["protocol"]["generator_epochs"] == (2 if epochs else 1)
    curves = json.loads((run / "curves.json").read_text())
    assert curves["test"]["epochs"] == [1] and curves["test"]["rows"] == ["classifier epoch 1"]
    assert (run / "generator" / "generator.yaml").is_file()
    from zsl_gen.cli.report import main as report

    capsys.readouterr()
    report([str(run)])  # a smoke test's numbers say so in the table
    assert "| debug run" in capsys.readouterr().out


def test_a_failed_optuna_trial_is_recorded_and_the_search_goes_on(tmp_path, no_wandb):
    """The Optuna sweeper cannot take a NaN: a failed trial must be marked failed, not end the search."""
    proc = zsl_train(tmp_path, "hparams_search=cvae", "hydra.sweeper.n_trials=4", "dataset.max_generator_epochs=1",
                     f"hydra.sweep.dir={tmp_path / 'multi'}", "eval_every=choice(0,1)", "generator.syn_num=20",
                     "generator.system.hidden_dim=64", "classifier.epochs=2", "classifier.batch_size=32")
    multi = tmp_path / "multi"
    failed = sorted(p.name for p in multi.iterdir() if (p / "error.txt").is_file())
    passed = sorted(p.name for p in multi.iterdir() if (p / "results.json").is_file())
    assert failed and passed and len(failed) + len(passed) == 4, proc.stderr[-3000:]  # (the sampler's seed fixes it)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{len(failed)} job(s) failed" in proc.stderr
    best = yaml.safe_load((multi / "optimization_results.yaml").read_text())
    assert best["best_params"]["eval_every"] == 1
    assert best["best_value"] == pytest.approx(max(results_of(multi / j)["results"]["val_split"]["gzsl"]["H"]
                                                   for j in passed))


def test_a_search_whose_every_trial_fails_ends_in_one_line(tmp_path, no_wandb):
    proc = zsl_train(tmp_path, "hparams_search=cvae", "hydra.sweeper.n_trials=2", "eval_every=0",
                     f"hydra.sweep.dir={tmp_path / 'multi'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(  # the last word, without Hydra's HYDRA_FULL_ERROR hint
        f"error: every trial of the search failed, so there are no best parameters: the failures are above and in "
        f"{tmp_path / 'multi'}/<trial>/error.txt")
    assert (tmp_path / "multi" / "0" / "error.txt").is_file() and (tmp_path / "multi" / "1" / "error.txt").is_file()
    # no trial at all: said as such, not as failures
    proc = zsl_train(tmp_path / "none", "hparams_search=cvae", "hydra.sweeper.n_trials=0",
                     f"hydra.sweep.dir={tmp_path / 'none' / 'multi'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: hydra.sweeper.n_trials=0: the search ran no trial; give it at least one")
    assert "every trial of the search failed" not in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["hparams_search=cvae", "generator=fclswgan"],
     "hparams_search=cvae searches cvae's settings, but the generator is fclswgan: use hparams_search=fclswgan"),
    # the search's generator wins over the experiment's: cadavae would run with cvae_cub's recipe
    (["hparams_search=cadavae", "experiment=cvae_cub"],
     "hparams_search=cadavae with experiment=cvae_cub: the search trains cadavae with cvae's recipe; use "
     "experiment=cadavae_cub"),
])
def test_a_search_of_another_methods_settings_is_refused(tmp_path, no_wandb, overrides, message):
    proc = zsl_train(tmp_path, *overrides, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'multi'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (error,) = (tmp_path / "multi").rglob("error.txt")
    assert message in error.read_text()
    assert not list((tmp_path / "multi").rglob("results.json")) and not list((tmp_path / "multi").rglob("*.ckpt"))
