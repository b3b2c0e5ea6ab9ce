"""Protocols (split=test / split=val) and preprocessing fitted on the training part only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zsl_gen.data import apply_feature_scaling, build_protocol, make_synthetic
from zsl_gen.data.protocol import holdout_count
from zsl_gen.errors import ConfigError

try:
    from data_helpers import assert_user_error
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import assert_user_error


@pytest.fixture(scope="module")
def raw():
    return make_synthetic(seed=3)


def _rows(raw, x):
    """Row indices of ``raw.features`` matching each row of x (features are continuous: rows are unique)."""
    lookup = {r.tobytes(): i for i, r in enumerate(raw.features)}
    return np.array([lookup[r.tobytes()] for r in x])


def test_test_protocol_uses_the_published_splits(raw):
    d = build_protocol(raw, "test", feature_scaling="none")
    assert d.split == "test"
    np.testing.assert_array_equal(np.sort(_rows(raw, d.train_x.numpy())), raw.locs["trainval"])
    np.testing.assert_array_equal(np.sort(_rows(raw, d.seen_x.numpy())), raw.locs["test_seen"])
    np.testing.assert_array_equal(np.sort(_rows(raw, d.unseen_x.numpy())), raw.locs["test_unseen"])
    np.testing.assert_array_equal(d.seen_classes.numpy(), raw.seen_classes)
    np.testing.assert_array_equal(d.unseen_classes.numpy(), raw.unseen_classes)
    for t in (d.train_x, d.seen_x, d.unseen_x, d.semantics):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
    for t in (d.train_y, d.seen_y, d.unseen_y, d.seen_classes, d.unseen_classes):
        assert t.dtype == torch.int64
    assert d.feature_dim == 512 and d.semantic_dim == 64 and d.n_classes == 40


def test_minmax_is_fitted_on_train_only(raw):
    d = build_protocol(raw, "test", feature_scaling="minmax")
    tr = d.train_x.numpy()
    np.testing.assert_allclose(tr.min(0), 0.0, atol=1e-6)
    assert np.all(tr.max(0) <= 1.0 + 1e-6)
    train_raw = raw.features[raw.locs["trainval"]]
    np.testing.assert_allclose(d.preprocessing["features"]["min"], train_raw.min(0))
    np.testing.assert_allclose(d.preprocessing["features"]["max"], train_raw.max(0))
    # statistics come from trainval only: unseen test features leave [0, 1]
    u = d.unseen_x.numpy()
    assert u.max() > 1.0
    assert d.preprocessing["features"]["fitted_on"] == "trainval"
    json.dumps(d.preprocessing)  # saved with a run


def test_constant_dimension_gets_range_one():
    r = make_synthetic(seed=1, feature_dim=16, n_classes=10, n_unseen=2, n_val_classes=2)
    r.features[:, 3] = 0.25
    d = build_protocol(r)
    np.testing.assert_allclose(d.train_x[:, 3].numpy(), 0.0)


def test_apply_feature_scaling_reproduces_the_protocol(raw):
    d = build_protocol(raw, "test")
    x = raw.features[raw.locs["test_unseen"]]
    np.testing.assert_allclose(apply_feature_scaling(x, d.preprocessing), d.unseen_x.numpy(), rtol=1e-6)
    out = apply_feature_scaling(torch.from_numpy(x), d.preprocessing["features"])
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), d.unseen_x.numpy(), rtol=1e-6)
    none = build_protocol(raw, feature_scaling="none")
    np.testing.assert_array_equal(apply_feature_scaling(x, none.preprocessing), x)
    with pytest.raises(ConfigError) as ei:
        apply_feature_scaling(x[:, :10], d.preprocessing)
    assert_user_error(ei, "512-d", "10 dimensions")
    with pytest.raises(ConfigError) as ei:
        apply_feature_scaling(x, {"features": {"kind": "zscore"}})
    assert_user_error(ei, "preprocessing['features']['kind']", "'zscore'", "'minmax'")


def test_l2_semantics(raw):
    r = make_synthetic(seed=0)
    r.semantics = r.semantics * 3.0
    d = build_protocol(r, l2_semantics=True)
    np.testing.assert_allclose(d.semantics.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    assert d.preprocessing["semantics"] == {"l2": True}
    assert not np.allclose(build_protocol(r).semantics.norm(dim=1).numpy(), 1.0)


@pytest.mark.parametrize("excludes_test", [True, False])
def test_val_protocol_holdout(raw, excludes_test):
    # as in xlsa17, the simulated train_loc/val_loc also hold the test_seen images of their classes
    test_seen = set(raw.locs["test_seen"])
    assert test_seen & set(raw.locs["train"]) and test_seen & set(raw.locs["val"])
    d = build_protocol(raw, "val", feature_scaling="none", val_seen_fraction=0.2, seed=5,
                      val_excludes_test=excludes_test)
    tr, se, un = (_rows(raw, t.numpy()) for t in (d.train_x, d.seen_x, d.unseen_x))
    # disjoint, and together exactly the train_loc samples plus the val_loc samples (their trainval ones:
    # no test image is trained on or scored on split=val)
    assert not (set(tr) & set(se)) and not (set(tr) & set(un)) and not (set(se) & set(un))
    train_loc, val_loc = raw.locs["train"], raw.locs["val"]
    if excludes_test:
        train_loc, val_loc = (np.setdiff1d(loc, raw.locs["test_seen"]) for loc in (train_loc, val_loc))
        assert not (set(tr) | set(se) | set(un)) & (test_seen | set(raw.locs["test_unseen"]))
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, se])), np.sort(train_loc))
    np.testing.assert_array_equal(np.sort(un), np.sort(val_loc))
    val_classes = np.unique(raw.labels[raw.locs["val"]])
    np.testing.assert_array_equal(d.unseen_classes.numpy(), val_classes)
    assert not set(d.seen_classes.numpy()) & set(val_classes)
    assert not set(d.seen_classes.numpy()) & set(raw.unseen_classes)  # test classes stay untouched
    for c in d.seen_classes.numpy():  # per-class fraction: round(0.2 n), at least one, never all
        n_c = int(np.sum(raw.labels[train_loc] == c))
        assert int(np.sum(d.seen_y.numpy() == c)) == min(n_c - 1, max(1, int(0.2 * n_c + 0.5)))
    scaled = build_protocol(raw, "val", val_seen_fraction=0.2, seed=5, val_excludes_test=excludes_test)
    prep = scaled.preprocessing
    assert prep["features"]["fitted_on"].startswith("train") and prep["features"]["n_fit"] == tr.size
    np.testing.assert_allclose(prep["features"]["min"], raw.features[tr].min(0))
    np.testing.assert_allclose(prep["features"]["max"], raw.features[tr].max(0))
    assert prep["split"] == "val" and prep["seed"] == 5 and prep["val_seen_fraction"] == 0.2
    assert prep["val_excludes_test"] is excludes_test
    assert torch.equal(scaled.seen_y, d.seen_y)


def test_val_protocol_seed_determinism(raw):
    a = build_protocol(raw, "val", seed=1)
    b = build_protocol(raw, "val", seed=1)
    c = build_protocol(raw, "val", seed=2)
    assert torch.equal(a.seen_x, b.seen_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.seen_x, c.seen_x)


def test_holdout_counts():
    assert holdout_count(1, 0.2) == 0
    assert holdout_count(2, 0.2) == 1
    assert holdout_count(3, 0.01) == 1
    assert holdout_count(10, 0.2) == 2
    assert holdout_count(5, 0.99) == 4
    assert holdout_count(13, 0.2) == 3 and holdout_count(12, 0.2) == 2 and holdout_count(5, 0.5) == 3  # rounded


def test_singleton_class_is_not_held_out():
    r = make_synthetic(seed=0, n_classes=10, n_unseen=2, n_val_classes=2, feature_dim=8)
    train = r.locs["train"]
    c = r.labels[train[0]]
    keep = train[(r.labels[train] != c)]
    r.locs["train"] = np.sort(np.concatenate([keep, train[r.labels[train] == c][:1]]))
    d = build_protocol(r, "val")
    assert c in d.train_y.numpy() and c not in d.seen_y.numpy()


@pytest.mark.parametrize("kw,field", [
    ({"split": "train"}, "split"),
    ({"feature_scaling": "zscore"}, "feature_scaling"),
    ({"val_seen_fraction": 0.0}, "val_seen_fraction"),
    ({"val_seen_fraction": 1.0}, "val_seen_fraction"),
    ({"val_seen_fraction": "a lot"}, "val_seen_fraction"),
])
def test_bad_config_values(raw, kw, field):
    with pytest.raises(ConfigError) as ei:
        build_protocol(raw, **kw)
    assert_user_error(ei, f"{field}=")


def test_val_excluding_test_images_that_leaves_nothing_is_one_clear_error(raw):
    from dataclasses import replace

    from zsl_gen.errors import DataError

    # a val list holding only test_seen images (e.g. an older release's locations)
    only_test = raw.locs["test_seen"][np.isin(raw.labels[raw.locs["test_seen"]], np.unique(raw.labels[raw.locs["val"]]))]
    odd = replace(raw, locs={**raw.locs, "val": only_test})
    with pytest.raises(DataError, match=r"split 'val'.*none of its samples is in split 'trainval'.*"
                                        r"dataset.val_excludes_test=false"):
        build_protocol(odd, "val")
    assert build_protocol(odd, "val", val_excludes_test=False).unseen_x.shape[0] == only_test.size
    with pytest.raises(ConfigError, match="`dataset.val_excludes_test` must be true or false, got 'yes'"):
        build_protocol(raw, "val", val_excludes_test="yes")
