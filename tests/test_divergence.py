"""Diverging generator training: a run that stops at its divergence and reports the epochs evaluated before
it (on_divergence=stop), one clear error otherwise, a recorded warning for a finite explosion, and the
pieces behind them (the guard callback, the BCE failure path, the selections over unequal runs)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import TINY, zsl_train

from zsl_gen.callbacks import DivergenceGuard, nonfinite_parameters
from zsl_gen.cli.report import aggregate, read_rows, to_csv, to_markdown
from zsl_gen.errors import ConfigError, TrainingDiverged
from zsl_gen.eval.selection import CurveStack, select
from zsl_gen.export import load_generator
from zsl_gen.losses.vae import bce_nan_propagating, bce_reconstruction
from zsl_gen.systems.cvae import ConditionalVAE


def epoch_end(guard: DivergenceGuard, module: torch.nn.Module, epoch: int, **means: float) -> None:
    """Call the guard's epoch-end hook as Lightning would, with these ``train/*`` epoch means logged."""
    metrics = {f"train/{k}": torch.tensor(v) for k, v in means.items()} | {"val/H": torch.tensor(50.0)}
    guard.on_train_epoch_end(SimpleNamespace(current_epoch=epoch - 1, callback_metrics=metrics), module)


def test_a_nan_epoch_mean_stops_training(tmp_path):
    guard, net = DivergenceGuard("val", tmp_path), torch.nn.Linear(3, 2)
    epoch_end(guard, net, 1, vae=900.0)
    with pytest.raises(TrainingDiverged, match="train/vae is not finite"):
        epoch_end(guard, net, 2, vae=float("nan"))


