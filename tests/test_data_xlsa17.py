"""xlsa17 reader: real files, MATLAB v5 and v7.3 layouts, optional and extra keys, writers, checksums."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import scipy.io

from zsl_gen.data import load_raw, load_xlsa17, save_xlsa17, simulate_features_for, write_res101
from zsl_gen.data import _io
from zsl_gen.data.benchmarks import BENCHMARKS
from zsl_gen.errors import DataError

try:
    from data_helpers import REAL, assert_user_error, real_file, real_files, tiny_payloads, write_mat_v73, write_xlsa17
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import (REAL, assert_user_error, real_file, real_files, tiny_payloads, write_mat_v73,
                                    write_xlsa17)


@pytest.mark.parametrize("key", sorted(REAL), ids=lambda k: f"{k[0]}-{k[1]}")
def test_real_file_loads_with_simulated_features(tmp_path, key):
    dataset, fname = key
    src = real_file(dataset, fname)
    exp = REAL[key]
    raw_sim = simulate_features_for(src, feature_dim=16, seed=0)
    root = tmp_path / dataset
    root.mkdir()
    shutil.copy(src, root / fname)
    write_res101(raw_sim, root / "res101.mat")
    raw = load_xlsa17(root, name=dataset, semantics_file=fname)
    for split in ("trainval", "test_seen", "test_unseen", "train", "val"):
        assert raw.locs[split].size == exp[split], split
    assert raw.n_classes == exp["C"] and raw.semantics.shape == (exp["C"], exp["A"])
    assert len(raw.seen_classes) == exp["seen"] and len(raw.unseen_classes) == exp["unseen"]
    assert raw.features.shape == (sum(exp[s] for s in ("trainval", "test_seen", "test_unseen")), 16)
    assert raw.features.dtype == np.float32 and raw.labels.dtype == np.int64
    np.testing.assert_array_equal(raw.labels, raw_sim.labels)
    np.testing.assert_allclose(raw.features, raw_sim.features, rtol=1e-6)
    assert raw.semantic_space == ("sent" if "sent" in fname else "att")
    if fname == "att_splits.mat":  # README: att rows are L2-normalised (sentence embeddings are not)
        np.testing.assert_allclose(np.linalg.norm(raw.semantics, axis=1), 1.0, atol=1e-4)
    assert raw.class_names[0] != "class_000"
    digest = hashlib.sha256((root / fname).read_bytes()).hexdigest()
    assert raw.files[str((root / fname).resolve())] == digest
    # the table the benchmark-shape warning, the simulator and zsl-bench read agrees with the real file
    published = BENCHMARKS[dataset]
    assert (published.n_seen, published.n_unseen) == (exp["seen"], exp["unseen"])
    assert published.samples == (exp["trainval"], exp["test_seen"], exp["test_unseen"])
    assert published.locs == (exp["train"], exp["val"]) and published.semantic_dims[raw.semantic_space] == exp["A"]
    assert published.n_val_classes == np.unique(raw.labels[raw.locs["val"]]).size


def test_every_shared_file_is_covered():
    files = real_files()
    if not files:
        pytest.skip("the shared xlsa17 directory is absent")
    assert {(p.parent.name, p.name) for p in files} <= set(REAL), "a new real file lacks expected sizes"


def test_v73_hdf5_loads_identically_to_v5(tmp_path):
    res, att = tiny_payloads()
    v5 = write_xlsa17(tmp_path / "v5", res, att)
    v73 = tmp_path / "v73"
    v73.mkdir()
    write_mat_v73(v73 / "res101.mat", res)
    write_mat_v73(v73 / "att_splits.mat", att)
    with pytest.raises(NotImplementedError):  # proves the files really are v7.3
        scipy.io.loadmat(v73 / "att_splits.mat")
    a = load_xlsa17(v5, name="T")
    b = load_xlsa17(v73, name="T")
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.semantics, b.semantics)
    assert a.class_names == b.class_names == [f"cls{c}" for c in range(6)]
    assert a.locs.keys() == b.locs.keys()
    for k in a.locs:
        np.testing.assert_array_equal(a.locs[k], b.locs[k])


def test_v5_values_are_0_based_and_oriented(tmp_path):
    res, att = tiny_payloads()
    raw = load_xlsa17(write_xlsa17(tmp_path, res, att), name="T")
    np.testing.assert_allclose(raw.features, res["features"].T.astype(np.float32))
    np.testing.assert_array_equal(raw.labels, res["labels"].ravel().astype(int) - 1)
    np.testing.assert_allclose(raw.semantics, att["att"].T.astype(np.float32))
    np.testing.assert_array_equal(raw.locs["trainval"], att["trainval_loc"].ravel().astype(int) - 1)


def test_class_by_dim_semantics_without_names_are_read_by_the_labels_or_refused_when_ambiguous(tmp_path):
    res, att = tiny_payloads()
    del att["allclasses_names"], att["original_att"]
    semantics = np.random.default_rng(0).random((6, 3))  # C × A, the transpose of xlsa17's A × C
    att["att"] = semantics
    raw = load_xlsa17(write_xlsa17(tmp_path / "fewer", res, att), name="T")
    assert raw.semantics.shape == (6, 3)
    np.testing.assert_allclose(raw.semantics, semantics.astype(np.float32))
    # 6 × 10: 6 classes × 10 dims, or 6 dims × 10 classes of which 4 have no image? Not guessed (it was read as
    # 10 classes of 6-d vectors, silently)
    att["att"] = np.random.default_rng(0).random((6, 10))
    with pytest.raises(DataError) as ei:
        load_xlsa17(write_xlsa17(tmp_path / "more", res, att), name="T")
    assert_user_error(ei, "key 'att' of", "is 6×10", "may be 6 classes × 10 dimensions or 6 dimensions × 10 classes",
                      "allclasses_names")
    att["allclasses_names"] = tiny_payloads()[1]["allclasses_names"]  # with the names it is clear
    assert load_xlsa17(write_xlsa17(tmp_path / "named", res, att), name="T").semantics.shape == (6, 10)


def test_missing_optional_keys(tmp_path):
    res, att = tiny_payloads()
    for k in ("train_loc", "val_loc", "original_att", "allclasses_names"):
        del att[k]
    del res["image_files"]
    raw = load_xlsa17(write_xlsa17(tmp_path, res, att), name="T")
    assert set(raw.locs) == {"trainval", "test_seen", "test_unseen"}
    assert raw.class_names == [f"class_{i:03d}" for i in range(6)]


def test_extra_keys_and_odd_shapes_are_accepted(tmp_path):
    res, att = tiny_payloads()
    att["something_else"] = np.arange(7)
    att["trainval_loc"] = att["trainval_loc"].reshape(1, -1)  # row instead of column vector
    att["test_unseen_loc"] = att["test_unseen_loc"].astype(np.float64)
    res["labels"] = res["labels"].reshape(1, 1, -1)
    res["extra"] = "ignored"
    raw = load_xlsa17(write_xlsa17(tmp_path, res, att), name="T")
    assert raw.locs["trainval"].ndim == 1 and raw.labels.shape == (30,)


def test_n_by_d_features_accepted(tmp_path):
    res, att = tiny_payloads()
    res["features"] = res["features"].T.copy()  # N × D
    raw = load_xlsa17(write_xlsa17(tmp_path, res, att), name="T")
    assert raw.features.shape == (30, 4)


def test_semantic_space_and_key(tmp_path):
    res, att = tiny_payloads()
    att["sentence_emb"] = att.pop("att")
    root = write_xlsa17(tmp_path, res, att, semantics_file="sent_splits.mat")
    assert load_xlsa17(root, name="T", semantics_file="sent_splits.mat", semantic_key="sentence_emb") \
        .semantic_space == "sent"
    raw = load_xlsa17(root, name="T", semantics_file="sent_splits.mat", semantic_key="sentence_emb",
                      semantic_space="w2v")
    assert raw.semantic_space == "w2v"


def test_a_sentence_file_labelled_att_by_the_config_is_refused(tmp_path):
    # dataset=cub (semantic_space: att) with dataset.semantics_file=sent_splits.mat: sentences labelled `att`
    res, att = tiny_payloads()
    root = write_xlsa17(tmp_path / "d", res, att, semantics_file="sent_splits.mat")
    with pytest.raises(DataError) as ei:
        load_xlsa17(root, name="CUB", semantics_file="sent_splits.mat", semantic_space="att")
    assert_user_error(ei, "sent_splits.mat", "dataset.semantic_space=att", "dataset=cub_sent",
                      "--semantic-space att")
    # recorded in the file as attributes (the fix the message names): read as such
    out = save_xlsa17(load_xlsa17(root, name="CUB", semantics_file="sent_splits.mat", semantic_space="w2v"),
                      tmp_path / "e", semantics_file="sent_splits.mat")
    with pytest.raises(DataError, match="says the semantics are 'w2v'"):
        load_xlsa17(out, name="CUB", semantics_file="sent_splits.mat", semantic_space="att")
    raw = load_xlsa17(root, name="CUB", semantics_file="sent_splits.mat")
    raw.semantic_space = "att"
    recorded = save_xlsa17(raw, tmp_path / "f", semantics_file="sent_splits.mat")
    assert load_xlsa17(recorded, name="CUB", semantics_file="sent_splits.mat",
                       semantic_space="att").semantic_space == "att"


def test_writers_are_format_exact_and_round_trip(tmp_path):
    res, att = tiny_payloads()
    raw = load_xlsa17(write_xlsa17(tmp_path / "a", res, att), name="T")
    out = save_xlsa17(raw, tmp_path / "b")
    assert sorted(p.name for p in out.iterdir()) == ["att_splits.mat", "res101.mat"]  # no temp files left
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "res101.mat").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    r = scipy.io.loadmat(out / "res101.mat")
    assert r["features"].shape == (4, 30) and r["features"].dtype == np.float64
    assert r["labels"].shape == (30, 1) and r["labels"].min() == 1
    assert r["image_files"].shape == (30, 1) and r["image_files"].dtype == object
    s = scipy.io.loadmat(out / "att_splits.mat")
    assert s["att"].shape == (3, 6) and s["allclasses_names"].shape == (6, 1)
    for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
        assert s[k].shape[1] == 1 and s[k].min() >= 1
        np.testing.assert_array_equal(s[k], att[k])
    again = load_raw(out, name="T")
    np.testing.assert_array_equal(again.features, raw.features)
    assert again.class_names == raw.class_names


def test_checksums_are_cached(tmp_path, monkeypatch):
    res, att = tiny_payloads()
    root = write_xlsa17(tmp_path, res, att)
    load_xlsa17(root, name="T")
    calls = []
    real_sha = hashlib.sha256
    monkeypatch.setattr(_io.hashlib, "sha256", lambda *a: calls.append(1) or real_sha(*a))
    raw = load_xlsa17(root, name="T")
    assert calls == [] and len(raw.files) == 2
    scipy.io.savemat(root / "att_splits.mat", {**att, "extra": 1})  # changed file: hashed again
    load_xlsa17(root, name="T")
    assert calls == [1]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    res, att = tiny_payloads()
    raw = load_xlsa17(write_xlsa17(tmp_path / "a", res, att), name="T")
    out = tmp_path / "b"
    out.mkdir()

    def broken(fh, payload, **kw):
        fh.write(b"MATLAB 5.0 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(scipy.io, "savemat", broken)
    with pytest.raises(OSError):
        write_res101(raw, out / "res101.mat")
    assert list(out.iterdir()) == []
