"""``zsl-train``: the Hydra app (configs in the repository's ``conf/``)."""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zsl_gen.cli.common import (EARLIER_RUN, Terminated, busy_run_dir_message, check_fresh_run_dir, check_overrides,
                                check_run_dir_disk, exit_on_sigterm, given_value, hold_given_run_dir, hold_run_dir,
                                is_secondary_rank, only_shows, override_key, release_run_dir, report_user_errors)
from zsl_gen.config import CONF_DIR
from zsl_gen.errors import ZSLGenError, write_failure

log = logging.getLogger("zsl_gen")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def train_app(cfg: DictConfig) -> float:
    """Run one job; returns the validation H of the `val` (or `val_split`) selection: what a sweeper
    should optimise (the same number: split=val's H at its best epoch).

    In a multirun a failing job writes ``error.txt`` into its own directory and returns NaN, so the other
    jobs still run; ``FailedJobsReport`` lists the failures at the end and ``main`` then exits with status 1.
    Under the Optuna sweeper it raises ``TrialFailed`` instead (Optuna records the trial as failed; its
    sweeper cannot take a NaN, and ``max_failure_rate: 1.0`` in ``conf/hparams_search`` lets the search go on).
    """
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    optuna = "optuna" in str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="")).lower()
    if not is_secondary_rank(hydra_cfg.job.name):  # (rank 0 holds the directory for all ranks)
        other = hold_run_dir(output_dir)
        # before the run writes anything there (Hydra has written .hydra/: for a single run with hydra.run.dir
        # given, main refused before Hydra started)
        if other is not None:
            message = busy_run_dir_message(str(output_dir), other)
            if hydra_cfg.mode != RunMode.MULTIRUN:
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)
            # not error.txt in the held directory (the other run's), but a note in the sweep directory, which
            # FailedJobsReport reads in the process that launched the sweep (a submitit job runs elsewhere)
            from zsl_gen.data._io import atomic_write_text

            atomic_write_text(Path(hydra_cfg.sweep.dir) / f"{REFUSED_PREFIX}{hydra_cfg.job.num}.txt", message + "\n")
            print(f"error: job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}) failed: {message}",
                  file=sys.stderr)
            if optuna:
                raise TrialFailed(f"job {hydra_cfg.job.num}: {message}")
            return float("nan")
    try:
        return _train_job(cfg, hydra_cfg, output_dir, optuna)
    finally:
        release_run_dir(output_dir)


def _train_job(cfg: DictConfig, hydra_cfg: DictConfig, output_dir: Path, optuna: bool) -> float:
    """``train_app``'s job in a directory this process holds."""
    from zsl_gen.pipeline import run  # imported here so `--help` stays fast

    if hydra_cfg.mode == RunMode.MULTIRUN:
        set_earlier_job_aside(output_dir, cfg)
    try:
        results = run(cfg, output_dir)
    except Exception as err:
        # a full or read-only disk under a writer that is not zsl-gen's own (Lightning's CSV logger, W&B)
        err = write_failure(output_dir, err, only_disk=True) or err
        if hydra_cfg.mode != RunMode.MULTIRUN:
            from zsl_gen.pipeline import print_and_log, to_log_files

            if isinstance(err, ZSLGenError):
                print_and_log(f"error: {err}", error=True)
                sys.exit(2)
            to_log_files(traceback.format_exc(), logging.ERROR)
            raise
        detail = str(err) if isinstance(err, ZSLGenError) else traceback.format_exc()
        (output_dir / "error.txt").write_text(detail + "\n")
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}) failed: {first_line}",
              file=sys.stderr)
        if optuna:
            raise TrialFailed(f"job {hydra_cfg.job.num}: {first_line} (see {output_dir / 'error.txt'})") from None
        return float("nan")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        drop_earlier_job(output_dir)
    chosen = results["results"]
    if "val" in chosen:
        return float(chosen["val"]["val_scores"]["H"])
    if "val_split" in chosen:
        return float(chosen["val_split"]["gzsl"]["H"])
    if optuna:
        raise TrialFailed(f"job {hydra_cfg.job.num}: selections={list(cfg.selections)} give no validation H to "
                          "optimise; a search needs selections=[val_split] (as conf/hparams_search sets)")
    return float("nan")


class TrialFailed(ZSLGenError):
    """An Optuna trial's job failed (its ``error.txt`` says why): Optuna marks the trial failed."""


