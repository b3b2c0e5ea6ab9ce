"""The `paper`, `val` and `val_split` selections on hand-built curves."""

import json

import numpy as np
import pytest

from zsl_gen.errors import ConfigError
from zsl_gen.eval.types import EvalCurves
from zsl_gen.eval.selection import CurveStack, select
from zsl_gen.results import write_json_atomic


def curves(h_rows, t1_rows):
    h = np.asarray(h_rows, dtype=float)[:, None]
    return EvalCurves(S=h + 0.1, U=h - 0.1, H=h, T1=np.asarray(t1_rows, dtype=float)[:, None])


def test_paper_takes_best_on_test_and_val_reads_test_at_val_choice():
    # test run: the best H is at epoch 2, classifier epoch 3; val run prefers epoch 1, classifier epoch 2.
    test = CurveStack.from_records([(1, curves([0.1, 0.3, 0.2], [0.5, 0.4, 0.3])),
                                    (2, curves([0.2, 0.1, 0.6], [0.2, 0.9, 0.1]))])
    val = CurveStack.from_records([(1, curves([0.0, 0.8, 0.1], [0.1, 0.1, 0.7])),
                                   (2, curves([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]))])
    out = select({"test": test, "val": val}, ["paper", "val"])
    assert out["paper"]["gzsl"]["H"] == 60.0 and out["paper"]["zsl"]["T1"] == 90.0
    assert out["paper"]["gzsl_chosen"] == {"epoch": 2, "classifier": "classifier epoch 3", "gamma": 0.0}
    assert out["paper"]["optimistic"] is True
    assert out["val"]["gzsl"] == {"S": 40.0, "U": 20.0, "H": 30.0}  # test at (epoch 1, row 2)
    assert out["val"]["zsl"]["T1"] == 30.0  # test T1 at val's best T1 (epoch 1, row 3)
    assert out["val"]["val_scores"]["H"] == 80.0 and out["val"]["optimistic"] is False


def test_paper_last_reads_the_last_classifier_epoch_of_the_last_generator_epoch():
    # CADA-VAE's protocol: nothing chosen on test, even where an earlier epoch scored higher
    test = CurveStack.from_records([(10, curves([0.1, 0.9, 0.2], [0.5, 0.95, 0.3])),
                                    (20, curves([0.2, 0.7, 0.4], [0.2, 0.9, 0.6]))])
    val = CurveStack.from_records([(10, curves([0.0, 0.8, 0.1], [0.1, 0.1, 0.7])),
                                   (20, curves([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]))])
    out = select({"test": test, "val": val}, ["paper", "val"], paper="last")
    paper = out["paper"]
    assert paper["gzsl"] == {"S": 50.0, "U": 30.0, "H": 40.0} and paper["zsl"]["T1"] == 60.0
    assert paper["gzsl_chosen"] == paper["zsl_chosen"] == {"epoch": 20, "classifier": "classifier epoch 3",
                                                            "gamma": 0.0}
    assert paper["chosen_on"] == "fixed" and paper["optimistic"] is False and paper["rule"] == "last"
    assert out["val"]["gzsl"]["H"] == 90.0  # `val` is unchanged: chosen on split=val
    assert select({"test": test}, ["paper"])["paper"]["gzsl"]["H"] == 90.0  # the default stays `best`
    with pytest.raises(ConfigError, match="paper_selection"):
        select({"test": test}, ["paper"], paper="final")


