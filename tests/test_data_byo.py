"""Bring-your-own format: round trips, class-name splits, auto-detection and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from zsl_gen.data import (
    build_protocol,
    load_byo,
    load_raw,
    load_xlsa17,
    make_synthetic,
    save_byo,
    save_xlsa17,
)
from zsl_gen.data.protocol import holdout_count
from zsl_gen.errors import DataError

try:
    from data_helpers import assert_user_error, tiny_payloads, write_xlsa17
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import assert_user_error, tiny_payloads, write_xlsa17


def _same(a, b):
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.semantics, b.semantics)
    assert a.class_names == b.class_names
    assert a.semantic_space == b.semantic_space
    assert a.locs.keys() == b.locs.keys()
    for k in a.locs:
        np.testing.assert_array_equal(a.locs[k], b.locs[k])


def test_round_trip_xlsa17_byo_xlsa17(tmp_path):
    res, att = tiny_payloads()
    src = load_xlsa17(write_xlsa17(tmp_path / "x", res, att), name="T")
    save_byo(src, tmp_path / "byo")
    assert sorted(p.name for p in (tmp_path / "byo").iterdir()) == sorted(
        ["features.npy", "labels.npy", "semantics.npy", "classes.txt", "splits.json"])  # no temp files
    byo = load_byo(tmp_path / "byo")
    assert byo.name == "T"
    _same(src, byo)
    save_xlsa17(byo, tmp_path / "x2")
    back = load_xlsa17(tmp_path / "x2", name="T")
    _same(src, back)
    # the written .mat files hold the same content as the hand-written originals
    orig = scipy.io.loadmat(tmp_path / "x" / "att_splits.mat")
    new = scipy.io.loadmat(tmp_path / "x2" / "att_splits.mat")
    for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
        np.testing.assert_array_equal(orig[k], new[k])
    np.testing.assert_allclose(orig["att"], new["att"], rtol=1e-6)
    r_orig = scipy.io.loadmat(tmp_path / "x" / "res101.mat")
    r_new = scipy.io.loadmat(tmp_path / "x2" / "res101.mat")
    np.testing.assert_allclose(r_orig["features"], r_new["features"], rtol=1e-6)
    np.testing.assert_array_equal(r_orig["labels"], r_new["labels"])


def test_sentence_space_survives_round_trips(tmp_path):
    raw = make_synthetic(seed=0, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2)
    raw.semantic_space = "sent"
    save_xlsa17(raw, tmp_path / "x")
    assert load_raw(tmp_path / "x", name="s").semantic_space == "sent"
    save_byo(raw, tmp_path / "b")
    assert load_raw(tmp_path / "b", name="s").semantic_space == "sent"


def _write_class_form(root, splits, *, n_classes=6, per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    np.save(root / "features.npy", rng.random((labels.size, 5)).astype(np.float64))
    np.save(root / "labels.npy", labels)
    np.save(root / "semantics.npy", rng.random((n_classes, 3)))
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(n_classes)))
    (root / "splits.json").write_text(json.dumps(splits))
    return labels


def test_class_list_splits(tmp_path):
    splits = {"seen_classes": ["c0", "c1", "c2", "c3"], "unseen_classes": ["c4", "c5"],
              "val_classes": ["c3"], "semantic_space": "sent"}
    labels = _write_class_form(tmp_path / "d", splits)
    raw = load_byo(tmp_path / "d", seed=1)
    assert raw.name == "d" and raw.semantic_space == "sent"
    np.testing.assert_array_equal(raw.seen_classes, [0, 1, 2, 3])
    np.testing.assert_array_equal(raw.unseen_classes, [4, 5])
    np.testing.assert_array_equal(np.sort(raw.locs["test_unseen"]), np.flatnonzero(labels >= 4))
    for c in range(4):  # 80/20 per class
        assert np.sum(labels[raw.locs["test_seen"]] == c) == holdout_count(10, 0.2)
    assert not set(raw.locs["trainval"]) & set(raw.locs["test_seen"])
    tv_ts = np.sort(np.concatenate([raw.locs["trainval"], raw.locs["test_seen"]]))
    np.testing.assert_array_equal(np.sort(np.concatenate([raw.locs["train"], raw.locs["val"]])), tv_ts)
    np.testing.assert_array_equal(np.unique(labels[raw.locs["val"]]), [3])
    # seeded: same seed, same split; another seed, another split
    np.testing.assert_array_equal(load_byo(tmp_path / "d", seed=1).locs["test_seen"], raw.locs["test_seen"])
    assert not np.array_equal(load_byo(tmp_path / "d", seed=2).locs["test_seen"], raw.locs["test_seen"])
    d = build_protocol(raw, "val")
    np.testing.assert_array_equal(d.unseen_classes.numpy(), [3])
    # save_byo freezes the derived split as index lists
    save_byo(raw, tmp_path / "frozen")
    frozen = json.loads((tmp_path / "frozen" / "splits.json").read_text())
    assert "trainval" in frozen and "seen_classes" not in frozen
    _same(raw, load_byo(tmp_path / "frozen", seed=99))


def test_load_raw_detects_formats(tmp_path):
    res, att = tiny_payloads()
    write_xlsa17(tmp_path / "x", res, att)
    raw = load_raw(tmp_path / "x", name="X")
    save_byo(raw, tmp_path / "b")
    b = load_raw(tmp_path / "b", name="B")
    assert b.name == "B"
    _same(raw, b)
    assert all(p.endswith(".npy") or p.endswith(".txt") or p.endswith(".json") for p in b.files)


def _splits(obj):
    return lambda d: (d / "splits.json").write_text(json.dumps(obj))


@pytest.mark.parametrize("mutate,fragments", [
    (lambda d: (d / "labels.npy").unlink(), ["labels.npy", "does not exist", "bring-your-own format"]),
    (lambda d: (d / "features.npy").write_bytes(b"garbage"), ["features.npy", "cannot read", "numpy.save"]),
    (lambda d: np.save(d / "features.npy", np.zeros((60, 5, 2))), ["features.npy", "(N, D)"]),
    (lambda d: np.save(d / "labels.npy", np.arange(59) % 6), ["labels.npy", "59 entries", "60 samples"]),
    (lambda d: np.save(d / "labels.npy", np.arange(60) % 7), ["labels.npy", "semantics.npy", "only 6 classes",
                                                               "one row per class"]),
    (lambda d: np.save(d / "labels.npy", np.arange(60) % 6 - 1), ["labels.npy", "(-1)", "0-based"]),
    (lambda d: np.save(d / "labels.npy", np.arange(60) % 6 + 1), ["labels.npy", "only 6 classes",
                                                               "count classes from 1, subtract 1"]),
    (lambda d: np.save(d / "labels.npy", np.arange(60) % 2 == 0), ["labels.npy", "booleans", "integer"]),
    (lambda d: np.save(d / "features.npy", np.zeros((60, 0))), ["features.npy", "0 feature dimensions"]),
    (lambda d: (d / "classes.txt").write_text("c0\nc1\n\nc3\nc4\nc5\n"), ["classes.txt", "empty", "line"]),
    (lambda d: (d / "classes.txt").write_text("c0\nc1\nc1\nc3\nc4\nc5\n"), ["classes.txt", "'c1'", "unique"]),
    (lambda d: (d / "classes.txt").write_text("".join(f"c{i}\n" for i in range(7))),
     ["classes.txt", "7 class names", "6 classes", "one name per class"]),
    (lambda d: (d / "splits.json").write_text("{not json"), ["splits.json", "not valid JSON"]),
    (_splits({}), ["splits.json", "seen_classes", "trainval", "it has: nothing"]),
    (_splits({"seen_classes": ["c0", "zebra"], "unseen_classes": ["c5"]}),
     ["key 'seen_classes'", "splits.json", "'zebra'", "classes.txt"]),
    (_splits({"seen_classes": ["c0", "c1"], "unseen_classes": ["c1"]}),
     ["'seen_classes'", "'unseen_classes'", "'c1'", "remove it from one list"]),
    (_splits({"seen_classes": ["c0"], "unseen_classes": ["c1"], "val_classes": ["c2"]}),
     ["'val_classes'", "'c2'", "subset"]),
    (_splits({"seen_classes": ["c0", "c1"], "unseen_classes": []}), ["key 'unseen_classes'", "is empty"]),
    (_splits({"seen_classes": ["c0", "c1"], "unseen_classes": ["c4"], "val_classes": ["c0", "c1"]}),
     ["key 'val_classes'", "every seen class", "leave some out"]),
    (_splits({"trainval": [0, 1], "test_seen": [2]}), ["splits.json", "no key 'test_unseen'"]),
    (_splits({"trainval": [0, 1.5], "test_seen": [2], "test_unseen": [3]}),
     ["key 'trainval'", "0-based integer row indices"]),
    (_splits({"trainval": [0], "test_seen": [2], "test_unseen": [60]}),
     ["list 'test_unseen'", "splits.json", "(60)", "0..59"]),
    (_splits({"trainval": [0], "test_seen": [1], "test_unseen": [2], "train": [0]}),
     ["only one of the keys 'train' and 'val'"]),
])
def test_byo_errors(tmp_path, mutate, fragments):
    root = tmp_path / "d"
    _write_class_form(root, {"seen_classes": ["c0", "c1", "c2", "c3"], "unseen_classes": ["c4", "c5"]})
    mutate(root)
    with pytest.raises(DataError) as ei:
        load_byo(root)
    assert_user_error(ei, *fragments)


@pytest.mark.parametrize("key", ["unseen_classes", "seen_classes"])
def test_a_listed_class_without_samples_is_an_error_not_dropped(tmp_path, key):
    root = tmp_path / "d"
    splits = {"seen_classes": ["c0", "c1", "c2", "c3"], "unseen_classes": ["c4", "c5"]}
    splits[key] = [*splits[key], "c6"]
    _write_class_form(root, splits)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(7)))  # c6: semantics, no sample
    np.save(root / "semantics.npy", np.random.default_rng(0).random((7, 3)))
    with pytest.raises(DataError) as ei:
        load_byo(root)
    assert_user_error(ei, f"key '{key}'", "splits.json", "'c6'", "without a sample", "remove them")


def test_classes_in_neither_list_are_counted_in_a_warning(tmp_path, caplog):
    root = tmp_path / "d"
    _write_class_form(root, {"seen_classes": ["c0", "c1", "c2"], "unseen_classes": ["c4", "c5"],
                             "val_classes": ["c2"]})
    with caplog.at_level("WARNING", logger="zsl_gen.data.byo"):
        raw = load_byo(root)
    assert "'c3' (10)" in caplog.text and "their 10 samples are not used" in caplog.text
    assert 3 not in raw.labels[np.concatenate(list(raw.locs.values()))]


def test_val_split_advice_for_the_class_list_form_names_val_classes(tmp_path):
    root = tmp_path / "d"
    _write_class_form(root, {"seen_classes": ["c0", "c1", "c2", "c3"], "unseen_classes": ["c4", "c5"]})
    with pytest.raises(DataError) as ei:
        build_protocol(load_byo(root), split="val")
    assert_user_error(ei, "split=val", "'val_classes'", "selections=[paper]")


def test_byo_nan_semantics_and_constant_features(tmp_path):
    root = tmp_path / "d"
    _write_class_form(root, {"seen_classes": ["c0", "c1", "c2", "c3"], "unseen_classes": ["c4", "c5"]})
    sem = np.load(root / "semantics.npy")
    sem[2, 1] = np.nan
    np.save(root / "semantics.npy", sem)
    with pytest.raises(DataError) as ei:
        load_byo(root)
    assert_user_error(ei, "semantics.npy", "NaN or Inf", "'c2'")
    sem[2, 1] = 0.5
    np.save(root / "semantics.npy", sem)
    np.save(root / "features.npy", np.ones((60, 5)))
    with pytest.raises(DataError) as ei:
        load_byo(root)
    assert_user_error(ei, "features.npy", "constant")


def test_save_byo_rejects_unwritable_class_names(tmp_path):
    raw = make_synthetic(seed=0, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2)
    raw.class_names[0] = "two\nlines"
    with pytest.raises(DataError) as ei:
        save_byo(raw, tmp_path / "b")
    assert_user_error(ei, "classes.txt", "line breaks")
    assert not (tmp_path / "b" / "features.npy").exists()


def test_the_simulated_features_note_survives_both_conversions(tmp_path):
    """A note saying the features are simulated must not be lost on the way to a run's results.json."""
    raw = make_synthetic(seed=0, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2)
    raw.features_note = "simulated features (test), not real image features"
    save_byo(raw, tmp_path / "b")
    byo = load_byo(tmp_path / "b")
    assert byo.features_note == raw.features_note
    save_xlsa17(byo, tmp_path / "x")
    assert load_xlsa17(tmp_path / "x", name="s").features_note == raw.features_note
    raw.features_note = None  # real features: no key written, none read back
    save_byo(raw, tmp_path / "real")
    assert "features_note" not in json.loads((tmp_path / "real" / "splits.json").read_text())
    assert load_byo(tmp_path / "real").features_note is None


