"""The bring-your-own dataset format, and writers of both on-disk formats.

Bring-your-own (BYO) dataset format
-----------------------------------

A BYO dataset is a directory with five files::

    my_dataset/
        features.npy    (N, D) float array: one feature vector per image (e.g. 2048-d ResNet-101
                        average-pooled activations). Non-negative features work with every setting;
                        negative ones need feature_scaling=minmax (the default).
        labels.npy      (N,) integer array: the class of each image, as a 0-based index into classes.txt.
        semantics.npy   (C, A) float array: one semantic vector (attributes, sentence embedding, ...)
                        per class, row i for the class on line i of classes.txt.
        classes.txt     C class names, one per line, in the order of the rows of semantics.npy
                        (UTF-8; names must be unique and non-empty).
        splits.json     which classes are seen and unseen, in one of two forms (below).

``splits.json``, form 1: class names (the loader derives the sample splits)::

    {
      "seen_classes":   ["cat", "dog", ...],
      "unseen_classes": ["zebra", ...],
      "val_classes":    ["dog", ...],          (optional: a subset of seen_classes)
      "test_seen_fraction": 0.2,               (optional, default 0.2)
      "semantic_space": "att"                  (optional, default "att"; e.g. "sent" for sentences)
    }

The samples of the unseen classes form ``test_unseen``. The samples of every seen class are split by
a seeded per-class hold-out (``load_byo(..., seed=0)``): 20% (at least one sample when a class has two
or more) form ``test_seen``, the rest ``trainval``. With ``val_classes``, every sample of those classes
forms ``val`` and the other seen-class samples form ``train`` (the xlsa17 convention
``train ∪ val = trainval ∪ test_seen``), which enables ``split=val``. Samples of classes listed in
neither list are not used (a warning counts them); a listed class without samples is an error.
``save_byo`` writes the derived splits as index lists (form 2), which fixes them independently of the seed.

``splits.json``, form 2: 0-based row indices into features.npy::

    {
      "trainval":    [0, 1, 5, ...],           training samples (seen classes)
      "test_seen":   [2, 7, ...],              test samples of the seen classes
      "test_unseen": [3, 4, ...],              test samples of the unseen classes
      "train": [...], "val": [...],            (optional, both or neither: enable split=val; val = every
                                                sample of the validation classes)
      "semantic_space": "att"                  (optional)
    }

An optional ``"name"`` key names the dataset (default: the directory name), and an optional
``"features_note"`` says what the features are when they are not real image features (``zsl-data convert``
carries ``zsl-data simulate``'s note over; every run's ``results.json`` shows it). Other keys are ignored.
The loader checks the same things as the xlsa17 loader (shapes, index ranges, NaN/Inf, overlapping
seen and unseen classes, seen test classes without training samples) and names the file and key at
fault. Write one from Python with ``zsl_gen.data.save_byo(raw, dir)``, or convert an xlsa17 directory
with ``zsl-data convert <xlsa17_dir> <byo_dir>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from zsl_gen.data._io import atomic_write, atomic_write_text, files_as_one_set, sha256_file
from zsl_gen.data.protocol import per_class_holdout
from zsl_gen.data.types import OPTIONAL_LOCS, REQUIRED_LOCS, RawDataset
from zsl_gen.data.validate import (MAX_LISTED, Origin, check_semantic_space, check_unique_names, require_file, unreadable,
                                   validate_raw)
from zsl_gen.data.xlsa17 import write_att_splits, write_res101
from zsl_gen.errors import DataError

log = logging.getLogger(__name__)

BYO_FILES = ("features.npy", "labels.npy", "semantics.npy", "classes.txt", "splits.json")
_FIX = "see the bring-your-own format in the docstring of zsl_gen.data.byo"


def load_npy(path: Path, what: str, fix: str = _FIX) -> np.ndarray:
    """A plain numeric ``.npy`` array (bool, integer or real; no pickles, strings or complex numbers), or a
    ``DataError`` naming ``path`` (``what``: the file's role; ``fix``: what to do, for the message)."""
    require_file(path, what, fix)
    try:
        arr = np.load(path, allow_pickle=False)
    except PermissionError:
        raise unreadable(path) from None
    except Exception as err:
        raise DataError(
            f"cannot read {path} as a .npy array ({type(err).__name__}: {err}); save it with "
            "numpy.save (plain numeric arrays, no pickled objects)"
        ) from err
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(f"{path} must hold a numeric array, got {getattr(arr, 'dtype', type(arr))}; {fix}")
    return arr


def read_class_names(path: Path) -> list[str]:
    """The class names of a ``classes.txt``: one per line, stripped, trailing blank lines dropped; empty or
    repeated names are a ``DataError`` naming the file."""
    require_file(path, "class list", "write one class name per line, " + _FIX)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from err
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise DataError(f"{path} has empty class names on lines {empty[:MAX_LISTED]}; "
                        "give every class a name")
    check_unique_names(names, str(path))  # before the split lists look names up (validate_raw checks it again)
    return names


def _class_ids(splits: dict, key: str, index: dict[str, int], path: Path) -> np.ndarray:
    value = splits.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"key '{key}' of {path} must be a list of class names (strings); {_FIX}")
    unknown = [v for v in value if v not in index]
    if unknown:
        raise DataError(
            f"key '{key}' of {path} names classes that are not in classes.txt "
            f"({', '.join(map(repr, unknown[:MAX_LISTED]))}); use the names exactly as written in classes.txt"
        )
    return np.array(sorted({index[v] for v in value}), dtype=np.int64)


