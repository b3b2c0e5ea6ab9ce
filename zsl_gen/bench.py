"""zsl-bench: generator-training throughput, final-classifier time and memory at the benchmarks' real shapes.

For every (method, dataset, precision, device) case, in a subprocess of its own (so peak memory is per case):

- data: simulated 2048-d features for the REAL semantics and split locations of
  ``<data-root>/xlsa17/<DS>/att_splits.mat`` (``zsl_gen.data.simulate_features_for``); FLO has no file here,
  so its shape is simulated: 102 classes (82 seen / 20 unseen), 1024-d semantics, the published split
  sizes (trainval 5631, test_seen 1403, test_unseen 1155, train 5878, val 1156). Without a file at all
  a dataset falls back to that construction with its own published sizes.
- hyper-parameters: the published setting, i.e. the Hydra config ``experiment=<method>_<dataset>``
  (generator, batch size, syn_num, classifier) composed exactly as ``zsl-train`` composes it, plus
  ``trainer.precision`` (``32-true`` for fp32, ``bf16-mixed`` for bf16: CPU autocast, the switch
  ``zsl-train trainer.precision=bf16-mixed`` uses).
- generator training: the real path, ``pytorch_lightning.Trainer.fit`` on the system with
  ``limit_train_batches = warmup + steps``; a callback stamps every ``on_train_batch_end``; the first
  ``warmup`` step intervals are discarded and the mean of the others is the step time. Seconds per epoch
  = step time × the system's steps per epoch (``steps_per_epoch()``); this is an EXTRAPOLATION from the
  measured steps (the JSON says ``"extrapolated": true`` and how many steps were measured). Two
  schedules are not uniform within an epoch and are measured piecewise: tf-VAEGAN's second half of each
  epoch runs the feedback loop (both halves are timed and averaged), and CADA-VAE switches its cross- and
  alignment terms on after warm-up epochs 21 / 6 (timed with every term on, the steady-state cost).
  One-off work at fit start (f-CLSWGAN's seen-class classifier pre-training) is reported as ``setup_s``.
- samples/s: the epoch's nominal training samples (the training-set size; × ``feedback_loop`` for
  tf-VAEGAN) divided by seconds per epoch: what "one epoch" means in each official loop.
- final classifier: ``zsl_gen.eval.train_and_evaluate`` on the method's classifier inputs at the
  dataset's shapes (the trained-for-a-few-steps generator's ``classifier_inputs`` with ``syn_num``),
  with the method's classifier config (epochs, batch = syn_num, lr): seconds per evaluation (median of
  ``--classifier-repeats``), and the same work in the official code's style (``official_style_classifier``:
  autograd ``nn.Linear`` + ``LogSoftmax`` + ``NLLLoss``, ``torch.optim.Adam``, per-batch Python, evaluation
  per epoch) for the speed-up.
- end-to-end: ``setup_s + epochs × (s_per_epoch + classifier_s / eval_every)`` for the published epochs
  (``eval_every`` = 1 as published), extrapolated, not run.
- FLOPs: counted analytically per training step from the layer shapes (``step_flops``): a Linear
  ``in → out`` on ``B`` rows costs ``2·B·in·out`` forward, the same again for the input gradient and for the
  weight gradient (so fwd+bwd ≈ 6·B·in·out, 4·B·in·out when its input needs no gradient, 2·B·in·out
  more for the input gradient only, e.g. through a frozen critic). The gradient penalty's first layer costs
  8·B·in·H: the forward of the interpolates, their input gradient ``(s ⊙ w₂) W₁``, and that product's two
  weight-side products (``Critic.wgan_gp_backward`` runs exactly these; autograd's double backward runs the
  same four plus two more, which are not counted).
  Element-wise work is not counted. Achieved GFLOP/s = FLOPs per step / step time. A test checks these
  counts against ``torch.utils.flop_counter`` around a real training step of every method.
- optimiser: the seconds per step spent inside the optimisers' ``step`` (their parameter updates, timed
  around each call; an automatic-optimisation closure's forward/backward is subtracted), its share of the
  step, and the bound it sets: ``fraction_of_peak_bound`` = the fraction of peak if every product ran at
  the peak and the (memory-bound, batch-independent) updates kept their measured time. Where that bound is
  itself under 50%, no matmul work can bring the method to half the peak at its published batch size.
- matmul peak: ``torch.matmul`` of the precision's dtype on representative sizes (the layer shapes the
  systems run, and a square 2048³; on a GPU also 8192³, each timing ≥ 20 ms of products), median of
  repeats, the best size; measured in the case's process just before and again just after the timed
  steps, ``peak_gflops`` = the higher of the two. Where they differ by more than ``PEAK_SPREAD_LIMIT``
  (the machine's own speed moved during the case: shared or throttled cores), ``peak_unstable`` is true
  and the Markdown table marks the case's % of peak with †.
- memory: ``peak_rss_mb`` = ``ru_maxrss`` of the case's process (data + model + optimisers + training +
  classifier evaluation; on a GPU also ``peak_gpu_allocated_mb``/``_reserved_mb``), with ``zsl-train``'s
  default ``keep_freed_memory`` (``--system-malloc``: the C library's malloc defaults instead, for
  before/after).
- official-style references (``--official``, ``--official-classifier``): timed in a second process of
  their own per case, with the C library's malloc defaults, as the official code runs.

Usage::

    zsl-bench                                    # all methods × CUB, SUN, AWA2, FLO, fp32
    zsl-bench --methods fclswgan,cadavae --datasets CUB --precision fp32,bf16 --out bench.json
    python -m zsl_gen.bench --help

Writes ``--out`` (JSON list of cases) and ``--md`` (Markdown table, default: next to ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsl_gen.data.benchmarks import BENCHMARKS
from zsl_gen.cli.common import exit_on_sigterm, report_user_errors
from zsl_gen.runtime import (
    cpu_model,
    keep_freed_memory,
    native_bf16,
    evaluation_offload,
    release_freed_memory,
)

METHODS = ("fclswgan", "cvae", "fvaegan", "tfvaegan", "cadavae")
DATASETS = ("CUB", "SUN", "AWA2", "FLO")
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
_MARK = "@@ZSL-BENCH@@"


# ---- data -----------------------------------------------------------------------------------------------
def default_data_root() -> Path:
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "data", here / ".." / "shared" / "data", Path("../shared/data")):
        if (cand / "xlsa17").is_dir():
            return cand.resolve()
    return (here.parent / "shared" / "data").resolve()


def _write_shape_file(name: str, path: Path, seed: int = 0) -> Path:
    """An ``att_splits.mat`` with the published shape of ``name`` (random semantics, published split sizes)."""
    import scipy.io

    published = BENCHMARKS[name]  # its first semantic space: CUB's attributes, FLO's sentences
    c, a = published.n_classes, next(iter(published.semantic_dims.values()))
    (n_tv, n_ts, n_tu), (n_tr, n_val) = published.samples, published.locs
    rng = np.random.default_rng(seed)
    sem = np.abs(rng.standard_normal((c, a))).astype(np.float64)
    sem /= np.linalg.norm(sem, axis=1, keepdims=True)
    n_seen_rows = n_tv + n_ts
    n = n_seen_rows + n_tu
    perm = rng.permutation(n)
    tu, seen_rows = perm[:n_tu], perm[n_tu:]
    tv, ts = seen_rows[:n_tv], seen_rows[n_tv:]
    val = rng.permutation(seen_rows)[:n_val]
    train = np.setdiff1d(seen_rows, val)[:n_tr]
    payload = {"att": sem.T, "trainval_loc": tv + 1, "test_seen_loc": ts + 1, "test_unseen_loc": tu + 1,
               "train_loc": train + 1, "val_loc": val + 1}
    payload = {k: (v.reshape(-1, 1) if k.endswith("_loc") else v) for k, v in payload.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, payload)
    return path


def real_semantics_file(name: str, data_root: Path) -> Path:
    """Where a dataset's real ``att_splits.mat`` would be under ``data_root``."""
    return Path(data_root) / "xlsa17" / name / "att_splits.mat"


