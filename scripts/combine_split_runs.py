"""The `val` selection of two runs trained as separate jobs: one with `selections=[val_split]` (split=val) and
one with `selections=[paper]` (split=test), e.g. run side by side on two cores or two cluster nodes.

Both must be the same recipe on the same schedule (generator.epochs, eval_every): the `val` selection
chooses the (epoch, classifier epoch, γ) on split=val and reads the test run once there, exactly as one
`zsl-train selections=[paper,val]` run does (same function, `zsl_gen.eval.selection.select`).

Usage: python scripts/combine_split_runs.py <val run dir> <test run dir> [--out combined.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from zsl_gen.errors import ZSLGenError
from zsl_gen.eval.selection import CurveStack, select


def split_record(run: Path, split: str) -> dict:
    path = run / "splits" / f"{split}.json"
    if not path.is_file():
        raise ZSLGenError(f"{path}: missing; {run} is not a finished zsl-train run with split={split} "
                          f"(selections={'[val_split]' if split == 'val' else '[paper]'})")
    return json.loads(path.read_text())


# what may differ between the two jobs: which split they ran, where, and how they were resumed or logged
IGNORED = ("selections", "ckpt_path", "logger", "paths", "hydra")


def config_differences(val_run: Path, test_run: Path) -> list[str]:
    """``key: a != b`` for every config value (dotted keys) both runs' ``.hydra/config.yaml`` have and that
    differs between them."""

    flat = []
    for run in (val_run, test_run):
        path = run / ".hydra" / "config.yaml"
        if not path.is_file():
            raise ZSLGenError(f"{path}: missing; give zsl-train run directories")
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        flat.append(dict(_flatten({k: v for k, v in config.items() if k not in IGNORED})))
    # a key only one run has comes from a newer zsl-gen version (its default applied to the older run)
    keys = sorted(set(flat[0]) & set(flat[1]))
    return [f"{k}: {flat[0][k]!r} != {flat[1][k]!r}" for k in keys if flat[0][k] != flat[1][k]]


def _flatten(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("val_run", type=Path)
    p.add_argument("test_run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write the combined selections here (JSON)")
    args = p.parse_args(argv)
    try:
        records = {"val": split_record(args.val_run, "val"), "test": split_record(args.test_run, "test")}
        differ = config_differences(args.val_run, args.test_run)
        if differ:
            raise ZSLGenError(f"the two runs are not the same recipe: {'; '.join(differ[:6])}"
                              f"{' …' if len(differ) > 6 else ''}")
        stopped = {split for split, record in records.items() if record.get("stopped")}
        stacks = {split: CurveStack.from_dict(record) for split, record in records.items()}
        paper = OmegaConf.load(args.test_run / ".hydra" / "config.yaml").get("paper_selection", "best")
        results = select(stacks, ["paper", "val"], stopped=stopped, paper=paper)
    except (ZSLGenError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = {"val_run": str(args.val_run), "test_run": str(args.test_run), "stopped": sorted(stopped),
           "results": results}
    for name, r in results.items():
        g, chosen = r["gzsl"], r["gzsl_chosen"]
        print(f"{name:6s} S {g['S']:6.2f}  U {g['U']:6.2f}  H {g['H']:6.2f}  T1 {r['zsl']['T1']:6.2f}   "
              f"epoch {chosen['epoch']} (chosen on {r['chosen_on']})")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
