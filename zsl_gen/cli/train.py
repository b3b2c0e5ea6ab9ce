"""``zsl-train``: the Hydra app (configs in the repository's ``conf/``)."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from zsl_gen.errors import ZSLGenError

log = logging.getLogger("zsl_gen")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float:
    """Run one job; returns the validation H of the `val` (or `val_split`) selection: what a sweeper
    should optimise (the same number: split=val's H at its best epoch).

    In a multirun a failing job writes ``error.txt`` into its own directory and returns NaN (a failed
    trial for Optuna), so the other jobs still run; ``FailedJobsReport`` lists the failures at the end
    and ``main`` then exits with status 1.
    """
    from zsl_gen.pipeline import run  # imported here so `--help` stays fast

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        (output_dir / "error.txt").unlink(missing_ok=True)  # a rerun into the same sweep dir
    try:
        results = run(cfg, output_dir)
    except Exception as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(err, ZSLGenError):
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
            raise
        detail = str(err) if isinstance(err, ZSLGenError) else traceback.format_exc()
        (output_dir / "error.txt").write_text(detail + "\n")
        print(f"error: job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}) failed: "
              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return float("nan")
    chosen = results["results"]
    if "val" in chosen:
        return float(chosen["val"]["val_scores"]["H"])
    return float(chosen["val_split"]["gzsl"]["H"]) if "val_split" in chosen else float("nan")


FAILED_JOBS: list[Path] = []  # this process's multirun failures, read by `main` for the exit status


class FailedJobsReport(Callback):
    """After a multirun: list the jobs that failed (their directory and the last line of ``error.txt``).

    Only ``error.txt`` files written since this multirun started count: a sweep dir reused from an
    earlier, larger sweep may still hold old ones.
    """

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = [path for path in sorted(Path(config.hydra.sweep.dir).glob("*/error.txt"))
                  if path.stat().st_mtime >= self.started - 1.0]  # 1 s: coarse file-system clocks
        FAILED_JOBS[:] = failed
        if failed:
            print(f"{len(failed)} job(s) failed; the others' results are in place:", file=sys.stderr)
            for path in failed:
                print(f"  {path.parent}: {path.read_text().strip().splitlines()[-1]}", file=sys.stderr)


def main() -> None:
    FAILED_JOBS.clear()
    train_app()
    if FAILED_JOBS:  # the multirun finished, but not every job did: scripts and CI must see it
        sys.exit(1)


if __name__ == "__main__":
    main()
