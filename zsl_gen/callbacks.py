"""GZSL evaluation during generator training, as a Lightning callback (the systems stay evaluation-free)."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO

from zsl_gen.data._io import atomic_write
from zsl_gen.data.types import ZSLData
from zsl_gen.errors import TrainingDiverged
from zsl_gen.eval import ClassifierConfig, EvalCurves, train_and_evaluate
from zsl_gen.runtime import Offload, evaluation_offload, large_model_offload, release_freed_memory

log = logging.getLogger(__name__)


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, streaming: ``torch.save`` writes straight into a temporary file beside
    the target, which then replaces it (``atomic_write``: never a half-written checkpoint under the target's
    name; a failed save keeps the previous one).

    Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into an in-memory buffer first, so each
    save briefly holds a second copy of every weight and optimiser moment: tf-VAEGAN at AWA2 shapes, 0.85 GB
    of them, was its run's peak memory (1.74 → 2.43 GB at the checkpoints after an evaluation).

    A save that succeeds removes the temporary checkpoint files beside it that a killed process (SIGKILL, an
    out-of-memory kill) left behind, each as large as a checkpoint: one process saves a run's checkpoints,
    one after the other (in DDP, rank 0), so no other save is under way there.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        if path.suffix == ".ckpt":  # Lightning's checkpoints: no other file's temporaries
            for stale in path.parent.glob(".*.ckpt.*.tmp"):  # atomic_write's temporary names
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def ctrl_c_stays_an_interrupt() -> Iterator[None]:
    """Around ``Trainer.fit``: Lightning ends a Ctrl-C with ``sys.exit(1)`` and leaves SIGINT ignored for good
    (a notebook could no longer interrupt anything); here it stays a ``KeyboardInterrupt`` (the CLIs: one line,
    status 130) and the SIGINT handler in place before is restored."""
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except SystemExit as stop:
        if not isinstance(stop.__context__, KeyboardInterrupt):
            raise
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt from None


def evaluation_seed(seed: int, epoch: int) -> int:
    """The seed of the evaluation after generator epoch ``epoch`` (its synthesis noise and its classifier):
    zsl-eval draws with the same one to reproduce a run's last evaluation."""
    return seed * 1_000_003 + epoch