@pytest.mark.parametrize("fmt", ["byo", "xlsa17"])
def test_a_configured_semantic_space_the_files_contradict_is_an_error(tmp_path, fmt):
    raw = make_synthetic(seed=0, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2)
    raw.semantic_space = "sent"
    (save_byo if fmt == "byo" else save_xlsa17)(raw, tmp_path / "d")
    where = "splits.json" if fmt == "byo" else "att_splits.mat"
    with pytest.raises(DataError) as ei:
        load_raw(tmp_path / "d", name="CUB", semantic_space="att")
    assert_user_error(ei, f"key 'semantic_space' of {tmp_path / 'd' / where}", "'sent'",
                      "dataset.semantic_space=att", "set dataset.semantic_space=sent")
    assert load_raw(tmp_path / "d", name="CUB", semantic_space="sent").semantic_space == "sent"
    assert load_raw(tmp_path / "d", name="CUB").semantic_space == "sent"


def test_a_directory_with_both_formats_features_is_refused(tmp_path):
    raw = make_synthetic(seed=0, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2)
    save_byo(raw, tmp_path / "d")
    save_xlsa17(make_synthetic(seed=1, feature_dim=8, n_classes=10, n_unseen=2, n_val_classes=2), tmp_path / "d")
    with pytest.raises(DataError) as ei:
        load_raw(tmp_path / "d", name="X")
    assert_user_error(ei, str(tmp_path / "d"), "features.npy", "res101.mat", "both dataset formats",
                      "a directory of its own")


