"""What every generator system shares: in-memory data, index batches, synthesis and classifier inputs.

A system is a thin LightningModule that wires optimisation around small ``nn.Module`` networks. Its
constructor takes plain numbers and strings only (``save_hyperparameters()``), so checkpoints load with
``torch.load(weights_only=True)`` and ``System.load_from_checkpoint(path)``. Data is attached with
``set_data`` (it is not a hyper-parameter) and lives on the training device as whole tensors; batches
are index tensors drawn by ``IndexBatches``, no DataLoader workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterable, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ParallelStrategy
from torch.utils.data import DataLoader, IterableDataset

from zsl_gen.data.types import ZSLData
from zsl_gen.errors import ConfigError
from zsl_gen.eval.types import ClassifierInputs
from zsl_gen.runtime import release_freed_memory

log = logging.getLogger(__name__)


class IndexBatches(IterableDataset):
    """One epoch of index batches, without replacement within the epoch, seeded by (seed, epoch).

    Yields ``steps`` LongTensors of shape ``(draws, batch_size)``: ``draws`` is the number of
    mini-batches one training step consumes (e.g. 5 critic batches for WGAN-GP).
    """

    def __init__(self, n: int, batch_size: int, steps: int, draws: int, seed: int,
                 epoch_fn: Callable[[], int], rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.steps, self.draws = n, batch_size, steps, draws
        self.seed, self.epoch_fn = seed, epoch_fn
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        # every rank takes the same number of steps (DDP all-reduces each one): ceil(steps / world_size)
        return math.ceil(self.steps / self.world_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        steps = len(self) * self.world_size  # = self.steps on one process; padded by wrap-around under DDP
        need = steps * self.draws * self.batch_size
        perms = [torch.randperm(self.n, generator=g) for _ in range(math.ceil(need / self.n))]
        idx = torch.cat(perms)[:need].view(steps, self.draws, self.batch_size)
        # Under DDP every rank draws the same permutation and keeps its own share of the steps.
        yield from idx[self.rank::self.world_size]


def adam(params, fused: bool = True, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused kernel where this torch build has one for the parameters' device.

    The fused kernel updates each tensor in one pass instead of ~10 element-wise passes (6x faster on a
    4096 x 2360 critic layer on CPU); the update is the same algorithm, equal up to float rounding
    (~1e-7 relative). Falls back to the default implementation where no fused kernel exists, or with
    ``fused=False``.
    """
    params = list(params)
    if not fused:
        return torch.optim.Adam(params, **kwargs)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, **kwargs)


# where a WGAN system's generator update takes its batch: the last critic update's (the official codes) or a
# fresh draw
GENERATOR_BATCHES = ("last_critic", "fresh")


class CriticSchedule:
    """Mixin of the WGAN systems (f-CLSWGAN, f-VAEGAN, tf-VAEGAN): ``critic_steps`` critic updates per
    generator update, each on its own batch, so a training step draws ``critic_steps`` batches (one more with
    ``generator_batch="fresh"``)."""

    @staticmethod
    def check_critic_schedule(critic_steps: int, generator_batch: str) -> None:
        """Raises ``ConfigError`` naming the field when either value is invalid."""
        if generator_batch not in GENERATOR_BATCHES:
            raise ConfigError(f"generator_batch must be one of {GENERATOR_BATCHES}, got {generator_batch!r}")
        if critic_steps < 1:
            raise ConfigError(f"critic_steps must be at least 1, got {critic_steps}")

    @property
    def draws_per_step(self) -> int:
        return self.hparams.critic_steps + (self.hparams.generator_batch == "fresh")


