"""The results.json record: versions, atomic writes, and the printed summary."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

def versions() -> dict[str, Any]:
    """The software and the compute a result came from. ``torch_threads`` and ``cpu`` belong here because
    bf16 matrix products round differently with another thread count (oneDNN's blocking), so a bf16 run
    replays bit for bit only on the same thread count (fp32 products matched across thread counts)."""
    import hydra
    import omegaconf
    import pytorch_lightning
    import scipy
    import torch

    import zsl_gen
    from zsl_gen.runtime import cpu_model

    info = {"zsl_gen": zsl_gen.__version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "pytorch_lightning": pytorch_lightning.__version__, "hydra": hydra.__version__,
            "omegaconf": omegaconf.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "platform": platform.platform(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda}  # the CUDA torch was built for; None for a CPU-only build
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        package = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=package)
        # a package installed (not editable) inside some repository's tree, e.g. its .venv: not that repository's code
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], capture_output=True,
                                 timeout=5, cwd=package)
        if commit.returncode == 0 and tracked.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=5, cwd=package)
            if status.returncode == 0:
                info["git_dirty"] = bool(status.stdout.strip())  # uncommitted changes in tracked files
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def flatten(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, leaf) pairs of nested mappings (a record's ``config``); lists and empty mappings are leaves."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1], node


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader never sees it half-written (temp file + rename, ``atomic_write``)."""
    from zsl_gen.data._io import atomic_write_text

    atomic_write_text(path, text)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically; NaN/Inf are refused (they are not JSON)."""
    write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def summary_table(results: dict[str, Any]) -> str:
    """A short table a person can read at the end of a run."""
    ds = results["dataset"]
    lines = [f"zsl-gen · {results['method']} on {ds['name']} ({ds['semantic_space']}) · seed {results['seed']}",
             f"{'selection':<10} {'S':>6} {'U':>6} {'H':>6} {'T1':>6}   chosen (GZSL)"]
    for name, sel in results["results"].items():
        g, chosen = sel["gzsl"], sel["gzsl_chosen"]
        where = ", ".join(part for part in (
            f"epoch {chosen['epoch']}" if chosen["epoch"] else "", chosen["classifier"],
            f"γ={chosen['gamma']}" if chosen["gamma"] else "") if part)
        label = name + ("*" if sel["optimistic"] else "")
        lines.append(f"{label:<10} {g['S']:6.2f} {g['U']:6.2f} {g['H']:6.2f} {sel['zsl']['T1']:6.2f}   "
                     f"{where} " + ("(fixed)" if sel["chosen_on"] == "fixed" else f"(on {sel['chosen_on']})")
                     + (" — scores on split=val" if sel.get("evaluated_on") == "val" else ""))
    if "test" not in results.get("protocol", {}).get("splits_run", ["test"]):
        lines.append("(val_split only: the test split was not run; run selections=[paper,val] for test numbers)")
    if ds.get("features_note"):
        lines.append(f"! {ds['features_note']}: not {ds['name']}'s benchmark numbers (results.json: dataset.features_note)")
    for split, stop in results.get("stopped_early", {}).items():
        lines.append(f"! split={split}: training diverged in epoch {stop['epoch']} of {stop['of']} and stopped; its "
                     f"numbers come from the epochs up to {stop['last_evaluated_epoch']} (results.json: stopped_early)")
    if any(s["optimistic"] for s in results["results"].values()):
        rule = results.get("protocol", {}).get("paper_selection")
        what = ("best classifier epoch of the last generator epoch" if rule == "best_at_last_epoch"
                else "best epoch")
        lines.append(f"* paper: {what} measured on the test split, as published — optimistic.")
    return "\n".join(lines)
