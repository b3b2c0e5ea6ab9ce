"""``zsl-report``: aggregate ``results.json`` files into mean ± std tables (Markdown and CSV).

    zsl-report outputs/train/multiruns/2026-11-22_10-00-00 [more dirs or results.json files]
        [--md report.md] [--csv report.csv]

Each row is one setting: the mean ± sample standard deviation over its seeds (``n`` says how many, and how
many of them stopped early because their training diverged: their numbers come from the epochs before it).
Rows are grouped by (dataset, method, semantic space, selection) and by the run's setting: its recorded
``config`` less the keys that say where or how a run was written rather than what it computed
(``BOOKKEEPING``: the seed, output and data paths, loggers, resuming, memory tuning, which selections were
reported) and, for ESZSL, the classifier settings it never uses (all but ``classifier.calibration*``), with
the generator epochs actually trained (``protocol.generator_epochs``: a schedule of 300 cut to 30 by the
dataset's cap and 30 asked for are one setting), plus the checksums of its data files (so the
same files at two paths are one setting, other files under one dataset name are not: ``data_sha256``; a
simulated dataset is fixed by its ``dataset.synthetic`` settings instead). Every other key is part of the setting — when in doubt
a key is, since a row split in two is visible and a wrong average is not: runs of ``generator.epochs=1,2``
are two rows, and so are a ``zsl-train`` run and a ``zsl-eval`` of its generator (``task_name`` and the keys
of each command differ). Settings that share (dataset, method, semantics) are labelled with the config keys
that tell them apart (``generator.epochs=1``; ``~key``: a key the setting lacks), in a ``setting`` column.
The same setting with the same seed twice (a run copied or given under two paths, or rerun) would be one
run counted as two seeds: it is refused, naming both files. A ``zsl-eval`` row's seed is zsl-eval's own
(synthesis and final classifier) on one exported generator, named by ``export``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from zsl_gen.cli.common import EARLIER_RUN, check_output_path, exit_on_sigterm, report_user_errors
from zsl_gen.errors import ConfigError, DataError
from zsl_gen.results import flatten

METRICS = ("S", "U", "H", "T1")
KEY_FIELDS = ("dataset", "method", "semantics", "selection")
# the training runs each selection's numbers depend on (zsl-eval's selections use the exported test run)
SPLITS_USED = {"paper": {"test"}, "val": {"val", "test"}, "val_split": {"val"}}
# Top-level config keys that do not change a result's numbers: where the run and its data were (the data
# enter the setting by their checksums), its loggers, resuming (``ckpt_path`` continues the same run),
# which selections it reported (each selection's numbers are the same whatever else was reported), and
# settings that change speed or memory but not the numbers, or only whether a diverged run writes results.
BOOKKEEPING = ("seed", "paths", "data_dir", "logger", "hydra", "ckpt_path", "selections", "on_divergence",
               "keep_freed_memory", "offload_optimizer_state_mb", "allow_slow_bf16")
BOOKKEEPING_LEAVES = ("trainer.log_every_n_steps", "trainer.enable_model_summary",  # what is logged, not run
                      "dataset.data_dir")  # where the files were: they enter by their checksums
# the schedule asked for and the dataset's cap on it: the setting has the epochs trained instead
EPOCH_LEAVES = ("generator.epochs", "dataset.max_generator_epochs")
# the classifier settings ESZSL reads (calibrated stacking on its scores): its runs differing in the others are one
ESZSL_CLASSIFIER_KEYS = ("classifier.calibration", "classifier.calibration_gammas")
MAX_LABEL_KEYS = 6  # a Markdown label names at most this many keys (the CSV names them all)
# the code a result came from: a row pooling seeds run by different code says so (it is not split: a rerun
# after an unrelated commit is the same setting)
CODE_KEYS = ("zsl_gen", "git_commit", "git_dirty", "torch")


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Every ``results.json`` under the given directories (or the files themselves), sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            under = sorted(p for p in path.rglob("results.json") if EARLIER_RUN not in p.parts)
            # a sweep of failed or unfinished jobs is listed (failed_jobs), not refused here
            if not under and not any(path.rglob("error.txt")) and not any(path.rglob(".hydra")):
                raise DataError(f"{path}: no results.json under it (and no failed job's error.txt): give the run or "
                                "multirun directories that zsl-train wrote, or leave this one out")
            found.extend(under)
        else:
            raise DataError(f"{path}: no such file or directory (give run dirs, multirun dirs or results.json files)")
    if not found:
        raise DataError(f"no results.json under {', '.join(map(str, paths))}: point zsl-report at the run or "
                        "multirun directories that zsl-train wrote (outputs/train/...)")
    unique: dict[Path, Path] = {}
    for path in found:  # a run dir and its results.json both given: one run, counted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def setting_of(record: dict[str, Any], path: Path) -> dict[str, str]:
    """The setting a result was computed with: dotted config key -> its value as JSON, less ``BOOKKEEPING``,
    plus ``data_sha256`` (a digest of the dataset's file checksums) where the record has them. A record
    without ``config`` (written by hand) has only the data's key."""
    config = record.get("config", {})
    if not isinstance(config, dict):
        raise DataError(f"{path}: `config` is not a mapping; the file was edited or damaged: rerun the job or "
                        "remove the file")
    setting = {key: json.dumps(value, sort_keys=True)
               for key, value in flatten({k: v for k, v in config.items() if k not in BOOKKEEPING})
               if key not in BOOKKEEPING_LEAVES}
    if record.get("method") == "eszsl":  # closed form, no final classifier: of its settings only calibration counts
        setting = {k: v for k, v in setting.items() if not k.startswith("classifier.") or k in ESZSL_CLASSIFIER_KEYS}
    epochs = (record.get("protocol") or {}).get("generator_epochs")
    if epochs is not None:  # 300 capped to 30 and 30 asked for train the same 30 epochs
        setting = {k: v for k, v in setting.items() if k not in EPOCH_LEAVES}
        setting["generator.epochs"] = json.dumps(epochs)
    dataset = record["dataset"]
    # A simulated dataset is fixed by its dataset.synthetic settings (in the config); its arrays' digest can
    # differ between CPUs (float kernels), which must not split one setting's seeds run on two machines.
    sums = sorted((dataset.get("files") or {}).values())
    if any(sums):  # file paths left out: the same files read from another directory are the same data
        setting["data_sha256"] = json.dumps(hashlib.sha256(json.dumps(sums).encode()).hexdigest()[:12])
    return setting


UNFINISHED = ("no results.json and no error.txt: still running, or stopped without a word (killed: out of memory, "
              "a time limit, a lost node)")


def failed_jobs(paths: Iterable[Path], results: Iterable[Path] = ()) -> list[tuple[Path, str]]:
    """Job directories under the given directories without a ``results.json``: those with an ``error.txt``
    (zsl-train's record of a failed multirun job), with the error's last line, and those a zsl-train or zsl-eval
    job started (its ``.hydra/``) that left neither file (``UNFINISHED``), unless one of ``results`` (the
    ``results.json`` files found) resumed from it."""
    failed: dict[Path, str] = {}
    resumed = resumed_run_dirs(results)
    for path in paths:
        if path.is_dir():
            for error in path.rglob("error.txt"):
                if not (error.parent / "results.json").exists() and EARLIER_RUN not in error.parts:
                    lines = error.read_text(errors="replace").strip().splitlines() or ["(empty error.txt)"]
                    failed[error.parent] = lines[-1]
            for hydra_dir in path.rglob(".hydra"):
                job = hydra_dir.parent
                if hydra_dir.is_dir() and job not in failed and not (job / "results.json").exists() \
                        and job.resolve() not in resumed:
                    failed[job] = logged_error(job) or UNFINISHED
    return sorted(failed.items())


def resumed_run_dirs(results: Iterable[Path]) -> set[Path]:
    """Run directories that the runs of ``results`` resumed from (their ``ckpt_path``): their results are those."""
    found = set()
    for result in results:
        try:
            ckpt = (json.loads(result.read_text()).get("config") or {}).get("ckpt_path")
        except (ValueError, OSError, AttributeError):
            continue
        if isinstance(ckpt, str) and len(Path(ckpt).parents) > 2:
            found.add(Path(ckpt).resolve().parents[2])
    return found


def logged_error(job: Path) -> str | None:
    """The last ``error:`` line a single run wrote to its log (zsl-train, zsl-eval), if any."""
    for log_file in sorted(job.glob("*.log")):
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if "error: " in line]
        if lines:
            return "error: " + lines[-1].split("error: ", 1)[1]
    return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """One row per selection of one results.json (with the file's ``path`` and ``setting``)."""
    try:
        record = json.loads(path.read_text())
        rows = []
        stopped = set(record.get("stopped_early") or {})
        if not isinstance(record["results"], dict):
            raise DataError(f"{path}: not a zsl-train results.json (`results` is not a mapping); remove it or "
                            "pass only zsl-train run directories")
        if not record["results"]:
            raise DataError(f"{path}: `results` holds no selection; rerun the job or remove the file")
        setting = setting_of(record, path)
        simulated = is_simulated(record["dataset"])
        debug = debug_settings(record.get("config") or {})
        warnings = [str(w) for w in record.get("warnings") or []]
        versions = record.get("versions") or {}
        code = " ".join(f"{k}={versions[k]}" for k in CODE_KEYS if versions.get(k) is not None)
        for selection, res in record["results"].items():
            rows.append({"dataset": record["dataset"]["name"], "method": record["method"],
                         "semantics": record["dataset"]["semantic_space"], "selection": selection,
                         "seed": record["seed"], **{m: res["gzsl"][m] for m in "SUH"}, "T1": res["zsl"]["T1"],
                         "optimistic": bool(res.get("optimistic", selection == "paper")),
                         "stopped_early": bool(stopped & SPLITS_USED.get(selection, {"test"})),
                         "path": str(path), "setting": setting, "simulated": simulated,
                         "warnings": warnings, "code": code, "debug": debug})
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


