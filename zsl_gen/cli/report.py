"""``zsl-report``: aggregate ``results.json`` files into mean ± std tables (Markdown and CSV).

    zsl-report outputs/train/multiruns/2026-11-22_10-00-00 [more dirs or results.json files]
        [--md report.md] [--csv report.csv]

Rows are grouped by (dataset, method, semantic space, selection); each cell is the mean ± sample
standard deviation over the seeds found (``n`` says how many, and how many of them stopped early because
their training diverged: their numbers come from the epochs before it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from zsl_gen.cli.common import report_user_errors
from zsl_gen.errors import DataError

METRICS = ("S", "U", "H", "T1")
KEY_FIELDS = ("dataset", "method", "semantics", "selection")
# the training runs each selection's numbers depend on (zsl-eval's selections use the exported test run)
SPLITS_USED = {"paper": {"test"}, "val": {"val", "test"}, "val_split": {"val"}}


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Every ``results.json`` under the given directories (or the files themselves), sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise DataError(f"{path}: no such file or directory (give run dirs, multirun dirs or results.json files)")
    if not found:
        raise DataError(f"no results.json under {', '.join(map(str, paths))}: point zsl-report at the run or "
                        "multirun directories that zsl-train wrote (outputs/train/...)")
    unique: dict[Path, Path] = {}
    for path in found:  # a run dir and its results.json both given: one run, counted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """One row per selection of one results.json."""
    try:
        record = json.loads(path.read_text())
        rows = []
        stopped = set(record.get("stopped_early") or {})
        if not isinstance(record["results"], dict):
            raise DataError(f"{path}: not a zsl-train results.json (`results` is not a mapping); remove it or "
                            "pass only zsl-train run directories")
        if not record["results"]:
            raise DataError(f"{path}: `results` holds no selection; rerun the job or remove the file")
        for selection, res in record["results"].items():
            rows.append({"dataset": record["dataset"]["name"], "method": record["method"],
                         "semantics": record["dataset"]["semantic_space"], "selection": selection,
                         "seed": record["seed"], **{m: res["gzsl"][m] for m in "SUH"}, "T1": res["zsl"]["T1"],
                         "optimistic": bool(res.get("optimistic", selection == "paper")),
                         "stopped_early": bool(stopped & SPLITS_USED.get(selection, {"test"}))})
            for field in (*METRICS, "seed"):
                value = rows[-1][field]
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    0 <= value <= 100 if field in METRICS else value >= 0 and float(value).is_integer())
                if not ok:
                    where = f"results.{selection}.{'zsl' if field == 'T1' else 'gzsl'}.{field}"
                    raise DataError(f"{path}: `{'seed' if field == 'seed' else where}` is {value!r}, not "
                                    f"{'a non-negative integer' if field == 'seed' else 'a percentage in [0, 100]'}; "
                                    "the file was edited or damaged: rerun the job or remove the file")
        return rows
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); the run may have been interrupted — rerun it or "
                        "remove the file") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a zsl-train results.json (missing field {err}); remove it or pass "
                        "only zsl-train run directories") from None


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by KEY_FIELDS; mean and std of each metric and the seeds seen."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in KEY_FIELDS)].append(row)
    table = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] != "val", k[3])):
        members = groups[key]
        entry: dict[str, Any] = dict(zip(KEY_FIELDS, key))
        entry["n"] = len(members)
        entry["seeds"] = sorted({m["seed"] for m in members})
        entry["stopped_early"] = sum(bool(m.get("stopped_early")) for m in members)
        entry["optimistic"] = sum(bool(m.get("optimistic")) for m in members)  # chosen on test
        for metric in METRICS:
            entry[metric] = mean_std([float(m[metric]) for m in members])
        table.append(entry)
    return table


def to_markdown(table: list[dict[str, Any]]) -> str:
    head = "| dataset | method | semantics | selection | n | S | U | H | T1 |"
    lines = [head, "|" + "---|" * 9]
    for e in table:
        cells = [f"{e[m][0]:.2f} ± {e[m][1]:.2f}" for m in METRICS]
        optimistic = e.get("optimistic", 0)
        label = e["selection"] + (" (optimistic)" if optimistic and optimistic == e["n"] else
                                  f" (optimistic in {optimistic} of {e['n']})" if optimistic else
                                  " (scores on split=val)" if e["selection"] == "val_split" else "")
        n = f"{e['n']}" + (f" ({e['stopped_early']} stopped early)" if e.get("stopped_early") else "")
        lines.append(f"| {e['dataset']} | {e['method']} | {e['semantics']} | {label} | {n} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*KEY_FIELDS, "n", "seeds", "stopped_early"]
                    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for e in table:
        writer.writerow([*(e[k] for k in KEY_FIELDS), e["n"], " ".join(map(str, e["seeds"])), e.get("stopped_early", 0)]
                        + [f"{v:.4f}" for m in METRICS for v in e[m]])
    return buf.getvalue()


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zsl-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, multirun dirs or results.json files")
    parser.add_argument("--md", type=Path, help="write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="write the CSV table here")
    args = parser.parse_args(argv)
    for flag, target in (("--md", args.md), ("--csv", args.csv)):
        if target is not None and target.is_dir():
            parser.error(f"{flag} {target}: is a directory; give a file path, e.g. {target / 'report.md'}")
    files = find_results(args.paths)
    table = aggregate([row for f in files for row in read_rows(f)])
    markdown = to_markdown(table)
    sys.stdout.write(markdown)
    print(f"({len(files)} results.json files)")
    from zsl_gen.results import write_text_atomic

    if args.md:
        write_text_atomic(args.md, markdown)
    if args.csv:
        write_text_atomic(args.csv, to_csv(table))


if __name__ == "__main__":
    main()
