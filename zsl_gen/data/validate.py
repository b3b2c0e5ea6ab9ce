"""Checks every loader runs on what it read, and the protocol-time checks of ``build_protocol``.

Each failure raises one ``DataError`` (or ``ConfigError`` for bad arguments) whose single-line
message names the file and the key or field at fault and says how to fix it. ``Origin`` carries the
"where" part of those messages, so one set of checks serves the xlsa17 ``.mat`` and the
bring-your-own ``.npy``/``.json`` formats alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from zsl_gen.data.types import OPTIONAL_LOCS, REQUIRED_LOCS, RawDataset
from zsl_gen.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MAX_LISTED = 5


@dataclass(frozen=True)
class Origin:
    """Where each field of a ``RawDataset`` was read from, for error messages.

    Attributes:
        features, labels, semantics, class_names: descriptions such as
            ``"key 'features' of /data/CUB/res101.mat"`` or ``"/data/mine/features.npy"``.
        locs: split name -> description of where its indices came from.
        index_base: 1 for the 1-based xlsa17 files, 0 for the bring-your-own format; indices are shown
            to the user in the file's own base.
        splits_file: the file holding the split locations (for "add the keys" advice).
        fmt: ``"xlsa17"``, ``"byo"`` or ``"simulated"``.
    """

    features: str
    labels: str
    semantics: str
    class_names: str
    locs: dict[str, str] = field(default_factory=dict)
    index_base: int = 0
    splits_file: str = ""
    fmt: str = "byo"

    def loc(self, name: str) -> str:
        return self.locs.get(name, f"split '{name}'")

    @staticmethod
    def for_xlsa17(features_path: Path, semantics_path: Path, semantic_key: str) -> "Origin":
        f, s = str(features_path), str(semantics_path)
        return Origin(
            features=f"key 'features' of {f}",
            labels=f"key 'labels' of {f}",
            semantics=f"key '{semantic_key}' of {s}",
            class_names=f"key 'allclasses_names' of {s}",
            locs={n: f"key '{n}_loc' of {s}" for n in REQUIRED_LOCS + OPTIONAL_LOCS},
            index_base=1,
            splits_file=s,
            fmt="xlsa17",
        )

    @staticmethod
    def for_byo(root: Path) -> "Origin":
        sp = str(root / "splits.json")
        return Origin(
            features=str(root / "features.npy"),
            labels=str(root / "labels.npy"),
            semantics=str(root / "semantics.npy"),
            class_names=str(root / "classes.txt"),
            locs={n: f"list '{n}' of {sp}" for n in REQUIRED_LOCS + OPTIONAL_LOCS},
            index_base=0,
            splits_file=sp,
            fmt="byo",
        )

    @staticmethod
    def simulated(name: str) -> "Origin":
        what = f"simulated dataset '{name}'"
        return Origin(
            features=f"features of the {what}",
            labels=f"labels of the {what}",
            semantics=f"semantics of the {what}",
            class_names=f"class names of the {what}",
            locs={n: f"split '{n}' of the {what}" for n in REQUIRED_LOCS + OPTIONAL_LOCS},
            fmt="simulated",
        )


def origin_of(raw: RawDataset) -> Origin:
    """Best-effort ``Origin`` of an already loaded dataset, from the files it records.

    Loaders record the features file first and the splits/semantics file last.
    """
    paths = [Path(p) for p in raw.files]
    if not paths:
        return Origin.simulated(raw.name)
    if any(p.name == "splits.json" for p in paths):
        return Origin.for_byo(next(p for p in paths if p.name == "splits.json").parent)
    return Origin.for_xlsa17(paths[0], paths[-1], "att")


def _names(raw_names: Sequence[str], ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    shown = [repr(raw_names[i]) if 0 <= i < len(raw_names) else str(i) for i in ids[:MAX_LISTED]]
    more = f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(shown) + more


def _values(values: Iterable[int], base: int) -> str:
    values = [int(v) + base for v in values]
    shown = [str(v) for v in values[:MAX_LISTED]]
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return ", ".join(shown) + more


def check_unique_names(names: Sequence[str], where: str) -> None:
    """Class names must be unique: a name listed twice would make class-name lookups pick one silently."""
    once: set[str] = set()
    repeated = sorted({name for name in names if name in once or once.add(name)})
    if repeated:
        listed = ", ".join(map(repr, repeated[:MAX_LISTED])) + (" and more" if len(repeated) > MAX_LISTED else "")
        raise DataError(f"{where} lists class names more than once ({listed}); class names must be unique")


def require_file(path: Path, what: str, fix: str) -> None:
    """Raise a ``DataError`` unless ``path`` is an existing file this process may read."""
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"missing {what}: {path} {where}; {fix}")
    if not os.access(path, os.R_OK):
        raise unreadable(path)


def unreadable(path: Path) -> DataError:
    """The error for a data file whose permissions keep this user from reading it: the file may well be
    fine, so not the "corrupt, re-download" advice a read failure otherwise gets."""
    try:
        mode = f"permissions {path.stat().st_mode & 0o777:03o}"
    except OSError:
        mode = "permissions unknown"
    return DataError(f"{path}: not readable by this user ({mode}); make it readable (chmod a+r {path}) or ask "
                     "its owner to")


def require_keys(path: Path, present: Iterable[str], required: Sequence[str], fix: str) -> None:
    """Raise a ``DataError`` naming the first required key that the file lacks."""
    present = [k for k in present if not k.startswith("__")]
    for key in required:
        if key not in present:
            raise DataError(
                f"{path} has no key '{key}' (it has: {', '.join(sorted(present)) or 'nothing'}); {fix}"
            )


def validate_raw(raw: RawDataset, origin: Origin) -> RawDataset:
    """Check a freshly loaded dataset for every inconsistency a training run would trip over.

    Args:
        raw: 0-based dataset with ``features (N, D)``, ``labels (N,)``, ``semantics (C, A)``.
        origin: where each field came from.

    Returns:
        ``raw`` unchanged.
    """
    b = origin.index_base
    feats, labels, sem = raw.features, raw.labels, raw.semantics
    if feats.ndim != 2:
        raise DataError(f"{origin.features} must be a 2-d matrix, got shape {feats.shape}; "
                        "store one feature vector per image")
    if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
        raise DataError(
            f"{origin.labels} has {labels.size} entries but {origin.features} has {feats.shape[0]} "
            "samples; give exactly one label per feature vector (the two must come from the same file "
            "or release)"
        )
    if sem.ndim != 2 or sem.shape[0] < 1 or sem.shape[1] < 1:
        raise DataError(f"{origin.semantics} must be a 2-d class-semantic matrix, got shape {sem.shape}")
    n, c = feats.shape[0], sem.shape[0]
    if len(raw.class_names) != c:
        raise DataError(
            f"{origin.class_names} lists {len(raw.class_names)} class names but {origin.semantics} has "
            f"{c} classes; give one name per class, in the order of the semantic rows"
        )
    if n == 0:
        raise DataError(f"{origin.features} holds no samples; it must have one feature vector per image")
    if feats.shape[1] == 0:
        raise DataError(f"{origin.features} has 0 feature dimensions (shape {feats.shape}); it must hold one "
                        "feature vector per image")
    check_unique_names(raw.class_names, origin.class_names)
    if labels.min() < 0:
        bad = np.unique(labels[labels < 0])
        raise DataError(
            f"{origin.labels} holds out-of-range class ids ({_values(bad, b)}); labels must be "
            f"{b}-based class ids in {b}..{c - 1 + b}"
            + ("; if your labels are 0-based, add 1" if b == 1 else "")
        )
    if labels.max() >= c:
        bad = np.unique(labels[labels >= c])
        raise DataError(
            f"{origin.labels} refers to class ids up to {int(labels.max()) + b} but {origin.semantics} "
            f"has only {c} classes (shape {_sem_shape_text(sem, origin)}); the label range and the semantic "
            f"matrix disagree (offending ids: {_values(bad, b)}): give the semantic matrix one "
            f"{'column' if origin.fmt == 'xlsa17' else 'row'} per class, or use the labels of the same "
            "release" + ("; if your labels count classes from 1, subtract 1" if b == 0 and labels.min() >= 1 else "")
        )
    for name in REQUIRED_LOCS + OPTIONAL_LOCS:
        if name not in raw.locs:
            if name in REQUIRED_LOCS:
                raise DataError(f"{origin.loc(name)} is missing; every dataset needs the locations "
                                f"{', '.join(REQUIRED_LOCS)}")
            continue
        idx = raw.locs[name]
        if idx.ndim != 1:
            raise DataError(f"{origin.loc(name)} must be a vector of row indices, got shape {idx.shape}")
        if idx.size == 0:
            if name in REQUIRED_LOCS:
                raise DataError(f"{origin.loc(name)} is empty; it must list the {name} samples")
            continue
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise DataError(
                f"{origin.loc(name)} holds row indices out of range ({_values(np.unique(bad), b)}): "
                f"they must be {b}-based rows of {origin.features} in {b}..{n - 1 + b}"
                "; check that the features and split files come from the same release"
            )
    if not np.isfinite(feats).all():
        bad_rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
        raise DataError(
            f"{origin.features} contains NaN or Inf values (in {bad_rows.size} samples, rows "
            f"{_values(bad_rows, b)}); recompute or drop those samples"
        )
    if not np.isfinite(sem).all():
        bad_cls = np.flatnonzero(~np.isfinite(sem).all(axis=1))
        raise DataError(
            f"{origin.semantics} contains NaN or Inf values (classes {_names(raw.class_names, bad_cls)}); "
            "fill in every class's semantic vector"
        )
    if feats.size and float(feats.max()) == float(feats.min()):
        raise DataError(
            f"{origin.features} is constant (every value is {float(feats.min())}); the file holds no "
            "usable features: re-extract or re-download it"
        )
    seen = np.unique(labels[raw.locs["trainval"]])
    unseen = np.unique(labels[raw.locs["test_unseen"]])
    unused = np.flatnonzero(np.bincount(labels, minlength=c) == 0)
    if unused.size:  # not wrong in itself (a class kept for later synthesis), but labels off by one look so
        log.warning("%s: %d of %d classes have no sample in %s (%s): they are neither seen nor unseen%s",
                    origin.class_names, unused.size, c, origin.labels, _names(raw.class_names, unused),
                    f"; the labels start at {b + 1}: if they count classes from {b + 1}, subtract 1"
                    if unused[0] == 0 and labels.min() >= 1 else "")
    both = np.intersect1d(seen, unseen)
    if both.size:
        raise DataError(
            f"seen and unseen classes overlap: {both.size} classes ({_names(raw.class_names, both)}) have "
            f"samples in both {origin.loc('trainval')} and {origin.loc('test_unseen')}; every class must "
            "be either seen or unseen: fix the split locations, or use features and splits of the same "
            "release"
        )
    ts = np.unique(labels[raw.locs["test_seen"]])
    orphan = np.setdiff1d(ts, seen)
    if orphan.size:
        raise DataError(
            f"{origin.loc('test_seen')} has samples of {orphan.size} classes with no sample in "
            f"{origin.loc('trainval')} ({_names(raw.class_names, orphan)}); a seen class needs training "
            "samples: move some of its samples to trainval, or its test samples to test_unseen"
        )
    _check_sample_overlaps(raw, origin)
    return raw


def _check_sample_overlaps(raw: RawDataset, origin: Origin) -> None:
    """No sample twice in one of trainval/test_seen/test_unseen, none in two of them, and no test_unseen
    sample in the validation locations: a test sample trained on inflates every number silently. (xlsa17's
    own train_loc/val_loc share samples with test_seen in CUB and SUN, so those pairs stay allowed.)"""
    b = origin.index_base
    for name in ("trainval", "test_seen", "test_unseen"):
        idx = raw.locs[name]
        values, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            repeated = values[counts > 1]
            raise DataError(f"{origin.loc(name)} lists {repeated.size} samples more than once (rows "
                            f"{_values(repeated, b)}); list each sample once")
    pairs = [("trainval", "test_seen"), ("trainval", "test_unseen"), ("test_seen", "test_unseen")]
    pairs += [(name, "test_unseen") for name in ("train", "val") if raw.locs.get(name) is not None]
    for first, second in pairs:
        shared = np.intersect1d(raw.locs[first], raw.locs[second])
        if shared.size:
            raise DataError(f"{origin.loc(first)} and {origin.loc(second)} share {shared.size} samples (rows "
                            f"{_values(shared, b)}): a test sample would be trained on or counted twice; "
                            "every sample belongs to one of them — fix the split locations")


def _sem_shape_text(sem: np.ndarray, origin: Origin) -> str:
    a, c = sem.shape[1], sem.shape[0]
    return f"A×C = {a}×{c}" if origin.fmt == "xlsa17" else f"C×A = {c}×{a}"


def check_semantic_space(configured: str | None, stored: str | None, where: str) -> None:
    """A semantic space given by the config (``dataset.semantic_space``) must agree with the one the dataset's
    file records: results labelled ``att`` for sentence embeddings would be silently wrong."""
    if configured is not None and (not isinstance(configured, str) or not configured):
        raise ConfigError(f"dataset.semantic_space={configured!r} is not valid; use a non-empty name such as "
                          "'att' or 'sent' (or null: the dataset file's own)")
    if configured is not None and stored is not None and configured != stored:
        raise DataError(f"{where} says the semantics are '{stored}', but dataset.semantic_space={configured}: "
                        f"results would be labelled with the wrong space; set dataset.semantic_space={stored} (or "
                        "null to take the file's), or use the dataset config of that semantic space; if the file's "
                        f"record is what is wrong, rewrite it: zsl-data convert <dir> <new dir> --semantic-space "
                        f"{configured}")


def check_choice(field_name: str, value, choices: Sequence) -> None:
    """Raise a ``ConfigError`` naming ``field_name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"{field_name}={value!r} is not valid; use one of: {', '.join(repr(c) for c in choices)}"
        )