def is_simulated(dataset: dict[str, Any]) -> bool:
    """Whether a result's features were simulated (``zsl-data simulate``'s note, or the embedded simulator under
    another name than ``synthetic``): such numbers are not a benchmark's, whatever the dataset is called."""
    renamed = dataset.get("kind") == "synthetic" and str(dataset.get("name")).lower() != "synthetic"
    return bool(dataset.get("features_note")) or renamed


def debug_settings(config: dict[str, Any]) -> list[str]:
    """The trainer settings of a debug run (``debug=fdr|limit|overfit``) a config has: such a run trains on a
    few batches, and its numbers are a smoke test's."""
    trainer = config.get("trainer") or {}
    found = [key for key in ("fast_dev_run", "overfit_batches") if trainer.get(key) not in (None, False, 0, 0.0)]
    limit = trainer.get("limit_train_batches")
    if limit is not None and limit not in (1, 1.0):
        found.append("limit_train_batches")
    return found


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); NaN for one value, which has no spread to estimate."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _key(setting: dict[str, str]) -> tuple:
    return tuple(sorted(setting.items()))


def setting_labels(settings: list[dict[str, str]]) -> dict[tuple, list[str]]:
    """For the settings of one (dataset, method, semantics): ``key=value`` items that tell each apart from
    the others. Keys all of them have come first; keys only some have (``~key`` where a setting lacks it) only
    where those do not already tell two settings apart. One setting alone: no label."""
    unique = {_key(s): s for s in settings}
    if len(unique) < 2:
        return {key: [] for key in unique}
    shared = set.intersection(*(set(s) for s in unique.values()))
    differ = sorted(k for k in shared if len({s[k] for s in unique.values()}) > 1)
    base = {key: tuple(f"{k}={_show(s[k])}" for k in differ) for key, s in unique.items()}
    labels = {}
    for key, s in unique.items():
        twins = [t for other, t in unique.items() if base[other] == base[key]]
        partial = sorted({k for t in twins for k in t} - shared)
        extra = [k for k in partial if len({t.get(k) for t in twins}) > 1]
        labels[key] = [*base[key], *(f"{k}={_show(s[k])}" if k in s else f"~{k}" for k in extra)]
    return labels


