"""Evaluation protocols and preprocessing: a ``RawDataset`` becomes a ``ZSLData`` of float32 tensors.

``split="test"`` is the published protocol (train on trainval, evaluate on test_seen / test_unseen).
``split="val"`` is the honest validation protocol: the ``val_loc`` classes play the unseen classes and
a seeded per-class hold-out of the remaining ``train_loc`` samples plays test_seen, so GZSL model
selection never looks at the test split. Preprocessing is fitted on the training part of the chosen
protocol only, and its statistics are returned so they can be saved with a run and re-applied.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from zsl_gen.data.types import RawDataset, ZSLData
from zsl_gen.data.validate import (
    check_choice,
    check_fraction,
    check_nonnegative_features,
    check_val_split,
    origin_of,
)
from zsl_gen.errors import ConfigError, DataError
from zsl_gen.runtime import storage_bytes

SPLITS = ("test", "val")
FEATURE_SCALINGS = ("minmax", "none")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def holdout_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` samples a per-class hold-out of ``fraction`` takes.

    At least 1 when ``n >= 2`` (so every class is evaluated), never all of them, none when ``n == 1``.
    """
    if n < 2:
        return 0
    return int(min(n - 1, max(1, np.floor(fraction * n + 0.5))))


def per_class_holdout(
    idx: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices per class into a kept and a held-out part.

    Args:
        idx: ``(n,)`` sample indices.
        labels: ``(N,)`` class ids of all samples (indexed by ``idx``).
        fraction: share of each class to hold out (see ``holdout_count``).
        rng: seeded generator; classes are visited in sorted order so the result depends on the seed only.

    Returns:
        ``(kept, held)``: sorted, disjoint index arrays whose union is ``idx``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    y = labels[idx]
    kept, held = [], []
    for c in np.unique(y):
        members = idx[y == c]
        perm = rng.permutation(members.size)
        k = holdout_count(members.size, fraction)
        held.append(members[perm[:k]])
        kept.append(members[perm[k:]])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(kept), cat(held)


def fit_minmax(x: np.ndarray) -> dict[str, Any]:
    """Per-dimension MinMax statistics of ``x (n, D)``, as JSON-able lists."""
    return {"kind": "minmax", "min": x.min(axis=0).astype(float).tolist(),
            "max": x.max(axis=0).astype(float).tolist()}


def apply_feature_scaling(x: ArrayT, preprocessing: dict[str, Any]) -> ArrayT:
    """Apply saved feature preprocessing to new features.

    Args:
        x: ``(n, D)`` features, numpy array or torch tensor.
        preprocessing: ``ZSLData.preprocessing`` (or its ``"features"`` entry).

    Returns:
        ``(n, D)`` float32 features of the same type (and device) as ``x``. MinMax maps the fitted
        per-dimension range to [0, 1] (``(x - min) / (max - min)``, range 1 for constant dimensions);
        values outside the fitted range land outside [0, 1].
    """
    spec = preprocessing.get("features", preprocessing)
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "none":
        return x.float() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if kind != "minmax":
        raise ConfigError(
            f"preprocessing['features']['kind']={kind!r} is not valid; use 'minmax' or 'none' (pass the "
            "'preprocessing' dict saved with the run)"
        )
    mn, span = minmax_offset_span(spec)
    if x.shape[-1] != mn.shape[0]:
        raise ConfigError(
            f"preprocessing['features'] was fitted on {mn.shape[0]}-d features but x has {x.shape[-1]} "
            "dimensions; use the preprocessing saved with the run that produced these features"
        )
    if isinstance(x, torch.Tensor):
        t_mn = torch.from_numpy(mn).to(x.device)
        t_span = torch.from_numpy(span).to(x.device)
        return (x.float() - t_mn) / t_span
    return (np.asarray(x, dtype=np.float32) - mn) / span


def minmax_offset_span(spec: dict[str, Any], dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(min, max - min)`` ``(D,)`` of fitted MinMax statistics (``{"kind": "minmax", "min": [...], "max":
    [...]}``), computed in ``dtype`` (float32: the values scaling uses), the span 1 for constant dimensions:
    scaled = (x - min) / span, raw = scaled * span + min."""
    mn = np.asarray(spec["min"], dtype=dtype)
    span = np.asarray(spec["max"], dtype=dtype) - mn
    span[span == 0] = 1.0
    return mn, span


def _scaled_rows(features: np.ndarray, rows: np.ndarray, feat_prep: dict[str, Any]) -> torch.Tensor:
    """``apply_feature_scaling(features[rows], feat_prep)`` computed in place on the fresh row copy.

    The same float32 operations in the same order (so the same values), without the two full-size
    temporaries of ``(x - min) / span``: at AWA2 size that is 190 MB per part instead of 570 MB. The rows go
    straight into memory torch owns (not a numpy array's), so an evaluation can move them to disk while it
    does not read them (``runtime.Offload`` needs a resizable storage).
    """
    rows = np.asarray(rows, dtype=np.intp)
    tensor = torch.empty((rows.size, features.shape[1]), dtype=torch.float32)
    if tensor.numel() == 0:
        return tensor
    out = np.frombuffer(storage_bytes(tensor.untyped_storage()), dtype=np.float32).reshape(tensor.shape)
    if features.dtype == np.float32 and 0 <= rows.min() and rows.max() < features.shape[0]:
        np.take(features, rows, axis=0, out=out, mode="clip")  # in range: "clip" clips nothing, and unlike
        # the default "raise" it writes into `out` without a full-size buffer first
    else:
        out[...] = features[rows]
    if feat_prep.get("kind") == "minmax":
        mn, span = minmax_offset_span(feat_prep)
        out -= mn
        out /= span
    return tensor


def l2_rows(s: np.ndarray) -> np.ndarray:
    """Rows of ``s (C, A)`` scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(s.astype(np.float64), axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (s / norms).astype(np.float32)


def protocol_indices(
    raw: RawDataset, split: str, *, val_seen_fraction: float = 0.2, seed: int = 0, val_excludes_test: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, seen_eval, unseen_eval)`` row indices of a protocol (see ``build_protocol``)."""
    check_choice("split", split, SPLITS)
    frac = check_fraction("val_seen_fraction", val_seen_fraction)
    if split == "test":
        return raw.locs["trainval"], raw.locs["test_seen"], raw.locs["test_unseen"]
    check_val_split(raw)
    train_rows, val_rows = raw.locs["train"], raw.locs["val"]
    if val_excludes_test:
        # xlsa17's train_loc ∪ val_loc = trainval_loc ∪ test_seen_loc: keep split=val off the test images
        train_rows = train_rows[np.isin(train_rows, raw.locs["trainval"])]
        val_rows = val_rows[np.isin(val_rows, raw.locs["trainval"])]
        if train_rows.size == 0 or val_rows.size == 0:
            origin = origin_of(raw)
            empty = "train" if train_rows.size == 0 else "val"
            raise DataError(f"{origin.loc(empty)}: none of its samples is in {origin.loc('trainval')}, so with "
                            "dataset.val_excludes_test=true (no test image in split=val) nothing is left; check the "
                            "split lists, or set dataset.val_excludes_test=false to use them as they are")
    train, held = per_class_holdout(train_rows, raw.labels, frac, np.random.default_rng(seed))
    if held.size == 0:  # S on split=val would be the mean over no sample (NaN), after split=val had trained
        origin = origin_of(raw)
        raise DataError(f"{origin.loc('train')}: every class has a single training sample for split=val"
                        + (" (its samples that are also in trainval)" if val_excludes_test else "")
                        + ", so none is left to hold out as split=val's seen evaluation set; give the classes more "
                        "samples, or run only the test split: selections=[paper]")
    return train, held, val_rows


def build_protocol(
    raw: RawDataset,
    split: str = "test",
    *,
    feature_scaling: str = "minmax",
    l2_semantics: bool = False,
    val_seen_fraction: float = 0.2,
    seed: int = 0,
    check_nonnegative: bool = True,
    val_excludes_test: bool = True,
) -> ZSLData:
    """Apply an evaluation protocol and the preprocessing to a dataset.

    Args:
        raw: a validated dataset.
        split: ``"test"``: train = trainval, seen = test_seen, unseen = test_unseen. ``"val"``: unseen =
            the ``val_loc`` samples (their classes play the unseen classes); the ``train_loc`` samples are
            split per class, ``val_seen_fraction`` held out (seeded; at least one per class with >= 2
            samples, none from a class with one) as the seen evaluation set, the rest is trained on.
        feature_scaling: ``"minmax"`` (per-dimension, fitted on the protocol's train part only, applied to
            all parts, so evaluation features may fall outside [0, 1]) or ``"none"``.
        l2_semantics: L2-normalise every class's semantic row.
        val_seen_fraction: per-class hold-out share for ``split="val"``, in (0, 1).
        seed: seed of the ``split="val"`` hold-out.
        val_excludes_test: for ``split="val"``, only the ``trainval`` samples of ``train``/``val`` (xlsa17's
            ``train_loc``/``val_loc`` also hold every ``test_seen`` image of their classes): no test image is
            trained on or scored by split=val, so nothing chosen on it has seen one. False: the lists as given.
        check_nonnegative: refuse negative features with ``feature_scaling="none"`` (False: the caller scales
            them afterwards, as zsl-eval does with an export's statistics).

    Returns:
        ``ZSLData`` with float32 ``(n, D)`` features, int64 global labels, ``(C, A)`` semantics and the
        fitted ``preprocessing``: ``{"features": {"kind": "minmax", "min": [D], "max": [D],
        "fitted_on": ...} | {"kind": "none"}, "semantics": {"l2": bool}, "split": ..., ...}``.
    """
    check_choice("split", split, SPLITS)
    check_choice("feature_scaling", feature_scaling, FEATURE_SCALINGS)
    frac = check_fraction("val_seen_fraction", val_seen_fraction)
    if check_nonnegative:
        check_nonnegative_features(raw, feature_scaling)
    if not isinstance(val_excludes_test, bool):
        raise ConfigError(f"config field `dataset.val_excludes_test` must be true or false, got {val_excludes_test!r}")
    tr, se, un = protocol_indices(raw, split, val_seen_fraction=frac, seed=seed, val_excludes_test=val_excludes_test)

    if feature_scaling == "minmax":
        feat_prep = fit_minmax(raw.features[tr])
        feat_prep["fitted_on"] = ("trainval" if split == "test"
                                  else "train (split=val, seen hold-out excluded)")
        feat_prep["n_fit"] = int(tr.size)
    else:
        feat_prep = {"kind": "none"}
    sem = l2_rows(raw.semantics) if l2_semantics else np.asarray(raw.semantics, dtype=np.float32)

    preprocessing: dict[str, Any] = {
        "features": feat_prep,
        "semantics": {"l2": bool(l2_semantics)},
        "split": split,
    }
    if split == "val":
        preprocessing.update(val_seen_fraction=frac, seed=int(seed), val_excludes_test=val_excludes_test)

    y = raw.labels.astype(np.int64)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return ZSLData(
        name=raw.name,
        semantic_space=raw.semantic_space,
        split=split,
        train_x=_scaled_rows(raw.features, tr, feat_prep),
        train_y=t(y[tr]),
        seen_x=_scaled_rows(raw.features, se, feat_prep),
        seen_y=t(y[se]),
        unseen_x=_scaled_rows(raw.features, un, feat_prep),
        unseen_y=t(y[un]),
        semantics=t(sem),
        seen_classes=t(np.unique(y[tr])),
        unseen_classes=t(np.unique(y[un])),
        class_names=list(raw.class_names),
        preprocessing=preprocessing,
        files=dict(raw.files),
    )