# a multirun job's outputs: a rerun into the same sweep directory replaces them, so that an earlier run's
# results.json never sits beside this run's config (or error.txt) for zsl-report to count
JOB_OUTPUTS = ("error.txt", "results.json", "curves.json", "preprocessing.json", "splits", "checkpoints", "generator",
               "csv", "tensorboard")


def set_earlier_job_aside(output_dir: Path, cfg: DictConfig) -> list[str]:
    """Move what an earlier job left in this multirun job's directory (Hydra has already replaced its
    ``.hydra/`` config) into ``EARLIER_RUN``: ``drop_earlier_job`` deletes it once this job has succeeded; a job
    that fails leaves it there. A job resuming from a checkpoint inside its directory keeps the checkpoints
    and split records it resumes from. Returns the names moved."""
    ckpt = cfg.get("ckpt_path")
    in_place = bool(ckpt) and output_dir.resolve() in Path(str(ckpt)).expanduser().resolve().parents
    aside = output_dir / EARLIER_RUN
    # an aside already there holds the last finished job's outputs, and what lies beside it is a failed
    # attempt's: that is dropped, not set aside over them
    failed_attempt = aside.is_dir()
    moved = []
    for name in JOB_OUTPUTS:
        path = output_dir / name
        if (in_place and name in ("splits", "checkpoints")) or not (path.exists() or path.is_symlink()):
            continue
        if name == "error.txt" or failed_attempt:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            continue
        aside.mkdir(exist_ok=True)
        path.rename(aside / name)
        moved.append(name)
    if moved:
        log.warning("%s held an earlier job's outputs (%s): moved to %s, deleted once this job succeeds",
                    output_dir, ", ".join(moved), aside)
    return moved


def drop_earlier_job(output_dir: Path) -> None:
    shutil.rmtree(output_dir / EARLIER_RUN, ignore_errors=True)


def _overridden(key: str, overrides) -> bool:
    return any("=" in o and not o.startswith("-") and override_key(o) == key for o in overrides)


def lift_default_epoch_cap(overrides: list[str]) -> list[str]:
    """``overrides`` with ``++dataset.max_generator_epochs=null`` added when they give ``generator.epochs`` and
    not the cap: an explicit epoch count is the number of epochs trained, not cut to the cap a dataset config
    sets for the methods' default schedules (the small simulated default set's 30). Added on the command
    line, before Hydra composes, so the run's saved config and overrides say so, and a resumed run with the
    same command composes the same config."""
    if _overridden("generator.epochs", overrides) and not _overridden("dataset.max_generator_epochs", overrides):
        # right after the generator.epochs override: among the overrides, never after a flag (`--cfg job`), where
        # Hydra's argument parser would take it for an unknown argument
        at = max(i for i, o in enumerate(overrides) if _overridden("generator.epochs", [o])) + 1
        return [*overrides[:at], "++dataset.max_generator_epochs=null", *overrides[at:]]
    return list(overrides)


FAILED_JOBS: list[Path] = []  # this process's multirun failures, read by `main` for the exit status
REFUSED_PREFIX = ".refused-job-"  # <sweep dir>/.refused-job-<num>.txt: a job whose directory another run held