def _show(value: str) -> str:
    """A config value as on the command line: strings bare, the rest as JSON."""
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else json.dumps(loaded, separators=(",", ":"))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by KEY_FIELDS and setting; mean and std of each metric over the seeds, and the seeds seen.
    A seed seen twice in one group is a ``DataError`` naming both files."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    families: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        setting = row.get("setting") or {}
        groups[(*(row[k] for k in KEY_FIELDS), _key(setting))].append(row)
        families[tuple(row[k] for k in KEY_FIELDS[:3])].append(setting)
    labels = {family: setting_labels(settings) for family, settings in families.items()}
    table = []
    for key in groups:
        members = groups[key]
        label = labels[key[:3]][key[4]]
        seen: dict[Any, str] = {}
        for m in members:
            path = m.get("path", "?")
            if m["seed"] in seen:
                what = f"setting {', '.join(label)}" if label else "setting"
                raise DataError(
                    f"{seen[m['seed']]} and {path}: the same {what} with the same seed {m['seed']} (one run given "
                    "twice, copied or rerun, or a combined.json with one of its runs), not two seeds; pass only "
                    "one of them")
            seen[m["seed"]] = path
        entry: dict[str, Any] = dict(zip(KEY_FIELDS, key[:4]))
        entry["setting"] = label
        entry["n"] = len(members)
        entry["seeds"] = sorted({m["seed"] for m in members})
        entry["stopped_early"] = sum(bool(m.get("stopped_early")) for m in members)
        entry["optimistic"] = sum(bool(m.get("optimistic")) for m in members)  # chosen on test
        entry["simulated"] = sum(bool(m.get("simulated")) for m in members)
        entry["warned"] = sum(bool(m.get("warnings")) for m in members)
        entry["debug"] = sum(bool(m.get("debug")) for m in members)
        entry["codes"] = sorted({m["code"] for m in members if m.get("code")})  # (unrecorded: not a version)
        for metric in METRICS:
            entry[metric] = mean_std([float(m[metric]) for m in members])
        table.append(entry)
    table.sort(key=lambda e: (e["dataset"], e["method"], e["semantics"], e["selection"] != "val", e["selection"],
                              e["setting"]))
    return table