class GZSLEvaluation(pl.Callback):
    """Every ``every_n_epochs`` generator epochs (and at the last): synthesize ``syn_num`` features per
    unseen class, train the final classifier, and record its per-classifier-epoch S/U/H/T1 curves.

    Synthesis and classifier use their own seeded generators (seed, epoch), so evaluating more or less
    often never changes generator training. ``records`` holds ``(epoch, EvalCurves)`` in order.
    """

    def __init__(self, data: ZSLData, classifier: ClassifierConfig, syn_num: int, every_n_epochs: int = 1,
                 seed: int = 0, offload_dir: str | Path | None = None, offload_min_bytes: int = 0):
        self.data, self.classifier, self.syn_num = data, classifier, syn_num
        self.every_n_epochs, self.seed = every_n_epochs, seed
        # where the optimisers' CPU state, the weights and the image features wait during each evaluation when
        # that state is at least offload_min_bytes (None: everything stays in memory)
        self.offload_dir, self.offload_min_bytes = offload_dir, offload_min_bytes
        self.records: list[tuple[int, EvalCurves]] = []
        self._test_sets_aside: Offload | None = None

    def _due(self, trainer: pl.Trainer, epoch: int) -> bool:
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last or bool(trainer.fast_dev_run)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a finished run extended to a longer schedule: its old last epoch was evaluated only for being the
        # last (say 3 with eval_every=2); off the new schedule, it goes, so the curves equal a run trained to
        # the new length in one go
        self.records = [(e, c) for e, c in self.records if self._due(trainer, e)]
        self._set_test_sets_aside(trainer)

    def _set_test_sets_aside(self, trainer: pl.Trainer) -> None:
        """Only evaluations read the test features (tf-VAEGAN at AWA2 shapes: 108 MB, at the height of its
        training's memory): for a large model they wait on disk until the next evaluation."""
        self._test_sets_aside = large_model_offload(trainer.optimizers, self.offload_dir, self.offload_min_bytes)
        self._test_sets_aside([self.data.seen_x, self.data.unseen_x])

    def _test_sets_back(self) -> None:
        if self._test_sets_aside is not None:
            aside, self._test_sets_aside = self._test_sets_aside, None
            aside.restore()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._test_sets_back()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._test_sets_back()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self._due(trainer, epoch):
            return
        self._test_sets_back()
        device = pl_module.device
        noise = torch.Generator(device=device).manual_seed(evaluation_seed(self.seed, epoch))
        if self.data.train_x.device != device:  # moved once, not at every evaluation
            self.data = self.data.to(device)
        # Every training step sets its gradients afresh (zero_grad before backward), so the last step's
        # gradient buffers are dead weight here: freeing them leaves room for the classifier's features
        # (tf-VAEGAN at AWA2: 69 M weights, 276 MB of gradients).
        pl_module.zero_grad(set_to_none=True)
        # a large model's optimiser state, then its weights and image features as the evaluation stops reading
        # them, wait on disk until the classifier is done (runtime.Offload)
        with evaluation_offload(trainer.optimizers, self.offload_dir, self.offload_min_bytes) as offload:
            release_freed_memory()  # and what keep_freed_memory holds for the next training step
            inputs = pl_module.classifier_inputs(self.data, self.syn_num, noise, self.classifier.feature_dtype,
                                                 offload=offload)
            release_freed_memory()  # the synthesis's and mapping's activations, before the classifier's own
            with torch.inference_mode(False), torch.enable_grad():
                curves = train_and_evaluate(inputs, self.classifier, seed=evaluation_seed(self.seed, epoch))
            del inputs  # before the moved tensors come back
        if trainer.max_epochs is None or epoch < trainer.max_epochs:
            self._set_test_sets_aside(trainer)
        self.records.append((epoch, curves))
        # S and U of the (classifier epoch, γ) with the best H: one consistent triple
        best = np.unravel_index(int(np.nanargmax(curves.H)), curves.H.shape)
        split = self.data.split
        pl_module.log_dict({f"{split}/S": float(curves.S[best]) * 100,
                            f"{split}/U": float(curves.U[best]) * 100,
                            f"{split}/H": float(curves.H[best]) * 100,
                            f"{split}/T1": float(curves.T1.max()) * 100}, on_epoch=True)

    def state_dict(self) -> dict:
        """The recorded curves (plain lists: checkpoints stay loadable with ``weights_only=True``)."""
        return {"records": [{"epoch": e, "S": c.S.tolist(), "U": c.U.tolist(), "H": c.H.tolist(),
                             "T1": c.T1.tolist(), "gammas": list(c.gammas), "row_labels": c.row_labels}
                            for e, c in self.records]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.records = [(r["epoch"], EvalCurves(S=np.asarray(r["S"]), U=np.asarray(r["U"]), H=np.asarray(r["H"]),
                                                T1=np.asarray(r["T1"]), gammas=tuple(r["gammas"]),
                                                row_labels=r["row_labels"]))
                        for r in state_dict["records"]]


class EvaluatedEpochCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves at exactly the epochs ``evaluation`` evaluated: every
    ``eval_every``-th and the last, also where the schedule is not a multiple of ``eval_every`` (Lightning's
    ``every_n_epochs`` would skip the last epoch there, leaving ``last.ckpt`` behind the reported numbers)."""

    def __init__(self, evaluation: GZSLEvaluation, **kwargs: Any) -> None:
        super().__init__(every_n_epochs=1, **kwargs)
        self.evaluation = evaluation

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.evaluation.records
        if records and records[-1][0] == trainer.current_epoch + 1:
            super().on_train_epoch_end(trainer, pl_module)

    @property
    def state_key(self) -> str:
        # the key a ModelCheckpoint(every_n_epochs=eval_every) had: checkpoints of earlier versions restore
        # their best score into this callback on resume
        return "ModelCheckpoint" + repr({"monitor": self.monitor, "mode": self.mode, "every_n_train_steps": 0,
                                          "every_n_epochs": self.evaluation.every_n_epochs,
                                          "train_time_interval": None})


class RunConfigInCheckpoint(pl.Callback):
    """Writes the run's config (unresolved, as ``.hydra/config.yaml`` holds it) into every checkpoint under
    ``CONFIG_KEY``: a resume compares its settings with these when the run directory's ``.hydra/`` is gone
    (``hydra.output_subdir=null``, or a checkpoint copied alone)."""

    CONFIG_KEY = "zsl_gen_config"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[self.CONFIG_KEY] = self.config


class LogRunConfig(pl.Callback):
    """Logs the run's resolved config into every logger when fit starts, after Lightning has checked the
    trainer settings against the system (``accumulate_grad_batches`` or ``gradient_clip_val`` with a manually
    optimised GAN): a refused setting leaves no logger files (``csv/<split>/hparams.yaml``) behind."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)


class DivergenceGuard(pl.Callback):
    """Stops generator training with one clear ``TrainingDiverged`` error when it produces non-finite values,
    and warns when a non-negative training loss explodes while staying finite.

    At each epoch end (before evaluation and checkpointing, so no checkpoint holds a diverged model): the
    epoch's ``train/*`` means and every parameter must be finite. A mid-epoch failure of the same kind (a loss
    raising ``TrainingDiverged``) is explained by ``explain`` with the same context. A non-negative
    ``train/*`` mean that rises above ``explode_factor`` × its lowest earlier epoch mean is recorded in
    ``warnings`` (and logged): the run goes on, the selections choose among the evaluated epochs, but the
    last-epoch generator is likely the diverged one. With ``stop_factor``, a rise above ``stop_factor`` × the
    lowest earlier mean is treated as a divergence instead (``TrainingDiverged``, so ``on_divergence``
    decides): for explosions that stay finite but never recover.

    Args:
        split: the protocol split trained (for messages); ckpt_dir: where this split's checkpoints go.
        explode_factor: rise over the lowest epoch mean that counts as an explosion (warned).
        stop_factor: rise that counts as a divergence (config ``stop_on_explosion``); ``None``: never.
    """

    def __init__(self, split: str, ckpt_dir: Path, explode_factor: float = 100.0,
                 stop_factor: float | None = None):
        self.split, self.ckpt_dir, self.explode_factor = split, Path(ckpt_dir), explode_factor
        self.stop_factor = stop_factor
        self.history: list[tuple[int, dict[str, float]]] = []  # (epoch, train/* means), in order
        self.warnings: list[str] = []
        self._warned: set[str] = set()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        means = {k: float(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith("train/") and v.numel() == 1}
        self.history.append((epoch, means))
        bad = sorted(k for k, v in means.items() if not math.isfinite(v))
        if bad:
            raise TrainingDiverged(f"the epoch mean of {', '.join(bad)} is not finite")
        bad_params = nonfinite_parameters(pl_module)
        if bad_params:
            raise TrainingDiverged(f"parameters {', '.join(bad_params[:4])}{' …' if len(bad_params) > 4 else ''} "
                                   "are not finite")
        rises = self._rises(means)
        if self.stop_factor is not None:
            over = [(key, value, low, low_epoch) for key, value, low, low_epoch in rises
                    if value > self.stop_factor * low]
            if over:
                raise TrainingDiverged("; ".join(
                    f"{key} rose to {value:.4g}, {value / low:.3g}× its lowest epoch mean ({low:.4g} at epoch "
                    f"{low_epoch}), above stop_on_explosion={self.stop_factor:g}"
                    for key, value, low, low_epoch in over))
        self._warn_on_explosion(epoch, rises)

    def _rises(self, means: dict[str, float]) -> list[tuple[str, float, float, int]]:
        """``(key, value, lowest earlier mean, its epoch)`` of each non-negative ``train/*`` mean with a
        positive lowest earlier mean (signed losses, such as a WGAN critic's, change scale legitimately)."""
        rises = []
        for key, value in means.items():
            earlier = [(e, m[key]) for e, m in self.history[:-1] if key in m]
            if not earlier or value < 0 or any(v < 0 for _, v in earlier):
                continue
            low_epoch, low = min(earlier, key=lambda ev: ev[1])
            if low > 0:
                rises.append((key, value, low, low_epoch))
        return rises

    def _warn_on_explosion(self, epoch: int, rises: list[tuple[str, float, float, int]]) -> None:
        for key, value, low, low_epoch in rises:
            if key not in self._warned and value > self.explode_factor * low:
                self._warned.add(key)
                message = (f"split={self.split}, epoch {epoch}: {key} rose to {value:.4g}, {value / low:.3g}× its "
                           f"lowest epoch mean ({low:.4g} at epoch {low_epoch}): training is diverging. The "
                           "selections still choose among the evaluated epochs, but the last-epoch generator "
                           "(last.ckpt, the exported generator) is likely the diverged one; lower the learning "
                           "rate (generator.system.lr) or train fewer epochs")
                self.warnings.append(message)
                log.warning(message)

    def explain(self, reason: str, pl_module: pl.LightningModule, epochs: int | None = None) -> TrainingDiverged:
        """The user-facing error: where it happened, the loss trajectory before it, what is kept, the fix."""
        epoch = pl_module.current_epoch + 1 if pl_module._trainer is not None else len(self.history)
        trail = "; ".join(f"{e}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()))
                          for e, m in self.history[-4:])
        kept = sorted(p.name for p in self.ckpt_dir.glob("*.ckpt")) if self.ckpt_dir.is_dir() else []
        lr = pl_module.hparams.get("lr")
        bf16 = pl_module._trainer is not None and "bf16" in str(pl_module._trainer.precision)
        return TrainingDiverged(
            f"generator training diverged on split={self.split} in epoch {epoch}"
            f"{f' of {epochs}' if epochs else ''}: {reason}."
            + (f" Training-loss epoch means (last {min(4, len(self.history))} epochs): {trail}." if trail else "")
            + (f" The evaluated epochs' checkpoints are kept in {self.ckpt_dir} ({', '.join(kept)})." if kept
               else " No evaluated epoch was checkpointed before it.")
            + f" Fix: lower the learning rate (generator.system.lr{f', now {lr:g}' if lr is not None else ''})"
            + (", train fewer epochs (generator.epochs), or run in fp32 (precision=fp32)." if bf16
               else " or train fewer epochs (generator.epochs)."))

    def stopped(self, reason: str, pl_module: pl.LightningModule, epochs: int | None, evaluated: list[int],
                exported: bool = False, kept: Path | str = "last.ckpt") -> dict[str, Any]:
        """The record of a run stopped at its divergence (``on_divergence=stop``) after the evaluated epochs
        ``evaluated``: where and why it stopped, which epochs its results come from, the message.
        ``exported``: this split's generator is the one the run exports (split=test); ``kept``: the checkpoint
        it is restored from (this run's last.ckpt, or the one a resumed run started from)."""
        epoch = pl_module.current_epoch + 1 if pl_module._trainer is not None else len(self.history)
        last = evaluated[-1]
        span = f"epoch {last}" if len(evaluated) == 1 else f"epochs {evaluated[0]}–{last}"
        lr = pl_module.hparams.get("lr")
        bf16 = pl_module._trainer is not None and "bf16" in str(pl_module._trainer.precision)
        message = (f"split={self.split}: generator training diverged in epoch {epoch}{f' of {epochs}' if epochs else ''} "
                   f"({reason}) and stopped there. Its results come from the evaluated {span} (the `val` "
                   f"selection: those both splits evaluated); the generator kept ({kept}"
                   f"{', the exported one' if exported else ''}) is epoch {last}'s. The schedule was not "
                   f"completed: for a complete run lower the learning rate (generator.system.lr"
                   f"{f', now {lr:g}' if lr is not None else ''})"
                   + (", train fewer epochs or run in fp32 (precision=fp32)" if bf16 else " or train fewer epochs"))
        return {"split": self.split, "epoch": epoch, "of": epochs, "last_evaluated_epoch": last,
                "reason": reason, "message": message}

    def state_dict(self) -> dict:
        return {"history": [[e, m] for e, m in self.history], "warnings": list(self.warnings),
                "warned": sorted(self._warned)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [(int(e), dict(m)) for e, m in state_dict.get("history", [])]
        self.warnings = list(state_dict.get("warnings", []))
        self._warned = set(state_dict.get("warned", []))


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of ``module``'s parameters holding NaN or ±Inf (one ``aminmax`` reduction per tensor)."""
    named = [(name, p) for name, p in module.named_parameters() if p.numel()]
    if not named:
        return []
    extremes = torch.stack([torch.stack(torch.aminmax(p.detach())).float() for _, p in named])
    finite = torch.isfinite(extremes).all(dim=1).tolist()  # one host sync for all tensors
    return [name for (name, _), ok in zip(named, finite) if not ok]


class EpochLine(pl.Callback):
    """One plain line per epoch (for batch-job logs, where redrawn progress bars turn into noise)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = "  ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items()))
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
              f"{time.perf_counter() - self._start:.1f}s  {shown}", flush=True)


def progress_callbacks() -> list[pl.Callback]:
    """A TQDM bar in a terminal; one line per epoch in a log file (SLURM, CI, ``| tee``)."""
    return [TQDMProgressBar(refresh_rate=10)] if sys.stdout.isatty() else [EpochLine()]
