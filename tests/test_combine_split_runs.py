"""scripts/combine_split_runs.py: the `val` selection of a split=val job and a split=test job run apart equals
one run of both splits, in a results.json zsl-report reads; runs of different recipes are refused."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
from cli_helpers import TINY, zsl_train

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "combine_split_runs.py"


def combine(*argv: str) -> int:
    old = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = old
    return exit_.value.code


def test_two_split_jobs_combine_to_the_numbers_of_one_run(tmp_path, capsys):
    args = (*TINY, "logger=none", "generator.epochs=3")
    for name, selections in (("both", "[paper,val]"), ("val", "[val_split]"), ("test", "[paper]")):
        proc = zsl_train(tmp_path / name, *args, f"selections={selections}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    capsys.readouterr()
    out = tmp_path / "combined.json"
    assert combine(str(tmp_path / "val" / "run"), str(tmp_path / "test" / "run"), "--out", str(out)) == 0
    one_run = json.loads((tmp_path / "both" / "run" / "results.json").read_text())["results"]
    combined = json.loads(out.read_text())["results"]
    assert combined["val"] == one_run["val"] and combined["paper"] == one_run["paper"]
    printed = capsys.readouterr().out
    assert f"H {one_run['val']['gzsl']['H']:6.2f}" in printed

    # the combined record is a results.json of that one run: what every result file records
    record = json.loads(out.read_text())
    both = json.loads((tmp_path / "both" / "run" / "results.json").read_text())
    for field in ("method", "seed", "dataset"):
        assert record[field] == both[field], field
    assert record["dataset"]["arrays_sha256"] == both["dataset"]["arrays_sha256"]
    assert record["protocol"] == both["protocol"] and record["stopped_early"] == both["stopped_early"] == {}
    bookkeeping = ("paths", "logger")
    assert ({k: v for k, v in record["config"].items() if k not in bookkeeping}
            == {k: v for k, v in both["config"].items() if k not in bookkeeping})
    assert record["versions"]["zsl_gen"] == both["versions"]["zsl_gen"]
    assert record["runs"]["val"]["path"] == str(tmp_path / "val" / "run") and "versions" in record["runs"]["test"]
    # zsl-report reads it, with the numbers of the one run; beside that run it is the same seed of the same
    # setting, refused rather than counted twice
    from zsl_gen.cli.report import main as report

    report([str(out), "--csv", str(tmp_path / "r.csv")])
    rows = {r["selection"]: r for r in csv.DictReader((tmp_path / "r.csv").open())}
    assert set(rows) == {"paper", "val"} and rows["val"]["n"] == "1" and rows["val"]["seeds"] == "0"
    assert float(rows["val"]["H_mean"]) == pytest.approx(one_run["val"]["gzsl"]["H"], abs=1e-4)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        report([str(out), str(tmp_path / "both" / "run")])
    assert "the same setting with the same seed 0" in capsys.readouterr().err

    # another recipe (here: another seed, as a seed=7 job's record would say it) is refused, naming the field
    shutil.copytree(tmp_path / "test" / "run", tmp_path / "other" / "run")
    results = tmp_path / "other" / "run" / "results.json"
    edited = json.loads(results.read_text())
    edited["seed"] = edited["config"]["seed"] = 7
    results.write_text(json.dumps(edited))
    assert combine(str(tmp_path / "val" / "run"), str(tmp_path / "other" / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the two runs are not the same recipe: ") and "seed: 0 != 7" in err
    # a run without the split
    assert combine(str(tmp_path / "test" / "run"), str(tmp_path / "test" / "run")) == 2
    assert "splits/val.json: missing" in capsys.readouterr().err

    # runs on other data (the same config) are refused, naming the checksum; a run without results.json too
    shutil.copytree(tmp_path / "val" / "run", tmp_path / "val_other_data")
    results = tmp_path / "val_other_data" / "results.json"
    edited = json.loads(results.read_text())
    edited["dataset"]["arrays_sha256"] = "0" * 64
    results.write_text(json.dumps(edited))
    assert combine(str(tmp_path / "val_other_data"), str(tmp_path / "test" / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the two runs are not the same recipe: dataset.arrays_sha256: '000") and (
        len(err.strip().splitlines()) == 1)
    # runs by other code: combined, with a warning in the record that zsl-report shows
    assert not any("different code" in w for w in record["warnings"])
    edited = json.loads((tmp_path / "val" / "run" / "results.json").read_text())
    edited["versions"]["torch"] = "2.0.0"
    results.write_text(json.dumps(edited))
    assert combine(str(tmp_path / "val_other_data"), str(tmp_path / "test" / "run"), "--out", str(out)) == 0
    warned = [w for w in json.loads(out.read_text())["warnings"] if "different code" in w]
    assert len(warned) == 1 and f"torch: '2.0.0' != '{both['versions']['torch']}'" in warned[0]
    results.unlink()
    assert combine(str(tmp_path / "val_other_data"), str(tmp_path / "test" / "run")) == 2
    assert "val_other_data/results.json: missing" in capsys.readouterr().err


def test_an_out_path_that_cannot_be_a_file_is_one_error_line_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    # the runs do not exist: --out is checked first
    for out, message in ((tmp_path, f"--out {tmp_path}: is a directory; give a file path"),
                         (tmp_path / "a_file" / "sub" / "c.json", f"{tmp_path / 'a_file'} is a file, not a directory")):
        assert combine(str(tmp_path / "nowhere_val"), str(tmp_path / "nowhere_test"), "--out", str(out)) == 2
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err


def test_damaged_run_files_are_one_error_line_naming_the_file(tmp_path, capsys):
    for name, selections in (("val", "[val_split]"), ("test", "[paper]")):
        proc = zsl_train(tmp_path / name, *TINY, "logger=none", f"selections={selections}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    capsys.readouterr()
    val, test = tmp_path / "val" / "run", tmp_path / "test" / "run"
    splits = val / "splits" / "val.json"
    good = splits.read_text()
    for damaged, fragment in (("{truncated", "not a split record zsl-train wrote (JSONDecodeError"),
                              (json.dumps({"warnings": []}), "not a split record zsl-train wrote (KeyError")):
        splits.write_text(damaged)
        assert combine(str(val), str(test)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {splits}: ") and fragment in err and len(err.strip().splitlines()) == 1, err
    splits.write_text(good)
    config = test / ".hydra" / "config.yaml"
    config.write_text("seed: [unclosed\n")
    assert combine(str(val), str(test)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: not a readable config") and len(err.strip().splitlines()) == 1, err