def notes_of(entry: dict[str, Any]) -> list[str]:
    """What a reader of a row must know: debug runs (a few batches), simulated features, runs that recorded
    warnings, seeds run by different code."""
    n = entry["n"]

    def share(k: int) -> str:
        return "" if k == n else f" in {k} of {n}"

    notes = []
    if entry.get("debug"):
        notes.append("debug run" + share(entry["debug"]))
    if entry.get("simulated"):
        notes.append("simulated features" + share(entry["simulated"]))
    if entry.get("warned"):
        notes.append("warnings" + share(entry["warned"]))
    if len(entry.get("codes") or []) > 1:
        notes.append(f"{len(entry['codes'])} code versions")
    return notes


def run_warnings(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each warning the results recorded -> the results files that recorded it (each file once)."""
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        for warning in row.get("warnings") or []:
            if row["path"] not in found[warning]:
                found[warning].append(row["path"])
    return dict(found)


def to_markdown(table: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None) -> str:
    """The table in Markdown; a ``setting`` column is added where settings of one method need telling apart,
    a ``notes`` column where a row has notes (``notes_of``). With ``rows``, the warnings they recorded and the
    code versions of rows that pool several are listed below the table."""
    labelled = any(e.get("setting") for e in table)
    noted = any(notes_of(e) for e in table)
    head = ("| dataset | method | semantics | selection | n | S | U | H | T1 |" + (" setting |" if labelled else "")
            + (" notes |" if noted else ""))
    lines = [head, "|" + "---|" * (9 + labelled + noted)]
    for e in table:
        cells = [f"{e[m][0]:.2f}" + (f" ± {e[m][1]:.2f}" if e["n"] > 1 else "") for m in METRICS]
        optimistic = e.get("optimistic", 0)
        label = e["selection"] + (" (optimistic)" if optimistic and optimistic == e["n"] else
                                  f" (optimistic in {optimistic} of {e['n']})" if optimistic else
                                  " (scores on split=val)" if e["selection"] == "val_split" else "")
        n = f"{e['n']}" + (f" ({e['stopped_early']} stopped early)" if e.get("stopped_early") else "")
        items = e.get("setting") or []
        setting = ", ".join(items[:MAX_LABEL_KEYS]) + (f", … (+{len(items) - MAX_LABEL_KEYS} keys: see the CSV)"
                                                        if len(items) > MAX_LABEL_KEYS else "")
        lines.append(f"| {e['dataset']} | {e['method']} | {e['semantics']} | {label} | {n} | "
                     + " | ".join(cells) + " |" + (f" {setting} |" if labelled else "")
                     + (f" {'; '.join(notes_of(e))} |" if noted else ""))
    lines.append("")
    lines.append("mean ± sample standard deviation (n − 1) over the seeds; a single seed has no ±.")
    if any(e.get("simulated") for e in table):
        lines.append("simulated features: not real image features, so not a benchmark's numbers (the runs' "
                     "`dataset.features_note`).")
    for e in table:
        if len(e.get("codes") or []) > 1:
            lines.append(f"{e['dataset']} {e['method']} {e['selection']}: its seeds ran on different code: "
                         + " | ".join(e["codes"]))
    warnings = run_warnings(rows or [])
    if warnings:
        lines.append("")
        lines.append("Warnings the runs recorded (`warnings` in results.json):")
        for warning, paths in warnings.items():
            lines.append(f"- {warning} ({len(paths)} run{'s' if len(paths) > 1 else ''}"
                         + (f": {paths[0]}" if len(paths) == 1 else "") + ")")
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]]) -> str:
    """The table as CSV; ``setting`` (last column) holds the label's ``key=value`` items, ``; ``-separated."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*KEY_FIELDS, "n", "seeds", "stopped_early", "simulated", "warned", "code_versions"]
                    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["setting"])
    for e in table:
        writer.writerow([*(e[k] for k in KEY_FIELDS), e["n"], " ".join(map(str, e["seeds"])), e.get("stopped_early", 0),
                         e.get("simulated", 0), e.get("warned", 0), " | ".join(e.get("codes") or [])]
                        + ["" if math.isnan(v) else f"{v:.4f}" for m in METRICS for v in e[m]]
                        + ["; ".join(e.get("setting") or [])])
    return buf.getvalue()