def _index_list(splits: dict, key: str, path: Path) -> np.ndarray:
    value = splits[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(
            f"key '{key}' of {path} must be a list of 0-based integer row indices into features.npy; {_FIX}"
        )
    huge = [v for v in value if not -2**62 < v < 2**62]
    if huge:  # beyond int64: no row of any features.npy
        raise DataError(f"key '{key}' of {path} holds row indices out of range ({huge[0]}); {_FIX}")
    return np.asarray(value, dtype=np.int64)


def _locs_from_classes(splits: dict, labels: np.ndarray, names: list[str], path: Path,
                       seed: int) -> dict[str, np.ndarray]:
    index = {n: i for i, n in enumerate(names)}
    for key in ("seen_classes", "unseen_classes"):
        if key not in splits:
            raise DataError(f"{path} has 'seen_classes' form but no key '{key}'; list the "
                            f"{key.split('_')[0]} class names under '{key}'")
    seen = _class_ids(splits, "seen_classes", index, path)
    unseen = _class_ids(splits, "unseen_classes", index, path)
    val = _class_ids(splits, "val_classes", index, path)
    both = np.intersect1d(seen, unseen)
    if both.size:
        listed = ", ".join(repr(names[i]) for i in both[:MAX_LISTED])
        raise DataError(f"keys 'seen_classes' and 'unseen_classes' of {path} share {both.size} classes "
                        f"({listed}); a class is either seen or unseen: remove it from one list")
    for key, ids in (("seen_classes", seen), ("unseen_classes", unseen)):
        if ids.size == 0:
            raise DataError(f"key '{key}' of {path} is empty; list at least one {key.split('_')[0]} class")
    stray = np.setdiff1d(val, seen)
    if stray.size:
        listed = ", ".join(repr(names[i]) for i in stray[:MAX_LISTED])
        raise DataError(f"key 'val_classes' of {path} lists classes that are not seen classes ({listed}); "
                        "validation classes must be a subset of 'seen_classes'")
    if val.size and val.size == seen.size:
        raise DataError(f"key 'val_classes' of {path} lists every seen class, which leaves split=val no class to "
                        "train on; validation classes are a part of the seen classes: leave some out of it")
    frac = splits.get("test_seen_fraction", 0.2)
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1:
        raise DataError(f"key 'test_seen_fraction' of {path} must be a number in (0, 1), got {frac!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        return {}
    all_idx = np.arange(labels.size)
    in_range = (labels >= 0) & (labels < len(names))
    counts = np.bincount(labels[in_range], minlength=len(names))
    # (with labels out of range the validator's error about them comes first)
    for key, ids in (("seen_classes", seen), ("unseen_classes", unseen)) if in_range.all() else ():
        empty = ids[counts[ids] == 0]
        if empty.size:
            listed = ", ".join(repr(names[i]) for i in empty[:MAX_LISTED])
            raise DataError(f"key '{key}' of {path} lists {empty.size} classes without a sample in labels.npy "
                            f"({listed}); every seen class needs training and test samples and every unseen "
                            "class test samples: remove them from the list, or add their samples")
    unlisted = np.setdiff1d(np.flatnonzero(counts), np.union1d(seen, unseen))
    if unlisted.size:
        listed = ", ".join(f"{names[i]!r} ({counts[i]})" for i in unlisted[:MAX_LISTED])
        log.warning("%s: %d classes with samples are in neither 'seen_classes' nor 'unseen_classes' (%s%s): "
                    "their %d samples are not used", path, unlisted.size, listed,
                    ", ..." if unlisted.size > MAX_LISTED else "", int(counts[unlisted].sum()))
    seen_idx = all_idx[in_range & np.isin(labels, seen)]
    trainval, test_seen = per_class_holdout(seen_idx, labels, float(frac), np.random.default_rng(seed))
    locs = {"trainval": trainval, "test_seen": test_seen,
            "test_unseen": all_idx[in_range & np.isin(labels, unseen)]}
    if val.size:
        is_val = np.isin(labels[seen_idx], val)
        locs["train"], locs["val"] = seen_idx[~is_val], seen_idx[is_val]
    return locs


def load_byo(data_dir: str | Path, *, name: str | None = None, seed: int = 0,
             semantic_space: str | None = None) -> RawDataset:
    """Read a bring-your-own dataset directory (format: see the module docstring).

    Args:
        data_dir: directory with features.npy, labels.npy, semantics.npy, classes.txt, splits.json.
        name: dataset name; default: ``splits.json``'s ``"name"``, else the directory name.
        seed: seed of the per-class test_seen hold-out when ``splits.json`` lists class names.
        semantic_space: the space the caller expects (None: ``splits.json``'s, default ``"att"``); one that
            ``splits.json`` contradicts is a ``DataError``.

    Returns:
        A validated ``RawDataset`` (``features (N, D)`` float32, ``labels (N,)`` int64,
        ``semantics (C, A)`` float32, 0-based ``locs``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist; create it with the files "
                        f"{', '.join(BYO_FILES)} ({_FIX})")
    origin = Origin.for_byo(root)
    features = load_npy(root / "features.npy", "features file 'features.npy' (N, D)")
    labels = load_npy(root / "labels.npy", "labels file 'labels.npy' (N,)")
    semantics = load_npy(root / "semantics.npy", "semantics file 'semantics.npy' (C, A)")
    names = read_class_names(root / "classes.txt")
    sp = root / "splits.json"
    require_file(sp, "splits file 'splits.json'", _FIX)
    try:
        splits = json.loads(sp.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{sp} is not valid JSON ({err}); {_FIX}") from err
    if not isinstance(splits, dict):
        raise DataError(f"{sp} must hold a JSON object (keys 'seen_classes'/'unseen_classes' or "
                        f"'trainval'/'test_seen'/'test_unseen'); {_FIX}")

    if features.ndim != 2:
        raise DataError(f"{origin.features} must be a 2-d (N, D) array, got shape {features.shape}; {_FIX}")
    if labels.ndim > 1:
        labels = labels.squeeze()
    labels = labels.reshape(-1) if labels.ndim == 0 else labels
    if labels.ndim != 1:
        raise DataError(f"{origin.labels} must be a 1-d (N,) array, got shape {labels.shape}")
    if labels.dtype.kind == "b":
        raise DataError(f"{origin.labels} holds booleans; it must hold integer class indices (0-based rows of "
                        "classes.txt)")
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise DataError(f"{origin.labels} must hold integer class indices; it has non-integer values")
    labels = labels.astype(np.int64)
    if semantics.ndim == 1:
        semantics = semantics.reshape(-1, 1)
    if semantics.ndim != 2:
        raise DataError(f"{origin.semantics} must be a 2-d (C, A) array, got shape {semantics.shape}")

    has_classes, has_index = "seen_classes" in splits, "trainval" in splits
    if has_classes and has_index:
        raise DataError(f"{sp} has both 'seen_classes' and 'trainval': use either class names "
                        "(seen_classes/unseen_classes) or index lists (trainval/test_seen/test_unseen)")
    if has_classes:
        locs = _locs_from_classes(splits, labels, names, sp, seed)
    elif has_index:
        missing = [k for k in REQUIRED_LOCS if k not in splits]
        if missing:
            raise DataError(f"{sp} has no key '{missing[0]}'; the index form needs "
                            f"{', '.join(REQUIRED_LOCS)} (0-based row indices into features.npy)")
        if ("train" in splits) != ("val" in splits):
            raise DataError(f"{sp} has only one of the keys 'train' and 'val'; give both (or neither)")
        locs = {k: _index_list(splits, k, sp) for k in REQUIRED_LOCS + OPTIONAL_LOCS if k in splits}
    else:
        raise DataError(
            f"{sp} has neither 'seen_classes'/'unseen_classes' (class names) nor 'trainval'/'test_seen'/"
            f"'test_unseen' (0-based index lists) (it has: {', '.join(sorted(splits)) or 'nothing'}); {_FIX}"
        )
    space = splits.get("semantic_space")
    if space is not None and (not isinstance(space, str) or not space):
        raise DataError(f"key 'semantic_space' of {sp} must be a non-empty string such as 'att' or 'sent'")
    check_semantic_space(semantic_space, space, f"key 'semantic_space' of {sp}")
    space = semantic_space or space or "att"
    note = splits.get("features_note")
    if note is not None and not isinstance(note, str):
        raise DataError(f"key 'features_note' of {sp} must be a string (what the features are), got {note!r}")
    ds_name = name or splits.get("name") or root.resolve().name
    files = {str((root / f).resolve()): sha256_file(root / f) for f in BYO_FILES}
    raw = RawDataset(
        name=str(ds_name),
        features=np.ascontiguousarray(features, dtype=np.float32),
        labels=labels,
        semantics=np.ascontiguousarray(semantics, dtype=np.float32),
        class_names=names,
        locs=locs,
        semantic_space=space,
        files=files,
        features_note=note or None,
    )
    return validate_raw(raw, origin)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def save_byo(raw: RawDataset, data_dir: str | Path) -> Path:
    """Write ``raw`` as a bring-your-own directory (splits as 0-based index lists), the five files as one set
    (``files_as_one_set``: an interruption leaves the earlier files, never a mix).

    Returns:
        The directory.
    """
    root = Path(data_dir)
    bad = [n for n in raw.class_names if not n.strip() or "\n" in n or "\r" in n or n != n.strip()]
    if bad:
        raise DataError(f"class names {bad[:MAX_LISTED]!r} of dataset '{raw.name}' cannot be written to "
                        "classes.txt (one name per line): remove line breaks and surrounding spaces")
    root.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {"name": raw.name, "semantic_space": raw.semantic_space}
    if raw.features_note:
        splits["features_note"] = raw.features_note
    splits.update({k: np.asarray(v, dtype=np.int64).tolist() for k, v in raw.locs.items()})
    with files_as_one_set():
        _save_npy(root / "features.npy", np.ascontiguousarray(raw.features, dtype=np.float32))
        _save_npy(root / "labels.npy", np.asarray(raw.labels, dtype=np.int64))
        _save_npy(root / "semantics.npy", np.ascontiguousarray(raw.semantics, dtype=np.float32))
        atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in raw.class_names))
        atomic_write_text(root / "splits.json", json.dumps(splits) + "\n")
    return root


def save_xlsa17(raw: RawDataset, data_dir: str | Path, *, compress: bool = False,
                features_file: str = "res101.mat", semantics_file: str = "att_splits.mat",
                semantic_key: str = "att") -> Path:
    """Write ``raw`` as an xlsa17 directory: ``res101.mat`` + ``att_splits.mat``, as one set.

    ``res101.mat``: ``features`` D × N float64, ``labels`` N × 1 (1-based), ``image_files`` N × 1 cell, and
    ``simulated`` (``raw.features_note``) when there is one.
    ``att_splits.mat``: ``att`` A × C, ``allclasses_names`` C × 1 cell, 1-based ``*_loc`` column vectors,
    ``semantic_space``. ``features_file``/``semantics_file``/``semantic_key`` name them otherwise (e.g.
    ``sent_splits.mat`` for sentence embeddings, as in the CUB release).

    Returns:
        The directory.
    """
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with files_as_one_set():
        write_res101(raw, root / features_file, compress=compress)
        write_att_splits(raw, root / semantics_file, semantic_key=semantic_key)
    return root
