"""The final GZSL / ZSL softmax classifier of the feature-synthesis methods (REFERENCE §2).

Published recipe (f-CLSWGAN, f-VAEGAN, tf-VAEGAN, FREE), the default here: one linear layer +
log-softmax + NLL over the split's label space (seen ∪ unseen), weights N(0, 0.02), bias 0, Adam
(lr 1e-3, β = (0.5, 0.999)), 25 epochs, mini-batches of ``syn_num`` (300) samples over a fresh seeded
shuffle each epoch; GZSL S/U/H and ZSL T1 are measured after every epoch.

The classifier is trained with closed-form gradients and ``torch.optim.Adam`` on whole tensors of the
inputs' device: no autograd graph (so it runs unchanged inside Lightning's ``no_grad``/``inference_mode``
validation and test loops), no DataLoader, no per-sample Python and no host synchronisation in the
training steps (each epoch's scoring has a few: boolean masks and the label-table size in ``metrics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from zsl_gen.errors import ConfigError, DataError
from zsl_gen.eval.metrics import (
    batched_per_class_accuracy,
    class_positions,
    harmonic_mean_array,
    nanmean_last,
)
from zsl_gen.eval.types import ClassifierInputs, EvalCurves

__all__ = ["ClassifierConfig", "train_and_evaluate", "calibrated_argmax"]

_BETA2 = 0.999
_EPS = 1e-8
_INIT_STD = 0.02
CLASSIFIER_PRECISIONS = ("fp32", "bf16")
CLASSIFIER_INITS = ("normal", "xavier")
_XAVIER_GAIN = 0.5


@dataclass
class ClassifierConfig:
    """Hyper-parameters of the final classifier (defaults: the published recipe; SUN uses ``lr=5e-4``).

    Attributes:
        epochs: classifier epochs; curves have one row per epoch.
        lr: Adam learning rate.
        beta1: Adam β1 (β2 is 0.999).
        batch_size: mini-batch size; the published code uses ``syn_num``.
        weight_decay: L2 penalty added to the gradients (Adam-style), 0 in the published recipe.
        calibration_gammas: calibrated-stacking values γ subtracted from the seen-class log-probabilities
            before the GZSL argmax; ``(0.0,)`` = no calibration (parity with the published numbers).
        precision: ``"fp32"`` (default) or ``"bf16"``: features stored in bfloat16 (half the memory) and
            the matrix products in bfloat16 with float32 weights, softmax and Adam (mixed precision).
        init: weight initialisation, bias 0 either way: ``"normal"`` N(0, 0.02) (f-CLSWGAN's
            ``classifier2.py``, default) or ``"xavier"`` Xavier-uniform with gain 0.5 (CADA-VAE's
            ``weights_init``).
        drop_last: drop each epoch's last, smaller batch (CADA-VAE's ``DataLoader(drop_last=True)``);
            default False: it is a step of its own (``classifier2.py``'s ``next_batch`` instead fills it
            up with the next epoch's first samples, so its batches are all full; same number of steps).
    """

    epochs: int = 25
    lr: float = 1e-3
    beta1: float = 0.5
    batch_size: int = 300
    weight_decay: float = 0.0
    calibration_gammas: tuple[float, ...] = (0.0,)
    precision: str = "fp32"
    init: str = "normal"
    drop_last: bool = False

    def __post_init__(self) -> None:
        # Hydra hands sequences over as ListConfig/list; keep the dataclass hashable and printable
        gammas = self.calibration_gammas
        if not isinstance(gammas, (str, bytes)) and hasattr(gammas, "__iter__"):
            self.calibration_gammas = tuple(gammas)

    @property
    def feature_dtype(self) -> torch.dtype | None:
        """The dtype the classifier keeps its features in: ``torch.bfloat16`` under ``precision="bf16"``,
        else ``None`` (the inputs' own). Systems build their classifier inputs directly in it
        (``classifier_inputs(..., dtype=...)``), so no float32 copy of the largest matrices is made."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def validate(self) -> "ClassifierConfig":
        """Check every field; returns ``self``.

        Raises:
            ConfigError: naming the first invalid field.
        """
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("beta1", self.beta1, low=0.0, high=1.0)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        gammas = self.calibration_gammas
        if isinstance(gammas, (str, bytes)) or not hasattr(gammas, "__iter__") or len(tuple(gammas)) == 0:
            raise ConfigError(
                f"classifier.calibration_gammas must be a non-empty list of numbers, got {gammas!r}; "
                "use [0.0] for no calibration"
            )
        for g in gammas:
            _check_float("calibration_gammas", g)
        if self.precision not in CLASSIFIER_PRECISIONS:
            raise ConfigError(f"classifier.precision must be one of {CLASSIFIER_PRECISIONS}, got {self.precision!r}")
        if self.init not in CLASSIFIER_INITS:
            raise ConfigError(f"classifier.init must be one of {CLASSIFIER_INITS}, got {self.init!r}")
        if not isinstance(self.drop_last, bool):
            raise ConfigError(f"classifier.drop_last must be true or false, got {self.drop_last!r}")
        return self

    def check_full_batches(self, n_train: int, n_zsl: int) -> None:
        """With ``drop_last``, refuse a batch size that leaves no full batch of the GZSL classifier's
        ``n_train`` training samples or of the ZSL classifier's ``n_zsl`` (0: no ZSL classifier).
        zsl-train checks them before the generator trains (``pipeline.train_generator``), not at its first
        evaluation.

        Raises:
            ConfigError: naming ``classifier.batch_size`` and the fix.
        """
        if not self.drop_last:
            return
        fewest = min(n_train, n_zsl) if n_zsl else n_train
        if fewest < self.batch_size:
            raise ConfigError(f"classifier.drop_last=true with classifier.batch_size={self.batch_size} leaves no "
                              f"full batch of the {fewest} training samples: lower batch_size or set "
                              "drop_last=false")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"classifier.{name} must be an integer >= {low}, got {value!r}")


def _check_float(
    name: str, value: object, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = float(value) > low if low_open else float(value) >= low
    if ok and high is not None:
        ok = float(value) < high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"< {high:g}")
        rule = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
        raise ConfigError(f"classifier.{name} must be {rule}, got {value!r}")


class _Adam:
    """Adam on a few tensors: ``torch.optim.Adam``'s fused kernel, called without the optimiser's wrapper.

    The classifier takes tens of thousands of tiny steps (e.g. CADA-VAE's latent classifier: ``64 x 200``
    weights, batch 32), where ``Optimizer.step``'s Python bookkeeping (hooks, grouping by device and dtype,
    profiling scopes) costs more than the update itself. This keeps the same state (``exp_avg``,
    ``exp_avg_sq``, a float ``step`` per tensor) and calls the same kernel ``torch.optim.Adam(fused=True)``
    calls, so the update is bit-for-bit that optimiser's. Where the kernel is missing for the device or
    dtype (or in a torch without it), it falls back to ``torch.optim.Adam``.
    """

    def __init__(self, params: list[torch.Tensor], cfg: ClassifierConfig) -> None:
        self.params = params
        self.hyper = dict(lr=float(cfg.lr), beta1=float(cfg.beta1), beta2=_BETA2,
                          weight_decay=float(cfg.weight_decay), eps=_EPS)
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]
        self._fallback: torch.optim.Adam | None = None
        if not hasattr(torch, "_fused_adam_"):
            self._use_optimizer()

    def _use_optimizer(self) -> None:
        kwargs = dict(lr=self.hyper["lr"], betas=(self.hyper["beta1"], _BETA2), eps=_EPS,
                      weight_decay=self.hyper["weight_decay"])
        try:
            self._fallback = torch.optim.Adam(self.params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype/torch
            self._fallback = torch.optim.Adam(self.params, **kwargs)

    def step(self) -> None:
        """Apply one update from the parameters' ``.grad``."""
        if self._fallback is None:
            grads = [p.grad for p in self.params]
            try:
                for count in self.steps:
                    count.add_(1.0)
                torch._fused_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
                                   amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
                                   **self.hyper)
                return
            except (RuntimeError, NotImplementedError, TypeError):
                if any(float(s) > 1 for s in self.steps):  # failed mid-run: never silently restart
                    raise
                self._use_optimizer()
        self._fallback.step()