def _list_failed(failed: list[tuple[Path, str]]) -> None:
    print(f"{len(failed)} job(s) failed or did not finish and are not in the table:", file=sys.stderr)
    for job, last in failed:
        print(f"  {job}: {last}", file=sys.stderr)


@report_user_errors
@exit_on_sigterm
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zsl-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, multirun dirs or results.json files")
    parser.add_argument("--md", type=Path, help="write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="write the CSV table here")
    args = parser.parse_args(argv)
    for flag, target in (("--md", args.md), ("--csv", args.csv)):
        try:
            if target is not None:
                check_output_path(target, flag, directory=False, example=f"table.{flag.lstrip('-')}")
        except ConfigError as err:
            parser.error(str(err))
    try:
        files = find_results(args.paths)
    except DataError:
        failed = failed_jobs(args.paths)
        if failed:  # every job failed or is unfinished: list them, then the one error line
            _list_failed(failed)
            raise DataError(f"no results.json under {', '.join(map(str, args.paths))}: none of its {len(failed)} "
                            "job(s) finished (listed above)") from None
        raise
    failed = failed_jobs(args.paths, files)
    rows = [row for f in files for row in read_rows(f)]
    table = aggregate(rows)
    markdown = to_markdown(table, rows)
    sys.stdout.write(markdown)
    print(f"({len(files)} results.json files)")
    if failed:  # a sweep's failed jobs are not in the table: say so, or a mean over fewer seeds passes unnoticed
        _list_failed(failed)
    from zsl_gen.results import write_text_atomic

    if args.md:
        write_text_atomic(args.md, markdown)
    if args.csv:
        write_text_atomic(args.csv, to_csv(table))


if __name__ == "__main__":
    main()
