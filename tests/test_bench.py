"""zsl-bench smoke test: one method on a tiny synthetic dataset, a couple of steps; checks the JSON fields."""

from __future__ import annotations

import json

import pytest
import torch

from zsl_gen.bench import PEAK_SPREAD_LIMIT, combined_peak, main, markdown_table, step_flops

FIELDS = ("method", "dataset", "precision", "device", "samples_per_s", "s_per_epoch", "classifier_s",
          "peak_rss_mb", "gflops", "peak_gflops", "end_to_end_s", "extrapolated", "measured_steps")


def test_bench_smoke_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench.json"
    main(["--methods", "cvae", "--datasets", "CUB", "--tiny", "--steps", "2", "--warmup", "1",
          "--device", "cpu", "--out", str(out)])
    cases = json.loads(out.read_text())
    assert len(cases) == 1
    case = cases[0]
    assert "error" not in case, case.get("error")
    for field in FIELDS:
        assert field in case, field
    assert (case["method"], case["dataset"], case["precision"], case["device"]) == ("cvae", "CUB", "fp32", "cpu")
    assert case["samples_per_s"] > 0 and case["s_per_epoch"] > 0 and case["classifier_s"] > 0
    assert case["peak_gflops"] > 0 and case["gflops"] > 0 and case["peak_rss_mb"] > 0
    assert case["measured_steps"] == 2 and case["extrapolated"] is True
    # the optimiser's updates are timed inside the step: a real, smaller part of it, and the bound follows
    assert 0 < case["optimizer_s_per_step"] < case["step_s"] and 0 < case["optimizer_share"] < 1
    assert case["fraction_of_peak"] <= case["fraction_of_peak_bound"] <= 1
    # the peak is measured before and after the timing; the case's peak is the higher one
    assert case["peak_gflops"] == max(case["peak_gflops_before"], case["peak_gflops_after"])
    assert case["peak_spread"] >= 1 and case["peak_unstable"] == (case["peak_spread"] > PEAK_SPREAD_LIMIT)
    assert combined_peak({"peak_gflops": 0.0, "by_size": {}}, {"peak_gflops": 5.0, "by_size": {}})["peak_unstable"]
    table = out.with_suffix(".md").read_text()
    assert "| cvae | CUB | fp32/fp32 |" in table
    # which code and when: the version and commit in the JSON and in the table's header line
    machine = case["machine"]
    assert machine["zsl_gen"] and machine["measured"] and "git_commit" in machine
    assert f"zsl-gen {machine['zsl_gen']} at {machine['git_commit'] or 'an unknown commit'}" in table


def test_flop_counts_follow_the_layer_shapes():
    hp = {"batch_size": 64, "hidden_dim": 4096, "noise_dim": None, "critic_steps": 5}
    d, a, s = 2048, 312, 150

    def lin(b, i, o):
        return 2.0 * b * i * o

    g_fwd = lin(64, 624, 4096) + lin(64, 4096, 2048)
    critic = 2 * lin(128, d + a, 4096) + 3 * lin(128, 4096, 1) + 4 * lin(64, d + a, 4096) + 4 * lin(64, 4096, 1)
    g_train = 2 * lin(64, 624, 4096) + 3 * lin(64, 4096, 2048)
    through = 2 * (lin(64, d + a, 4096) + lin(64, 4096, 1))
    expected = 5 * (g_fwd + critic) + g_train + through + 2 * lin(64, d, s)
    assert step_flops("fclswgan", hp, d, a, s) == expected


@pytest.mark.parametrize("method, feedback", [("cvae", False), ("cadavae", False), ("fclswgan", False),
                                              ("fvaegan", False), ("tfvaegan", False), ("tfvaegan", True)])
def test_flop_counts_match_torchs_flop_counter_on_a_real_step(method, feedback):
    """``step_flops`` against ``torch.utils.flop_counter`` around one real Lightning training step.

    Sizes are all different and every layer is wider than the critic's (width-1) output layer's products,
    so a missing or extra layer term cannot hide in the one known difference: the analytic count takes
    that layer's 10 ``(B, H) × (H, 1)``-sized products per critic update as autograd's Linear would run
    them, while ``Critic.wgan_gp_backward`` runs 8 of them as matrix-vector or element-wise work, which
    torch's counter does not count."""
    import pytorch_lightning as pl
    from torch.utils.flop_counter import FlopCounterMode

    from zsl_gen.bench import compose_config
    from zsl_gen.config import instantiate
    from zsl_gen.data import make_synthetic
    from zsl_gen.pipeline import protocol_data

    overrides = ["generator.system.cross_start=-1", "generator.system.align_start=-1"] if method == "cadavae" else []
    cfg = compose_config(method, "CUB", "fp32", overrides)
    raw = make_synthetic(n_classes=14, n_unseen=3, n_val_classes=2, semantic_dim=29, feature_dim=72,
                         samples_per_class=30, seed=0, name="CUB")
    data = protocol_data(cfg, raw, "test")
    sizes = ({"feature_enc_hidden": 40, "feature_dec_hidden": 44, "semantic_enc_hidden": 36,
              "semantic_dec_hidden": 38} if method == "cadavae" else {"hidden_dim": 40, "batch_size": 16})
    if method in ("fclswgan", "fvaegan", "tfvaegan"):
        sizes["critic_steps"] = 2
    if method == "fclswgan":
        sizes["cls_epochs"] = 1
    torch.manual_seed(0)
    system = instantiate(cfg.generator.system, feature_dim=data.feature_dim, semantic_dim=data.semantic_dim,
                         **sizes)
    system.set_data(data, seed=0)
    if method == "tfvaegan":
        system._uses_feedback = lambda batch_idx: feedback

    class CountSteps(pl.Callback):
        def __init__(self) -> None:
            self.flops: list[int] = []
            self.counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.counter.__exit__(None, None, None)
            self.flops.append(self.counter.get_total_flops())

    counted = CountSteps()
    pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               num_sanity_val_steps=0, callbacks=[counted]).fit(system)
    hp = dict(system.hparams)
    analytic = step_flops(method, hp, data.feature_dim, data.semantic_dim, int(data.seen_classes.numel()),
                          feedback=feedback)
    uncounted = 8 * hp["critic_steps"] * 2.0 * hp["batch_size"] * hp["hidden_dim"] if "critic_steps" in hp else 0.0
    assert len(counted.flops) == 2
    assert counted.flops == [analytic - uncounted] * 2