class GeneratorSystem(pl.LightningModule):
    """Base class of the feature generators.

    Subclasses implement ``training_step`` (receiving an index batch of shape ``(draws_per_step,
    batch_size)``: rows of the training set, drawn on the device) and ``synthesize``; they set
    ``self.batch_size`` and may override ``draws_per_step``. The final classifier's data come from
    ``classifier_inputs`` (its training-set sizes from ``classifier_train_sizes``, checked before training),
    in the space ``transform_features`` maps features to (``classifier_feature_dim`` wide; tf-VAEGAN's feature
    map is ``feature_map_modules``); CADA-VAE overrides these for its latent space.
    """

    batch_size: int = 64
    draws_per_step: int = 1

    def __init__(self) -> None:
        super().__init__()
        self._data: ZSLData | None = None
        self.sampling_seed = 0
        self._epoch_sums: dict[str, Any] = {}
        self._epoch_weight = 0

    @staticmethod
    def step_and_release(optimizer) -> None:
        """``optimizer.step()``, then its gradients freed at once (``zero_grad(set_to_none=True)``).

        Manual-optimisation systems call this instead of leaving the gradients to the next ``zero_grad``
        before a backward: until then they would sit beside everything the next phase allocates (tf-VAEGAN:
        the generator group's 208 MB at AWA2 shapes through the next step's critic updates). Results are
        bit-identical: every backward here starts from ``None`` gradients either way.
        """
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def updates_in_backward(self, *optimizers) -> Iterator[None]:
        """Within the block, a backward pass updates each parameter of ``optimizers`` the moment its gradient
        is complete and frees that gradient at once, so a network's gradients never all exist together
        (tf-VAEGAN's generator step at AWA2 shapes: 208 MB of them, at its peak memory).

        Each update is the optimiser's own ``step`` on the one parameter that has a gradient at that moment
        (the gradients were set to ``None`` before the backward, and every earlier one is freed already), so
        it applies the same per-tensor update, state and step count as a ``step`` after the backward: the
        weights come out bit for bit the same. The autograd engine sums every use of a parameter before its
        gradient is accumulated, and a node that needs a weight has run by then, so no update reaches a
        weight the pass still reads. Call ``step_and_release`` after the backward as usual: with no gradient
        left it updates nothing, and Lightning counts the step as before.

        A no-op (the update waits for that ``step``) where a gradient is not final when accumulated: under a
        parallel strategy such as DDP (its reducer averages, or zero-fills, gradients afterwards, even with
        one process) and with a gradient scaler (``16-mixed``: unscaled in ``step``).
        """
        trainer = self._trainer
        if trainer is not None and (isinstance(trainer.strategy, ParallelStrategy)
                                    or getattr(trainer.precision_plugin, "scaler", None) is not None):
            yield
            return
        handles = []
        for optimizer in optimizers:
            inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one

            def update(param: torch.Tensor, inner=inner) -> None:
                inner.step()
                param.grad = None

            handles += [param.register_post_accumulate_grad_hook(update)
                        for group in inner.param_groups for param in group["params"] if param.requires_grad]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- logging ----------------------------------------------------------------------------------------
    def log_epoch_means(self, values: dict[str, torch.Tensor | float], batch_size: int, batch_idx: int) -> None:
        """Log per-step scalars as their epoch means weighted by ``batch_size``: exactly what
        ``self.log_dict(values, on_step=False, on_epoch=True, batch_size=batch_size)`` logs every step.

        The sums are kept here (one stacked device tensor for the tensor values, Python floats for the
        rest) and handed to Lightning once, at the epoch's last step: ``self.log`` costs about a
        millisecond per key and call on CPU (CADA-VAE's 8 keys were 20% of its step time).
        """
        trainer = self._trainer
        if trainer is None:
            return
        last = trainer.num_training_batches
        if not math.isfinite(last):  # no known epoch length: let Lightning aggregate every step
            self.log_dict(values, on_step=False, on_epoch=True, batch_size=batch_size)
            return
        if batch_idx == 0:
            self._epoch_sums, self._epoch_weight = {}, 0
        tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
        if tensors:
            stacked = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]) * batch_size
            key = tuple(tensors)
            self._epoch_sums[key] = stacked if key not in self._epoch_sums else self._epoch_sums[key] + stacked
        for k, v in values.items():
            if not isinstance(v, torch.Tensor):
                self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + float(v) * batch_size
        self._epoch_weight += batch_size
        if batch_idx == int(last) - 1:
            means: dict[str, torch.Tensor | float] = {}
            for key, total in self._epoch_sums.items():
                if isinstance(key, tuple):
                    means.update(zip(key, (total / self._epoch_weight).unbind()))
                else:
                    means[key] = total / self._epoch_weight
            self.log_dict(means, on_step=False, on_epoch=True, batch_size=self._epoch_weight)
            self._epoch_sums, self._epoch_weight = {}, 0

    # ---- data -----------------------------------------------------------------------------------------
    def set_data(self, data: ZSLData, seed: int = 0) -> None:
        """Attach the training data (moved to the training device when fitting starts)."""
        if data.feature_dim != self.hparams.feature_dim or data.semantic_dim != self.hparams.semantic_dim:
            raise ValueError(
                f"data has feature_dim={data.feature_dim}, semantic_dim={data.semantic_dim} but the system "
                f"was built for {self.hparams.feature_dim}, {self.hparams.semantic_dim}")
        self._data = data
        self.sampling_seed = seed

    @property
    def data(self) -> ZSLData:
        if self._data is None:
            raise RuntimeError("no data attached: call system.set_data(data) before fitting")
        return self._data

    def on_fit_start(self) -> None:
        self._data = self.data.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what the weights were trained on, so a resume on other data files is refused (zsl_gen.pipeline)
        if self._data is not None:
            checkpoint["data_sha256"] = sorted(self._data.files.values())

    def on_train_start(self) -> None:
        # A resumed run gets its optimisers' param groups back from the checkpoint, hyper-parameters included:
        # the settings this run was given (a lower generator.system.lr after a divergence) must win, so every
        # group takes lr, betas, ... from a fresh configure_optimizers() (a no-op for an unchanged resume).
        fresh = self.configure_optimizers()
        for restored, new in zip(self.trainer.optimizers, fresh if isinstance(fresh, (list, tuple)) else [fresh]):
            for group, new_group in zip(restored.param_groups, new.param_groups, strict=True):
                # the restored state's layout depends on amsgrad (fused keeps the checkpoint's kernel choice)
                if bool(group.get("amsgrad")) != bool(new_group.get("amsgrad")):
                    raise ConfigError(f"generator.system: amsgrad={bool(new_group.get('amsgrad'))} differs from the "
                                      f"checkpoint's amsgrad={bool(group.get('amsgrad'))}, whose optimiser state it "
                                      "cannot continue; resume with the run's own setting")
                group.update({k: new_group[k] for k in ("lr", "betas", "eps", "weight_decay") if k in new_group})

    def on_train_batch_start(self, batch: torch.Tensor, batch_idx: int) -> None:
        # Noise is drawn from the global RNG; reseeding per (seed, epoch) at the epoch's first batch (after
        # the DataLoader has drawn its own seed) makes a run resumed from an epoch-end checkpoint continue
        # exactly as the uninterrupted run would have.
        if batch_idx == 0:
            torch.manual_seed(self.sampling_seed * 1_000_003 + 7919 * (self.current_epoch + 1))

    def steps_per_epoch(self) -> int:
        """Training steps per epoch: one per ``batch_size`` training samples (as the papers' loops)."""
        return max(1, math.ceil(self.data.train_x.shape[0] / self.batch_size))

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer else (0, 1)
        n = self.data.train_x.shape[0]
        if self.batch_size > n:  # a larger batch would repeat samples; the official loops give all of them then
            log.warning("generator.system.batch_size=%s exceeds the %d training samples (split=%s): each batch holds "
                        "all %d of them", self.batch_size, n, self.data.split, n)
        # debug=overfit (trainer.overfit_batches): the same batches every epoch, not each epoch's first ones
        overfit = bool(self._trainer and self.trainer.overfit_batches)
        batches = IndexBatches(n, min(int(self.batch_size), n), self.steps_per_epoch(), self.draws_per_step,
                               self.sampling_seed, (lambda: 0) if overfit else (lambda: self.current_epoch),
                               rank, world)
        return DataLoader(batches, batch_size=None, num_workers=0)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather features ``(B, D)``, labels ``(B,)`` and class semantics ``(B, A)`` for indices ``(B,)``."""
        x, y = self.data.train_x[idx], self.data.train_y[idx]
        return x, y, self.data.semantics[y]

    # ---- synthesis --------------------------------------------------------------------------------------
    def synthesize(self, semantics: torch.Tensor, n_per_class: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Synthetic features for each class vector.

        Args:
            semantics: ``(K, A)`` class-semantic vectors (preprocessed like the training semantics).
            n_per_class: samples per class.
            generator: source of the noise (on the system's device), for reproducible synthesis.

        Returns:
            ``(K * n_per_class, D)`` features, class-major (all samples of class 0 first).
        """
        raise NotImplementedError

    def classifier_feature_dim(self, data: ZSLData) -> int:
        """Width ``F`` of the final classifier's features: the image features' ``D`` here."""
        return data.feature_dim

    def feature_map_modules(self) -> tuple[torch.nn.Module, ...]:
        """The networks ``transform_features`` runs (none here; tf-VAEGAN's semantic decoder)."""
        return ()

    def transform_features(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
        """The final classifier's features of image features ``x (N, D)``: ``x`` itself here (tf-VAEGAN maps
        them), stored in ``dtype`` (``None``: ``x``'s; no copy when it already has it) or written into
        ``out`` ``(N, F)``."""
        if out is None:
            return x.to(dtype or x.dtype)
        return out.copy_(x)

    def classifier_train_sizes(self, data: ZSLData, n_per_class: int) -> tuple[int, int]:
        """How many training samples ``classifier_inputs`` gives the GZSL and the ZSL classifier."""
        n_synthetic = n_per_class * data.unseen_classes.numel()
        return data.train_x.shape[0] + n_synthetic, n_synthetic

    @torch.no_grad()
    def classifier_inputs(self, data: ZSLData, n_per_class: int, generator: torch.Generator | None = None,
                          dtype: torch.dtype | None = None,
                          offload: Callable[[Iterable[torch.Tensor]], Any] | None = None) -> ClassifierInputs:
        """Real seen training features + ``n_per_class`` synthetic features per unseen class, and the test
        features, each through ``transform_features``.

        ``dtype``: the features' storage dtype (``ClassifierConfig.feature_dtype``; ``None``: the data's).
        Real and synthetic rows are written straight into one training matrix (for tf-VAEGAN: mapped, so
        the input-space matrix never exists beside it); the ZSL training set is a view of its synthetic rows.
        ``offload`` (``runtime.Offload``, during training): called with the weights once synthesis no longer
        needs them (the feature map's after the last mapping) and with each of ``data``'s image-feature sets
        once it has been mapped into a tensor of its own, so their memory can wait on disk meanwhile.
        """
        done_with = offload or (lambda tensors: None)
        was_training = self.training
        self.eval()
        try:
            syn_x = self.synthesize(data.semantics[data.unseen_classes], n_per_class, generator)
            mapping = [p for module in self.feature_map_modules() for p in module.parameters()]
            kept = set(mapping)  # tensors hash by identity
            done_with(p for p in self.parameters() if p not in kept)
            release_freed_memory()  # each phase's activations, before the next phase's outputs exist
            syn_y = data.unseen_classes.repeat_interleave(n_per_class)
            n_real = data.train_x.shape[0]
            train_x = data.train_x.new_empty(n_real + syn_x.shape[0], self.classifier_feature_dim(data),
                                             dtype=dtype or data.train_x.dtype)
            # the synthetic rows first: their input-space copy goes before the other sets' outputs fill up
            self.transform_features(syn_x, out=train_x[n_real:])
            del syn_x
            release_freed_memory()
            self.transform_features(data.train_x, out=train_x[:n_real])
            done_with([data.train_x])
            release_freed_memory()
            # the larger test set first: the last mapping, where every output exists, has the smaller input beside it
            mapped = {}
            for name in sorted(("seen_x", "unseen_x"), key=lambda key: -getattr(data, key).shape[0]):
                source = getattr(data, name)
                mapped[name] = self.transform_features(source, dtype)
                done_with([source] if not _same_memory(mapped[name], source) else [])
                release_freed_memory()
            done_with(mapping)
        finally:
            self.train(was_training)
        return ClassifierInputs(
            train_x=train_x, train_y=torch.cat([data.train_y, syn_y]),
            zsl_train_x=train_x[n_real:], zsl_train_y=syn_y,
            seen_x=mapped["seen_x"], seen_y=data.seen_y, unseen_x=mapped["unseen_x"], unseen_y=data.unseen_y,
            seen_classes=data.seen_classes, unseen_classes=data.unseen_classes)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` share a storage (``transform_features`` hands back its input when no copy is
    needed: that input is then a classifier input and must stay)."""
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
