"""zsl-report: mean ± std over seeds, grouping, Markdown/CSV output, bad input."""

import csv
import json

import pytest

from zsl_gen.cli.report import main


def write_result(path, *, seed, method="cvae", dataset="CUB", h=50.0, t1=60.0):
    path.mkdir(parents=True)
    record = {"method": method, "seed": seed, "dataset": {"name": dataset, "semantic_space": "att"},
              "results": {"paper": {"gzsl": {"S": 60.0, "U": 40.0, "H": h + 2}, "zsl": {"T1": t1 + 1}},
                          "val": {"gzsl": {"S": 58.0, "U": 38.0, "H": h}, "zsl": {"T1": t1}}}}
    (path / "results.json").write_text(json.dumps(record))


def test_mean_std_per_method_and_selection(tmp_path, capsys):
    for seed, h in enumerate([40.0, 50.0, 60.0]):
        write_result(tmp_path / "multi" / str(seed), seed=seed, h=h)
    write_result(tmp_path / "multi" / "3", seed=0, method="fclswgan", h=30.0)
    main([str(tmp_path / "multi"), "--md", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert "| CUB | cvae | att | val | 3 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 10.00 |" in out
    assert "| CUB | fclswgan | att | val | 1 |" in out and "paper (optimistic)" in out
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    cvae_val = next(r for r in rows if r["method"] == "cvae" and r["selection"] == "val")
    assert float(cvae_val["H_mean"]) == 50.0 and float(cvae_val["H_std"]) == 10.0
    assert cvae_val["seeds"] == "0 1 2"
    assert (tmp_path / "r.md").read_text().startswith("| dataset |")


def test_paper_of_a_last_epoch_method_is_not_labelled_optimistic(tmp_path, capsys):
    write_result(tmp_path / "multi" / "0", seed=0, method="cadavae")
    write_result(tmp_path / "multi" / "1", seed=0, method="fclswgan")
    record = json.loads((tmp_path / "multi" / "0" / "results.json").read_text())
    record["results"]["paper"].update(optimistic=False, rule="last", chosen_on="fixed")
    (tmp_path / "multi" / "0" / "results.json").write_text(json.dumps(record))
    main([str(tmp_path / "multi")])
    out = capsys.readouterr().out
    assert "| CUB | cadavae | att | paper | 1 |" in out  # CADA-VAE's last epoch: nothing chosen on test
    assert "| CUB | fclswgan | att | paper (optimistic) | 1 |" in out


def test_no_results_and_corrupt_results_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    assert "no results.json under" in capsys.readouterr().err
    # beside a directory that has results: named, not skipped (a mistyped second sweep dir)
    write_run(tmp_path / "good", seed=0)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "good"), str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'empty'}: no results.json under it" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{truncated")
    with pytest.raises(SystemExit):
        main([str(bad)])
    err = capsys.readouterr().err
    assert "results.json: not valid JSON" in err and "Traceback" not in err
    (bad / "results.json").write_text(json.dumps({"method": "x"}))
    with pytest.raises(SystemExit):
        main([str(bad)])
    assert "not a zsl-train results.json (missing field" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["results"]["val"]["gzsl"].update(H="abc"), "`results.val.gzsl.H` is 'abc', not a percentage"),
    (lambda r: r["results"]["paper"]["zsl"].update(T1=None), "`results.paper.zsl.T1` is None"),
    (lambda r: r["results"]["val"]["gzsl"].update(S=250.0), "`results.val.gzsl.S` is 250.0"),
    (lambda r: r.update(seed=[0]), "`seed` is [0], not a non-negative integer"),
    (lambda r: r.update(results={}), "`results` holds no selection"),
    (lambda r: r.update(results=[1]), "not a zsl-train results.json"),
])
def test_a_damaged_results_json_is_one_line_naming_the_field(tmp_path, capsys, edit, message):
    write_result(tmp_path / "run", seed=0)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    edit(record)
    (tmp_path / "run" / "results.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--md", str(tmp_path / "r.md")])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], captured.err
    assert str(tmp_path / "run" / "results.json") in lines[0] and not (tmp_path / "r.md").exists()


