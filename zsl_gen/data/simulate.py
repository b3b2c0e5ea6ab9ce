"""Seeded simulators of xlsa17-structured datasets, for tests, benchmarks and runs without the features.

Features are generated from class semantics so that zero-shot transfer is possible but not trivial::

    z_c  = standardised semantic vector of class c                                  (A,)
    z_i  = z_{y_i} + TAU * N(0, Cov_c(z))     instance semantics, varying the way classes do
    h_i  = W2 tanh(GAIN * W1 z_i)              random nonlinear map: the part semantics explain (D,)
    x_i  = relu(h_i + R (q_{y_i} + TAU_R * eta_i) + NOISE * eps_i)                  (D,) >= 0

``q_c ~ N(0, RESIDUAL^2 I_r)`` is a class-specific residual in an r-dimensional subspace ``R (D × r)``
that semantics cannot predict; ``eta_i`` and ``eps_i`` are per-sample noise. A linear (ridge) map from
semantics to class means recovers part of the nonlinear map only, so unseen-class prototypes predicted
from semantics are informative but imperfect, and seen classes overlap (per-class nearest-mean
accuracy well below 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zsl_gen.data._io import sha256_file
from zsl_gen.data.benchmarks import BENCHMARKS
from zsl_gen.data.protocol import holdout_count, l2_rows
from zsl_gen.data.types import RawDataset
from zsl_gen.data.validate import Origin, require_file, require_keys, validate_raw
from zsl_gen.data.xlsa17 import (
    MatFile,
    default_class_names,
    index_vector,
    semantic_matrix,
    string_list,
    write_res101,
)
from zsl_gen.errors import ConfigError, DataError

__all__ = ["make_synthetic", "simulate_features_for", "write_res101", "FeatureModel",
           "BENCHMARK_CLASS_COUNTS"]

# n_classes -> (n_unseen, n_val_classes) of the published splits.
BENCHMARK_CLASS_COUNTS = {b.n_classes: (b.n_unseen, b.n_val_classes) for b in BENCHMARKS.values()}

HIDDEN = 128       # width of the random semantic map
GAIN = 1.5         # how far into tanh's saturation the map goes (its nonlinearity)
TAU = 1.0          # instance variation of the semantics, relative to the spread of the classes
RESIDUAL_RANK = 16
RESIDUAL = 0.5     # class-specific residual, unpredictable from semantics
TAU_R = 1.0        # instance variation inside the residual subspace
NOISE = 0.5        # isotropic per-sample noise


@dataclass
class FeatureModel:
    """The random generative model of one simulated dataset (see the module docstring).

    Attributes:
        z: ``(C, A)`` standardised semantics; spread: ``(C, A)`` factor of their covariance.
        w1: ``(A, HIDDEN)``; w2: ``(HIDDEN, D)``; q: ``(C, r)`` class residuals; r: ``(r, D)`` subspace.
    """

    z: np.ndarray
    spread: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    q: np.ndarray
    r: np.ndarray

    @staticmethod
    def create(semantics: np.ndarray, feature_dim: int, rng: np.random.Generator) -> "FeatureModel":
        """Draw a model for semantics ``(C, A)`` and features of dimension ``feature_dim``."""
        s = np.asarray(semantics, dtype=np.float64)
        z = s - s.mean(axis=0, keepdims=True)
        scale = np.sqrt(np.mean(np.sum(z * z, axis=1)))
        z = z / (scale if scale > 0 else 1.0)
        # xi @ (z / sqrt(C)) with xi ~ N(0, I_C) has covariance z^T z / C: the classes' own spread.
        spread = z / np.sqrt(z.shape[0])
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        return FeatureModel(
            z=f32(z),
            spread=f32(spread),
            w1=f32(GAIN * rng.standard_normal((s.shape[1], HIDDEN))),
            w2=f32(rng.standard_normal((HIDDEN, feature_dim)) / np.sqrt(HIDDEN)),
            q=f32(RESIDUAL * rng.standard_normal((s.shape[0], RESIDUAL_RANK))),
            r=f32(rng.standard_normal((RESIDUAL_RANK, feature_dim)) / np.sqrt(RESIDUAL_RANK)),
        )

    def sample(self, labels: np.ndarray, rng: np.random.Generator, *, chunk: int = 8192) -> np.ndarray:
        """Features ``(N, D)`` float32 >= 0 for class ids ``labels (N,)``, generated in chunks.

        The bulk of the work runs in torch (float32, multi-threaded): numpy's normal sampler is
        several times slower, and AWA2-sized datasets (37k × 2048) must take seconds, not tens.
        """
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        z, spread, w1, w2, q, r = (torch.from_numpy(a) for a in (self.z, self.spread, self.w1, self.w2,
                                                                  self.q, self.r))
        y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        n, d = y_all.shape[0], w2.shape[1]
        out = torch.empty((n, d), dtype=torch.float32)
        noise = torch.empty((min(chunk, n), d), dtype=torch.float32)
        for start in range(0, n, chunk):
            y = y_all[start:start + chunk]
            m = y.shape[0]
            block = out[start:start + m]
            zi = z[y].addmm_(torch.randn(m, spread.shape[0], generator=gen), spread, alpha=TAU)
            torch.mm(torch.tanh(zi @ w1), w2, out=block)
            res = q[y].add_(torch.randn(m, RESIDUAL_RANK, generator=gen), alpha=TAU_R)
            block.addmm_(res, r)
            block.add_(noise[:m].normal_(generator=gen), alpha=NOISE)
            block.clamp_(min=0.0)
        return out.numpy()


def _check_positive(field: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field}={value!r} is not valid; use an integer >= {minimum}")
    return int(value)


def make_synthetic(
    *,
    n_classes: int = 40,
    n_unseen: int = 10,
    n_val_classes: int = 8,
    semantic_dim: int = 64,
    feature_dim: int = 512,
    samples_per_class: int = 60,
    seed: int = 0,
    name: str = "synthetic",
) -> RawDataset:
    """A seeded dataset with the xlsa17 structure, generated in well under a second.

    ``n_unseen`` random classes are unseen (all their samples form ``test_unseen``); of the seen classes,
    ``n_val_classes`` are validation classes. Each seen class's samples are split 80/20 into
    ``trainval``/``test_seen``; ``val`` = every sample of the validation classes and ``train`` = the other
    seen-class samples, so ``train ∪ val = trainval ∪ test_seen`` as in the xlsa17 release. Semantics are
    non-negative with L2-normalised rows (sparse, attribute-like); features are non-negative.

    Returns:
        ``RawDataset`` with ``features (n_classes * samples_per_class, feature_dim)``,
        ``semantics (n_classes, semantic_dim)`` and all five splits (``train``/``val`` only when
        ``n_val_classes > 0``).
    """
    n_classes = _check_positive("n_classes", n_classes, 3)
    n_unseen = _check_positive("n_unseen", n_unseen)
    n_val_classes = _check_positive("n_val_classes", n_val_classes, 0)
    semantic_dim = _check_positive("semantic_dim", semantic_dim)
    feature_dim = _check_positive("feature_dim", feature_dim)
    samples_per_class = _check_positive("samples_per_class", samples_per_class, 2)
    if n_unseen + n_val_classes >= n_classes:
        raise ConfigError(
            f"n_unseen + n_val_classes = {n_unseen + n_val_classes} leaves no training classes out of "
            f"n_classes={n_classes}; make n_classes larger or the other two smaller"
        )
    rng = np.random.default_rng(seed)
    # Attribute-like semantics: a few shared "parts" make classes correlated, a sparse ReLU keeps them >= 0.
    proto = rng.standard_normal((max(2, n_classes // 4), semantic_dim))
    mix = rng.dirichlet(np.full(proto.shape[0], 0.5), size=n_classes)
    sem = np.maximum(mix @ proto + 0.6 * rng.standard_normal((n_classes, semantic_dim)), 0.0)
    empty = sem.sum(axis=1) == 0
    sem[empty, rng.integers(0, semantic_dim, empty.sum())] = 1.0
    sem = l2_rows(sem)

    perm = rng.permutation(n_classes)
    unseen, val = np.sort(perm[:n_unseen]), np.sort(perm[n_unseen:n_unseen + n_val_classes])
    labels = rng.permutation(np.repeat(np.arange(n_classes), samples_per_class)).astype(np.int64)
    feats = FeatureModel.create(sem, feature_dim, rng).sample(labels, rng)

    is_unseen = np.isin(labels, unseen)
    locs = {"test_unseen": np.flatnonzero(is_unseen)}
    test_seen = []
    for c in np.setdiff1d(np.arange(n_classes), unseen):
        members = np.flatnonzero(labels == c)
        test_seen.append(rng.choice(members, holdout_count(members.size, 0.2), replace=False))
    locs["test_seen"] = np.sort(np.concatenate(test_seen))
    seen_idx = np.flatnonzero(~is_unseen)
    locs["trainval"] = np.setdiff1d(seen_idx, locs["test_seen"])
    is_val = np.isin(labels[seen_idx], val)
    locs["train"], locs["val"] = seen_idx[~is_val], seen_idx[is_val]
    if n_val_classes == 0:
        del locs["train"], locs["val"]
    raw = RawDataset(name=name, features=feats, labels=labels, semantics=sem,
                     class_names=default_class_names(n_classes), locs=locs, semantic_space="att", files={})
    return validate_raw(raw, Origin.simulated(name))


def default_class_counts(n_classes: int, has_val: bool) -> tuple[int, int]:
    """``(n_unseen, n_val_classes)`` of the published split with ``n_classes`` classes, else proportional."""
    if n_classes in BENCHMARK_CLASS_COUNTS:
        n_unseen, n_val = BENCHMARK_CLASS_COUNTS[n_classes]
    else:
        n_unseen = max(1, int(round(0.2 * n_classes)))
        n_val = max(1, int(round(0.2 * (n_classes - n_unseen))))
    return n_unseen, (n_val if has_val else 0)


def _round_robin(idx: np.ndarray, classes: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
    """Give the samples ``idx`` the ``classes`` in turn (balanced), after seeded shuffles of both."""
    if idx.size == 0:
        return
    order = rng.permutation(idx)
    out[order] = rng.permutation(classes)[np.arange(order.size) % classes.size]


def simulate_features_for(
    att_splits_path: str | Path,
    *,
    feature_dim: int = 2048,
    seed: int = 0,
    n_unseen: int | None = None,
    n_val_classes: int | None = None,
    semantic_key: str = "att",
    name: str | None = None,
) -> RawDataset:
    """Simulated features and labels for the REAL semantics and split locations of an ``att_splits.mat``.

    Labels agree with every split: ``test_unseen`` rows get the unseen classes, ``val_loc`` rows the
    validation classes (a subset of the seen classes), the other ``train_loc`` rows the training
    classes, and rows in none of these (AWA2's ``test_seen``, which is outside ``train_loc ∪ val_loc``)
    any seen class. Within each group of rows, trainval and non-trainval rows separately, classes are
    dealt round-robin after a seeded shuffle, so classes are balanced and every seen class has trainval
    samples. Class counts default to the published split of a benchmark with the same number of classes
    (CUB 50/50, SUN 72/65, AWA1/AWA2 10/13, APY 12/5, FLO 20/20 unseen/val), else to 20% unseen and 20%
    of the seen classes as val (no val classes when the file has no ``train_loc``/``val_loc``).

    Args:
        att_splits_path: an xlsa17 ``att_splits.mat`` (or ``sent_splits.mat``).
        feature_dim: D of the simulated features.
        seed: seed of labels and features.
        n_unseen, n_val_classes: override the class counts.
        semantic_key: key of the semantic matrix.
        name: dataset name; default the file's directory name.

    Returns:
        ``RawDataset`` with ``features (N, feature_dim)`` float32 where N = the largest location, the
        file's semantics, names and locations; ``files`` records the att_splits checksum only.
    """
    path = Path(att_splits_path)
    require_file(path, "semantics/splits file", "pass the path of an xlsa17 att_splits.mat")
    feature_dim = _check_positive("feature_dim", feature_dim)
    seed = _check_positive("seed", seed, 0)
    loc_names = ("trainval", "test_seen", "test_unseen", "train", "val")
    mat = MatFile(path, [semantic_key, "allclasses_names", "semantic_space",
                         *(f"{n}_loc" for n in loc_names)])
    required = [semantic_key, "trainval_loc", "test_seen_loc", "test_unseen_loc"]
    if not all(k in mat for k in required):
        require_keys(path, mat.keys(), required,
                     "pass an xlsa17 att_splits.mat (semantic matrix + locations)")
    origin = Origin.for_xlsa17(path, path, semantic_key)
    locs = {n: index_vector(mat.get(f"{n}_loc"), origin.loc(n)) - 1 for n in loc_names if f"{n}_loc" in mat}
    names = string_list(mat.get("allclasses_names")) if "allclasses_names" in mat else None
    sem = semantic_matrix(mat.get(semantic_key), len(names) if names else None, 0, origin.semantics)
    if not np.isfinite(sem).all():  # else the simulated features inherit the NaN and get the blame
        bad = np.flatnonzero(~np.isfinite(sem).all(axis=1))
        raise DataError(f"{origin.semantics} contains NaN or Inf values (classes {', '.join(map(str, bad[:5] + 1))}"
                        f"{', ...' if bad.size > 5 else ''}, 1-based); fill in every class's semantic vector")
    n_classes = sem.shape[0]
    names = names or default_class_names(n_classes)
    has_val = "train" in locs and "val" in locs and locs["val"].size > 0
    d_unseen, d_val = default_class_counts(n_classes, has_val)
    n_unseen = d_unseen if n_unseen is None else _check_positive("n_unseen", n_unseen)
    n_val = d_val if n_val_classes is None else _check_positive("n_val_classes", n_val_classes, 0)
    if not has_val:
        n_val = 0
    if has_val and n_val == 0:
        raise ConfigError(f"n_val_classes=0 but {path} has val_loc samples; use n_val_classes >= 1")
    if n_unseen + n_val >= n_classes:
        raise ConfigError(f"n_unseen + n_val_classes = {n_unseen + n_val} leaves no training classes of "
                          f"the {n_classes} in {path}; lower them")

    n = int(max(int(v.max()) for v in locs.values() if v.size) + 1)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_classes)
    unseen, val, train = perm[:n_unseen], perm[n_unseen:n_unseen + n_val], perm[n_unseen + n_val:]

    labels = np.full(n, -1, dtype=np.int64)

    def member(key: str) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        if key in locs:
            mask[locs[key]] = True
        return mask

    in_tu, in_val, in_tv, in_train = member("test_unseen"), member("val"), member("trainval"), member("train")
    _round_robin(np.flatnonzero(in_tu), unseen, rng, labels)
    rest = ~in_tu
    if n_val:
        # Rows in neither train_loc nor val_loc (AWA2's test_seen) may belong to any seen class.
        seen = np.concatenate([train, val])
        groups = [(in_val, val), (in_train & ~in_val, train), (~in_train & ~in_val, seen)]
    else:
        groups = [(np.ones(n, dtype=bool), train)]
    for where, classes in groups:
        for part in (in_tv, ~in_tv):  # dealt separately so every class gets trainval rows
            _round_robin(np.flatnonzero(rest & where & part), classes, rng, labels)

    feats = FeatureModel.create(sem, feature_dim, rng).sample(labels, rng)
    space = string_list(mat.get("semantic_space"))[0] if "semantic_space" in mat else ""
    space = space or ("sent" if ("sent" in path.name.lower() or "sent" in semantic_key.lower()) else "att")
    raw = RawDataset(
        name=name or path.resolve().parent.name,
        features=feats,
        labels=labels,
        semantics=sem,
        class_names=names,
        locs=locs,
        semantic_space=space,
        files={str(path.resolve()): sha256_file(path)},
    )
    return validate_raw(raw, Origin.for_xlsa17(path, path, semantic_key))