def test_duplicate_class_names_in_a_mat_file_are_an_error(tmp_path):
    res, att = tiny_payloads()
    att["allclasses_names"][2, 0] = att["allclasses_names"][0, 0]
    with pytest.raises(DataError) as ei:
        load_xlsa17(write_xlsa17(tmp_path, res, att), name="T")
    assert_user_error(ei, "key 'allclasses_names'", "'cls0'", "more than once", "unique")


def test_classes_without_samples_are_counted_and_labels_from_1_are_named(tmp_path, caplog):
    """Index-form labels shifted by one plus an extra, sampleless semantic row pass every range check: the
    warning is the only place this shows, so it must say what it likely is."""
    root = tmp_path / "d"
    labels = _write_class_form(root, {})
    np.save(root / "labels.npy", labels + 1)
    np.save(root / "semantics.npy", np.random.default_rng(0).random((7, 3)))
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(7)))
    seen_rows = np.flatnonzero(labels < 4)
    first = np.unique(labels[seen_rows], return_index=True)[1]
    (root / "splits.json").write_text(json.dumps({
        "trainval": np.delete(seen_rows, first).tolist(), "test_seen": seen_rows[first].tolist(),
        "test_unseen": np.flatnonzero(labels >= 4).tolist()}))
    with caplog.at_level("WARNING", logger="zsl_gen.data.validate"):
        raw = load_byo(root)
    assert len(raw.seen_classes) == 4 and 0 not in raw.labels
    assert "1 of 7 classes have no sample" in caplog.text and "'c0'" in caplog.text
    assert "if they count classes from 1, subtract 1" in caplog.text