def dataset_source(name: str, data_root: Path, cache: Path) -> tuple[Path, str]:
    """The semantics/splits file a dataset's simulation uses, and how it was obtained."""
    real = real_semantics_file(name, data_root)
    if real.is_file():
        return real, f"real semantics and splits ({real})"
    shaped = _write_shape_file(name, cache / name / "att_splits.mat")
    return shaped, "simulated shape (published class counts, semantic dim and split sizes; random semantics)"


def load_raw_cached(name: str, data_root: Path, cache: Path):
    """Simulated ``RawDataset`` for ``name`` (features cached as ``.npy`` so each case does not re-simulate)."""
    from zsl_gen.data._io import atomic_write, atomic_write_text, sha256_file
    from zsl_gen.data.simulate import simulate_features_for
    from zsl_gen.data.types import RawDataset

    src, how = dataset_source(name, data_root, cache)
    store = cache / f"{name}-{sha256_file(src)[:16]}"  # keyed by the source: real and shape-only never mix
    meta_path = store / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        arrays = np.load(store / "arrays.npz")
        raw = RawDataset(name=name, features=np.load(store / "features.npy"), labels=arrays["labels"],
                         semantics=arrays["semantics"], class_names=meta["class_names"],
                         locs={k[4:]: arrays[k] for k in arrays.files if k.startswith("loc_")},
                         semantic_space=meta["semantic_space"], files=meta["files"])
        return raw, meta["source"]
    raw = simulate_features_for(src, feature_dim=2048, seed=0, name=name)
    store.mkdir(parents=True, exist_ok=True)
    atomic_write(store / "features.npy", lambda fh: np.save(fh, raw.features))
    atomic_write(store / "arrays.npz", lambda fh: np.savez(fh, labels=raw.labels, semantics=raw.semantics,
                                                           **{f"loc_{k}": v for k, v in raw.locs.items()}))
    # written last and whole: it marks the arrays complete (an interrupted cache is simulated again)
    atomic_write_text(meta_path, json.dumps({"class_names": list(raw.class_names), "semantic_space": raw.semantic_space,
                                             "files": raw.files, "source": how}))
    return raw, how


# ---- configuration --------------------------------------------------------------------------------------
def compose_config(method: str, dataset: str, precision: str, overrides: list[str] | None = None):
    """The published setting of ``method`` on ``dataset`` as ``zsl-train experiment=...`` composes it."""
    from hydra import compose, initialize_config_dir

    from zsl_gen.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={method}_{dataset.lower()}",
                                           f"trainer.precision={PRECISIONS[precision]}", "logger=none",
                                           *(overrides or [])])


# ---- machine -------------------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(device: str) -> dict[str, Any]:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "bf16_hw": bool({"avx512_bf16", "amx_bf16"} & cpu_flags()),
            "bf16_native": native_bf16(device)}
    try:
        import pytorch_lightning as pl

        info["lightning"] = pl.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_avg"] = os.getloadavg()
    from zsl_gen.results import utc_now, versions

    code = versions()  # the zsl-gen version and git commit the numbers came from
    info.update(zsl_gen=code.get("zsl_gen"), git_commit=code.get("git_commit"), git_dirty=code.get("git_dirty"),
                measured=utc_now())
    return info


PEAK_SIZES = ((64, 2360, 4096), (128, 2360, 4096), (512, 2133, 4096), (2048, 2048, 2048))
CUDA_PEAK_SIZES = (8192, 8192, 8192),  # a GPU reaches its peak only on products far larger than a CPU's
CUDA_TIMING_S = 0.02  # per timed sample: a GPU product at these sizes takes microseconds, a launch a few
PEAK_SPREAD_LIMIT = 1.25  # higher / lower of the two peak measurements of one case


