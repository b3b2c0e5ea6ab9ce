"""The `val` selection of two runs trained as separate jobs: one with `selections=[val_split]` (split=val) and
one with `selections=[paper]` (split=test), e.g. run side by side on two cores or two cluster nodes.

Both must be the same recipe on the same schedule (generator.epochs, eval_every): the `val` selection
chooses the (epoch, classifier epoch, γ) on split=val and reads the test run once there, exactly as one
`zsl-train selections=[paper,val]` run does (same function, `zsl_gen.eval.selection.select`). Runs whose
configs, method, seed, dataset (name, semantic space, file checksums) or protocol differ are refused.

The combined record (``--out``) is a results.json of that one run, which ``zsl-report`` reads like any other:
method, seed, dataset with its checksums, protocol, results, ``stopped_early``, the test run's config with
``selections=[paper, val]``, the versions of the code that made the selection, and each run's path and
versions (``runs``).

Usage: python scripts/combine_split_runs.py <val run dir> <test run dir> [--out combined.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from zsl_gen.cli.report import CODE_KEYS  # the versions a run's numbers came from
from zsl_gen.errors import ZSLGenError
from zsl_gen.eval.selection import CurveStack, select
from zsl_gen.results import flatten, utc_now, versions, write_json_atomic

# the fields of a run's results.json that the combined record is made of
RECORD_FIELDS = ("method", "seed", "dataset", "protocol", "config", "versions")


def split_record(run: Path, split: str) -> dict:
    path = run / "splits" / f"{split}.json"
    if not path.is_file():
        raise ZSLGenError(f"{path}: missing; {run} is not a finished zsl-train run with split={split} "
                          f"(selections={'[val_split]' if split == 'val' else '[paper]'})")
    try:
        record = json.loads(path.read_text())
        CurveStack.from_dict(record)  # every field the selection reads
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ZSLGenError(f"{path}: not a split record zsl-train wrote ({type(err).__name__}: {err}); the file was "
                          "damaged or edited: rerun that job") from None
    return record


def run_record(run: Path) -> dict:
    """A run's ``results.json``, with the fields the combined record takes from it."""
    path = run / "results.json"
    if not path.is_file():
        raise ZSLGenError(f"{path}: missing; {run} is not a finished zsl-train run (rerun it to the end)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZSLGenError(f"{path}: not valid JSON ({err}); rerun that job") from None
    missing = [field for field in RECORD_FIELDS if not isinstance(record, dict) or field not in record]
    if missing:
        raise ZSLGenError(f"{path}: no {', '.join(missing)}; not a zsl-train results.json (give zsl-train run "
                          "directories)")
    return record


# what may differ between the two jobs: which split they ran, where, and how they were resumed or logged
IGNORED = ("selections", "ckpt_path", "logger", "paths", "hydra", "data_dir")  # data: compared by checksums


def config_differences(val_run: Path, test_run: Path) -> list[str]:
    """``key: a != b`` for every config value (dotted keys) both runs' ``.hydra/config.yaml`` have and that
    differs between them."""

    flat = []
    for run in (val_run, test_run):
        path = run / ".hydra" / "config.yaml"
        if not path.is_file():
            raise ZSLGenError(f"{path}: missing; give zsl-train run directories")
        try:
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception as err:  # yaml's and OmegaConf's parse errors: not one class
            raise ZSLGenError(f"{path}: not a readable config ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0]}); the file was damaged: rerun that job") from None
        if not isinstance(config, dict):
            raise ZSLGenError(f"{path}: not a config mapping; the file was damaged: rerun that job")
        flat.append(dict(flatten({k: v for k, v in config.items() if k not in IGNORED})))
    # a key only one run has comes from a newer zsl-gen version (its default applied to the older run)
    keys = sorted(set(flat[0]) & set(flat[1]))
    return [f"{k}: {flat[0][k]!r} != {flat[1][k]!r}" for k in keys if flat[0][k] != flat[1][k]]


def record_differences(val: dict, test: dict) -> list[str]:
    """``field: a != b`` where the two results.json disagree on method, seed, dataset or protocol (apart from
    the split each ran). Data files are compared by their checksums: the same files may sit at other paths."""

    def comparable(record: dict) -> dict:
        dataset = {**record["dataset"], "files": sorted((record["dataset"].get("files") or {}).values())}
        protocol = {k: v for k, v in record["protocol"].items() if k not in ("selections", "splits_run")}
        return dict(flatten({"method": record["method"], "seed": record["seed"], "dataset": dataset,
                              "protocol": protocol}))

    a, b = comparable(val), comparable(test)
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def code_differences(val: dict, test: dict) -> list[str]:
    """A warning when the two jobs ran on different code (a fix or an upgrade between them): the combined
    numbers then mix two versions, which zsl-report's notes show; an empty list otherwise."""
    codes = [{k: (record.get("versions") or {}).get(k) for k in CODE_KEYS} for record in (val, test)]
    differ = [f"{k}: {codes[0][k]!r} != {codes[1][k]!r}" for k in CODE_KEYS  # (unrecorded: nothing to compare)
              if codes[0][k] is not None and codes[1][k] is not None and codes[0][k] != codes[1][k]]
    if not differ:
        return []
    return [f"the val and test runs ran on different code ({'; '.join(differ)}): the val selection reads one "
            "version's curves to choose another's epoch"]


def combined_record(val_run: Path, test_run: Path, runs: dict, splits: dict, stopped: set, results: dict) -> dict:
    """The results.json of the one run the two jobs make (see the module docstring) from each split's
    results.json (``runs``) and ``splits/<split>.json`` (``splits``)."""
    val, test = runs["val"], runs["test"]
    return {
        "created": utc_now(), "method": test["method"], "seed": test["seed"], "dataset": test["dataset"],
        "protocol": {**test["protocol"], "selections": ["paper", "val"], "splits_run": ["val", "test"]},
        "results": results,
        "warnings": [*val.get("warnings", []), *test.get("warnings", []), *code_differences(val, test)],
        "stopped_early": {split: splits[split]["stopped"] for split in sorted(stopped)},
        "generator_export": test.get("generator_export"), "device": test.get("device"),
        "config": {**test["config"], "selections": ["paper", "val"]},
        "versions": versions(),  # the code that made the selection; each run's own below
        "runs": {split: {"path": str(run), "created": runs[split].get("created"),
                         "versions": runs[split]["versions"]} for split, run in (("val", val_run), ("test", test_run))},
        "val_run": str(val_run), "test_run": str(test_run), "stopped": sorted(stopped),
    }


def out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot be written (a directory, or below a file), or None."""
    if out.is_dir():
        return f"--out {out}: is a directory; give a file path, e.g. {out / 'combined.json'}"
    for parent in out.parents:
        if parent.exists():
            return None if parent.is_dir() else (f"--out {out}: {parent} is a file, not a directory; give a "
                                                 "path in a directory")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("val_run", type=Path)
    p.add_argument("test_run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write the combined results.json here (JSON)")
    args = p.parse_args(argv)
    try:
        if args.out is not None and (problem := out_problem(args.out)):
            raise ZSLGenError(problem)
        records = {"val": split_record(args.val_run, "val"), "test": split_record(args.test_run, "test")}
        runs = {"val": run_record(args.val_run), "test": run_record(args.test_run)}
        differ = config_differences(args.val_run, args.test_run)
        differ += [d for d in record_differences(runs["val"], runs["test"]) if d not in differ]
        if differ:
            raise ZSLGenError(f"the two runs are not the same recipe: {'; '.join(differ[:6])}"
                              f"{' …' if len(differ) > 6 else ''}")
        stopped = {split for split, record in records.items() if record.get("stopped")}
        stacks = {split: CurveStack.from_dict(record) for split, record in records.items()}
        paper = OmegaConf.load(args.test_run / ".hydra" / "config.yaml").get("paper_selection", "best")
        results = select(stacks, ["paper", "val"], stopped=stopped, paper=paper)
        out = combined_record(args.val_run, args.test_run, runs, records, stopped, results)
        for name, r in results.items():
            g, chosen = r["gzsl"], r["gzsl_chosen"]
            print(f"{name:6s} S {g['S']:6.2f}  U {g['U']:6.2f}  H {g['H']:6.2f}  T1 {r['zsl']['T1']:6.2f}   "
                  f"epoch {chosen['epoch']} (chosen on {r['chosen_on']})")
        if args.out:
            try:
                write_json_atomic(args.out, out)
            except OSError as err:
                raise ZSLGenError(f"--out {args.out}: cannot write it ({err.strerror or err}); choose another "
                                  "path") from None
    except (ZSLGenError, OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
