"""Every bad input gives one DataError/ConfigError naming the file and key at fault and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from zsl_gen.data import build_protocol, load_raw, load_xlsa17
from zsl_gen.errors import DataError

try:
    from data_helpers import assert_user_error, tiny_payloads, write_xlsa17
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import assert_user_error, tiny_payloads, write_xlsa17


def _load(tmp_path, res, att, **kw):
    return load_xlsa17(write_xlsa17(tmp_path, res, att), name="T", **kw)


def test_missing_features_file(tmp_path):
    _, att = tiny_payloads()
    write_xlsa17(tmp_path, None, att)
    with pytest.raises(DataError) as ei:
        load_xlsa17(tmp_path, name="T")
    assert_user_error(ei, str(tmp_path / "res101.mat"), "does not exist", "zsl-data download",
                      "zsl-data simulate")


def test_missing_semantics_file(tmp_path):
    res, _ = tiny_payloads()
    write_xlsa17(tmp_path, res, None)
    with pytest.raises(DataError) as ei:
        load_xlsa17(tmp_path, name="T")
    assert_user_error(ei, str(tmp_path / "att_splits.mat"), "does not exist", "zsl-data download")


def test_corrupt_mat_file(tmp_path):
    res, att = tiny_payloads()
    write_xlsa17(tmp_path, res, att)
    (tmp_path / "res101.mat").write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(DataError) as ei:
        load_xlsa17(tmp_path, name="T")
    assert_user_error(ei, "res101.mat", "cannot read", "re-download")


@pytest.mark.parametrize("key,file", [
    ("att", "att_splits.mat"), ("trainval_loc", "att_splits.mat"), ("test_seen_loc", "att_splits.mat"),
    ("test_unseen_loc", "att_splits.mat"), ("features", "res101.mat"), ("labels", "res101.mat"),
])
def test_missing_required_key(tmp_path, key, file):
    res, att = tiny_payloads()
    (res if file == "res101.mat" else att).pop(key)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    msg = assert_user_error(ei, str(tmp_path / file), f"no key '{key}'", "it has:")
    assert ("semantic_key" in msg) if key == "att" else ("re-download" in msg or "add the key" in msg)


def test_missing_custom_semantic_key_names_it(tmp_path):
    res, att = tiny_payloads()
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att, semantic_key="w2v")
    assert_user_error(ei, "att_splits.mat", "no key 'w2v'", "semantic_key")


def test_labels_and_features_disagree(tmp_path):
    res, att = tiny_payloads()
    res["labels"] = res["labels"][:-3]
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "res101.mat", "labels", "4×30", "27", "same file")


def test_semantic_matrix_has_fewer_classes_than_labels(tmp_path):
    res, att = tiny_payloads()
    att["att"] = att["att"][:, :4]
    del att["allclasses_names"]
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'att' of", "att_splits.mat", "key 'labels' of", "only 4 classes", "disagree",
                      "one column per class")


def test_class_names_count_disagrees(tmp_path):
    res, att = tiny_payloads()
    att["allclasses_names"] = att["allclasses_names"][:5]
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "allclasses_names", "att_splits.mat", "5 class names", "6 classes",
                      "one name per class")


@pytest.mark.parametrize("bad", [0, 31])
def test_index_out_of_range_names_the_key(tmp_path, bad):
    res, att = tiny_payloads()
    att["test_seen_loc"][0, 0] = bad
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'test_seen_loc' of", "att_splits.mat", f"({bad})", "1..30", "1-based",
                      "same release")


def test_optional_loc_out_of_range(tmp_path):
    res, att = tiny_payloads()
    att["val_loc"][0, 0] = 99
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'val_loc'", "99")


def test_labels_out_of_range(tmp_path):
    res, att = tiny_payloads()
    res["labels"][0, 0] = 0
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'labels' of", "res101.mat", "out-of-range", "(0)", "1-based", "add 1")


def test_non_integer_locations(tmp_path):
    res, att = tiny_payloads()
    att["trainval_loc"] = att["trainval_loc"] + 0.5
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "trainval_loc", "whole numbers")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features(tmp_path, value):
    res, att = tiny_payloads()
    res["features"][2, 7] = value
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'features' of", "res101.mat", "NaN or Inf", "rows 8", "recompute or drop")


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_non_finite_semantics(tmp_path, value):
    res, att = tiny_payloads()
    att["att"][1, 3] = value
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'att' of", "att_splits.mat", "NaN or Inf", "'cls3'", "fill in")


def test_constant_features(tmp_path):
    res, att = tiny_payloads()
    res["features"][:] = 0.0
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'features' of", "res101.mat", "constant", "re-extract or re-download")


def test_negative_features_need_scaling(tmp_path):
    res, att = tiny_payloads()
    res["features"][0, 0] = -0.5
    raw = _load(tmp_path, res, att)
    build_protocol(raw, feature_scaling="minmax")  # fine with scaling
    with pytest.raises(DataError) as ei:
        build_protocol(raw, feature_scaling="none")
    assert_user_error(ei, "key 'features' of", "res101.mat", "negative", "feature_scaling=minmax")


def test_seen_unseen_overlap_lists_classes(tmp_path):
    res, att = tiny_payloads()
    # move two samples of unseen classes cls4 and cls5 into trainval
    tu = att["test_unseen_loc"].ravel()
    att["trainval_loc"] = np.concatenate([att["trainval_loc"].ravel(), tu[[0, 5]]]).reshape(-1, 1)
    att["test_unseen_loc"] = tu.reshape(-1, 1)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "overlap", "'cls4'", "'cls5'", "key 'trainval_loc'", "key 'test_unseen_loc'",
                      "same release")
    # a single shared class is refused as well
    att["trainval_loc"] = np.concatenate([att["trainval_loc"].ravel()[:-2], tu[[0]]]).reshape(-1, 1)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "overlap", "'cls4'")
    assert "'cls5'" not in str(ei.value)


def test_test_seen_class_without_trainval(tmp_path):
    res, att = tiny_payloads()
    labels = res["labels"].ravel().astype(int) - 1
    tv = att["trainval_loc"].ravel()
    att["trainval_loc"] = tv[labels[tv - 1] != 2].reshape(-1, 1)  # class cls2 keeps only its test_seen sample
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, "key 'test_seen_loc'", "no sample in", "key 'trainval_loc'", "'cls2'",
                      "move some of its samples")


def test_val_split_without_train_val_keys(tmp_path):
    res, att = tiny_payloads()
    del att["train_loc"], att["val_loc"]
    raw = _load(tmp_path, res, att)
    build_protocol(raw, split="test")
    with pytest.raises(DataError) as ei:
        build_protocol(raw, split="val")
    assert_user_error(ei, "split=val", "'train_loc'", "'val_loc'", "att_splits.mat", "selections=[paper]",
                      "add the keys")
    assert "use split=test" not in str(ei.value)  # not a zsl-train setting


def test_val_split_overlapping_train_and_val_classes(tmp_path):
    res, att = tiny_payloads()
    att["val_loc"] = np.concatenate([att["val_loc"].ravel(), att["train_loc"].ravel()[:1]]).reshape(-1, 1)
    raw = _load(tmp_path, res, att)
    with pytest.raises(DataError) as ei:
        build_protocol(raw, split="val")
    assert_user_error(ei, "key 'train_loc'", "key 'val_loc'", "'cls0'", "disjoint", "selections=[paper]")


def test_load_raw_finds_nothing(tmp_path):
    (tmp_path / "CUB").mkdir()
    res, att = tiny_payloads()
    write_xlsa17(tmp_path / "CUB", res, att)
    with pytest.raises(DataError) as ei:
        load_raw(tmp_path, name="CUB")
    assert_user_error(ei, str(tmp_path), "res101.mat + att_splits.mat", "features.npy", "splits.json",
                      "zsl-data download CUB", f"{tmp_path / 'CUB'}: did you mean")
    with pytest.raises(DataError) as ei:
        load_raw(tmp_path / "missing", name="X")
    assert_user_error(ei, "does not exist", "looked for")


def test_missing_files_advice_fits_the_file_and_the_dataset(tmp_path):
    res, att = tiny_payloads()
    root = write_xlsa17(tmp_path / "CUB", res, att)
    with pytest.raises(DataError) as ei:  # the sentence embeddings: their own download, not a simulation
        load_raw(root, name="CUB", semantics_file="sent_splits.mat", semantic_key="att")
    assert_user_error(ei, "sent_splits.mat", "zsl-data download CUB_SENT")
    assert "zsl-data simulate" not in str(ei.value)
    with pytest.raises(DataError) as ei:  # a name that is no benchmark: nothing to download
        load_raw(tmp_path / "empty", name="sim")
    assert "zsl-data download" not in str(ei.value)
    with pytest.raises(DataError) as ei:  # the download lands in <dir>/AWA2, not in a folder named otherwise
        load_raw(tmp_path / "empty", name="AWA2")
    assert_user_error(ei, "`zsl-data download AWA2 --dir <dir>` and set data_dir=<dir>/AWA2")
    with pytest.raises(DataError) as ei:
        load_raw(tmp_path / "AWA2", name="AWA2")
    assert_user_error(ei, f"`zsl-data download AWA2 --dir {tmp_path}`, place the files there")
    with pytest.raises(DataError) as ei:  # CUB with sentences: both downloads
        load_raw(tmp_path / "CUB_none", name="CUB", semantics_file="sent_splits.mat")
    assert_user_error(ei, "`zsl-data download CUB --dir <dir>` and `zsl-data download CUB_SENT --dir <dir>` and set "
                          "data_dir=<dir>/CUB")


@pytest.mark.parametrize("case, named", [
    ("trainval_test_seen", ("key 'trainval_loc'", "key 'test_seen_loc'", "share 2 samples")),
    ("val_test_unseen", ("key 'val_loc'", "key 'test_unseen_loc'", "share 1 samples")),
    ("repeated", ("key 'trainval_loc'", "lists 1 samples more than once")),
])
def test_a_sample_in_two_sets_or_twice_in_one_is_refused(tmp_path, case, named):
    res, att = tiny_payloads()
    tv, ts, tu = (att[k].ravel() for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc"))
    if case == "trainval_test_seen":  # test samples trained on: every seen number inflated
        att["trainval_loc"] = np.concatenate([tv, ts[:2]]).reshape(-1, 1)
    elif case == "val_test_unseen":
        att["val_loc"] = np.concatenate([att["val_loc"].ravel(), tu[:1]]).reshape(-1, 1)
    else:
        att["trainval_loc"] = np.concatenate([tv, tv[:1]]).reshape(-1, 1)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, res, att)
    assert_user_error(ei, *named)

