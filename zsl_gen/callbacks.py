"""GZSL evaluation during generator training, as a Lightning callback (the systems stay evaluation-free)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from zsl_gen.data.types import ZSLData
from zsl_gen.eval import ClassifierConfig, EvalCurves, train_and_evaluate
from zsl_gen.runtime import release_freed_memory


class GZSLEvaluation(pl.Callback):
    """Every ``every_n_epochs`` generator epochs (and at the last): synthesize ``syn_num`` features per
    unseen class, train the final classifier, and record its per-classifier-epoch S/U/H/T1 curves.

    Synthesis and classifier use their own seeded generators (seed, epoch), so evaluating more or less
    often never changes generator training. ``records`` holds ``(epoch, EvalCurves)`` in order.
    """

    def __init__(self, data: ZSLData, classifier: ClassifierConfig, syn_num: int, every_n_epochs: int = 1,
                 seed: int = 0):
        self.data, self.classifier, self.syn_num = data, classifier, syn_num
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.records: list[tuple[int, EvalCurves]] = []

    def _due(self, trainer: pl.Trainer, epoch: int) -> bool:
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last or bool(trainer.fast_dev_run)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self._due(trainer, epoch):
            return
        device = pl_module.device
        noise = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch)
        if self.data.train_x.device != device:  # moved once, not at every evaluation
            self.data = self.data.to(device)
        # Every training step sets its gradients afresh (zero_grad before backward), so the last step's
        # gradient buffers are dead weight here: freeing them leaves room for the classifier's features
        # (tf-VAEGAN at AWA2: 69 M weights, 276 MB of gradients).
        pl_module.zero_grad(set_to_none=True)
        release_freed_memory()  # and what keep_freed_memory holds for the next training step
        inputs = pl_module.classifier_inputs(self.data, self.syn_num, noise, self.classifier.feature_dtype)
        with torch.inference_mode(False), torch.enable_grad():
            curves = train_and_evaluate(inputs, self.classifier, seed=self.seed * 1_000_003 + epoch)
        self.records.append((epoch, curves))
        best = int(np.nanargmax(curves.H.max(axis=1)))
        split = self.data.split
        pl_module.log_dict({f"{split}/S": float(curves.S[best].max()) * 100,
                            f"{split}/U": float(curves.U[best].max()) * 100,
                            f"{split}/H": float(curves.H.max()) * 100,
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