def test_non_finite_parameters_stop_training_and_are_named(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert nonfinite_parameters(net) == []
    with torch.no_grad():
        net[1].bias[1] = float("-inf")
    assert nonfinite_parameters(net) == ["1.bias"]
    with pytest.raises(TrainingDiverged, match=r"parameters 1\.bias are not finite"):
        epoch_end(DivergenceGuard("test", tmp_path), net, 1, loss=1.0)


def test_a_finite_explosion_of_a_non_negative_loss_is_warned_once(tmp_path):
    guard, net = DivergenceGuard("val", tmp_path), torch.nn.Linear(3, 2)
    for epoch, value in enumerate([944.0, 600.0, 580.0, 5.0e4, 1.0e14], start=1):
        epoch_end(guard, net, epoch, vae=value)
    assert len(guard.warnings) == 1
    assert "epoch 5: train/vae rose to 1e+14" in guard.warnings[0] and "580 at epoch 3" in guard.warnings[0]


def test_an_explosion_above_the_stop_factor_counts_as_divergence(tmp_path):
    guard, net = DivergenceGuard("val", tmp_path, stop_factor=1000.0), torch.nn.Linear(3, 2)
    for epoch, value in enumerate([944.0, 580.0, 5.0e4], start=1):  # 86x, then warned only above 100x
        epoch_end(guard, net, epoch, vae=value, penalty=0.01 * epoch)
    assert guard.warnings == []
    epoch_end(guard, net, 4, vae=5.0e5, penalty=0.04)  # 862x: warned, not stopped
    assert len(guard.warnings) == 1 and "train/vae rose to 5e+05" in guard.warnings[0]
    with pytest.raises(TrainingDiverged, match=r"train/vae rose to 1e\+06, 1\.72e\+03× its lowest epoch mean "
                                               r"\(580 at epoch 2\), above stop_on_explosion=1000"):
        epoch_end(guard, net, 5, vae=1.0e6, penalty=0.05)
    # without a stop factor the same rise is a warning only
    warn_only = DivergenceGuard("val", tmp_path)
    for epoch, value in enumerate([580.0, 1.0e9], start=1):
        epoch_end(warn_only, net, epoch, vae=value)
    assert len(warn_only.warnings) == 1


def test_signed_losses_never_count_as_exploding(tmp_path):
    # a WGAN critic loss changes sign and scale legitimately
    guard, net = DivergenceGuard("val", tmp_path), torch.nn.Linear(3, 2)
    for epoch, value in enumerate([-0.1, 0.01, 50.0, 3000.0], start=1):
        epoch_end(guard, net, epoch, critic=value)
    assert guard.warnings == []


def test_the_guard_state_survives_a_checkpoint(tmp_path):
    guard, net = DivergenceGuard("val", tmp_path), torch.nn.Linear(3, 2)
    for epoch, value in enumerate([10.0, 1e4], start=1):
        epoch_end(guard, net, epoch, vae=value)
    restored = DivergenceGuard("val", tmp_path)
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # plain data only
    assert restored.history == guard.history and restored.warnings == guard.warnings
    epoch_end(restored, net, 3, vae=1e6)
    assert len(restored.warnings) == 1  # not warned twice for the same key


def test_the_cuda_bce_equals_torchs_where_finite_and_turns_nan_into_a_nan_loss():
    # what bce_reconstruction runs on CUDA (whose kernel asserts on NaN on the device), checked on the CPU
    target = torch.rand(5, 7)
    logits = torch.randn(5, 7)
    recon = torch.sigmoid(logits).requires_grad_()
    reference = torch.nn.functional.binary_cross_entropy(recon, target, reduction="sum") / 5
    (grad_ref,) = torch.autograd.grad(reference, recon)
    loss = bce_nan_propagating(recon, target)
    (grad,) = torch.autograd.grad(loss, recon)
    assert torch.equal(loss, reference) and torch.equal(grad, grad_ref)  # bit for bit: results do not change
    poisoned = recon.detach().clone()
    poisoned[1, 2] = float("nan")
    assert torch.isnan(bce_nan_propagating(poisoned, target))


def test_bce_is_float32_and_unchanged_under_bf16_autocast():
    target = torch.rand(4, 6)
    recon = torch.sigmoid(torch.randn(4, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = bce_reconstruction(recon.bfloat16(), target)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, bce_reconstruction(recon.bfloat16().float(), target))


def test_bce_on_a_nan_reconstruction_says_the_generator_diverged():
    target = torch.rand(4, 6)
    recon = torch.sigmoid(torch.randn(4, 6))
    assert torch.isfinite(bce_reconstruction(recon, target))
    recon[2, 3] = float("nan")
    with pytest.raises(TrainingDiverged, match="reconstruction contains NaN"):
        bce_reconstruction(recon, target)
    with pytest.raises(RuntimeError, match="between 0 and 1") as info:  # other range errors stay torch's
        bce_reconstruction(torch.full((2, 2), 1.5), torch.rand(2, 2))
    assert not isinstance(info.value, TrainingDiverged)


def test_zsl_train_reports_divergence_as_one_clear_error(tmp_path):
    # lr 1 blows the encoder's log-variance up within the first steps: exp overflows, the decoder gets NaN
    proc = zsl_train(tmp_path, *TINY, "generator.system.lr=1", "logger=none")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "error: generator training diverged on split=val in epoch 1 of 2" in proc.stderr
    assert "generator.system.lr, now 1) or train fewer epochs" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # the diverged epoch was not checkpointed


def test_divergence_under_bf16_suggests_fp32(tmp_path):
    proc = zsl_train(tmp_path, *TINY, "generator.system.lr=1", "logger=none", "precision=bf16",
                     "allow_slow_bf16=true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "or run in fp32 (precision=fp32)" in proc.stderr


def test_zsl_train_records_a_survived_explosion_in_results(tmp_path):
    proc = zsl_train(tmp_path, *TINY, "generator.system.lr=0.05", "logger=none", "selections=[val_split]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = json.loads((tmp_path / "run" / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("split=val, epoch 2: train/vae rose to")


def test_stop_on_explosion_stops_a_finite_explosion_and_reports_the_epochs_before_it(tmp_path):
    # the same run as above (train/vae rises ~1e9x in epoch 2), with explosions above 1000x counted as
    # divergence: on_divergence=stop keeps epoch 1, the epoch evaluated before it
    proc = zsl_train(tmp_path, *TINY, "generator.system.lr=0.05", "logger=none", "selections=[val_split]",
                     "stop_on_explosion=1000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    val = results["stopped_early"]["val"]
    assert (val["epoch"], val["of"], val["last_evaluated_epoch"]) == (2, 2, 1)
    assert val["reason"].startswith("train/vae rose to") and "above stop_on_explosion=1000" in val["reason"]
    assert results["results"]["val_split"]["gzsl_chosen"]["epoch"] == 1
    assert len(results["warnings"]) == 1 and "stopped there" in results["warnings"][0]
    # on_divergence=error turns it into the one-line error
    failed = zsl_train(tmp_path / "error", *TINY, "generator.system.lr=0.05", "logger=none",
                       "selections=[val_split]", "stop_on_explosion=1000", "on_divergence=error")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "diverged on split=val in epoch 2 of 2: train/vae rose to" in failed.stderr


@pytest.mark.parametrize("value", ["1", "0.5", "nan", "true", "abc"])
def test_a_bad_stop_on_explosion_is_refused(tmp_path, value):
    proc = zsl_train(tmp_path, *TINY, f"stop_on_explosion={value}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config field `stop_on_explosion` must be a factor > 1 (e.g. stop_on_explosion=1000) or null" in proc.stderr


def test_a_resumed_run_keeps_the_warnings_of_the_splits_it_reads_back(tmp_path):
    # both splits survive an explosion; resuming the test split reads split=val back from its record
    first = zsl_train(tmp_path / "first", *TINY, "generator.system.lr=0.05", "logger=none")
    assert first.returncode == 0, first.stderr[-2000:]
    warnings = json.loads((tmp_path / "first" / "run" / "results.json").read_text())["warnings"]
    assert [w.split(",")[0] for w in warnings] == ["split=val", "split=test"]
    last = tmp_path / "first" / "run" / "checkpoints" / "test" / "last.ckpt"
    resumed = zsl_train(tmp_path / "resumed", *TINY, "generator.system.lr=0.05", "logger=none", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "resumed" / "run" / "results.json").read_text())["warnings"] == warnings


def diverge_at(monkeypatch, epochs: dict[str, int], at_epoch_end: bool = False) -> None:
    """Make the conditional VAE diverge in epoch ``epochs[split]`` (1-based) of each split: its first weight
    becomes NaN at the epoch's first batch (the decoder's reconstruction turns NaN: the mid-epoch failure
    path) or, ``at_epoch_end``, after its last step (the guard's epoch-end parameter check)."""
    hook = "on_train_batch_end" if at_epoch_end else "on_train_batch_start"
    original = getattr(ConditionalVAE, hook)

    def poisoned(self, *args):
        original(self, *args)
        batch_idx = args[-1]
        last = self.trainer.num_training_batches - 1
        if self.current_epoch + 1 == epochs.get(self.data.split) and batch_idx == (last if at_epoch_end else 0):
            with torch.no_grad():
                next(self.parameters()).fill_(float("nan"))

    monkeypatch.setattr(ConditionalVAE, hook, poisoned)


FOUR_EPOCHS = (*TINY, "generator.epochs=4", "logger=none")


def test_a_run_that_diverges_stops_and_reports_the_epochs_before_it(tmp_path, monkeypatch):
    diverge_at(monkeypatch, {"val": 3, "test": 2})
    proc = zsl_train(tmp_path, *FOUR_EPOCHS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    stopped = results["stopped_early"]
    assert {s: (r["epoch"], r["of"], r["last_evaluated_epoch"]) for s, r in stopped.items()} == {
        "val": (3, 4, 2), "test": (2, 4, 1)}
    assert "reconstruction contains NaN" in stopped["test"]["reason"]
    curves = json.loads((run / "curves.json").read_text())
    assert curves["val"]["epochs"] == [1, 2] and curves["test"]["epochs"] == [1]
    # `val` chooses among the epochs both runs evaluated: epoch 2 exists on val only
    assert results["results"]["val"]["gzsl_chosen"]["epoch"] == 1
    assert results["results"]["paper"]["gzsl_chosen"]["epoch"] == 1
    assert [w.split(":")[0] for w in results["warnings"]] == ["split=val", "split=test"]
    assert "diverged in epoch 2 of 4" in results["warnings"][1] and "epoch 1's" in results["warnings"][1]
    assert "! split=test: training diverged in epoch 2 of 4 and stopped" in proc.stdout
    # the exported generator is the last evaluated epoch's, finite, not the diverged weights
    generator = load_generator(run / "generator")
    assert generator.meta["epochs"] == 1
    assert all(torch.isfinite(p).all() for p in generator.system.parameters())
    ckpt = torch.load(run / "checkpoints" / "test" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0  # Lightning counts from 0: the checkpoint of epoch 1, not of the diverged 2
    for name, value in generator.system.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    assert not (run / "checkpoints" / "test" / "best-epoch001.ckpt").exists()

    # resuming the stopped test split (into a new directory) reads split=val back and continues test from
    # its epoch-1 checkpoint: it diverges again in epoch 2, before this run's first checkpoint, so the
    # generator kept is the one it resumed from
    resumed = zsl_train(tmp_path / "resumed", *FOUR_EPOCHS, f"ckpt_path={run / 'checkpoints' / 'test' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    again = json.loads((tmp_path / "resumed" / "run" / "results.json").read_text())
    without_message = lambda record: {s: {k: v for k, v in r.items() if k != "message"} for s, r in record.items()}  # noqa: E731
    assert without_message(again["stopped_early"]) == without_message(stopped)
    assert again["results"] == results["results"] and again["stopped_early"]["val"] == stopped["val"]
    # (this run has no last.ckpt of its own: the message names the checkpoint it resumed from)
    assert f"the generator kept ({run / 'checkpoints' / 'test' / 'last.ckpt'}, the exported one) is epoch 1's" in \
        again["stopped_early"]["test"]["message"]
    assert "the generator kept (last.ckpt, the exported one)" in stopped["test"]["message"]
    assert not (tmp_path / "resumed" / "run" / "checkpoints" / "test").exists()
    assert load_generator(tmp_path / "resumed" / "run" / "generator").meta["epochs"] == 1

    # zsl-report says how many of the runs it averages stopped early
    table = aggregate(read_rows(run / "results.json"))
    assert "| 1 (1 stopped early) |" in to_markdown(table)
    assert to_csv(table).splitlines()[0].split(",")[:7] == ["dataset", "method", "semantics", "selection", "n",
                                                            "seeds", "stopped_early"]


def test_a_divergence_found_at_epoch_end_keeps_the_last_evaluated_epoch(tmp_path, monkeypatch):
    diverge_at(monkeypatch, {"test": 5}, at_epoch_end=True)
    proc = zsl_train(tmp_path, *TINY, "generator.epochs=6", "eval_every=2", "logger=none", "selections=[paper]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    test = results["stopped_early"]["test"]
    assert (test["epoch"], test["of"], test["last_evaluated_epoch"]) == (5, 6, 4)
    assert test["reason"].startswith("parameters ") and "are not finite" in test["reason"]
    assert json.loads((tmp_path / "run" / "curves.json").read_text())["test"]["epochs"] == [2, 4]
    assert results["results"]["paper"]["gzsl_chosen"]["epoch"] in (2, 4)
    assert load_generator(tmp_path / "run" / "generator").meta["epochs"] == 4


def test_report_marks_only_the_selections_a_stopped_split_feeds(tmp_path):
    record = {"dataset": {"name": "CUB", "semantic_space": "att"}, "method": "fvaegan", "seed": 0,
              "stopped_early": {"val": {"epoch": 3}},
              "results": {name: {"gzsl": {"S": 1.0, "U": 1.0, "H": 1.0}, "zsl": {"T1": 1.0}}
                          for name in ("paper", "val")}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    assert {r["selection"]: r["stopped_early"] for r in read_rows(path)} == {"paper": False, "val": True}


def test_on_divergence_error_fails_the_run_without_results(tmp_path, monkeypatch):
    diverge_at(monkeypatch, {"val": 3})
    proc = zsl_train(tmp_path, *FOUR_EPOCHS, "on_divergence=error")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: generator training diverged on split=val in epoch 3 of 4" in proc.stderr
    assert "last.ckpt" in proc.stderr  # the evaluated epochs' checkpoints are kept and named
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_bad_on_divergence_value_is_refused(tmp_path):
    proc = zsl_train(tmp_path, *TINY, "on_divergence=ignore")
    assert proc.returncode == 2
    assert "config field `on_divergence` must be 'stop' or 'error', got 'ignore'" in proc.stderr


def stack(epochs: list[int], h: list[float]) -> CurveStack:
    """A one-row, one-γ curve stack with H (and S, U, T1) given per evaluated epoch."""
    values = np.asarray(h, dtype=float).reshape(-1, 1, 1) / 100
    return CurveStack(epochs=epochs, metrics={m: values for m in ("S", "U", "H", "T1")},
                      row_labels=["final"], gammas=(0.0,))


def test_the_val_selection_chooses_among_the_epochs_both_runs_evaluated():
    val, test = stack([10, 20, 30], [40, 50, 60]), stack([10, 20], [45, 55])
    chosen = select({"val": val, "test": test}, ["paper", "val"], stopped={"test"})
    assert chosen["val"]["gzsl_chosen"]["epoch"] == 20 and chosen["val"]["gzsl"]["H"] == 55.0
    assert chosen["val"]["epochs_considered"] == 20
    assert chosen["paper"]["gzsl_chosen"]["epoch"] == 20
    # the other way round: val stopped; its best stays within what val evaluated
    chosen = select({"val": stack([10], [40]), "test": stack([10, 20], [45, 55])}, ["val"], stopped={"val"})
    assert chosen["val"]["gzsl_chosen"]["epoch"] == 10 and chosen["val"]["gzsl"]["H"] == 45.0
    assert "epochs_considered" not in chosen["val"]
    # runs of different lengths that did not stop are not silently cut, nor are different schedules
    with pytest.raises(ConfigError, match="evaluated at different epochs"):
        select({"val": stack([10], [40]), "test": stack([10, 20], [45, 55])}, ["val"])
    with pytest.raises(ConfigError, match="evaluated at different epochs"):
        select({"val": stack([5, 10], [1, 2]), "test": stack([10, 20], [1, 2])}, ["val"], stopped={"val"})
