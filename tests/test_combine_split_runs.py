"""scripts/combine_split_runs.py: the `val` selection of a split=val job and a split=test job run apart equals
one run of both splits; runs of different recipes are refused."""

from __future__ import annotations

import json
import runpy
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

    # another recipe (here: another seed) is refused, naming the field
    other = zsl_train(tmp_path / "other", *args, "selections=[paper]", "seed=7")
    assert other.returncode == 0, other.stderr[-2000:]
    assert combine(str(tmp_path / "val" / "run"), str(tmp_path / "other" / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the two runs are not the same recipe: ") and "seed: 0 != 7" in err
    # a run without the split
    assert combine(str(tmp_path / "test" / "run"), str(tmp_path / "test" / "run")) == 2
    assert "splits/val.json: missing" in capsys.readouterr().err