def test_a_run_named_twice_counts_once_and_a_directory_output_is_refused(tmp_path, capsys):
    write_result(tmp_path / "run", seed=0)
    main([str(tmp_path / "run"), str(tmp_path / "run" / "results.json")])
    assert "| CUB | cvae | att | val | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--md", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--md {tmp_path}: is a directory" in err, err
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--csv", str(tmp_path / "afile" / "report.csv")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{tmp_path / 'afile'} is a file, not a directory" in err, err
    assert (tmp_path / "afile").read_text() == "x"


# ---- one row per setting: runs whose configs differ beyond the seed are not averaged -----------------------------
def train_config(run, *, seed, epochs=1, lr=0.001, cap=None):
    """The parts of a zsl-train results.json `config` the grouping reads: settings and bookkeeping."""
    return {"task_name": "train", "seed": seed, "data_dir": f"{run}/data", "selections": ["paper", "val"],
            "ckpt_path": None, "eval_every": 1, "keep_freed_memory": True,
            "dataset": {"name": "CUB", "data_dir": f"{run}/data", "max_generator_epochs": cap},
            "generator": {"name": "cvae", "epochs": epochs, "system": {"lr": lr}},
            "trainer": {"accelerator": "cpu", "log_every_n_steps": 10},
            "logger": {"csv": {"save_dir": str(run)}}, "paths": {"output_dir": str(run)}}


def write_run(path, *, seed, h=50.0, files=None, **config):
    """A results.json with a recorded config (output paths, data paths and seed of this run) and checksums."""
    write_result(path, seed=seed, h=h)
    record = json.loads((path / "results.json").read_text())
    record["config"] = train_config(path, seed=seed, **config)
    epochs, cap = record["config"]["generator"]["epochs"], record["config"]["dataset"]["max_generator_epochs"]
    record["protocol"] = {"generator_epochs": epochs if cap is None else min(epochs, cap)}
    record["dataset"]["files"] = files or {f"{path}/data/res101.mat": "aa" * 32, f"{path}/data/att.mat": "bb" * 32}
    (path / "results.json").write_text(json.dumps(record))