def check_fraction(field_name: str, value) -> float:
    """Raise a ``ConfigError`` naming ``field_name`` unless ``0 < value < 1``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name}={value!r} is not a number; use a fraction in (0, 1), e.g. 0.2")
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{field_name}={value!r} is out of range; use a fraction in (0, 1), e.g. 0.2")
    return v


def check_nonnegative_features(raw: RawDataset, feature_scaling: str) -> None:
    """With ``feature_scaling="none"`` the generators' ReLU/Sigmoid outputs cannot match negative features."""
    if feature_scaling != "none":
        return
    mn = float(raw.features.min())
    if mn < 0:
        origin = origin_of(raw)
        raise DataError(
            f"{origin.features} has negative values (min {mn:.4g}) but feature_scaling='none' keeps them "
            "as they are, and the generators output non-negative features; set feature_scaling=minmax "
            "(or shift the features to be non-negative)"
        )


TEST_SPLIT_ONLY = "train the test split only (zsl-train selections=[paper]: no validation-selected numbers)"


def check_val_split(raw: RawDataset) -> None:
    """``split="val"`` needs ``train``/``val`` locations with disjoint classes and no test-unseen class."""
    origin = origin_of(raw)
    missing = [n for n in ("train", "val") if n not in raw.locs or raw.locs[n].size == 0]
    if missing:
        keys = " and ".join(f"'{n}_loc'" if origin.fmt == "xlsa17" else f"'{n}'" for n in missing)
        where = origin.splits_file or f"dataset '{raw.name}'"
        add = ("add 'val_classes' (the validation classes: a subset of seen_classes) or the index lists "
               "'train'/'val'" if origin.fmt == "byo" else "add the keys")
        raise DataError(
            f"split=val needs {keys} in {where}, which has no such locations; {add} (train = the samples of the "
            f"training classes, val = every sample of the validation classes), or {TEST_SPLIT_ONLY}"
        )
    labels = raw.labels
    tr = np.unique(labels[raw.locs["train"]])
    va = np.unique(labels[raw.locs["val"]])
    both = np.intersect1d(tr, va)
    if both.size:
        raise DataError(
            f"{origin.loc('train')} and {origin.loc('val')} share {both.size} classes "
            f"({_names(raw.class_names, both)}); the validation classes must be disjoint from the training "
            f"classes: fix the locations, or {TEST_SPLIT_ONLY}"
        )
    unseen = raw.unseen_classes
    leak = np.intersect1d(np.union1d(tr, va), unseen)
    if leak.size:
        raise DataError(
            f"{origin.loc('train')}/{origin.loc('val')} contain test-unseen classes "
            f"({_names(raw.class_names, leak)}); validation must not touch the test classes: fix the "
            f"locations, or {TEST_SPLIT_ONLY}"
        )
