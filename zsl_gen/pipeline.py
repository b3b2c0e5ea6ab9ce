"""The train job: data → (val run, test run) → selections → results.json.

Kept free of Hydra's runtime so it runs the same from the CLI, a sweep, a test or a notebook.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import hydra.utils
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from zsl_gen.callbacks import (DivergenceGuard, EvaluatedEpochCheckpoint, GZSLEvaluation, LogRunConfig,
                              RunConfigInCheckpoint, StreamingCheckpointIO, progress_callbacks, ctrl_c_stays_an_interrupt)
from zsl_gen.config import instantiate, is_real, trainer_device, validate_train_config
from zsl_gen.data import RawDataset, build_protocol, load_raw, make_synthetic
from zsl_gen.data.benchmarks import BENCHMARKS
from zsl_gen.data.protocol import protocol_indices
from zsl_gen.data.types import REQUIRED_LOCS, ZSLData
from zsl_gen.data.validate import origin_of
from zsl_gen.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from zsl_gen.eval import ClassifierConfig, eszsl_curves
from zsl_gen.eval.selection import CurveStack, select
from zsl_gen.export import export_generator
from zsl_gen.results import flatten, summary_table, utc_now, versions, write_json_atomic
from zsl_gen.runtime import keep_freed_memory, release_freed_memory
from zsl_gen.tracking import build_loggers, finish_loggers, log_final_results

OFFLOAD_OPTIMIZER_STATE_MB = 256  # conf/train.yaml's default

log = logging.getLogger(__name__)


class _DropLightningNoise(logging.Filter):
    """Drops Lightning's advertising tips and its "<accelerator> available: False" lines. The accelerator
    lines that say something stay: "GPU available: True …, used: False" is a run that forgot ``trainer=gpu``."""

    _ABSENT = re.compile(r"^(GPU|TPU|HPU|IPU|MPS) available: False\b")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tip:" not in message and not self._ABSENT.match(message)


def quiet_lightning() -> None:
    """Silence Lightning messages that say nothing about this run (advertising, index-batch length notes,
    accelerators that are absent)."""
    import warnings

    for pattern in (".*IterableDataset.*has `__len__` defined.*", ".*smaller than the logging interval.*",
                    ".*isinstance\\(treespec, LeafSpec\\).*", ".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLightningNoise())


def to_log_files(message: str, level: int = logging.INFO) -> None:
    """``message`` into the log files only (Hydra's ``<job>.log``), not the console: for what the console
    already shows by ``print`` (the summary table, a failed run's error line), so the log file is complete."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def print_and_log(message: str, *, error: bool = False) -> None:
    """``message`` on the console (stderr for an error) and into the log files (``to_log_files``)."""
    print(message, file=sys.stderr if error else sys.stdout)
    to_log_files(message, logging.ERROR if error else logging.INFO)


BYO_DEFAULT_NAME = "custom"  # conf/dataset/byo.yaml's name when none is given


def load_dataset(ds: DictConfig) -> RawDataset:
    """The raw dataset a ``dataset`` config names (simulated, xlsa17 ``.mat`` or bring-your-own)."""
    if ds.kind == "synthetic":
        raw = make_synthetic(**OmegaConf.to_container(ds.synthetic, resolve=True), name=ds.name)
        if ds.get("semantic_space") is not None:  # the label the config gives the simulated vectors
            raw.semantic_space = str(ds.semantic_space)
        return raw
    # dataset=byo without a name given: the name the files record (splits.json's "name"), else the directory's
    name = None if ds.name == BYO_DEFAULT_NAME else ds.name
    return load_raw(Path(ds.data_dir).expanduser().resolve(), name=name, features_file=ds.features_file,
                    semantics_file=ds.semantics_file, semantic_key=ds.semantic_key,
                    semantic_space=ds.semantic_space)


def generator_epochs(cfg: DictConfig) -> int:
    """The generator's epoch schedule, capped by ``dataset.max_generator_epochs`` where a dataset sets one."""
    cap = cfg.dataset.get("max_generator_epochs")
    return int(cfg.generator.epochs if cap is None else min(cfg.generator.epochs, cap))


def describe_epochs(cfg: DictConfig) -> str:
    """``"N epochs"``, saying so when ``dataset.max_generator_epochs`` cut the generator's schedule."""
    epochs = generator_epochs(cfg)
    if epochs == int(cfg.generator.epochs):
        return f"{epochs} epochs"
    return (f"{epochs} epochs: the {int(cfg.generator.epochs)}-epoch schedule capped by "
            f"dataset.max_generator_epochs={epochs} (dataset.max_generator_epochs=null lifts it)")


def calibration_gammas(cfg: DictConfig) -> tuple[float, ...]:
    """The γ values of calibrated stacking to evaluate: ``(0.0,)`` (none) unless ``classifier.calibration``."""
    c = cfg.classifier
    if not isinstance(c.calibration, bool):
        raise ConfigError(f"config field `classifier.calibration` must be true or false, got {c.calibration!r}")
    gammas = c.calibration_gammas
    if not isinstance(gammas, (ListConfig, list, tuple)) or not all(is_real(g) for g in gammas):
        raise ConfigError("config field `classifier.calibration_gammas` must be a list of finite numbers, e.g. "
                          f"classifier.calibration_gammas=[0,0.5,1], got {gammas!r}")
    return tuple(float(g) for g in gammas) if c.calibration else (0.0,)


def classifier_config(cfg: DictConfig) -> ClassifierConfig:
    """The final classifier's settings from the ``classifier`` group (validated; ``ConfigError`` naming the
    field)."""
    c = cfg.classifier
    config = ClassifierConfig(epochs=c.epochs, lr=c.lr, beta1=c.beta1, batch_size=c.batch_size,
                              weight_decay=c.weight_decay, calibration_gammas=calibration_gammas(cfg),
                              precision=str(c.get("precision", "fp32")), init=str(c.get("init", "normal")),
                              drop_last=c.get("drop_last", False))
    config.validate()
    return config


def offload_settings(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """``GZSLEvaluation``'s offload arguments from ``offload_optimizer_state_mb`` (null: never)."""
    threshold = cfg.get("offload_optimizer_state_mb", OFFLOAD_OPTIMIZER_STATE_MB)
    if threshold is None:
        return {"offload_dir": None}
    return {"offload_dir": output_dir, "offload_min_bytes": int(float(threshold) * 2**20)}


def protocol_data(cfg: DictConfig, raw: RawDataset, split: str) -> ZSLData:
    """``raw`` as the tensors of one protocol (``split``: ``"val"`` or ``"test"``), preprocessed as the
    ``dataset`` group says; refuses features a BCE-reconstructing generator cannot take (``check_training_range``)."""
    ds = cfg.dataset
    if not isinstance(ds.l2_semantics, bool):
        raise ConfigError(f"config field `dataset.l2_semantics` must be true or false, got {ds.l2_semantics!r}")
    data = build_protocol(raw, split, feature_scaling=ds.feature_scaling, l2_semantics=ds.l2_semantics,
                          val_seen_fraction=ds.val_seen_fraction, seed=cfg.seed,
                          val_excludes_test=ds.get("val_excludes_test", True))
    check_training_range(cfg, raw, [split])
    return data


def check_training_range(cfg: DictConfig, raw: RawDataset, splits: list[str]) -> None:
    """With ``dataset.feature_scaling=none``, a generator that reconstructs with binary cross-entropy needs the
    training features of every split in ``splits`` in [0, 1]. ``split_data`` checks all splits at the first
    read, so that a bad test split fails before the val split trains, not after it."""
    ds = cfg.dataset
    target = OmegaConf.select(cfg, "generator.system._target_")
    if ds.feature_scaling != "none" or not target or \
            not getattr(hydra.utils.get_class(target), "RECONSTRUCTS_WITH_BCE", False):
        return
    for split in splits:
        rows, _, _ = protocol_indices(raw, split, val_seen_fraction=ds.val_seen_fraction, seed=cfg.seed,
                                      val_excludes_test=ds.get("val_excludes_test", True))
        low, high = float("inf"), float("-inf")
        for start in range(0, rows.size, 4096):  # by row blocks: no full-size copy of the rows
            block = raw.features[rows[start:start + 4096]]
            low, high = min(low, float(block.min())), max(high, float(block.max()))
        if low < 0 or high > 1:
            raise DataError(f"{origin_of(raw).features}: the training features lie in [{low:.4g}, {high:.4g}] "
                            f"(split={split}), but generator={cfg.generator.name} reconstructs them with "
                            "binary cross-entropy, which needs [0, 1], and dataset.feature_scaling=none keeps "
                            "them as they are: set dataset.feature_scaling=minmax (or scale the features to "
                            "[0, 1] yourself)")


class TrainedSplit(NamedTuple):
    """What training on one protocol split leaves: its evaluation curves, the trained system, the loggers
    still open (``keep_loggers_open``), the divergence warnings of ``DivergenceGuard`` and, for a run that
    diverged and stopped (``on_divergence=stop``), where it stopped (``DivergenceGuard.stopped``)."""

    curves: CurveStack
    system: pl.LightningModule
    open_loggers: list
    warnings: list[str]
    stopped: dict[str, Any] | None = None


def train_generator(cfg: DictConfig, data: ZSLData, output_dir: Path, ckpt_path: Path | None = None,
                    keep_loggers_open: bool = False) -> TrainedSplit:
    """Train the configured generator on ``data`` (one protocol), evaluating on its schedule; with
    ``ckpt_path``, continue an interrupted training from that checkpoint. With ``keep_loggers_open`` the
    loggers are returned unfinished (the caller logs the final results into them, then finishes them).
    When training produces non-finite values: with ``on_divergence=stop`` (the default) and at least one
    evaluated epoch, training stops there and the split's result is its evaluated epochs, with the generator
    of the last one (``TrainedSplit.stopped`` says so); otherwise (``on_divergence=error``, or nothing
    evaluated yet) it raises ``TrainingDiverged`` (one message: where, the loss trajectory, what is kept,
    the fix)."""
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    if cfg.get("keep_freed_memory", True):  # from here on: the data is loaded, training starts
        keep_freed_memory()
    system = instantiate(cfg.generator.system, feature_dim=data.feature_dim, semantic_dim=data.semantic_dim)
    system.set_data(data, seed=cfg.seed)
    classifier = classifier_config(cfg)
    # a batch size the final classifier cannot use fails here, before any logger file exists or the generator trains
    classifier.check_full_batches(*system.classifier_train_sizes(data, cfg.generator.syn_num))
    ckpt_dir = output_dir / "checkpoints" / data.split
    evaluation = GZSLEvaluation(data, classifier, syn_num=cfg.generator.syn_num,
                                every_n_epochs=cfg.eval_every, seed=cfg.seed,
                                **offload_settings(cfg, output_dir))
    # last.ckpt after every evaluated epoch (what `ckpt_path=` resumes from) and the best by the active
    # protocol's H (val H on the val run; on the test run that is the `paper` choice)
    # (a callback of its own for last.ckpt: Lightning >= 2.5 rewrites `save_last=True`'s last.ckpt only in
    # the epochs where the top-k checkpoint changed, which would leave it at the best epoch, not the last)
    checkpoints = [EvaluatedEpochCheckpoint(evaluation, dirpath=ckpt_dir, filename="best-epoch{epoch:03d}",
                                            auto_insert_metric_name=False, monitor=f"{data.split}/H", mode="max",
                                            save_top_k=1),
                   EvaluatedEpochCheckpoint(evaluation, dirpath=ckpt_dir, filename="last", monitor=None,
                                            save_top_k=1, enable_version_counter=False)]
    # first among the epoch-end callbacks: a diverged epoch is neither evaluated nor checkpointed
    guard = DivergenceGuard(data.split, ckpt_dir, stop_factor=cfg.get("stop_on_explosion"))
    loggers = build_loggers(cfg, data.split, run_name=f"{cfg.generator.name}-{data.name}-seed{cfg.seed}")
    try:
        trainer = instantiate(cfg.trainer, max_epochs=generator_epochs(cfg),
                              callbacks=[guard, evaluation, *checkpoints, *progress_callbacks(),
                                         LogRunConfig(OmegaConf.to_container(cfg, resolve=True)),
                                         RunConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=False))],
                              enable_progress_bar=sys.stdout.isatty(), logger=loggers or False,
                              default_root_dir=str(output_dir), plugins=[StreamingCheckpointIO()])
        with ctrl_c_stays_an_interrupt():
            trainer.fit(system, ckpt_path=str(ckpt_path) if ckpt_path else None)
        if trainer.received_sigterm:  # after Lightning's last look (the last evaluation, teardown): stop here
            raise SIGTERMException
    except TrainingDiverged as err:
        # the diverged weights are dropped for the last evaluated (finite) epoch's checkpoint: this run's
        # last.ckpt, or, when it diverged before its first checkpoint after a resume, the one it resumed from.
        # Several DDP ranks cannot agree to stop (each sees its own shard), so there it is always an error.
        kept = last_evaluated_checkpoint([ckpt_dir / "last.ckpt", ckpt_path], evaluation.records)
        if cfg.get("on_divergence", "stop") == "error" or kept is None or trainer.world_size > 1:
            finish_loggers(loggers)
            raise guard.explain(str(err), system, generator_epochs(cfg)) from None
        stopped = guard.stopped(str(err), system, generator_epochs(cfg), [e for e, _ in evaluation.records],
                                exported=data.split == "test",
                                kept="last.ckpt" if kept == ckpt_dir / "last.ckpt" else kept)
        log.warning(stopped["message"])
        system = load_system(cfg, data, kept)
    except MisconfigurationException as err:  # a trainer.* setting Lightning refuses once fit starts
        finish_loggers(loggers)
        raise ConfigError(f"trainer settings: {str(err).strip().splitlines()[0]} (generator={cfg.generator.name}); "
                          "change or remove the trainer.* setting it names") from None
    except BaseException:
        finish_loggers(loggers)
        raise
    else:
        stopped = None
        # a Lightning setting ended fit early (debug=fdr's fast_dev_run does on purpose: a smoke test)
        if trainer.current_epoch < generator_epochs(cfg) and not trainer.fast_dev_run:
            finish_loggers(loggers)
            raise ConfigError(
                f"split={data.split}: training ended after epoch {trainer.current_epoch} of "
                f"{generator_epochs(cfg)} without diverging (a trainer.* setting ended it: limit_train_batches=0, "
                f"or a strategy whose processes did not report back; trainer: "
                f"{OmegaConf.to_container(cfg.trainer, resolve=True)}): its results would be labelled with the "
                "whole schedule; remove that setting, or set generator.epochs to what should run")
        # the checkpoints hold the optimiser state and nothing after training reads it: dropped, it leaves room
        # for the export's copy of the weights (tf-VAEGAN at AWA2: 557 MB of Adam moments)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        release_freed_memory()
    if not keep_loggers_open:
        finish_loggers(loggers)
        loggers = []
    warnings = list(guard.warnings) + ([stopped["message"]] if stopped else [])
    return TrainedSplit(CurveStack.from_records(evaluation.records), system, loggers, warnings, stopped)


def last_evaluated_checkpoint(candidates: list[Path | None], records: list) -> Path | None:
    """The first checkpoint among ``candidates`` saved at the last evaluated epoch of ``records``
    (``(epoch, curves)``, 1-based epochs), or None (nothing evaluated, or no such checkpoint)."""
    if not records:
        return None
    for path in candidates:
        if path is not None and Path(path).is_file():
            try:
                epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"] + 1
            except Exception:  # an unreadable candidate is simply not the one
                continue
            if epoch == records[-1][0]:
                return Path(path)
    return None


@dataclass
class ResumePlan:
    """What an interrupted run left: finished splits' curves, and the split to continue from a checkpoint."""

    run_dir: Path | None = None
    split: str | None = None
    ckpt_path: Path | None = None
    # what the checkpoint was trained on: the data files' sha256 (None: a checkpoint of an earlier version or
    # of a simulated dataset, whose config is compared instead) and (feature_dim, semantic_dim)
    data_sha256: list[str] | None = None
    dims: tuple[int, int] | None = None
    finished: dict[str, CurveStack] = field(default_factory=dict)
    finished_warnings: dict[str, list[str]] = field(default_factory=dict)  # each finished split's DivergenceGuard
    finished_stopped: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished splits that stopped early
    warnings: list[str] = field(default_factory=list)  # settings this run changed for the split it continues


# What decides a split's numbers: a resumed run must match the old one in these (extending generator.epochs,
# and trainer/logger/memory/path settings may change). Compared unresolved, so a moved data_dir still matches.
RESULT_SETTINGS = ("seed", "selections", "paper_selection", "eval_every", "dataset", "generator", "classifier",
                   "trainer.precision")
RESUME_MAY_CHANGE = ("generator.epochs", "dataset.data_dir", "dataset.max_generator_epochs")
# What may differ where the checkpoint's split trains on: optimisation settings, the precision and the rule
# the paper number is read with. Data, seed, evaluation and classifier settings may not: the split's earlier
# epochs and any split read back were made with the old ones, and one run would mix two settings.
CONTINUE_MAY_CHANGE = ("generator.system.", "trainer.precision", "classifier.precision", "paper_selection")
# Settings added later, as runs made before them behaved (an older run's config has no such key)
EARLIER_BEHAVIOUR = {"dataset.val_excludes_test": False}


def changed_settings(old: DictConfig, new: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``RESULT_SETTINGS`` that differ between two run configs (unresolved): dotted key -> (old, new)."""
    before, after = {}, {}
    for key in RESULT_SETTINGS:
        for flat, cfg in ((before, old), (after, new)):
            value = OmegaConf.select(cfg, key, default=None)
            value = OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig | ListConfig) else value
            flat.update(flatten(value, f"{key}."))
    for key, value in EARLIER_BEHAVIOUR.items():
        if key in after and key not in before:
            before[key] = value
    if not {"val", "val_split"} & set(OmegaConf.select(new, "selections", default=None) or ["val"]):
        for key in ("dataset.val_excludes_test", "dataset.val_seen_fraction"):  # no split=val is run
            before.pop(key, None)
            after.pop(key, None)
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k) and k not in RESUME_MAY_CHANGE}


def resume_plan(cfg: DictConfig, splits: list[str]) -> ResumePlan:
    """Read ``ckpt_path`` (``<run dir>/checkpoints/<split>/last.ckpt``) into a plan, or fail clearly."""
    if not cfg.get("ckpt_path"):
        return ResumePlan()
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    if not ckpt.is_file():
        # killed in a split's first epoch: that split has no last.ckpt yet, an earlier split's continues the run
        present = sorted(ckpt.parents[2].glob("checkpoints/*/last.ckpt")) if len(ckpt.parents) > 2 else []
        hint = f"; this run has {', '.join(map(str, present))}" if present else ""
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint (give <run dir>/checkpoints/<split>/last.ckpt"
                          f"{hint})")
    split = ckpt.parent.name
    if ckpt.parent.parent.name != "checkpoints" or split not in splits:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: expected <run dir>/checkpoints/<{'|'.join(splits)}>/last.ckpt "
                          "of a zsl-train run with the same selections")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{ckpt}: unreadable checkpoint ({type(err).__name__}: {str(err)[:200]}); it may be "
                              "truncated — resume from another checkpoint or start over") from None
    check_checksums(ckpt)
    run_dir = ckpt.parents[2]
    hp = state.get("hyper_parameters") or {}
    plan = ResumePlan(run_dir=run_dir, split=split, ckpt_path=ckpt, data_sha256=state.get("data_sha256"),
                      dims=(int(hp["feature_dim"]), int(hp["semantic_dim"])) if {"feature_dim", "semantic_dim"} <= set(hp)
                      else None)
    old_config, old_source = old_run_config(run_dir, state)
    if old_config is not None and "selections" in (changed := changed_settings(old_config, cfg)):
        # (before the splits are read: another selection set needs other splits, which the old run never ran)
        before, now = changed["selections"]
        raise ConfigError(f"ckpt_path={ckpt}: selections={_override_value(now)} differ from {run_dir}'s "
                          f"selections={_override_value(before)} ({old_source}): resume with "
                          f"selections={_override_value(before)}, or start a new run without ckpt_path")
    epochs = generator_epochs(cfg)
    for earlier in splits[:splits.index(split) + 1]:
        record = run_dir / "splits" / f"{earlier}.json"
        completed = read_split_record(record) if record.is_file() else None
        if completed is None:
            if earlier != split:
                raise ConfigError(f"cannot resume: split={earlier} of {run_dir} did not finish ({record} missing); "
                                  f"resume from {run_dir / 'checkpoints' / earlier / 'last.ckpt'} instead")
            if int(state.get("epoch", -1)) + 1 > epochs:
                raise ConfigError(f"cannot resume split={split} of {run_dir} with generator.epochs={epochs}: its "
                                  f"checkpoint {ckpt} is at epoch {int(state['epoch']) + 1}; a resumed run cannot "
                                  "shorten the schedule: resume with its generator.epochs, or start a new run")
            continue
        stopped = completed.get("stopped")
        trained_to = int(completed["epochs"][-1]) if completed.get("epochs") else epochs
        if trained_to > epochs:
            # its curves, the selections and the export would hold epochs past the schedule results.json states
            raise ConfigError(f"cannot resume with generator.epochs={epochs}: split={earlier} of {run_dir} "
                              f"{'stopped at' if stopped else 'finished'} epoch {trained_to}; a resumed run cannot "
                              f"shorten the schedule: resume with generator.epochs={trained_to} (or more), or start "
                              "a new run without ckpt_path")
        shorter = not stopped and trained_to < epochs  # finished, on a schedule shorter than the configured one
        if earlier == split and stopped:
            # a split that stopped at its divergence continues from its checkpoint (with, say, a lower lr)
            log.info("split=%s of %s stopped at its divergence: continuing it from %s", split, run_dir, ckpt)
        elif earlier == split and shorter:
            # a finished split extended to a longer schedule (generator.epochs raised) continues from its end
            log.info("split=%s of %s finished %d epochs: extending it to %d from %s", split, run_dir, trained_to,
                     epochs, ckpt)
        elif shorter:
            # the val selection reads both splits at the same epochs: extend the earlier split first
            raise ConfigError(f"cannot resume split={split} to generator.epochs={epochs}: split={earlier} of "
                              f"{run_dir} finished {trained_to} epochs; extend it first, from "
                              f"{run_dir / 'checkpoints' / earlier / 'last.ckpt'}")
        else:
            plan.finished[earlier] = CurveStack.from_dict(completed)
            plan.finished_warnings[earlier] = list(completed.get("warnings", []))
            if stopped:
                plan.finished_stopped[earlier] = stopped
    _check_resumed_settings(cfg, plan, old_config, old_source)
    if plan.dims is not None:
        check_checkpoint_fits(cfg, state, ckpt, plan.dims)
    return plan


def read_split_record(path: Path) -> dict[str, Any]:
    """A finished split's record (``splits/<split>.json``: its epochs and curves, ``CurveStack.from_dict``
    reads them), or one error naming the damaged file."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("epochs"), list):
            raise ValueError("no list of epochs")
        if not all(isinstance(epoch, int) and not isinstance(epoch, bool) for epoch in record["epochs"]):
            raise ValueError("epochs that are not whole numbers")
        CurveStack.from_dict(record)
        return record
    except (ValueError, UnicodeDecodeError, OSError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged split record ({type(err).__name__}: {str(err)[:120]}); it is what a "
                              "resume reads that split's results from: restore it, or start a new run") from None


def old_run_config(run_dir: Path, state: dict) -> tuple[DictConfig | None, str]:
    """The settings of the run a checkpoint belongs to: the copy in the checkpoint (``RunConfigInCheckpoint``;
    first, since a multirun job resuming inside its own directory has had its ``.hydra/`` rewritten by Hydra),
    else its ``.hydra/config.yaml``, else None (an earlier version's checkpoint in a directory without one)."""
    stored = state.get(RunConfigInCheckpoint.CONFIG_KEY)
    if isinstance(stored, dict):
        return OmegaConf.create(stored), "the settings stored in its checkpoint"
    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        try:
            return OmegaConf.load(path), str(path)
        except Exception as err:  # omegaconf/yaml raise several types for a damaged file
            raise ConfigError(f"{path}: unreadable ({type(err).__name__}); the old run's settings cannot be "
                              "compared with this run's: restore the file or start a new run") from None
    return None, ""


def check_checksums(ckpt: Path) -> None:
    """A checkpoint's stored CRC-32s must match its contents: ``torch.load`` does not check them, so a flipped
    byte in the weights would load silently (≈ 1 s per GB)."""
    import zipfile

    if not zipfile.is_zipfile(ckpt):
        return  # torch's legacy (non-zip) format carries no checksums
    try:
        with zipfile.ZipFile(ckpt) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        bad = f"({err})"
    if bad is not None:
        raise CheckpointError(f"{ckpt}: corrupt checkpoint (the stored checksum of {bad} does not match its "
                              "contents: the file was damaged on disk or in a copy); resume from another "
                              "checkpoint or start over")


def check_checkpoint_fits(cfg: DictConfig, state: dict, ckpt: Path, dims: tuple[int, int]) -> None:
    """The network ``cfg.generator.system`` builds must have the checkpoint's parameter shapes: a changed layer
    size would otherwise fail deep inside Lightning's loading. Built on the meta device (no memory)."""
    with torch.device("meta"):
        fresh = instantiate(cfg.generator.system, feature_dim=dims[0], semantic_dim=dims[1]).state_dict()
    saved = state.get("state_dict") or {}
    wrong = [f"{k}: {tuple(saved[k].shape)} saved, {tuple(v.shape)} now" if k in saved else f"{k}: not saved"
             for k, v in fresh.items() if k not in saved or tuple(saved[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{ckpt}: its network does not fit this run's generator settings ({'; '.join(wrong[:2])}"
                              f"{f'; and {len(wrong) - 2} more' if len(wrong) > 2 else ''}): the layer sizes "
                              "(generator.system.hidden_dim, ...) must be the run's own; resume with its overrides")


def check_resumed_data(resume: ResumePlan, record: dict[str, Any], data: ZSLData) -> None:
    """The data a resumed run reads must be the data its checkpoint was trained on (data_dir may move)."""
    if resume.dims is not None and (data.feature_dim, data.semantic_dim) != resume.dims:
        raise CheckpointError(f"{resume.ckpt_path}: trained on {resume.dims[0]}-d features and {resume.dims[1]}-d "
                              f"semantics, but this run's data has {data.feature_dim} and {data.semantic_dim}: resume "
                              "on the data the run was trained on")
    if resume.data_sha256 is not None and sorted(record.get("files", {}).values()) != resume.data_sha256:
        raise CheckpointError(f"{resume.ckpt_path}: trained on other data files than this run reads "
                              f"({', '.join(sorted(record.get('files', {})))}: other sha256): resume on the data the "
                              "run was trained on (data_dir may point elsewhere, the files must be the same)")


def _override_value(value: Any) -> str:
    """``value`` as a Hydra command-line override value (``false``, ``null``, ``[a,b]``, ``0.001``)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":")).replace('"', "")
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _check_resumed_settings(cfg: DictConfig, plan: ResumePlan, old: DictConfig | None, old_source: str) -> None:
    """Compare the old run's settings (``old``: its ``.hydra/config.yaml`` or its checkpoint's copy) with this run's.

    Where the checkpoint's split trains on (an interrupted, stopped or extended split), the settings in
    ``CONTINUE_MAY_CHANGE`` are a deliberate choice (a lower lr after a divergence, fp32 for the last epochs of
    a bf16 run): allowed, with a warning in ``results.json`` that the earlier epochs, and any split read back,
    ran with the old ones; others (seed, data, evaluation, classifier) are refused, naming the overrides that
    restore them. Where nothing trains (every split read back), other settings would only relabel the old
    numbers, and another generator cannot load the checkpoint at all: both are refused.
    """
    assert plan.run_dir is not None and plan.split is not None
    overrides = plan.run_dir / ".hydra" / "overrides.yaml"
    overrides = str(overrides) if overrides.is_file() else f"its command line; its settings: {old_source}"
    if old is None:
        message = (f"{plan.run_dir} has no .hydra/config.yaml and {plan.ckpt_path} (of an earlier version) holds no "
                   "copy of its settings: this run's settings could not be compared with the old run's, so it may mix "
                   "two settings")
        log.warning(message)
        plan.warnings.append(message)
        return
    changed = changed_settings(old, cfg)
    if not changed:
        return
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:4]) + (
        f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    other_generator = any(k in changed for k in ("generator.name", "generator.system._target_"))
    if other_generator or plan.split in plan.finished:
        why = ("it is a checkpoint of another generator" if other_generator else
               "every split is read back from it, nothing trains, so its numbers would only be relabelled")
        raise ConfigError(
            f"ckpt_path={plan.ckpt_path}: this run's settings differ from those of {plan.run_dir} ({shown}), and "
            f"{why}. Resume with the old run's overrides ({overrides}) — a larger "
            "generator.epochs extends it — or start a new run without ckpt_path")
    fixed = [k for k in changed if not k.startswith(CONTINUE_MAY_CHANGE)]
    if fixed:
        listed = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed[:4]) + (
            f"; and {len(fixed) - 4} more" if len(fixed) > 4 else "")
        restore = " ".join(f"{k}={_override_value(changed[k][0])}" for k in fixed)
        raise ConfigError(
            f"ckpt_path={plan.ckpt_path}: {listed} differ from {plan.run_dir}'s settings; a split continues only on "
            "its run's data, seed, evaluation and classifier settings (when training continues, only "
            "generator.system.* such as a lower lr, the precision and paper_selection may change). Resume with "
            f"the old run's overrides ({overrides}) and {restore}, or start a new run "
            "without ckpt_path")
    message = (f"split={plan.split} continues from {plan.ckpt_path} with other settings than its run ({shown}): "
               "its earlier epochs, and any split read back, ran with the old ones")
    log.warning(message)
    plan.warnings.append(message)


def load_system(cfg: DictConfig, data: ZSLData, ckpt: Path) -> pl.LightningModule:
    """The configured system class restored from a Lightning checkpoint, with ``data`` attached."""
    target = cfg.generator.system._target_
    module_name, _, class_name = target.rpartition(".")
    if not target.startswith("zsl_gen.systems."):
        raise ConfigError(f"generator.system._target_={target!r} is not a zsl-gen system")
    cls = getattr(importlib.import_module(module_name), class_name)
    system = cls.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    system.set_data(data, seed=cfg.seed)
    return system


def run_eszsl(cfg: DictConfig, data: ZSLData) -> CurveStack:
    """ESZSL's closed-form baseline on one protocol: its (γ, λ) grid as the curves' rows, one "epoch" (0)."""
    curves = eszsl_curves(data, gammas_exp=tuple(cfg.generator.gammas_exp),
                          lambdas_exp=tuple(cfg.generator.lambdas_exp), calibration_gammas=calibration_gammas(cfg))
    return CurveStack.from_records([(0, curves)])


def dataset_record(raw: RawDataset, ds: DictConfig) -> dict[str, Any]:
    """What ``results.json`` records of the data: name, kind, format, semantic space, the source files' sha256
    (a simulated set: its settings and its arrays' sha256), class counts, split sizes, the preprocessing, and
    any simulated-features note or benchmark-shape warning."""
    fmt = origin_of(raw).fmt
    byo = fmt == "byo"  # the .mat settings do not apply to it
    record: dict[str, Any] = {
        "name": raw.name, "kind": ds.kind, "semantic_space": raw.semantic_space, "format": fmt,
        "semantics_file": "semantics.npy" if byo else ds.get("semantics_file"),
        "semantic_key": None if byo else ds.get("semantic_key"),
        "files": dict(raw.files), "n_classes": raw.n_classes, "n_seen": int(len(raw.seen_classes)),
        "n_unseen": int(len(raw.unseen_classes)), "feature_dim": int(raw.features.shape[1]),
        "semantic_dim": int(raw.semantics.shape[1]),
        "split_sizes": {k: int(len(v)) for k, v in raw.locs.items()},
        "preprocessing": {"feature_scaling": ds.feature_scaling, "l2_semantics": ds.l2_semantics},
    }
    if raw.features_note:
        record["features_note"] = raw.features_note  # e.g. simulated features, not real image features
    warning = benchmark_shape_warning(raw)
    if warning:
        record["warning"] = warning
    if ds.kind == "synthetic":
        record["synthetic"] = OmegaConf.to_container(ds.synthetic, resolve=True)
        digest = hashlib.sha256()  # the digest of features' bytes then semantics', without copying them
        for array in (raw.features, raw.semantics):
            digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        record["arrays_sha256"] = digest.hexdigest()
    return record


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run one train job and write ``results.json``, ``curves.json`` and ``preprocessing.json``."""
    validate_train_config(cfg)
    quiet_lightning()
    code_versions = versions()  # the code that runs: taken now, not when the (long) run ends
    output_dir = Path(output_dir)
    selections = list(cfg.selections)
    if cfg.generator.name != "eszsl":
        classifier_config(cfg)  # fail on a bad classifier config before any training
    splits = splits_to_run(selections)
    resume = resume_plan(cfg, splits)
    open_loggers: list = []
    try:
        return _run_splits(cfg, splits, selections, resume, output_dir, open_loggers, code_versions)
    finally:
        finish_loggers(open_loggers)


def benchmark_shape_warning(raw: RawDataset) -> str | None:
    """A warning when data read under a benchmark's name (``dataset=cub``, results labelled CUB) does not have
    that benchmark's seen/unseen classes, split sizes or semantic dimension: another dataset's directory
    (AWA2's read as AWA1: the same classes, other samples), a subset, or sentence embeddings labelled ``att``
    would be reported as that benchmark."""
    key = str(raw.name).upper()
    if key not in BENCHMARKS:
        return None
    published = BENCHMARKS[key]
    problems = []
    got = (int(len(raw.seen_classes)), int(len(raw.unseen_classes)))
    if got != (published.n_seen, published.n_unseen):
        problems.append(f"{got[0]} seen / {got[1]} unseen classes, but {key} has "
                        f"{published.n_seen} / {published.n_unseen}")
    sizes = tuple(int(len(raw.locs[n])) for n in REQUIRED_LOCS)
    if sizes != published.samples:
        problems.append("trainval / test_seen / test_unseen hold {} / {} / {} samples, but {} has {} / {} / {}"
                        .format(*sizes, key, *published.samples))
    dim = int(raw.semantics.shape[1])
    expected_dim = published.semantic_dims.get(str(raw.semantic_space))
    if expected_dim is not None and dim != expected_dim:
        problems.append(f"the semantics are {dim}-d, but {key}'s '{raw.semantic_space}' vectors are "
                        f"{expected_dim}-d")
    if not problems:
        return None
    return (f"dataset {raw.name}: {'; '.join(problems)}: the results are labelled {raw.name}. If this is other "
            "data, give it its own name (dataset=byo data_dir=<dir> dataset.name=<its name>), or use the dataset "
            "config of what it is")


def single_unseen_class_warning(data: ZSLData) -> str | None:
    """With one unseen class the ZSL accuracy T1 is 100% by construction: a warning saying so, else None."""
    if len(data.unseen_classes) != 1:
        return None
    return (f"split={data.split} has a single unseen class ({data.class_names[int(data.unseen_classes[0])]}): its "
            "ZSL accuracy T1 is 100% by construction (one class to choose from) and says nothing; read U and H"
            + (", and the val selection's T1 choice is arbitrary" if data.split == "val" else ""))


def split_data(cfg: DictConfig, split: str, record: dict[str, Any] | None,
               splits: list[str] | None = None) -> tuple[ZSLData, dict[str, Any]]:
    """One split's protocol data, read from the dataset afresh, and the dataset's record.

    The raw features are read per split and dropped once the split's data is built: kept for a later split,
    they would sit beside training all along (AWA2: 305 MB next to the split's own 305 MB). ``record`` is the
    record of an earlier split's read: the files must not have changed since (a ``DataError`` otherwise).
    At the first read (no ``record``) the data checks of the other ``splits`` to run come first, so that
    none fails after an earlier split has trained.
    """
    raw = load_dataset(cfg.dataset)
    now = dataset_record(raw, cfg.dataset)
    if record is None and now.get("warning"):
        log.warning(now["warning"])
    if record is None and splits:
        check_training_range(cfg, raw, [s for s in splits if s != split])  # (split's own: protocol_data's)
    if record is not None and now != record:
        changed = sorted(k for k in set(now) | set(record) if now.get(k) != record.get(k))
        if cfg.dataset.kind == "synthetic":  # no files: the simulator, seeded, gave other arrays this time
            raise DataError(f"dataset {cfg.dataset.name!r} changed during the run (differs in {changed}): "
                            "simulating it again for this split gave other arrays than for the earlier split, "
                            "with the same seed and settings. The simulator is deterministic, so this machine's "
                            "arithmetic was not: run again, and report it if it repeats.")
        files = f"; files: {', '.join(sorted(now['files']))}" if now.get("files") else ""
        raise DataError(f"dataset {cfg.dataset.name!r} changed during the run (differs in {changed}{files}): an "
                        "earlier split was trained on other data. Leave the files unchanged while a run reads "
                        "them, then run it again.")
    return protocol_data(cfg, raw, split), now


def splits_to_run(selections: list[str]) -> list[str]:
    """The training runs the selections need, in order: ``val`` for `val`/`val_split`, ``test`` for
    `paper`/`val` (a `val_split`-only run, as in a hyper-parameter search, never touches the test split)."""
    return ((["val"] if {"val", "val_split"} & set(selections) else [])
            + (["test"] if {"paper", "val"} & set(selections) else []))


def is_rank_zero() -> bool:
    """False in the other ranks of a DDP run: Lightning starts them as copies of the whole command, so each
    runs this job too; only rank 0 writes the run's files (two ranks exporting into one directory race)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def export_test_generator(cfg: DictConfig, system: pl.LightningModule, data: ZSLData, out: Path,
                          stopped: dict[str, Any] | None, paper_rule: str) -> None:
    """Export the test split's trained generator to ``out`` with what zsl-eval and zsl-synthesize read back: the
    method, ``syn_num``, seed, paper rule, the epochs it trained (those before a divergence that stopped it) and
    the classifier settings."""
    classifier = OmegaConf.to_container(cfg.classifier, resolve=False)
    export_generator(system, data, out, extra={
        "method": cfg.generator.name, "syn_num": int(cfg.generator.syn_num), "seed": int(cfg.seed),
        "paper_selection": paper_rule,
        "epochs": stopped["last_evaluated_epoch"] if stopped else generator_epochs(cfg),
        "classifier": OmegaConf.to_container(cfg.classifier, resolve=True),
        # zsl-eval syn_num=N then sets the batch size as zsl-train generator.syn_num=N would
        "classifier_batch_size_follows_syn_num": classifier.get("batch_size") == "${generator.syn_num}"})


def _run_splits(cfg: DictConfig, splits: list[str], selections: list[str], resume: ResumePlan,
                output_dir: Path, open_loggers: list, code_versions: dict[str, Any]) -> dict[str, Any]:
    """Train/evaluate each split in order, select, write the result files (see ``run``)."""
    stacks: dict[str, CurveStack] = {}
    timing: dict[str, float] = {}
    training_warnings: list[str] = list(resume.warnings)  # settings changed on resume, divergence survived
    stopped_early: dict[str, dict[str, Any]] = {}  # split -> where its diverged training stopped
    paper_rule = str(cfg.get("paper_selection", "best"))  # how `paper` reads the test curves (select)
    data, record, system, trained = None, None, None, None
    for split in splits:
        data = None  # an earlier split's data is not needed to build this one's (AWA2: 193 MB more at the read)
        data, record = split_data(cfg, split, record, splits)
        if split == splits[0] and resume.run_dir is not None:
            check_resumed_data(resume, record, data)
        if split == splits[0] and record.get("warning"):
            training_warnings.append(record["warning"])  # kept in results.json, not only in the log
        single = single_unseen_class_warning(data)
        if single:
            log.warning(single)
            training_warnings.append(single)
        release_freed_memory()  # the read's transients (keep_freed_memory holds them from a split's training on)
        start = time.perf_counter()
        split_warnings: list[str] = []
        if split in resume.finished:
            stacks[split], split_warnings = resume.finished[split], resume.finished_warnings[split]
            if split in resume.finished_stopped:
                stopped_early[split] = resume.finished_stopped[split]
            log.info("split=%s: finished in %s, read back", split, resume.run_dir)
            if split == "test":
                system = load_system(cfg, data, resume.run_dir / "checkpoints" / "test" / "last.ckpt")
        elif cfg.generator.name == "eszsl":
            stacks[split] = run_eszsl(cfg, data)
        else:
            ckpt = resume.ckpt_path if split == resume.split else None
            log.info("%s: training on split=%s (%d training samples), %s%s", cfg.generator.name, split,
                     len(data.train_y), describe_epochs(cfg), f", resuming from {ckpt}" if ckpt else "")
            trained = train_generator(cfg, data, output_dir, ckpt, keep_loggers_open=split == splits[-1])
            stacks[split], system = trained.curves, trained.system
            open_loggers.extend(trained.open_loggers)
            split_warnings = trained.warnings
            if trained.stopped:
                stopped_early[split] = trained.stopped
        training_warnings.extend(split_warnings)
        # the split's completion record (exact values and its warnings), read back when a later split is resumed
        if is_rank_zero():
            write_json_atomic(output_dir / "splits" / f"{split}.json",
                              {**stacks[split].as_dict(percent=False), "warnings": split_warnings,
                               "stopped": stopped_early.get(split)})
        if cfg.generator.name != "eszsl" and split == "test" and is_rank_zero():
            export_test_generator(cfg, system, data, output_dir / "generator", stopped_early.get("test"), paper_rule)
        timing[f"{split}_s"] = round(time.perf_counter() - start, 2)
        if split != "test":  # only the test split's generator is exported; an earlier split's system would sit
            system = trained = None  # beside the next one's training with its trainer's optimiser state
            gc.collect()  # (tf-VAEGAN at AWA2: 0.8 GB); trainer and system are reference cycles
            release_freed_memory()  # and the blocks keep_freed_memory held for its steps
    assert data is not None and record is not None  # the last split run: test, or val in a `val_split`-only run
    # what training ran on (Lightning's DDP launcher may have changed it since the run began)
    code_versions = {**code_versions, "torch_threads": torch.get_num_threads()}
    exported = cfg.generator.name != "eszsl" and "test" in splits
    if {"val", "val_split"} & set(selections) and not np.nanmax(stacks["val"].metrics["H"]) > 0:
        # every candidate ties at H = 0: the choice below (the earliest) says nothing about the epochs
        flat = ("split=val's H is 0 at every evaluated epoch and classifier epoch, so the val selection's choice "
                "(the earliest) is arbitrary: train longer (generator.epochs) or check the data")
        log.warning(flat)
        training_warnings.append(flat)
    results = {
        "created": utc_now(),
        "method": cfg.generator.name,
        "seed": int(cfg.seed),
        "dataset": record,
        "protocol": {"selections": selections, "paper_selection": paper_rule, "splits_run": splits,
                     "eval_every": int(cfg.eval_every),
                     "generator_epochs": generator_epochs(cfg) if cfg.generator.name != "eszsl" else None,
                     "val_seen_fraction": float(cfg.dataset.val_seen_fraction),
                     "val_excludes_test": bool(cfg.dataset.get("val_excludes_test", True))},
        "results": select(stacks, selections, stopped=set(stopped_early), paper=paper_rule),
        "timing": timing,
        "warnings": training_warnings,
        # splits whose training diverged and stopped before generator_epochs (on_divergence=stop): their
        # results come from the epochs evaluated before it
        "stopped_early": stopped_early,
        "generator_export": str(output_dir / "generator") if exported else None,
        "device": trainer_device(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": code_versions,
    }
    if not is_rank_zero():
        return results
    write_json_atomic(output_dir / "curves.json", {s: st.as_dict() for s, st in stacks.items()})
    write_json_atomic(output_dir / "preprocessing.json", data.preprocessing)
    write_json_atomic(output_dir / "results.json", results)
    log_final_results(open_loggers, results, output_dir / "generator")
    print_and_log(f"{summary_table(results)}\nresults: {output_dir / 'results.json'}")
    return results