class FailedJobsReport(Callback):
    """After a multirun: list the jobs that failed (their directory and the last line of ``error.txt``, or of
    the sweep directory's ``.refused-job-<num>.txt`` for a job whose directory another run held).

    Only ``error.txt`` files this multirun wrote count: a sweep dir reused from an earlier, larger sweep
    may still hold old ones, so the files present at the start are remembered (by inode and mtime, no
    clock comparison: jobs on other hosts write them) and count only if rewritten.
    """

    def __init__(self) -> None:
        self.before: dict[Path, tuple[int, int]] = {}

    @staticmethod
    def _errors(sweep_dir: str) -> dict[Path, tuple[int, int]]:
        found = {}
        for path in sorted([*Path(sweep_dir).glob("*/error.txt"), *Path(sweep_dir).glob(f"{REFUSED_PREFIX}*.txt")]):
            stat = path.stat()
            found[path] = (stat.st_ino, stat.st_mtime_ns)
        return found

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.before = self._errors(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = [path for path, stamp in self._errors(config.hydra.sweep.dir).items()
                  if self.before.get(path) != stamp]
        FAILED_JOBS[:] = failed
        if failed:
            print(f"{len(failed)} job(s) failed; the others' results are in place:", file=sys.stderr)
            for path in failed:
                last = (path.read_text().strip().splitlines() or [f"(empty {path.name})"])[-1]
                # (a refused job's line names its directory itself)
                print(f"  {last}" if path.name.startswith(REFUSED_PREFIX) else f"  {path.parent}: {last}",
                      file=sys.stderr)


def check_launcher(argv: list[str]) -> None:
    """A SLURM launcher needs SLURM's ``sbatch`` here: without it, say so in one line before Hydra starts (the
    launcher would fail with a long traceback from inside submitit)."""
    if only_shows(argv):
        return  # no job is submitted
    launcher = given_value(argv, "hydra/launcher") or ""
    if "slurm" in launcher and shutil.which("sbatch") is None:
        print(f"error: hydra/launcher={launcher} submits SLURM jobs, but this machine has no `sbatch` (it is not a "
              "SLURM login node): run the sweep there, or here with hydra/launcher=submitit_local or without "
              "a launcher (-m alone)", file=sys.stderr)
        sys.exit(2)


def one_line_when_no_trial_finishes(argv: list[str]) -> None:
    """When every trial fails, the Optuna sweeper asks for the best of no trials and dies with a traceback
    (optuna's "No trials are completed yet."): its ``sweep`` is wrapped to say it in one line instead. Only
    for a search (``hparams_search=`` or the optuna sweeper on the command line): importing optuna costs
    about a second."""
    if not any(override_key(a) in ("hparams_search", "hydra/sweeper") and "null" not in a for a in argv if "=" in a):
        return
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:  # not installed: Hydra says so when it needs it
        return
    if getattr(OptunaSweeperImpl.sweep, "zsl_gen_wrapped", False):
        return
    sweep = OptunaSweeperImpl.sweep

    def sweep_reporting_no_trial(self, arguments):
        try:
            return sweep(self, arguments)
        except ValueError as err:
            if "No trials are completed" not in str(err):
                raise
            sweep_dir = OmegaConf.select(self.config, "hydra.sweep.dir") if self.config is not None else None
            if int(getattr(self, "n_trials", 1) or 0) < 1:  # nothing ran: nothing failed either
                print(f"error: hydra.sweeper.n_trials={getattr(self, 'n_trials', None)}: the search ran no trial; "
                      "give it at least one (e.g. hydra.sweeper.n_trials=20)", file=sys.stderr)
            else:
                print(f"error: every trial of the search failed, so there are no best parameters: the failures are "
                      f"above and in {sweep_dir or 'the sweep directory'}/<trial>/error.txt; fix what failed and run "
                      "the search again", file=sys.stderr)
            # SystemExit passes through Hydra's error report (an Exception would get its HYDRA_FULL_ERROR hint
            # after this line); as with an exception, Hydra skips its multirun-end callbacks: the trials'
            # failures were each reported as they happened (above)
            raise SystemExit(1) from None

    sweep_reporting_no_trial.zsl_gen_wrapped = True
    OptunaSweeperImpl.sweep = sweep_reporting_no_trial


@report_user_errors
@exit_on_sigterm
def main() -> None:
    check_launcher(sys.argv[1:])
    one_line_when_no_trial_finishes(sys.argv[1:])
    check_overrides(sys.argv[1:], "train")
    check_fresh_run_dir(sys.argv[1:])
    check_run_dir_disk(sys.argv[1:])
    hold_given_run_dir(sys.argv[1:])
    sys.argv = [sys.argv[0], *lift_default_epoch_cap(sys.argv[1:])]
    # the list the callback fills: Hydra imports it as `zsl_gen.cli.train`, which under `python -m` is
    # another module object than this `__main__`
    failed = importlib.import_module("zsl_gen.cli.train").FAILED_JOBS
    failed.clear()
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        train_app()
    # Lightning's SIGTERMException (training stopped by its handler, or by train_generator for a SIGTERM after
    # Lightning's last look) is a SystemExit without a code: the shell, SLURM and CI would read success
    except (SIGTERMException, Terminated, KeyboardInterrupt) as stop:
        how, code = ("interrupted (Ctrl-C)", 130) if isinstance(stop, KeyboardInterrupt) else ("stopped by SIGTERM", 143)
        print(f"error: {how}; the checkpoints of the epochs evaluated so far are kept: resume with "
              "ckpt_path=<run dir>/checkpoints/<split>/last.ckpt (if none was written yet, run again)", file=sys.stderr)
        sys.exit(code)  # 128 + the signal, what a shell reports for a process the signal ended
    finally:
        release_run_dir()  # (held before Hydra started, in case Hydra stopped before the job)
    if failed:  # the multirun finished, but not every job did: scripts and CI must see it
        sys.exit(1)


if __name__ == "__main__":
    main()