class _SoftmaxRegression:
    """``log_softmax(x W + b)`` trained on NLL by Adam, with the closed-form gradient.

    Shapes: ``W`` ``(F, K)``, ``b`` ``(K,)``; a batch is ``x`` ``(B, F)``, ``y`` ``(B,)`` local indices.
    The gradient is written into ``.grad`` by hand and applied by :class:`_Adam`.
    """

    def __init__(self, in_dim: int, n_classes: int, cfg: ClassifierConfig, gen: torch.Generator,
                 device: torch.device, dtype: torch.dtype, compute_dtype: torch.dtype | None = None) -> None:
        # weights, softmax and Adam in ``dtype``; the matrix products in ``compute_dtype`` (mixed precision)
        self.compute_dtype = compute_dtype if compute_dtype is not None else dtype
        self.weight = torch.empty(in_dim, n_classes, device=device, dtype=dtype)
        if cfg.init == "xavier":
            bound = _XAVIER_GAIN * math.sqrt(6.0 / (in_dim + n_classes))
            self.weight.uniform_(-bound, bound, generator=gen)
        else:
            self.weight.normal_(0.0, _INIT_STD, generator=gen)
        self.bias = torch.zeros(n_classes, device=device, dtype=dtype)
        self._adam = _Adam([self.weight, self.bias], cfg)
        self._minus_one = torch.empty(0, 1, device=device, dtype=dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F) -> (N, K)`` unnormalised scores (log-probabilities up to a per-row constant)."""
        if self.compute_dtype != self.weight.dtype:
            return torch.mm(x, self.weight.to(self.compute_dtype)).to(self.weight.dtype).add_(self.bias)
        return torch.addmm(self.bias, x, self.weight)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One Adam step on the mean NLL of the batch ``x`` ``(B, F)``, ``y`` ``(B,)``."""
        n = x.shape[0]
        grad_logits = torch.softmax(self.logits(x), dim=1)
        if self._minus_one.shape[0] < n:
            self._minus_one = torch.full((n, 1), -1.0, device=x.device, dtype=grad_logits.dtype)
        grad_logits.scatter_add_(1, y[:, None], self._minus_one[:n])  # softmax − onehot, in one kernel
        grad_logits /= n
        if self.compute_dtype != self.weight.dtype:
            self.weight.grad = (x.T @ grad_logits.to(self.compute_dtype)).to(self.weight.dtype)
        else:
            self.weight.grad = x.T @ grad_logits
        self.bias.grad = grad_logits.sum(0)
        self._adam.step()