def test_official_next_batch_walks_whole_permutations_in_full_batches():
    from zsl_gen.bench import _OfficialNextBatch

    torch.manual_seed(0)
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    next_batch = _OfficialNextBatch(x, y)
    drawn = []
    for _ in range(9):  # 36 rows: epochs wrap mid-batch, as classifier2.py's next_batch does
        bx, by = next_batch(4)
        assert bx.shape == (4, 1) and torch.equal(bx[:, 0].long(), by)
        drawn += by.tolist()
    for start in (0, 10, 20):
        assert sorted(drawn[start:start + 10]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # reshuffled at every wrap


def test_official_style_loops_are_timed_for_the_speed_up(tmp_path):
    out = tmp_path / "bench.json"
    # one method through the CLI (every method's official-style loop runs in-process below)
    main(["--methods", "fclswgan", "--datasets", "CUB", "--tiny", "--steps", "2", "--warmup", "1",
          "--device", "cpu", "--official", "--classifier-precision", "bf16", "--out", str(out)])
    cases = json.loads(out.read_text())
    assert [c["method"] for c in cases] == ["fclswgan"]
    assert all(c.get("classifier_precision") == "bf16" for c in cases)  # the official loop casts back to fp32
    for case in cases:
        assert "error" not in case, case.get("error")
        assert case["official_style_s_per_epoch"] > 0 and case["official_style_classifier_s"] > 0
    table = out.with_suffix(".md").read_text()
    assert "official-style s/epoch" in table


def test_a_case_whose_machine_speed_moved_is_flagged():
    """Peaks measured before and after a case's timing that differ by more than the limit mark the case."""
    steady = combined_peak({"peak_gflops": 500.0, "by_size": {"a": 500.0}},
                           {"peak_gflops": 520.0, "by_size": {"a": 520.0}})
    assert steady["peak_gflops"] == 520.0 and not steady["peak_unstable"] and steady["by_size"] == {"a": 520.0}
    moved = combined_peak({"peak_gflops": 1990.0, "by_size": {"a": 1990.0}},
                          {"peak_gflops": 570.0, "by_size": {"a": 570.0}})
    assert moved["peak_gflops"] == 1990.0 and moved["peak_unstable"] and moved["peak_spread"] == 3.491
    case = {"method": "tfvaegan", "dataset": "CUB", "precision": "bf16", "samples_per_s": 80.0, "s_per_epoch": 176.8,
            "gflops": 146.0, "peak_gflops": 1990.0, "fraction_of_peak": 0.073, "classifier_s": 22.4,
            "end_to_end_s": 6e4, "peak_rss_mb": 2944.0}
    assert "†" not in markdown_table([{**case, **steady}])
    table = markdown_table([{**case, **moved}])
    assert "| 7%† |" in table and "speed moved during the case" in table


@pytest.mark.parametrize("method", ["cvae", "fvaegan", "tfvaegan", "fclswgan", "cadavae"])
def test_official_style_loops_train_copies_and_leave_the_system_alone(method):
    from zsl_gen.bench import compose_config, official_style_step_s
    from zsl_gen.config import instantiate
    from zsl_gen.data import make_synthetic
    from zsl_gen.pipeline import protocol_data

    cfg = compose_config(method, "CUB", "fp32")
    raw = make_synthetic(n_classes=12, n_unseen=3, n_val_classes=2, semantic_dim=16, feature_dim=64,
                         samples_per_class=20, seed=0, name="CUB")
    data = protocol_data(cfg, raw, "test")
    torch.manual_seed(0)
    small = ({"feature_enc_hidden": 32, "feature_dec_hidden": 32, "semantic_enc_hidden": 32, "semantic_dec_hidden": 32}
             if method == "cadavae" else {"hidden_dim": 32})
    system = instantiate(cfg.generator.system, feature_dim=data.feature_dim, semantic_dim=data.semantic_dim, **small)
    system.set_data(data, seed=0)
    if method == "fclswgan":  # its loop reads the frozen seen-class classifier that fitting pre-trains
        system.on_fit_start()
    before = {k: v.clone() for k, v in system.state_dict().items()}
    seconds = official_style_step_s(method, system, data, steps=2, warmup=1)
    assert seconds is not None and seconds > 0
    for key, value in system.state_dict().items():  # the loop trains deep copies
        assert torch.equal(value, before[key]), key


def test_bench_on_cuda_without_a_usable_gpu_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cuda", "--tiny", "--out", str(tmp_path / "bench.json")])
    assert stop.value.code == 2 and "--device cuda: torch finds no usable CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_a_failed_case_is_recorded_and_the_exit_status_says_so(tmp_path, capsys):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as stop:  # an argument the generator does not take: the case fails
        main(["--methods", "cvae", "--datasets", "CUB", "--tiny", "--steps", "2", "--warmup", "1", "--device", "cpu",
              "--override", "+generator.system.no_such_argument=1", "--out", str(out)])
    assert stop.value.code == 1 and "1 of 1 case(s) failed: cvae/CUB/fp32" in capsys.readouterr().err
    (case,) = json.loads(out.read_text())
    assert case["method"] == "cvae" and "no_such_argument" in case["error"]
    assert out.with_suffix(".md").exists()


def test_a_disk_that_fills_up_during_the_benchmark_is_one_error_line(tmp_path, monkeypatch, capsys):
    import errno

    import zsl_gen.bench
    import zsl_gen.results

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(zsl_gen.bench, "matmul_peak", lambda prec, device: {"peak_gflops": 1.0, "by_size": {}})
    monkeypatch.setattr(zsl_gen.bench, "_run_in_subprocess", lambda spec: (None, "error: a failed case"))
    monkeypatch.setattr(zsl_gen.results, "write_text_atomic", full)  # after the checks before the first case
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cpu", "--tiny", "--methods", "cvae", "--datasets", "CUB", "--out", str(tmp_path / "b.json")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and lines == [f"error: {tmp_path / 'b.md'}: No space left on device; check the "
                                              "path and the free space, or choose another path"]