def test_runs_of_one_setting_average_over_seeds(tmp_path, capsys):
    # seeds 0 and 1 of one setting, written to other directories (output dirs, data dir, logger differ)
    write_run(tmp_path / "multi" / "0", seed=0, h=40.0)
    write_run(tmp_path / "elsewhere" / "1", seed=1, h=60.0)
    main([str(tmp_path / "multi"), str(tmp_path / "elsewhere"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert "| CUB | cvae | att | val | 2 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 14.14 | 60.00 ± 0.00 |" in out
    assert "setting" not in out  # one setting: no label column
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 2 and {r["seeds"] for r in rows} == {"0 1"} and {r["setting"] for r in rows} == {""}


def test_the_epochs_trained_decide_not_the_schedule_and_its_cap(tmp_path, capsys):
    # the simulated set's default: a 300-epoch schedule capped to 30; and 30 asked for explicitly (cap lifted)
    write_run(tmp_path / "capped", seed=0, h=40.0, epochs=300, cap=30)
    write_run(tmp_path / "explicit", seed=1, h=60.0, epochs=30, cap=None)
    write_run(tmp_path / "longer", seed=0, h=70.0, epochs=300, cap=None)
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| val | 2 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 14.14 | 60.00 ± 0.00 | generator.epochs=30 |" in out
    assert "| val | 1 | 58.00 | 38.00 | 70.00 | 60.00 | generator.epochs=300 |" in out  # one seed: no ±


def test_runs_of_other_settings_are_separate_labelled_rows(tmp_path, capsys):
    # `zsl-train -m generator.epochs=1,2`: one seed of each, not n=2 over two settings
    write_run(tmp_path / "multi" / "0", seed=0, h=40.0, epochs=1)
    write_run(tmp_path / "multi" / "1", seed=0, h=60.0, epochs=2)
    write_run(tmp_path / "multi" / "2", seed=1, h=50.0, epochs=2)
    main([str(tmp_path / "multi"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("| T1 | setting |")
    assert "| CUB | cvae | att | val | 1 | 58.00 | 38.00 | 40.00 | 60.00 | generator.epochs=1 |" in out
    assert "| CUB | cvae | att | val | 2 | 58.00 ± 0.00 | 38.00 ± 0.00 | 55.00 ± 7.07 | 60.00 ± 0.00 | generator.epochs=2 |" in out
    rows = [r for r in csv.DictReader((tmp_path / "r.csv").open()) if r["selection"] == "val"]
    assert [(r["setting"], r["n"], r["seeds"], r["H_mean"], r["H_std"]) for r in rows] == [
        ("generator.epochs=1", "1", "0", "40.0000", ""), ("generator.epochs=2", "2", "0 1", "55.0000", "7.0711")]
    assert "mean ± sample standard deviation (n − 1) over the seeds; a single seed has no ±." in out


def test_labels_name_every_differing_key_and_other_data(tmp_path, capsys):
    write_run(tmp_path / "a", seed=0, epochs=1, lr=0.001)
    write_run(tmp_path / "b", seed=0, epochs=2, lr=0.0003)
    write_run(tmp_path / "c", seed=0, epochs=1, lr=0.001, files={"/x/res101.mat": "cc" * 32})  # other files
    main([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert ", generator.epochs=2, generator.system.lr=0.0003 |" in out
    labels = [line.rsplit("|", 2)[1].strip() for line in out.splitlines() if "| val |" in line]
    assert len(labels) == 3 and len(set(labels)) == 3 and all("data_sha256=" in lab for lab in labels), labels


def test_a_zsl_eval_of_a_runs_generator_is_another_setting(tmp_path, capsys):
    write_run(tmp_path / "train", seed=0)
    write_result(tmp_path / "eval", seed=3483)
    record = json.loads((tmp_path / "eval" / "results.json").read_text())
    record["results"] = {"paper": record["results"]["paper"], "last": record["results"]["paper"]}
    record["config"] = {"task_name": "eval", "export": str(tmp_path / "train" / "generator"), "seed": 3483,
                        "syn_num": 300, "classifier": {"epochs": 25}, "paths": {"output_dir": str(tmp_path / "eval")}}
    (tmp_path / "eval" / "results.json").write_text(json.dumps(record))
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| CUB | cvae | att | paper (optimistic) | 1 |" in out and "| 2 |" not in out
    assert "| task_name=train |" in out and "| task_name=eval |" in out


@pytest.mark.parametrize("seeds", [(0, 0), (3, 3)])
def test_the_same_setting_and_seed_twice_is_refused_naming_both_files(tmp_path, capsys, seeds):
    write_run(tmp_path / "run", seed=seeds[0])
    write_run(tmp_path / "copy", seed=seeds[1])  # a copy of the run (its paths differ: bookkeeping)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), str(tmp_path / "copy"), "--md", str(tmp_path / "r.md")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert str(tmp_path / "run" / "results.json") in lines[0] and str(tmp_path / "copy" / "results.json") in lines[0]
    assert f"the same setting with the same seed {seeds[0]}" in lines[0] and "pass only one of them" in lines[0]
    assert not (tmp_path / "r.md").exists()


def test_a_damaged_config_is_one_line_naming_the_field(tmp_path, capsys):
    write_run(tmp_path / "run", seed=0)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    record["config"] = [1]
    (tmp_path / "run" / "results.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run")])
    assert "results.json: `config` is not a mapping" in capsys.readouterr().err


def test_failed_jobs_of_a_sweep_are_named_beside_the_table(tmp_path, capsys):
    write_result(tmp_path / "sweep" / "0", seed=0)
    (tmp_path / "sweep" / "1").mkdir(parents=True)
    (tmp_path / "sweep" / "1" / "error.txt").write_text("Traceback ...\nValueError: boom\n")
    main([str(tmp_path / "sweep")])
    captured = capsys.readouterr()
    assert "| CUB | cvae | att | val | 1 |" in captured.out
    assert "1 job(s) failed or did not finish and are not in the table" in captured.err
    assert f"{tmp_path / 'sweep' / '1'}: ValueError: boom" in captured.err


def test_unfinished_jobs_are_named_and_a_sweep_without_results_lists_its_jobs(tmp_path, capsys):
    """A job killed without a word (out of memory, a time limit) leaves its .hydra/ but neither results.json
    nor error.txt: the mean over the other seeds must not pass unnoticed."""
    write_result(tmp_path / "sweep" / "0", seed=0)
    (tmp_path / "sweep" / "0" / ".hydra").mkdir()
    (tmp_path / "sweep" / "1" / ".hydra").mkdir(parents=True)
    main([str(tmp_path / "sweep")])
    captured = capsys.readouterr()
    assert "| CUB | cvae | att | val | 1 |" in captured.out
    assert "1 job(s) failed or did not finish" in captured.err
    assert f"{tmp_path / 'sweep' / '1'}: no results.json and no error.txt: still running" in captured.err
    # no job finished: the jobs are listed, then one error line
    (tmp_path / "dead" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "dead" / "1").mkdir(parents=True)
    (tmp_path / "dead" / "1" / "error.txt").write_text("error: boom\n")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "dead")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "2 job(s) failed or did not finish" in err
    assert f"{tmp_path / 'dead' / '1'}: error: boom" in err and f"{tmp_path / 'dead' / '0'}: no results.json" in err
    assert err.strip().splitlines()[-1].startswith("error: no results.json under") and "none of its 2 job(s)" in err


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """/proc cannot hold new files, also for root, whom the permission check before the work lets through."""
    write_result(tmp_path / "multi" / "0", seed=0)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "multi"), "--md", "/proc/no_such_dir/t.md"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "/proc/no_such_dir" in lines[0]


def test_a_failed_single_run_shows_its_logged_error_and_a_resumed_run_is_not_unfinished(tmp_path, capsys):
    write_result(tmp_path / "runs" / "ok", seed=0)
    (tmp_path / "runs" / "bad" / ".hydra").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "train.log").write_text("[2026-12-02 09:00:00][zsl_gen][ERROR] - error: no dataset\n")
    (tmp_path / "runs" / "killed" / ".hydra").mkdir(parents=True)  # resumed by `resumed`: its results are there
    write_result(tmp_path / "runs" / "resumed", seed=1)
    record = json.loads((tmp_path / "runs" / "resumed" / "results.json").read_text())
    record["config"] = {"ckpt_path": str(tmp_path / "runs" / "killed" / "checkpoints" / "test" / "last.ckpt")}
    (tmp_path / "runs" / "resumed" / "results.json").write_text(json.dumps(record))
    main([str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert "1 job(s) failed or did not finish" in err and f"{tmp_path / 'runs' / 'bad'}: error: no dataset" in err
    assert "killed" not in err


def test_simulated_features_warnings_and_mixed_code_versions_are_noted(tmp_path, capsys):
    # seeds 0, 1 real; seed 2 on simulated features with a warning and run by other code
    for seed in range(3):
        write_result(tmp_path / "multi" / str(seed), seed=seed)
        path = tmp_path / "multi" / str(seed) / "results.json"
        record = json.loads(path.read_text())
        record["versions"] = {"zsl_gen": "0.1.0", "git_commit": "a" * 40 if seed < 2 else "b" * 40, "torch": "2.13.0"}
        if seed == 2:
            record["dataset"]["features_note"] = "simulated by zsl-data simulate"
            record["warnings"] = ["dataset CUB: 9 seen / 3 unseen classes, but CUB has 150 / 50"]
        path.write_text(json.dumps(record))
    write_result(tmp_path / "multi" / "other", seed=0, method="fclswgan")  # a clean row: no notes
    main([str(tmp_path / "multi"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("| T1 | notes |")
    assert "| CUB | cvae | att | val | 3 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 0.00 | 60.00 ± 0.00 | simulated " \
           "features in 1 of 3; warnings in 1 of 3; 2 code versions |" in out
    assert "| CUB | fclswgan | att | val | 1 | 58.00 | 38.00 | 50.00 | 60.00 |  |" in out
    assert f"- dataset CUB: 9 seen / 3 unseen classes, but CUB has 150 / 50 (1 run: {path})" in out
    assert (f"CUB cvae val: its seeds ran on different code: zsl_gen=0.1.0 git_commit={'a' * 40} torch=2.13.0 | "
            f"zsl_gen=0.1.0 git_commit={'b' * 40} torch=2.13.0") in out
    rows = {(r["method"], r["selection"]): r for r in csv.DictReader((tmp_path / "r.csv").open())}
    assert (rows["cvae", "val"]["simulated"], rows["cvae", "val"]["warned"]) == ("1", "1")
    assert len(rows["cvae", "val"]["code_versions"].split(" | ")) == 2
    assert (rows["fclswgan", "val"]["simulated"], rows["fclswgan", "val"]["warned"]) == ("0", "0")


def test_the_embedded_simulator_under_a_benchmark_name_is_noted_but_not_under_its_own():
    from zsl_gen.cli.report import is_simulated

    assert is_simulated({"name": "CUB", "kind": "synthetic"}) and not is_simulated({"name": "synthetic", "kind": "synthetic"})
    assert not is_simulated({"name": "CUB", "kind": "files"})
    assert is_simulated({"name": "CUB", "kind": "files", "features_note": "simulated"})


def test_a_result_without_recorded_versions_is_not_counted_as_other_code(tmp_path, capsys):
    for seed in range(2):
        write_result(tmp_path / "multi" / str(seed), seed=seed)
    path = tmp_path / "multi" / "1" / "results.json"
    record = json.loads(path.read_text())
    record["versions"] = {"zsl_gen": "0.1.0", "git_commit": "a" * 40, "torch": "2.13.0"}
    path.write_text(json.dumps(record))
    main([str(tmp_path / "multi")])
    out = capsys.readouterr().out
    assert "code versions" not in out and "different code" not in out and "| notes |" not in out


def test_debug_runs_are_noted():
    from zsl_gen.cli.report import debug_settings

    assert debug_settings({"trainer": {"fast_dev_run": True}}) == ["fast_dev_run"]
    assert debug_settings({"trainer": {"limit_train_batches": 3, "overfit_batches": 2}}) == [
        "overfit_batches", "limit_train_batches"]
    assert debug_settings({"trainer": {"fast_dev_run": False, "limit_train_batches": 1.0, "overfit_batches": 0.0}}) == []
    assert debug_settings({}) == []


def test_eszsl_runs_differing_only_in_classifier_settings_it_does_not_use_are_one_setting(tmp_path, capsys):
    # ESZSL is closed form: the final classifier's epochs or lr never ran; calibration (on its scores) did
    for name, seed, h, classifier in [("a", 0, 40.0, {"epochs": 25, "lr": 0.001, "calibration": False}),
                                      ("b", 1, 60.0, {"epochs": 5, "lr": 0.1, "calibration": False}),
                                      ("c", 0, 70.0, {"epochs": 25, "lr": 0.001, "calibration": True})]:
        write_run(tmp_path / name, seed=seed, h=h)
        record = json.loads((tmp_path / name / "results.json").read_text())
        record["method"] = "eszsl"
        record["config"]["generator"]["name"] = "eszsl"
        record["config"]["classifier"] = classifier
        (tmp_path / name / "results.json").write_text(json.dumps(record))
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| CUB | eszsl | att | val | 2 | 58.00 ± 0.00 | 38.00 ± 0.00 | 50.00 ± 14.14 | 60.00 ± 0.00 | " \
           "classifier.calibration=false |" in out
    assert "| CUB | eszsl | att | val | 1 | 58.00 | 38.00 | 70.00 | 60.00 | classifier.calibration=true |" in out