def calibrated_argmax(scores: torch.Tensor, seen_columns: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """Calibrated stacking: argmax after subtracting γ from the seen-class scores, for every γ at once.

    Args:
        scores: ``(N, C)`` log-probabilities (or any scores; a per-row constant does not change the argmax).
        seen_columns: ``(C,)`` bool, True for the seen-class columns.
        gammas: ``(G,)`` calibration values.

    Returns:
        ``(G, N)`` int64 column indices.
    """
    shift = gammas.to(scores.dtype)[:, None, None] * seen_columns.to(scores.dtype)[None, None, :]
    return (scores[None] - shift).argmax(dim=2)


def _all_finite(x: torch.Tensor) -> bool:
    """``torch.isfinite(x).all()`` from one ``aminmax`` reduction: NaN propagates into both extremes and
    ±Inf shows up in one of them. ``isfinite`` materialises ``|x|`` and three masks (a 0.5 GB transient on
    a whole AWA2 training set) and, on CPU, took 100 ms (bf16) to 340 ms (fp32) on f-CLSWGAN's CUB training
    set, a sizeable part of a classifier evaluation; this reads ``x`` once (3–6 ms)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _prepare(inputs: ClassifierInputs) -> SimpleNamespace:
    """Validate ``inputs`` and bring them to ``train_x``'s device and dtype, with local labels."""
    train_x = inputs.train_x
    if not isinstance(train_x, torch.Tensor) or train_x.dim() != 2 or train_x.shape[0] == 0:
        shape = tuple(getattr(train_x, "shape", ()))
        raise DataError(f"classifier inputs: train_x must be a non-empty (M, F) tensor, got shape {shape}")
    device, dtype = inputs.train_x.device, inputs.train_x.dtype
    if not dtype.is_floating_point:
        raise DataError(f"classifier inputs: train_x must be floating point, got {dtype}")
    feat_dim = inputs.train_x.shape[1]

    def features(name: str) -> torch.Tensor:
        x = getattr(inputs, name)
        if x.numel() == 0:
            return torch.empty(0, feat_dim, device=device, dtype=dtype)
        if x.dim() != 2 or x.shape[1] != feat_dim:
            raise DataError(
                f"classifier inputs: {name} has shape {tuple(x.shape)}, expected (n, {feat_dim}) like train_x"
            )
        x = x.to(device=device, dtype=dtype)
        if not _all_finite(x):
            cause = ("the generator diverged; lower the learning rate" if "train" in name
                     else "the evaluation features or the method's feature transform are broken; "
                          "check the preprocessing and the checkpoint")
            raise DataError(f"synthetic/real classifier inputs contain NaN/Inf ({name}) — {cause}")
        return x

    def labels(name: str, n: int) -> torch.Tensor:
        y = getattr(inputs, name).reshape(-1)
        if y.numel() != n:
            raise DataError(f"classifier inputs: {name} has {y.numel()} labels for {n} feature rows")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DataError(f"classifier inputs: {name} must hold integer class ids, got {y.dtype}")
        return y.to(device=device, dtype=torch.long)

    seen = inputs.seen_classes.reshape(-1).to(device=device, dtype=torch.long)
    unseen = inputs.unseen_classes.reshape(-1).to(device=device, dtype=torch.long)
    if seen.numel() == 0 or unseen.numel() == 0:
        raise DataError("classifier inputs: seen_classes and unseen_classes must both be non-empty")
    classes = torch.cat([seen, unseen]).sort().values
    if bool((classes[1:] == classes[:-1]).any()) or bool((classes < 0).any()):
        raise DataError("classifier inputs: seen_classes and unseen_classes must be distinct, "
                        "non-negative, disjoint global ids")

    def within(name: str, y: torch.Tensor, allowed: torch.Tensor, what: str) -> torch.Tensor:
        pos = class_positions(y, allowed)
        bad = pos < 0
        if bool(bad.any()):
            ids = torch.unique(y[bad])[:10].tolist()
            raise DataError(f"classifier inputs: {name} contains class ids outside {what}: {ids}")
        return pos

    out = SimpleNamespace(device=device, dtype=dtype, classes=classes, seen_classes=seen.sort().values,
                          unseen_classes=unseen.sort().values)
    out.seen_columns = class_positions(classes, out.seen_classes) >= 0
    out.train_x = features("train_x")
    out.train_local = within("train_y", labels("train_y", out.train_x.shape[0]), classes,
                             "seen_classes ∪ unseen_classes")
    out.zsl_x = features("zsl_train_x")
    out.zsl_local = within("zsl_train_y", labels("zsl_train_y", out.zsl_x.shape[0]), out.unseen_classes,
                           "unseen_classes")
    out.seen_x = features("seen_x")
    out.seen_y = labels("seen_y", out.seen_x.shape[0])
    within("seen_y", out.seen_y, out.seen_classes, "seen_classes")
    out.unseen_x = features("unseen_x")
    out.unseen_y = labels("unseen_y", out.unseen_x.shape[0])
    within("unseen_y", out.unseen_y, out.unseen_classes, "unseen_classes")
    return out


def _evaluate(gzsl: _SoftmaxRegression, zsl: _SoftmaxRegression | None, p: SimpleNamespace,
              gammas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GZSL S ``(G,)``, U ``(G,)`` and ZSL T1 ``()`` of the current weights, as device tensors."""
    seen_pred = p.classes[calibrated_argmax(gzsl.logits(p.seen_x), p.seen_columns, gammas)]
    unseen_pred = p.classes[calibrated_argmax(gzsl.logits(p.unseen_x), p.seen_columns, gammas)]
    s = nanmean_last(batched_per_class_accuracy(seen_pred, p.seen_y, p.seen_classes))
    u = nanmean_last(batched_per_class_accuracy(unseen_pred, p.unseen_y, p.unseen_classes))
    if zsl is None:
        t1 = torch.tensor(float("nan"), dtype=torch.float64, device=p.device)
    else:
        zsl_pred = p.unseen_classes[zsl.logits(p.unseen_x).argmax(dim=1)]
        t1 = nanmean_last(batched_per_class_accuracy(zsl_pred[None], p.unseen_y, p.unseen_classes))[0]
    return s, u, t1


@torch.no_grad()
def train_and_evaluate(
    inputs: ClassifierInputs, cfg: ClassifierConfig | None = None, seed: int = 0
) -> EvalCurves:
    """Train the GZSL and the ZSL softmax classifiers side by side and evaluate both after every epoch.

    GZSL classifier: ``C = S + U`` outputs (the split's seen ∪ unseen classes, sorted global ids mapped to
    local indices), trained on ``train_x``/``train_y``; evaluated by argmax over all ``C`` classes after
    subtracting each calibration γ from the seen-class log-probabilities. ZSL classifier: ``U`` outputs,
    trained on ``zsl_train_x``/``zsl_train_y``; evaluated on ``unseen_x`` (per-class mean top-1).
    Each epoch draws a fresh permutation per classifier from one generator seeded with ``seed``; batches
    are consecutive slices of it (the last one may be smaller). The global RNG is not touched.

    Args:
        inputs: features ``(·, F)`` and global-id labels; everything runs on ``inputs.train_x``'s device
            and dtype (other tensors are moved/cast to it).
        cfg: hyper-parameters; ``None`` = the published recipe.
        seed: seeds the weight init and the shuffles; equal seeds give equal curves on one device.

    Returns:
        :class:`EvalCurves` with ``S``, ``U``, ``H``, ``T1`` of shape ``(cfg.epochs, len(gammas))``
        (fractions; ``T1`` broadcast over γ; ``T1`` is NaN when ``zsl_train_x`` is empty).

    Raises:
        ConfigError: invalid ``cfg``.
        DataError: NaN/Inf features, labels outside their class sets, inconsistent shapes.
    """
    cfg = (cfg if cfg is not None else ClassifierConfig()).validate()
    p = _prepare(inputs)
    compute = None
    if cfg.precision == "bf16":
        compute = torch.bfloat16
        p.dtype = torch.float32 if p.dtype == torch.bfloat16 else p.dtype
        for name in ("train_x", "zsl_x", "seen_x", "unseen_x"):
            setattr(p, name, getattr(p, name).to(compute))
    gen = torch.Generator(device=p.device)
    gen.manual_seed(int(seed))
    feat_dim = p.train_x.shape[1]
    gzsl = _SoftmaxRegression(feat_dim, p.classes.numel(), cfg, gen, p.device, p.dtype, compute)
    n_zsl = p.zsl_x.shape[0]
    zsl = (_SoftmaxRegression(feat_dim, p.unseen_classes.numel(), cfg, gen, p.device, p.dtype, compute)
           if n_zsl else None)
    gammas = torch.tensor(cfg.calibration_gammas, dtype=torch.float64, device=p.device)

    n_train, bs = p.train_x.shape[0], cfg.batch_size
    cfg.check_full_batches(n_train, n_zsl)
    n_steps_g, n_steps_z = ((n_train // bs, n_zsl // bs) if cfg.drop_last else
                            (math.ceil(n_train / bs), math.ceil(n_zsl / bs)))
    # Every batch is gathered into this one buffer (GZSL and ZSL batches alternate): a fresh (bs, F) tensor per
    # batch (AWA2 tf-VAEGAN: 1800 x 6229 fp32, 45 MB) leaves the allocator holding several of them at once
    batch_x = p.train_x.new_empty(min(bs, max(n_train, n_zsl)), feat_dim)
    results = []
    for _ in range(cfg.epochs):
        perm_g = torch.randperm(n_train, generator=gen, device=p.device)
        perm_z = torch.randperm(n_zsl, generator=gen, device=p.device) if zsl is not None else None
        for step in range(max(n_steps_g, n_steps_z)):
            if step < n_steps_g:
                idx = perm_g[step * bs:(step + 1) * bs]
                x = torch.index_select(p.train_x, 0, idx, out=batch_x[:idx.numel()])
                gzsl.step(x, p.train_local.index_select(0, idx))
            if perm_z is not None and step < n_steps_z:
                idx = perm_z[step * bs:(step + 1) * bs]
                x = torch.index_select(p.zsl_x, 0, idx, out=batch_x[:idx.numel()])
                zsl.step(x, p.zsl_local.index_select(0, idx))
        results.append(_evaluate(gzsl, zsl, p, gammas))

    s = torch.stack([r[0] for r in results]).cpu().numpy()
    u = torch.stack([r[1] for r in results]).cpu().numpy()
    t1 = torch.stack([r[2] for r in results]).cpu().numpy()
    return EvalCurves(S=s, U=u, H=harmonic_mean_array(s, u), T1=np.repeat(t1[:, None], len(gammas), axis=1),
                      gammas=tuple(float(g) for g in cfg.calibration_gammas))