def matmul_peak(precision: str, device: str = "cpu", repeats: int = 7) -> dict[str, Any]:
    """Measured ``torch.matmul`` GFLOP/s of the precision's dtype on representative sizes; best = peak."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    sizes = {}
    for m, k, n in PEAK_SIZES + (CUDA_PEAK_SIZES if device == "cuda" else ()):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        inner = max(1, int(2e9 / (2 * m * k * n)))  # ~2 GFLOP per timing
        for _ in range(2):
            a @ b
        if device == "cuda":  # enough products per timing that launches and the sync do not count
            _sync(device)
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            _sync(device)
            inner = max(inner, int(inner * CUDA_TIMING_S / max(time.perf_counter() - t, 1e-9)))
        times = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            _sync(device)
            times.append((time.perf_counter() - t) / inner)
        sizes[f"{m}x{k}x{n}"] = round(2 * m * k * n / statistics.median(times) / 1e9, 1)
    return {"peak_gflops": max(sizes.values()), "by_size": sizes}


def combined_peak(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One case's peak from the measurements before and after its timing (``matmul_peak`` results)."""
    low, high = sorted((before["peak_gflops"], after["peak_gflops"]))
    spread = round(high / low, 3) if low > 0 else None  # None: a measurement of zero (JSON has no Infinity)
    return {"peak_gflops": high, "peak_gflops_before": before["peak_gflops"],
            "peak_gflops_after": after["peak_gflops"], "peak_spread": spread,
            "peak_unstable": spread is None or spread > PEAK_SPREAD_LIMIT,
            "by_size": after["by_size"] if after["peak_gflops"] >= before["peak_gflops"] else before["by_size"]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_gpu_memory_peaks(device: str) -> None:
    """Start the CUDA allocator's peaks afresh (a no-op on the CPU): the peak measurement's matrices are not
    the method's memory."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _gpu_memory_peaks(device: str) -> dict[str, float | None]:
    """The CUDA caching allocator's peaks since its last reset, MiB (``None`` on the CPU)."""
    on_gpu = device == "cuda"
    return {"peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None,
            "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1) if on_gpu else None}


# ---- analytic FLOPs -------------------------------------------------------------------------------------
def _lin(b: int, i: int, o: int) -> float:
    return 2.0 * b * i * o


def step_flops(method: str, hp: dict[str, Any], d: int, a: int, n_seen: int, feedback: bool = False) -> float:
    """Matmul FLOPs of one training step (see the module docstring for the conventions)."""
    b = int(hp["batch_size"])
    if method == "cadavae":
        z = int(hp["latent_dim"])
        fe, fd, se, sd = (int(hp[k]) for k in ("feature_enc_hidden", "feature_dec_hidden",
                                                "semantic_enc_hidden", "semantic_dec_hidden"))
        def enc(i: int, h: int) -> float:  # input: data, no grad
            return 2 * _lin(b, i, h) + 3 * 2 * _lin(b, h, z)

        def dec(h: int, o: int) -> float:
            return 3 * (_lin(b, z, h) + _lin(b, h, o))

        # encoders once; each decoder twice (own latent + cross)
        return enc(d, fe) + enc(a, se) + 2 * dec(fd, d) + 2 * dec(sd, a)
    h = int(hp["hidden_dim"])
    zdim = int(hp.get("noise_dim") or a)
    g_fwd = _lin(b, zdim + a, h) + _lin(b, h, d)
    bott = bool(hp.get("encoder_bottleneck", True))
    enc_fwd = _lin(b, d + a, h) + (_lin(b, h, 2 * zdim) + 2 * _lin(b, 2 * zdim, zdim) if bott
                                   else 2 * _lin(b, h, zdim))
    enc_train = enc_fwd + (enc_fwd - _lin(b, d + a, h)) * 2 + _lin(b, d + a, h)  # fc1: no input grad
    crit_fc1, crit_fc2 = (lambda n: _lin(n, d + a, h)), (lambda n: _lin(n, h, 1))
    critic_update = 2 * crit_fc1(2 * b) + 3 * crit_fc2(2 * b) + 4 * crit_fc1(b) + 4 * crit_fc2(b)
    critic_through = 2 * (crit_fc1(b) + crit_fc2(b))  # frozen critic: forward + input gradient
    if method == "cvae":
        return enc_train + 3 * g_fwd
    k = int(hp["critic_steps"])
    if method == "fclswgan":
        g_train = 2 * _lin(b, zdim + a, h) + 3 * _lin(b, h, d)
        return k * (g_fwd + critic_update) + g_train + critic_through + 2 * _lin(b, d, n_seen)
    # f-VAEGAN / tf-VAEGAN
    dec_fwd = _lin(b, d, h) + _lin(b, h, a)
    fb_fwd = 2 * _lin(b, h, h)
    # feedback: pass 1 and the decoder (which returns Dec.hidden with Dec(x)) run without grad, then F
    gen_fwd = g_fwd + ((g_fwd + dec_fwd + fb_fwd) if feedback else 0.0)
    critic_step = enc_fwd + gen_fwd + critic_update
    g_step = enc_train + 3 * g_fwd + critic_through
    if feedback:  # ... and F trains: forward, fc2's two gradients, fc1's ∇W only (its input is detached)
        g_step += g_fwd + dec_fwd + fb_fwd + 3 * _lin(b, h, h)
    if not hp.get("encoded_noise", True):
        g_step += 2 * g_fwd + critic_through
    if method == "tfvaegan":
        critic_step += 2 * _lin(b, d, h) + 3 * _lin(b, h, a)  # decoder update on the real batch
        g_step += 3 * dec_fwd  # decoder on the fake, input gradient into G, weights trained
    return k * critic_step + g_step


# ---- the official-style classifier (reference for the speed-up) ---------------------------------------
def official_style_classifier(inputs, cfg, seed: int = 0) -> float:
    """Seconds of the final classifier as the official f-CLSWGAN/tf-VAEGAN ``classifier2.py`` runs it.

    Autograd ``nn.Linear`` + ``LogSoftmax`` + ``NLLLoss``, ``optim.Adam(lr, betas=(β1, 0.999))``; per epoch
    ``ceil(N / batch_size)`` full mini-batches from its ``next_batch`` (``_OfficialNextBatch``), each copied
    into a preallocated input, then a batched evaluation of test_seen and test_unseen (argmax, per-class
    accuracy with a Python loop over classes). The GZSL and the ZSL classifiers are separate runs in the
    official code; both are run, as ``train_and_evaluate`` trains both, and the ZSL one evaluates
    test_unseen only, as its ``fit_zsl`` does.
    """
    from dataclasses import replace

    from torch import nn

    # the official code is float32 throughout (inputs built for a bf16 classifier are cast back)
    inputs = replace(inputs, **{k: getattr(inputs, k).float()
                                for k in ("train_x", "zsl_train_x", "seen_x", "unseen_x")})
    torch.manual_seed(seed)
    classes = torch.cat([inputs.seen_classes, inputs.unseen_classes]).sort().values
    lookup = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    lookup[classes] = torch.arange(classes.numel())
    local = torch.full_like(lookup, -1)
    local[inputs.unseen_classes] = torch.arange(inputs.unseen_classes.numel())
    gzsl_tests = ((inputs.seen_x, lookup[inputs.seen_y]), (inputs.unseen_x, lookup[inputs.unseen_y]))
    zsl_tests = ((inputs.unseen_x, local[inputs.unseen_y]),)  # fit_zsl evaluates test_unseen only
    start = time.perf_counter()
    for train_x, train_y, n_out, tests in (
            (inputs.train_x, lookup[inputs.train_y], classes.numel(), gzsl_tests),
            (inputs.zsl_train_x, local[inputs.zsl_train_y], inputs.unseen_classes.numel(), zsl_tests)):
        model = nn.Sequential(nn.Linear(train_x.shape[1], n_out), nn.LogSoftmax(dim=1))
        crit = nn.NLLLoss()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        n, bs = train_x.shape[0], min(cfg.batch_size, train_x.shape[0])
        batch_x, batch_y = torch.empty(bs, train_x.shape[1]), torch.empty(bs, dtype=torch.long)
        next_batch = _OfficialNextBatch(train_x, train_y)
        for _ in range(cfg.epochs):
            for _ in range(0, n, cfg.batch_size):
                xb, yb = next_batch(bs)
                batch_x.copy_(xb)
                batch_y.copy_(yb)
                model.zero_grad()
                loss = crit(model(batch_x), batch_y)
                loss.backward()
                opt.step()
            with torch.no_grad():
                for test_x, target in tests:
                    preds = torch.cat([model(test_x[i:i + cfg.batch_size]).argmax(1)
                                       for i in range(0, test_x.shape[0], cfg.batch_size)])
                    accs = [float((preds[target == c] == c).float().mean()) for c in torch.unique(target)]
                    _ = sum(accs) / len(accs)
    return time.perf_counter() - start


class _OfficialNextBatch:
    """``classifier2.py``'s ``next_batch``: the whole training set is permuted into a new copy at the start
    and whenever an epoch runs out; batches are slices of it, always full, the last rows of an epoch
    topped up with the first rows of the next permutation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.start = x, y, 0
        self._shuffle()

    def _shuffle(self) -> None:
        perm = torch.randperm(self.x.shape[0])
        self.x, self.y = self.x[perm], self.y[perm]

    def __call__(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, n = self.start, self.x.shape[0]
        if start + size <= n:
            self.start += size
            return self.x[start:start + size], self.y[start:start + size]
        rest_x, rest_y = self.x[start:], self.y[start:]
        self._shuffle()
        self.start = size - rest_x.shape[0]
        return torch.cat([rest_x, self.x[:self.start]]), torch.cat([rest_y, self.y[:self.start]])


# ---- the official-style generator loops (reference for the per-epoch speed-up) ------------------------
OFFICIAL_STYLE_METHODS = ("fclswgan", "cvae", "fvaegan", "tfvaegan", "cadavae")


def official_style_step_s(method: str, system, data, steps: int, warmup: int) -> float | None:
    """Mean seconds of one training step written the way the official code writes it, fp32, on this machine.

    The same networks (deep copies of ``system``'s, so the same shapes and initialisation), the same batch
    size and hyper-parameters, the official loop structure:

    - f-CLSWGAN (``clswgan.py``): per generator step, ``critic_steps`` critic updates, each on its own batch
      copied into preallocated input tensors, with three separate backward passes (``D(real)``,
      ``D(fake.detach())``, the gradient penalty); ``requires_grad`` toggled on the critic; then the generator
      update through the frozen critic and the frozen seen-class classifier. ``torch.optim.Adam`` with its
      default implementation.
    - CADA-VAE (``model.py``): one batch, both encoders, four separate decoder calls (reconstructions and
      cross-reconstructions), the summed losses with every term on, one AMSGrad ``torch.optim.Adam``.
    - tf-VAEGAN (``train_images.py`` of the official tf-VAEGAN code): per generator step, ``critic_steps``
      critic updates, each on its own copied batch: the semantic decoder's update on the real batch, then
      ``D(real)`` backward, the encoder (with autograd recording, as there) and generator for the fake, with
      the feedback module's second generator pass on feedback steps, ``D(fake.detach())`` backward and the
      double-backward gradient penalty; then one generator update (VAE loss, critic loss, the decoder's loss
      on the fake) through one backward and separate ``torch.optim.Adam`` steps per network (encoder,
      generator, feedback on feedback steps, decoder). The step time is the mean of a plain and a feedback
      step, as an epoch of ``feedback_loop=2`` has one pass of each. f-VAEGAN runs the same loop without
      decoder and feedback (no official f-VAEGAN code exists; tf-VAEGAN's is built on it), and f-VAE without
      the critic too (tf-VAEGAN's code with its GAN terms off): encoder + generator, one backward.

    Returns ``None`` for methods without an official-style loop here.
    """
    import copy

    import torch.nn.functional as F

    from zsl_gen.losses import cada as CL
    from zsl_gen.losses.wgan import gradient_penalty

    if method not in OFFICIAL_STYLE_METHODS:
        return None
    torch.manual_seed(0)
    hp = system.hparams
    x_all, y_all, sem = data.train_x, data.train_y, data.semantics
    n = x_all.shape[0]
    b = min(int(hp.batch_size), n)  # the official next_batch on a training set smaller than a batch
    input_x = torch.empty(b, x_all.shape[1])
    input_a = torch.empty(b, sem.shape[1])
    input_y = torch.empty(b, dtype=torch.long)

    def sample() -> None:  # the official next_batch: a random batch copied into the preallocated inputs
        idx = torch.randperm(n)[:b]
        input_x.copy_(x_all[idx])
        input_a.copy_(sem[y_all[idx]])
        input_y.copy_(y_all[idx])

    if method == "fclswgan":
        gen, critic = copy.deepcopy(system.generator), copy.deepcopy(system.critic)
        clf = copy.deepcopy(system.seen_classifier)
        seen_index = system._seen_index.cpu()
        opt_d = torch.optim.Adam(critic.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
        opt_g = torch.optim.Adam(gen.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
        noise = torch.empty(b, system.noise_dim)

        def step() -> None:
            for p in critic.parameters():
                p.requires_grad = True
            for _ in range(int(hp.critic_steps)):
                sample()
                critic.zero_grad()
                d_real = critic(input_x, input_a).mean()
                (-d_real).backward()
                noise.normal_(0, 1)
                fake = gen(noise, input_a)
                d_fake = critic(fake.detach(), input_a).mean()
                d_fake.backward()
                # ``critic.forward`` has no closed-form input gradient: autograd's double backward, as official
                penalty, _ = gradient_penalty(critic.forward, input_x, fake, input_a)
                (float(hp.lambda_gp) * penalty).backward()
                opt_d.step()
            for p in critic.parameters():
                p.requires_grad = False
            gen.zero_grad()
            noise.normal_(0, 1)
            fake = gen(noise, input_a)
            loss_g = -critic(fake, input_a).mean() + float(hp.cls_weight) * F.nll_loss(
                clf(fake), seen_index[input_y])
            loss_g.backward()
            opt_g.step()
    elif method in ("cvae", "fvaegan", "tfvaegan"):
        return _official_style_vaegan_step_s(method, system, sample, input_x, input_a, steps, warmup)
    else:
        fx, sx = copy.deepcopy(system.feature_vae), copy.deepcopy(system.semantic_vae)
        params = list(fx.parameters()) + list(sx.parameters())
        opt = torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=1e-8, amsgrad=hp.amsgrad)
        kind = hp.reconstruction

        def step() -> None:
            sample()
            mu_x, lv_x = fx.encoder(input_x)
            mu_a, lv_a = sx.encoder(input_a)
            z_x, z_a = system._sample(mu_x, lv_x), system._sample(mu_a, lv_a)
            rec = CL.reconstruction(fx.decoder(z_x), input_x, kind) + CL.reconstruction(sx.decoder(z_a), input_a, kind)
            cross = CL.cross_reconstruction(fx.decoder(z_a), input_x, sx.decoder(z_x), input_a, kind)
            kl = CL.kl_divergence(mu_x, lv_x) + CL.kl_divergence(mu_a, lv_a)
            loss = (rec + hp.kl_max * kl + hp.cross_max * cross
                    + hp.align_max * CL.distribution_alignment(mu_x, lv_x, mu_a, lv_a))
            opt.zero_grad()
            loss.backward()
            opt.step()

    return mean_step_s(step, steps, warmup)


def mean_step_s(step, steps: int, warmup: int) -> float:
    """Mean seconds of ``step()`` over ``steps`` calls after ``warmup`` discarded ones, with autograd on."""
    with torch.enable_grad():
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps


def _official_style_vaegan_step_s(method: str, system, sample, input_x: torch.Tensor, input_a: torch.Tensor,
                                  steps: int, warmup: int) -> float:
    """``official_style_step_s`` of f-VAE, f-VAEGAN and tf-VAEGAN (see there)."""
    import copy

    from zsl_gen.losses.vae import semantic_reconstruction, vae_loss
    from zsl_gen.losses.wgan import gradient_penalty
    from zsl_gen.models.networks import reparameterize

    hp = system.hparams
    betas = (float(hp.get("beta1", 0.5)), 0.999)
    enc, gen = copy.deepcopy(system.encoder), copy.deepcopy(system.generator)
    # the official encoder optimiser keeps Adam's default betas (the quirk ``encoder_default_betas``)
    opt_e = torch.optim.Adam(enc.parameters(), lr=hp.lr)
    opt_g = torch.optim.Adam(gen.parameters(), lr=hp.lr, betas=betas)
    tf = method == "tfvaegan"
    encoded_noise = bool(hp.get("encoded_noise", True))
    if method != "cvae":
        critic = copy.deepcopy(system.critic)
        opt_d = torch.optim.Adam(critic.parameters(), lr=hp.lr, betas=betas)
    if tf:
        dec, fb = copy.deepcopy(system.decoder), copy.deepcopy(system.feedback)
        opt_dec = torch.optim.Adam(dec.parameters(), lr=hp.decoder_lr, betas=betas)
        opt_f = torch.optim.Adam(fb.parameters(), lr=hp.feedback_lr, betas=betas)

    def generate(z: torch.Tensor, feedback: bool) -> torch.Tensor:
        if not feedback:
            return gen(z, input_a)
        _, hidden = dec(gen(z, input_a))
        return gen(z, input_a, fb(hidden.detach()), float(hp.a1))

    def vae_step() -> None:
        sample()
        mu, logvar = enc(input_x, input_a)
        loss = vae_loss(gen(reparameterize(mu, logvar), input_a), input_x, mu, logvar)
        enc.zero_grad()
        gen.zero_grad()
        loss.backward()
        opt_e.step()
        opt_g.step()

    def gan_step(feedback: bool) -> None:
        for p in critic.parameters():
            p.requires_grad = True
        for _ in range(int(hp.critic_steps)):
            sample()
            critic.zero_grad()
            if tf:
                dec.zero_grad()
                a_hat, _ = dec(input_x)
                (float(hp.recons_weight) * semantic_reconstruction(a_hat, input_a, hp.decoder_loss)).backward()
                opt_dec.step()
            (-critic(input_x, input_a).mean()).backward()
            if encoded_noise:
                mu, logvar = enc(input_x, input_a)
                z = reparameterize(mu, logvar)
            else:
                z = torch.randn(input_x.shape[0], system.noise_dim)
            fake = generate(z, feedback)
            critic(fake.detach(), input_a).mean().backward()
            penalty, _ = gradient_penalty(critic.forward, input_x, fake.detach(), input_a)
            (float(hp.lambda_gp) * penalty).backward()
            opt_d.step()
        for p in critic.parameters():
            p.requires_grad = False
        enc.zero_grad()
        gen.zero_grad()
        mu, logvar = enc(input_x, input_a)
        recon = generate(reparameterize(mu, logvar), feedback)
        fake = recon if encoded_noise else generate(torch.randn(input_x.shape[0], system.noise_dim), feedback)
        loss = vae_loss(recon, input_x, mu, logvar) - float(hp.gamma_g) * critic(fake, input_a).mean()
        if tf:
            fb.zero_grad()
            dec.zero_grad()
            a_hat, _ = dec(fake)
            loss = loss + float(hp.recons_weight) * semantic_reconstruction(a_hat, input_a, hp.decoder_loss)
        loss.backward()
        opt_e.step()
        opt_g.step()
        if tf and feedback:
            opt_f.step()
        if tf and not hp.freeze_decoder:
            opt_dec.step()

    if method == "cvae":
        return mean_step_s(vae_step, steps, warmup)
    if not tf:
        return mean_step_s(lambda: gan_step(False), steps, warmup)
    plain, with_feedback = (mean_step_s(lambda f=f: gan_step(f), steps, warmup) for f in (False, True))
    return (plain + with_feedback) / 2


# ---- one case (runs in its own process) -----------------------------------------------------------------
def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    import logging
    import warnings

    import pytorch_lightning as pl

    from zsl_gen.config import instantiate
    from zsl_gen.eval import train_and_evaluate
    from zsl_gen.pipeline import classifier_config, offload_settings, protocol_data, quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    official_only = bool(spec.get("official_only"))
    method, dataset, precision, device = spec["method"], spec["dataset"], spec["precision"], spec["device"]
    overrides = list(spec.get("overrides", []))
    tiny = spec.get("tiny", False)
    if method == "cadavae":
        # every loss term on from the first measured step: the steady-state cost after the warm-ups
        overrides += ["generator.system.cross_start=-1", "generator.system.align_start=-1"]
    cfg = compose_config(method, dataset, precision, overrides)
    if tiny:
        from zsl_gen.data import make_synthetic

        raw, source = make_synthetic(n_classes=12, n_unseen=3, n_val_classes=2, semantic_dim=16,
                                     feature_dim=64, samples_per_class=20, seed=0, name=dataset), "tiny synthetic"
    else:
        raw, source = load_raw_cached(dataset, Path(spec["data_root"]), Path(spec["cache"]))
    data = protocol_data(cfg, raw, "test")
    del raw
    sys_overrides: dict[str, Any] = {}
    if tiny:
        sys_overrides = {"hidden_dim": 32} if method != "cadavae" else {
            "feature_enc_hidden": 32, "feature_dec_hidden": 32, "semantic_enc_hidden": 32,
            "semantic_dec_hidden": 32}
        if method == "fclswgan":
            sys_overrides["cls_epochs"] = 1
    torch.manual_seed(0)
    system = instantiate(cfg.generator.system, feature_dim=data.feature_dim, semantic_dim=data.semantic_dim,
                         **sys_overrides)
    system.set_data(data, seed=int(cfg.seed))
    hp = dict(system.hparams)
    if official_only:  # with the C library's malloc defaults, as the official code runs
        return _official_style_case(spec, cfg, system, data)
    # zsl-train's `keep_freed_memory` (default true), where zsl-train applies it: after loading the data
    malloc_kept = spec.get("keep_freed_memory", True) and keep_freed_memory()

    # the matmul peak measured in this process right before the timing, under the same machine load
    peak_info = matmul_peak(precision, device, repeats=3 if tiny else 5)
    release_freed_memory()  # the measurement's matrices are not the method's memory
    _reset_gpu_memory_peaks(device)
    warmup, steps = int(spec["warmup"]), int(spec["steps"])
    spe = system.steps_per_epoch()
    if spec.get("epochs"):
        steps = max(steps, int(math.ceil(float(spec["epochs"]) * spe)))

    class Stamps(pl.Callback):
        """Stamps every step's end, and the running total of seconds spent inside the optimisers' ``step``
        (their parameter updates; an automatic-optimisation closure's forward/backward is subtracted).

        On CUDA the updates are timed with CUDA events, read after the step's own synchronisation, so the
        timing adds no synchronisation inside the step (the host keeps queueing work ahead of the GPU)."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.optimizer_totals: list[float] = []
            self.optimizer_s = 0.0
            self.pending: list[tuple[Any, Any, list]] = []  # (start, end, closure marks) not yet added
            self.fit_start = self.first_batch = 0.0

        def on_fit_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()
            for optimizer in trainer.optimizers:
                optimizer.step = self._timed(optimizer.step)  # type: ignore[method-assign]

        def _mark(self):
            if device == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                return event
            return time.perf_counter()

        @staticmethod
        def _seconds(start, end) -> float:
            return start.elapsed_time(end) / 1000.0 if device == "cuda" else end - start

        def _timed(self, step):
            def timed_step(closure=None, **kwargs):
                inner: list[tuple[Any, Any]] = []  # the closure's (start, end) marks

                def timed_closure():
                    begin = self._mark()
                    try:
                        return closure()
                    finally:
                        inner.append((begin, self._mark()))

                start = self._mark()
                out = step(closure=None if closure is None else timed_closure, **kwargs)
                self.pending.append((start, self._mark(), inner))
                if device != "cuda":
                    self._settle()
                return out
            return timed_step

        def _settle(self) -> None:
            """Add the pending updates' seconds (on CUDA: once the step's events have completed)."""
            for start, end, inner in self.pending:
                self.optimizer_s += self._seconds(start, end) - sum(self._seconds(a, b) for a, b in inner)
            self.pending.clear()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if not self.first_batch:  # the first epoch's start: what came before it is setup (later ones are not)
                _sync(device)
                self.first_batch = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(device)
            self.ends.append(time.perf_counter())
            self._settle()
            self.optimizer_totals.append(self.optimizer_s)
            if len(self.ends) > warmup + steps:
                trainer.should_stop = True

    # the last fit's trainer: its optimisers hold the state an evaluation would find. Only one is kept: a
    # real run has one set of optimisers, and an earlier fit's (tf-VAEGAN's plain half: 275 MB of Adam
    # state at AWA2 shapes) would otherwise count in this case's peak memory beside the next fit's.
    fitted: list[pl.Trainer] = []

    def timed_fit(feedback: bool | None) -> tuple[list[float], float, float]:
        """Step intervals after the warm-up, the fit's setup seconds, and the mean optimiser seconds per step."""
        stamps = Stamps()
        fitted.clear()
        system.trainer = None  # type: ignore[assignment]  # the module's link to the previous trainer
        gc.collect()  # trainers and the timed optimisers are reference cycles
        if feedback is not None:
            system._uses_feedback = (lambda batch_idx: feedback)  # type: ignore[method-assign]
        trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                             precision=PRECISIONS[precision], max_epochs=10_000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=[stamps])
        trainer.fit(system)
        fitted.append(trainer)
        setup = stamps.first_batch - stamps.fit_start
        ends = stamps.ends
        intervals = [t1 - t0 for t0, t1 in zip(ends[:-1], ends[1:])][warmup:]
        totals = stamps.optimizer_totals
        optimizer_s = (totals[-1] - totals[warmup]) / max(len(totals) - 1 - warmup, 1)
        return intervals, setup, optimizer_s

    if method == "tfvaegan":
        plain, setup, opt_plain = timed_fit(False)
        fb, _, opt_fb = timed_fit(True)
        del system._uses_feedback
        t_plain, t_fb = statistics.fmean(plain), statistics.fmean(fb)
        step_s = (t_plain + t_fb) / 2
        optimizer_s = (opt_plain + opt_fb) / 2
        flops = (step_flops(method, hp, data.feature_dim, data.semantic_dim, data.seen_classes.numel(), False)
                 + step_flops(method, hp, data.feature_dim, data.semantic_dim, data.seen_classes.numel(), True)) / 2
        intervals = plain + fb
        extra = {"step_s_no_feedback": round(t_plain, 5), "step_s_feedback": round(t_fb, 5)}
    else:
        intervals, setup, optimizer_s = timed_fit(None)
        step_s = statistics.fmean(intervals)
        flops = step_flops(method, hp, data.feature_dim, data.semantic_dim, data.seen_classes.numel())
        extra = {}
    s_per_epoch = step_s * spe
    samples_per_epoch = data.train_x.shape[0] * int(hp.get("feedback_loop", 1))

    # the peak again, after the timing: a machine whose speed moved in between is flagged (combined_peak)
    gpu_peaks = _gpu_memory_peaks(device)  # training's, before the measurement's matrices
    peak_info = combined_peak(peak_info, matmul_peak(precision, device, repeats=3 if tiny else 5))
    release_freed_memory()
    _reset_gpu_memory_peaks(device)

    # final classifier at the method's shapes
    ccfg = classifier_config(cfg)
    syn_num = int(cfg.generator.syn_num)
    # Trainer.fit hands the model back on the CPU; a real run evaluates during fit, on the device
    system.to(torch.device(device))
    noise = torch.Generator(device=system.device).manual_seed(0)
    system.eval()
    system.zero_grad(set_to_none=True)  # as the evaluation callback does before each evaluation
    # as zsl-train's evaluations do (offload_optimizer_state_mb); --keep-optimizer-state: never
    # (on a GPU the state lives on the device during a real run's evaluations, and offloading skips it)
    offload = (offload_settings(cfg, spec.get("cache")) if spec.get("offload_optimizer_state", True)
               and device == "cpu" else {"offload_dir": None})
    with evaluation_offload(fitted[-1].optimizers, offload["offload_dir"],
                            offload.get("offload_min_bytes", 0)) as offloaded:
        release_freed_memory()
        inputs = system.classifier_inputs(data.to(system.device), syn_num, noise, ccfg.feature_dtype,
                                          offload=offloaded)
        release_freed_memory()
        clf_times = []
        for r in range(int(spec["classifier_repeats"])):
            _sync(device)
            t = time.perf_counter()
            curves = train_and_evaluate(inputs, ccfg, seed=r)
            _sync(device)
            clf_times.append(time.perf_counter() - t)
        clf_rows, clf_dim = inputs.train_x.shape
        del inputs  # before the optimiser state comes back, as in an evaluation during training
    classifier_s = statistics.median(clf_times)

    epochs = int(cfg.generator.epochs)
    eval_every = int(cfg.eval_every)
    end_to_end = setup + epochs * (s_per_epoch + classifier_s / eval_every)
    peak = peak_info["peak_gflops"]
    gflops = flops / step_s / 1e9
    return {
        "method": method, "dataset": dataset, "precision": precision, "device": device,
        "samples_per_s": round(samples_per_epoch / s_per_epoch, 1),
        "s_per_epoch": round(s_per_epoch, 3),
        "classifier_s": round(classifier_s, 3),
        "official_style_classifier_s": None,  # filled in by main() from a process of their own
        "official_style_s_per_epoch": None,
        "keep_freed_memory": bool(malloc_kept),
        "optimizer_state_offloaded": bool(offloaded.moved_bytes),
        "offloaded_mb": round(offloaded.moved_bytes / 2**20, 1),  # state, weights and features, during evaluation
        "end_to_end_s": round(end_to_end, 1),
        "end_to_end_note": f"extrapolated: setup + {epochs} epochs × (epoch + classifier every {eval_every})",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # GPU memory: the higher of training's and the classifier evaluation's peaks (None on the CPU)
        **{key: (max(value, gpu_peaks[key]) if value is not None else None)
           for key, value in _gpu_memory_peaks(device).items()},
        "gflops": round(gflops, 3),
        "peak_gflops": peak,
        "fraction_of_peak": round(gflops / peak, 3) if peak else None,
        "optimizer_s_per_step": round(optimizer_s, 5),
        "optimizer_share": round(optimizer_s / step_s, 3),
        # the fraction of peak even if every product ran at the peak: the optimisers' memory-bound updates
        # (fixed by the parameter count, not by the batch) still take their measured time
        "fraction_of_peak_bound": round(flops / peak / (flops / peak + optimizer_s * 1e9), 3) if peak else None,
        "peak_gflops_by_size": peak_info["by_size"],
        **{key: peak_info[key] for key in ("peak_gflops_before", "peak_gflops_after", "peak_spread",
                                           "peak_unstable")},
        "load_avg_before": round(spec.get("load_before", 0.0), 2),
        "gflop_per_step": round(flops / 1e9, 3),
        "step_s": round(step_s, 5),
        "step_s_median": round(statistics.median(intervals), 5),
        "steps_per_epoch": spe,
        "measured_steps": len(intervals),
        "warmup_steps": warmup,
        "extrapolated": True,
        "setup_s": round(setup, 3),
        "batch_size": int(hp["batch_size"]),
        "samples_per_epoch": samples_per_epoch,
        "epochs_published": epochs,
        "syn_num": syn_num,
        "classifier_epochs": ccfg.epochs,
        "classifier_precision": ccfg.precision,
        "classifier_feature_dim": int(clf_dim),
        "classifier_train_rows": int(clf_rows),
        "final_H_last_eval": round(float(np.nanmax(curves.H)), 4),
        "data": source,
        "train_rows": int(data.train_x.shape[0]),
        "feature_dim": data.feature_dim, "semantic_dim": data.semantic_dim,
        **extra,
    }


def _official_style_case(spec: dict[str, Any], cfg, system, data) -> dict[str, Any]:
    """The official-style references of one case, in a process of their own (the C library's malloc
    defaults, none of zsl-train's runtime settings): step seconds and classifier seconds."""
    from zsl_gen.pipeline import classifier_config

    system.on_fit_start()  # the data on the device; f-CLSWGAN pre-trains its seen-class classifier
    step_s = None
    if spec.get("official_loop") and spec["device"] == "cpu":
        step_s = official_style_step_s(spec["method"], system.cpu(), data.to("cpu"), int(spec["steps"]),
                                       int(spec["warmup"]))
    clf_s = None
    if spec.get("official_classifier"):
        ccfg = classifier_config(cfg)
        noise = torch.Generator(device=system.device).manual_seed(0)
        system.eval()
        inputs = system.classifier_inputs(data.to(system.device), int(cfg.generator.syn_num), noise)
        clf_s = official_style_classifier(inputs, ccfg)
    return {"official_style_step_s": step_s, "official_style_classifier_s": clf_s}


def _run_in_subprocess(spec: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``run_case(spec)`` in a fresh Python process: (its result, '') or (None, the error: its message on the
    first line, then the end of stderr)."""
    proc = subprocess.run([sys.executable, "-m", "zsl_gen.bench", "--case", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        output = (proc.stderr or proc.stdout).strip().splitlines()
        # the exception's message: what follows the traceback's last (indented) frame line; it may span
        # lines (Hydra's "Error in call to target ...:" / the cause / "full_key: ...")
        last_frame = max((i for i, line in enumerate(output) if line.startswith(" ")), default=-1)
        message = " ".join(line.strip() for line in output[last_frame + 1:][-4:]) or "no output"
        return None, f"{message}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len(_MARK):]), ""


# ---- driver ---------------------------------------------------------------------------------------------
def markdown_table(cases: list[dict[str, Any]]) -> str:
    head = ("| method | dataset | prec (gen/clf) | samples/s | s/epoch | official-style s/epoch | GFLOP/s | peak "
            "| % peak | optimiser % of step (% peak bound) | classifier s | official-style clf s "
            "| end-to-end (extrap.) | peak RSS MB |")
    rows = [head, "|" + "---|" * 14]
    unstable = False
    for c in cases:
        if "error" in c:
            rows.append(f"| {c['method']} | {c['dataset']} | {c['precision']} | error: {c['error'][:60]} |"
                        + " |" * 10)
            continue
        bound = c.get("fraction_of_peak_bound")
        optimiser = (f"{100 * c['optimizer_share']:.0f}% ({'-' if bound is None else f'{100 * bound:.0f}%'})"
                     if "optimizer_share" in c else "-")
        off, off_epoch = c.get("official_style_classifier_s"), c.get("official_style_s_per_epoch")
        mark = "†" if c.get("peak_unstable") else ""
        unstable = unstable or bool(mark)
        rows.append(
            f"| {c['method']} | {c['dataset']} | {c['precision']}/{c.get('classifier_precision', 'fp32')} | "
            f"{c['samples_per_s']:.0f} | "
            f"{c['s_per_epoch']:.2f} | {'-' if off_epoch is None else f'{off_epoch:.2f}'} | {c['gflops']:.0f} | {c['peak_gflops']:.0f} | "
            f"{100 * c['fraction_of_peak']:.0f}%{mark} | {optimiser} | {c['classifier_s']:.2f} | "
            f"{'-' if off is None else f'{off:.2f}'} | {c['end_to_end_s'] / 60:.1f} min | {c['peak_rss_mb']:.0f} |")
    if unstable:
        rows.append(f"\n† the matmul peak measured before and after this case's timing differed by more than "
                    f"{100 * (PEAK_SPREAD_LIMIT - 1):.0f}% (`peak_gflops_before`/`_after` in the JSON): the "
                    "machine's speed moved during the case, so its times and % of peak are unreliable.")
    return "\n".join(rows) + "\n"


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    lookup = {a.lower(): a for a in allowed}
    bad = [v for v in items if v.lower() not in lookup]
    if bad or not items:
        raise ValueError(f"--{what}: {'unknown ' + ', '.join(bad) if bad else 'empty'}; choose from "
                         f"{', '.join(allowed)}")
    return list(dict.fromkeys(lookup[v.lower()] for v in items))  # each once, in the order given


def probe_writable(path: Path, flag: str) -> None:
    """Create (and remove) a file beside ``path``: a write that would fail at the end of a long benchmark fails
    now (``os.access`` answers yes to root even where nothing can be written, e.g. under /proc)."""
    from zsl_gen.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write there ({err.strerror or err}); choose another path") from None


def error_line(error: str) -> str:
    """The line of a failed case's output that says why: its ``error:`` line (a warning may come first), else
    the last non-empty one."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error:") or "Error" in line.split(":")[0]),
                lines[-1] if lines else "failed without output")


@report_user_errors
@exit_on_sigterm
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="zsl-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--precision", default="fp32", help="comma list of fp32, bf16")
    p.add_argument("--epochs", type=float, default=None,
                   help="measure at least this many (fractional) epochs per case: max(--steps, this × steps "
                        "per epoch) steps")
    p.add_argument("--steps", type=int, default=12, help="measured training steps per case (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="discarded warm-up steps")
    p.add_argument("--classifier-repeats", type=int, default=1)
    p.add_argument("--classifier-precision", default=None, choices=("fp32", "bf16"),
                   help="final-classifier precision (default: the config's classifier.precision)")
    p.add_argument("--official-classifier", action="store_true",
                   help="also time the official-style (autograd, per-batch) classifier for the speed-up")
    p.add_argument("--official", action="store_true",
                   help="also time each method's generator loop written as its official code writes it (fp32, "
                        "CPU) and the official-style classifier on this machine, for the speed-ups")
    p.add_argument("--system-malloc", action="store_true",
                   help="the C library's malloc defaults instead of zsl-train's keep_freed_memory (before/after)")
    p.add_argument("--keep-optimizer-state", action="store_true",
                   help="keep the optimisers' state in memory during the evaluation instead of zsl-train's "
                        "offload_optimizer_state_mb (before/after)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--data-root", default=str(default_data_root()))
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "zsl-bench-cache"))
    p.add_argument("--out", default="bench.json")
    p.add_argument("--md", default=None, help="Markdown table (default: --out with .md)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for every case")
    p.add_argument("--tiny", action="store_true", help="a tiny synthetic dataset and tiny networks (smoke test)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:
        result = run_case(json.loads(args.case))
        print(_MARK + json.dumps(result), flush=True)
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch finds no usable CUDA GPU (a CPU-only build, or no GPU/driver); "
                "use --device cpu (the default here)")
    try:
        methods = _csv(args.methods, METHODS, "methods")
        datasets = _csv(args.datasets, DATASETS, "datasets")
        precisions = _csv(args.precision, tuple(PRECISIONS), "precision")
    except ValueError as err:
        p.error(str(err))
    for flag, value, minimum in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                                 ("--classifier-repeats", args.classifier_repeats, 1)):
        if value < minimum:
            p.error(f"{flag} must be >= {minimum}, got {value}")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        p.error(f"--epochs must be a number > 0, got {args.epochs}")
    if args.override:
        try:  # a malformed override fails every case: say so before the first one runs
            compose_config(methods[0], datasets[0], precisions[0], list(args.override))
        except Exception as err:  # Hydra's override and config errors have many types
            p.error(f"--override {' '.join(args.override)}: {str(err).splitlines()[0]}")
    from zsl_gen.cli.common import check_output_path
    from zsl_gen.errors import ConfigError

    out = Path(args.out)
    try:  # before the first case runs, not after the whole benchmark
        check_output_path(out, "--out", directory=False)
        md = Path(args.md) if args.md else out.with_suffix(".md")
        check_output_path(md, "--md", directory=False)
        probe_writable(out, "--out")
        probe_writable(md, "--md")
    except ConfigError as err:
        p.error(str(err))
    machine = machine_info(args.device)
    print(f"zsl-bench on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, "
          f"load {machine['load_avg'][0]:.2f}", flush=True)
    if "bf16" in precisions + [args.classifier_precision] and not machine["bf16_native"]:
        print(f"note: this {'GPU' if args.device == 'cuda' else 'CPU'} has no bfloat16 units: the bf16 cases "
              "measure torch's slow fallback (zsl-train refuses bf16 here unless allow_slow_bf16=true)", flush=True)
    missing = [d for d in datasets if not real_semantics_file(d, args.data_root).is_file()]
    if missing:
        print(f"note: no {', '.join(missing)} semantics under --data-root {args.data_root}: those cases use random "
              "semantics of the published shapes (the speed is the same; give --data-root <dir holding xlsa17/> for "
              "the real ones)", flush=True)
    peaks = {}
    for prec in precisions:
        peaks[prec] = matmul_peak(prec, args.device)
        print(f"matmul peak {prec}: {peaks[prec]['peak_gflops']:.0f} GFLOP/s {peaks[prec]['by_size']}", flush=True)
    cases = []
    from zsl_gen.results import write_text_atomic

    total = len(methods) * len(datasets) * len(precisions)

    def write_tables(cases: list[dict], note: str = "") -> None:
        header = (f"{note}Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, device "
                  f"{args.device}, zsl-gen {machine['zsl_gen']} at {machine['git_commit'] or 'an unknown commit'}"
                  f"{' (with uncommitted changes)' if machine.get('git_dirty') else ''}, {machine['measured']}. "
                  f"Command: `zsl-bench {' '.join(argv if argv is not None else sys.argv[1:])}`"
                  + (f". Random semantics of the published shapes for {', '.join(missing)}" if missing else "")
                  + "\n\n")
        write_text_atomic(md, header + markdown_table(cases))  # the table first: the JSON is what scripts look for
        write_text_atomic(out, json.dumps(cases, indent=1))

    for method in methods:
        for dataset in datasets:
            for prec in precisions:
                spec = {"method": method, "dataset": dataset, "precision": prec, "device": args.device,
                        "warmup": args.warmup, "steps": args.steps, "epochs": args.epochs,
                        "classifier_repeats": args.classifier_repeats,
                        "official_classifier": args.official_classifier or args.official,
                        "official_loop": args.official, "data_root": args.data_root,
                        "keep_freed_memory": not args.system_malloc,
                        "offload_optimizer_state": not args.keep_optimizer_state,
                        "cache": args.cache, "peak": peaks[prec]["peak_gflops"],
                        "tiny": args.tiny,
                        "overrides": args.override + ([f"classifier.precision={args.classifier_precision}"]
                                                      if args.classifier_precision else [])}
                t = time.perf_counter()
                spec["load_before"] = os.getloadavg()[0]
                case, error = _run_in_subprocess(spec)
                if case is not None and spec["official_classifier"]:
                    official, error = _run_in_subprocess({**spec, "official_only": True})
                    if official is not None:
                        step_s = official["official_style_step_s"]
                        case["official_style_s_per_epoch"] = (None if step_s is None else
                                                              round(step_s * case["steps_per_epoch"], 3))
                        case["official_style_classifier_s"] = round(official["official_style_classifier_s"], 3)
                        case["official_style_note"] = ("official code's loop structure, fp32, default "
                                                       "torch.optim.Adam and malloc, this machine")
                    else:
                        case = None
                if case is None:
                    case = {"method": method, "dataset": dataset, "precision": prec, "device": args.device,
                            "error": error_line(error)}
                    print(f"{method:9s} {dataset:5s} {prec}: FAILED {error}", flush=True)
                else:
                    case["load_avg_after"] = round(os.getloadavg()[0], 2)
                    print(f"{method:9s} {dataset:5s} {prec}: {case['s_per_epoch']:8.2f} s/epoch "
                          f"{case['samples_per_s']:8.0f} samples/s {case['gflops']:6.0f} GFLOP/s "
                          f"({100 * case['fraction_of_peak']:.0f}% of peak) clf {case['classifier_s']:.2f} s "
                          f"RSS {case['peak_rss_mb']:.0f} MB  [{time.perf_counter() - t:.0f}s]"
                          + (f"  † peak moved {case['peak_gflops_before']:.0f} → {case['peak_gflops_after']:.0f}"
                             if case.get("peak_unstable") else ""), flush=True)
                case["machine"] = machine
                cases.append(case)
                if len(cases) < total:  # the cases so far, so that a run stopped by a time limit keeps them
                    write_tables(cases, f"partial: {len(cases)} of {total} cases. ")
    write_tables(cases)
    print(markdown_table(cases))
    print(f"wrote {out} and {md}")
    failed = [f"{c['method']}/{c['dataset']}/{c['precision']}" for c in cases if "error" in c]
    if failed:  # the files hold every case; the exit status tells a script that some did not run
        print(f"{len(failed)} of {len(cases)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