@pytest.mark.parametrize("args, message", [
    (["--methods", "foo"], "--methods: unknown foo; choose from"),
    (["--methods", ""], "--methods: empty"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--epochs", "nan"], "--epochs must be a number > 0"),
    (["--override", "foo.bar=1"], "--override foo.bar=1: "),
    (["--out", "."], "--out .: is a directory"),
    # (root passes os.access there: the write probe refuses it; another user, the permission check)
    (["--out", "/proc/no_such_dir/bench.json"], "--out /proc/no_such_dir/bench.json: "),
])
def test_bad_arguments_are_usage_errors_before_any_case_runs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cpu", "--tiny", "--methods", "cvae", "--datasets", "CUB", *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"zsl-bench: error: {message}" in err, err


def test_an_output_below_a_file_is_refused_before_the_benchmark_runs(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cpu", "--tiny", "--methods", "cvae", "--datasets", "CUB",
              "--out", str(tmp_path / "afile" / "bench.json")])
    captured = capsys.readouterr()
    assert stop.value.code == 2 and f"{tmp_path / 'afile'} is a file, not a directory" in captured.err
    assert "zsl-bench on" not in captured.out  # refused before the machine is even described


def test_the_simulation_cache_is_keyed_by_its_source(tmp_path):
    from zsl_gen.bench import load_raw_cached

    # a data root without the real file gives the shape-only simulation, even after a cached real one
    real_root = tmp_path / "data"
    (real_root / "xlsa17" / "FLO").mkdir(parents=True)
    _, shaped_how = load_raw_cached("FLO", tmp_path / "nowhere", tmp_path / "cache")
    assert shaped_how.startswith("simulated shape")
    import scipy.io

    variables = scipy.io.loadmat(tmp_path / "cache" / "FLO" / "att_splits.mat")
    variables["att"] = variables["att"] * 2  # another file, as a real one would be
    scipy.io.savemat(real_root / "xlsa17" / "FLO" / "att_splits.mat",
                     {k: v for k, v in variables.items() if not k.startswith("__")})
    _, how = load_raw_cached("FLO", real_root, tmp_path / "cache")
    assert how.startswith("real semantics and splits")
    _, again = load_raw_cached("FLO", tmp_path / "nowhere", tmp_path / "cache")
    assert again == shaped_how


def test_a_failed_cases_error_line_is_its_error_not_a_warning_before_it():
    from zsl_gen.bench import error_line

    output = ("[WARNING] generator.system.batch_size=512 exceeds the 144 training samples (split=val): each batch\n"
              "error: config field `classifier.epochs` must be an integer >= 1, got 0\n")
    assert error_line(output) == "error: config field `classifier.epochs` must be an integer >= 1, got 0"
    assert error_line("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n") == "RuntimeError: boom"
    assert error_line("") == "failed without output" and error_line("killed\n") == "killed"
