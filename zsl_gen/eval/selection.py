"""Selecting the reported numbers from per-epoch curves: the `paper`, `val` and `val_split` selections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zsl_gen.errors import ConfigError
from zsl_gen.eval.types import EvalCurves

METRICS = ("S", "U", "H", "T1")
# how the `paper` selection reads the test curves, as each method's paper reports: `best` (tf-VAEGAN, FREE,
# and the re-implementations of f-VAEGAN built on tf-VAEGAN's code: the best H over every evaluated generator
# and classifier epoch, measured on test), `best_at_last_epoch` (f-CLSWGAN: after training, its code prints
# the best H over the final classifier's epochs, measured on test; no choice among generator epochs) or
# `last` (CADA-VAE: its classifier epochs are fixed in advance, the last one of the last generator epoch)
PAPER_SELECTIONS = ("best", "best_at_last_epoch", "last")


@dataclass
class CurveStack:
    """The curves of one training run, stacked: each metric ``(n_evals, E, G)`` over evaluated generator
    ``epochs`` (length n_evals) × classifier rows ``E`` × calibration values ``G``."""

    epochs: list[int]
    metrics: dict[str, np.ndarray]
    row_labels: list[str]
    gammas: tuple[float, ...]

    @classmethod
    def from_records(cls, records: list[tuple[int, EvalCurves]]) -> "CurveStack":
        if not records:
            raise ValueError("no evaluation was recorded")
        first = records[0][1]
        rows = first.row_labels or [f"classifier epoch {i + 1}" for i in range(first.S.shape[0])]
        return cls(epochs=[e for e, _ in records],
                   metrics={m: np.stack([getattr(c, m) for _, c in records]) for m in METRICS},
                   row_labels=rows, gammas=tuple(first.gammas))

    def best(self, metric: str) -> tuple[int, int, int]:
        """Index of the maximum of ``metric`` (the earliest on ties; NaN never wins)."""
        values = np.nan_to_num(self.metrics[metric], nan=-1.0)
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(values)), values.shape))  # type: ignore

    def best_at_last_epoch(self, metric: str) -> tuple[int, int, int]:
        """Index of the maximum of ``metric`` over the classifier epochs and γ of the last evaluated generator
        epoch (the earliest on ties; NaN never wins)."""
        values = np.nan_to_num(self.metrics[metric][-1], nan=-1.0)
        row, gamma = np.unravel_index(int(np.argmax(values)), values.shape)
        return len(self.epochs) - 1, int(row), int(gamma)

    def last(self) -> tuple[int, int, int]:
        """Index of the last classifier epoch of the last evaluated generator epoch, at γ = 0 where 0 is
        among the calibration values (no calibration, as published), else at the first γ."""
        gamma = self.gammas.index(0.0) if 0.0 in self.gammas else 0
        return len(self.epochs) - 1, len(self.row_labels) - 1, gamma

    def at(self, index: tuple[int, int, int]) -> dict[str, float]:
        return {m: round(float(self.metrics[m][index]) * 100, 2) for m in METRICS}

    def describe(self, index: tuple[int, int, int]) -> dict[str, Any]:
        e, r, g = index
        return {"epoch": self.epochs[e], "classifier": self.row_labels[r], "gamma": self.gammas[g]}

    def as_dict(self, percent: bool = True) -> dict[str, Any]:
        """JSON-able curves: percent rounded to 3 decimals (for reading), or exact fractions."""
        values = {m: (np.round(v * 100, 3) if percent else v).tolist() for m, v in self.metrics.items()}
        return {"epochs": self.epochs, "rows": self.row_labels, "gammas": list(self.gammas),
                "unit": "percent" if percent else "fraction", **values}

    def head(self, n: int) -> "CurveStack":
        """The first ``n`` evaluated epochs."""
        return CurveStack(epochs=self.epochs[:n], metrics={m: v[:n] for m, v in self.metrics.items()},
                          row_labels=self.row_labels, gammas=self.gammas)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CurveStack":
        scale = 100.0 if d.get("unit", "percent") == "percent" else 1.0
        return cls(epochs=list(d["epochs"]), row_labels=list(d["rows"]), gammas=tuple(d["gammas"]),
                   metrics={m: np.asarray(d[m], dtype=float) / scale for m in METRICS})


def select(stacks: dict[str, CurveStack], selections: list[str],
           stopped: frozenset[str] | set[str] = frozenset(), paper: str = "best") -> dict[str, Any]:
    """The reported numbers of each selection.

    ``paper`` with ``paper="best"``: the best H (and, separately, the best T1) over every generator epoch,
    classifier epoch and γ, measured on test — the published practice of tf-VAEGAN and FREE, optimistic.
    With ``paper="best_at_last_epoch"``: the same over the classifier epochs and γ of the last evaluated
    generator epoch only (f-CLSWGAN's practice), optimistic too. With ``paper="last"``: the last classifier epoch of the last evaluated generator
    epoch (CADA-VAE's practice: its classifier epochs were fixed on validation), nothing chosen on test. ``val``: the (epoch, classifier epoch, γ)
    with the best H (T1) on split=val, then the test run read once at that index. Both runs evaluate on
    the same schedule, so indices line up; where one run stopped early (its split in ``stopped``: training
    diverged), the choice is among the epochs both runs evaluated. ``val_split``: the val run alone, its best H (T1) and the scores
    there, all on split=val — no test number at all (what a hyper-parameter search optimises; the test
    split is then not even run).
    """
    out: dict[str, Any] = {}
    if "val_split" in selections:
        val = stacks["val"]
        h_idx, t_idx = val.best("H"), val.best("T1")
        at_h = val.at(h_idx)
        out["val_split"] = {"gzsl": {k: at_h[k] for k in ("S", "U", "H")}, "zsl": {"T1": val.at(t_idx)["T1"]},
                            "chosen_on": "val", "evaluated_on": "val", "optimistic": False,
                            "gzsl_chosen": val.describe(h_idx), "zsl_chosen": val.describe(t_idx)}
    if not {"paper", "val"} & set(selections):
        return out
    test = stacks["test"]
    if paper not in PAPER_SELECTIONS:
        raise ConfigError(f"config field `paper_selection` must be one of {list(PAPER_SELECTIONS)}, got {paper!r}")
    if "paper" in selections:
        best = paper != "last"
        pick = {"best": test.best, "best_at_last_epoch": test.best_at_last_epoch,
                "last": lambda metric: test.last()}[paper]
        h_idx, t_idx = pick("H"), pick("T1")
        at_h = test.at(h_idx)
        out["paper"] = {"gzsl": {k: at_h[k] for k in ("S", "U", "H")}, "zsl": {"T1": test.at(t_idx)["T1"]},
                        "chosen_on": "test" if best else "fixed", "optimistic": best, "rule": paper,
                        "gzsl_chosen": test.describe(h_idx), "zsl_chosen": test.describe(t_idx)}
    if "val" in selections:
        val = stacks["val"]
        shorter = "val" if len(val.epochs) < len(test.epochs) else "test"
        common = min(len(val.epochs), len(test.epochs))
        if val.epochs[:common] != test.epochs[:common] or (
                len(val.epochs) != len(test.epochs) and shorter not in stopped):
            raise ConfigError(f"the val and test runs were evaluated at different epochs (val: {val.epochs}, "
                              f"test: {test.epochs}): the `val` selection needs one schedule (the same "
                              "eval_every and generator.epochs for both; resume with the run's own settings)")
        val = val.head(common)
        h_idx, t_idx = val.best("H"), val.best("T1")
        at_h = test.at(h_idx)
        out["val"] = {"gzsl": {k: at_h[k] for k in ("S", "U", "H")}, "zsl": {"T1": test.at(t_idx)["T1"]},
                      "chosen_on": "val", "optimistic": False,
                      "gzsl_chosen": val.describe(h_idx), "zsl_chosen": val.describe(t_idx),
                      "val_scores": {**{k: val.at(h_idx)[k] for k in ("S", "U", "H")},
                                     "T1": val.at(t_idx)["T1"]}}
        if len(val.epochs) < len(stacks["val"].epochs):
            out["val"]["epochs_considered"] = val.epochs[-1]  # up to here: the test run stopped there
    return out