def test_paper_best_at_last_epoch_chooses_among_the_last_generator_epochs_classifier_epochs_only():
    # f-CLSWGAN's protocol: an earlier generator epoch's higher H (0.9) and T1 (0.95) are not reachable
    test = CurveStack.from_records([(10, curves([0.1, 0.9, 0.2], [0.5, 0.95, 0.3])),
                                    (20, curves([0.2, 0.7, 0.4], [0.2, 0.8, 0.6]))])
    paper = select({"test": test}, ["paper"], paper="best_at_last_epoch")["paper"]
    assert paper["gzsl"] == {"S": 80.0, "U": 60.0, "H": 70.0} and paper["zsl"]["T1"] == 80.0
    assert paper["gzsl_chosen"] == paper["zsl_chosen"] == {"epoch": 20, "classifier": "classifier epoch 2",
                                                            "gamma": 0.0}
    assert paper["chosen_on"] == "test" and paper["optimistic"] is True and paper["rule"] == "best_at_last_epoch"
    # the last generator epoch's own argmax, not the first's (classifier epoch 3 here, where epoch 10 peaks at 1)
    moved = CurveStack.from_records([(10, curves([0.9, 0.1, 0.2], [0.9, 0.1, 0.2])),
                                     (20, curves([0.2, 0.3, 0.7], [0.2, 0.3, 0.6]))])
    assert moved.best_at_last_epoch("H") == (1, 2, 0)
    paper = select({"test": moved}, ["paper"], paper="best_at_last_epoch")["paper"]
    assert paper["gzsl"]["H"] == 70.0 and paper["zsl"]["T1"] == 60.0
    # over γ too, and NaN never wins; ties go to the earliest classifier epoch
    h = np.array([[0.3, np.nan], [0.3, 0.5]])  # 2 classifier epochs x gammas (0.0, 0.5)
    stack = CurveStack.from_records([(1, EvalCurves(S=h * 0 + 0.9, U=h, H=h * 2, T1=h, gammas=(0.0, 0.5))),
                                     (2, EvalCurves(S=h, U=h, H=h, T1=h, gammas=(0.0, 0.5)))])
    assert stack.best_at_last_epoch("H") == (1, 1, 1) and stack.best("H") == (0, 1, 1)
    flat = CurveStack.from_records([(1, curves([0.4, 0.4], [0.1, 0.1]))])
    assert flat.best_at_last_epoch("H") == (0, 0, 0)


def test_paper_last_reads_gamma_zero_among_calibration_values():
    h = np.array([[0.1, 0.3], [0.2, 0.4]])  # 2 classifier epochs x gammas (0.5, 0.0)
    stack = CurveStack.from_records([(5, EvalCurves(S=h, U=h, H=h, T1=h, gammas=(0.5, 0.0)))])
    out = select({"test": stack}, ["paper"], paper="last")
    assert out["paper"]["gzsl"]["H"] == 40.0 and out["paper"]["gzsl_chosen"]["gamma"] == 0.0


def test_val_split_reports_the_val_run_alone_and_needs_no_test_run():
    val = CurveStack.from_records([(1, curves([0.0, 0.8, 0.1], [0.1, 0.1, 0.7])),
                                   (2, curves([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]))])
    out = select({"val": val}, ["val_split"])  # no "test" stack at all
    assert set(out) == {"val_split"}
    chosen = out["val_split"]
    assert chosen["gzsl"] == {"S": 90.0, "U": 70.0, "H": 80.0} and chosen["zsl"]["T1"] == 70.0
    assert chosen["gzsl_chosen"] == {"epoch": 1, "classifier": "classifier epoch 2", "gamma": 0.0}
    assert chosen["evaluated_on"] == "val" and chosen["optimistic"] is False
    # next to `val`, the two agree on the validation H (the number a sweeper optimises)
    test = CurveStack.from_records([(1, curves([0.1, 0.3, 0.2], [0.5, 0.4, 0.3])),
                                    (2, curves([0.2, 0.1, 0.6], [0.2, 0.9, 0.1]))])
    both = select({"test": test, "val": val}, ["val", "val_split"])
    assert both["val"]["val_scores"]["H"] == both["val_split"]["gzsl"]["H"] == 80.0


def test_ties_pick_the_earliest_and_nan_never_wins():
    stack = CurveStack.from_records([(1, curves([np.nan, 0.5], [0.1, 0.1])), (2, curves([0.5, 0.5], [0.1, 0.1]))])
    assert stack.best("H") == (0, 1, 0)


def test_paper_only_needs_no_val_run():
    test = CurveStack.from_records([(1, curves([0.2], [0.3]))])
    assert set(select({"test": test}, ["paper"])) == {"paper"}


def test_json_written_atomically_and_nan_refused(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
