"""The final softmax classifier on small Gaussian blobs."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from zsl_gen.errors import ConfigError, DataError
from zsl_gen.eval import ClassifierConfig, ClassifierInputs, train_and_evaluate
from zsl_gen.eval.classifier import _Adam, _all_finite, _SoftmaxRegression

SEEN = torch.tensor([0, 2, 3, 5])
UNSEEN = torch.tensor([1, 4])
FAST = ClassifierConfig(epochs=6, lr=1e-2, batch_size=32)


def _blobs(noise: float, n_train: int = 40, n_test: int = 20, seed: int = 0, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(6, dim, generator=g)

    def sample(classes, n):
        y = classes.repeat_interleave(n)
        return means[y] + noise * torch.randn(len(y), dim, generator=g), y

    return sample, means


def _inputs(noise: float = 0.3, with_unseen: bool = True, seed: int = 0) -> ClassifierInputs:
    sample, _ = _blobs(noise, seed=seed)
    rx, ry = sample(SEEN, 40)
    sx, sy = sample(UNSEEN, 40) if with_unseen else (torch.empty(0, 8), torch.empty(0, dtype=torch.long))
    tsx, tsy = sample(SEEN, 20)
    tux, tuy = sample(UNSEEN, 20)
    return ClassifierInputs(torch.cat([rx, sx]), torch.cat([ry, sy]), sx, sy, tsx, tsy, tux, tuy,
                            SEEN, UNSEEN)


@pytest.mark.parametrize("seen, unseen", [([0, 1], [1, 2]), ([0, 0], [2, 3]), ([-1, 0], [2, 3])])
def test_class_sets_that_overlap_repeat_or_go_negative_are_refused(seen, unseen):
    # a class both seen and unseen would be scored twice, once as each: no silent number
    inputs = _inputs()
    bad = dataclasses.replace(inputs, seen_classes=torch.tensor(seen), unseen_classes=torch.tensor(unseen))
    with pytest.raises(DataError, match="distinct, non-negative, disjoint"):
        train_and_evaluate(bad, FAST, seed=0)


def test_separable_blobs_reach_high_accuracy():
    curves = train_and_evaluate(_inputs(), FAST, seed=0)
    assert curves.S[-1, 0] > 0.9 and curves.U[-1, 0] > 0.9 and curves.H[-1, 0] > 0.9
    assert curves.T1[-1, 0] > 0.9


def test_without_unseen_training_samples_unseen_is_never_predicted():
    curves = train_and_evaluate(_inputs(with_unseen=False), FAST, seed=0)
    assert np.all(curves.U == 0.0) and np.all(curves.H == 0.0)
    assert curves.S[-1, 0] > 0.9
    assert np.all(np.isnan(curves.T1))  # no ZSL training data


def test_shapes_and_calibration():
    cfg = dataclasses.replace(FAST, epochs=3, calibration_gammas=(0.0, 1e6, -1e6))
    curves = train_and_evaluate(_inputs(), cfg, seed=0)
    for arr in (curves.S, curves.U, curves.H, curves.T1):
        assert arr.shape == (3, 3)
    assert curves.gammas == (0.0, 1e6, -1e6)
    assert np.all(curves.T1 == curves.T1[:, :1])
    assert np.all(curves.S[:, 1] == 0.0) and np.all(curves.U[:, 1] == 1.0)  # everything pushed to unseen
    assert np.all(curves.U[:, 2] == 0.0) and np.all(curves.S[:, 2] == 1.0)  # everything pushed to seen


def test_deterministic_by_seed_and_seeds_differ():
    inputs = _inputs(noise=4.0)
    cfg = dataclasses.replace(FAST, epochs=3, lr=1e-3)
    a = train_and_evaluate(inputs, cfg, seed=1)
    b = train_and_evaluate(inputs, cfg, seed=1)
    c = train_and_evaluate(inputs, cfg, seed=2)
    for m in ("S", "U", "H", "T1"):
        np.testing.assert_array_equal(getattr(a, m), getattr(b, m))
    assert any(not np.array_equal(getattr(a, m), getattr(c, m)) for m in ("S", "U", "T1"))


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_and_evaluate(_inputs(), dataclasses.replace(FAST, epochs=1), seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def test_float64_inputs_and_runs_under_inference_mode():
    inputs = _inputs()
    inputs64 = dataclasses.replace(inputs, **{f: getattr(inputs, f).double()
                                             for f in ("train_x", "zsl_train_x", "seen_x", "unseen_x")})
    with torch.inference_mode():
        curves = train_and_evaluate(inputs64, FAST, seed=0)
    assert curves.H[-1, 0] > 0.9


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_closed_form_adam_matches_autograd(weight_decay):
    cfg = ClassifierConfig(lr=1e-2, beta1=0.5, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(0)
    model = _SoftmaxRegression(5, 3, cfg, gen, torch.device("cpu"), torch.float32)
    ref = torch.nn.Linear(5, 3)
    with torch.no_grad():
        ref.weight.copy_(model.weight.T)
        ref.bias.copy_(model.bias)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.5, 0.999), weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g)
        model.step(x, y)
        opt.zero_grad()
        torch.nn.functional.nll_loss(torch.log_softmax(ref(x), dim=1), y).backward()
        opt.step()
    torch.testing.assert_close(model.weight, ref.weight.detach().T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bias, ref.bias.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_direct_fused_adam_is_bit_identical_to_torch_optim(weight_decay):
    """``_Adam`` skips ``Optimizer.step``'s wrapper but must be exactly ``torch.optim.Adam(fused=True)``."""
    cfg = ClassifierConfig(lr=3e-3, beta1=0.5, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(6, 4, generator=g), torch.randn(4, generator=g)]
    ref = [p.clone() for p in ours]
    adam = _Adam(ours, cfg)
    assert adam._fallback is None, "this torch build has the fused CPU kernel; the direct path must be used"
    opt = torch.optim.Adam(ref, lr=3e-3, betas=(0.5, 0.999), eps=1e-8, weight_decay=weight_decay, fused=True)
    for _ in range(30):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, grad in zip(ours, ref, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        adam.step()
        opt.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("epochs", 2.5), ("lr", 0.0), ("lr", math.nan), ("batch_size", 0), ("beta1", 1.0),
    ("weight_decay", -1.0), ("calibration_gammas", ()), ("calibration_gammas", (0.0, math.inf)),
    ("init", "kaiming"), ("drop_last", "yes"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(ClassifierConfig(), **{field: value}).validate()


def test_xavier_init_is_cada_vaes_weights_init():
    cfg = ClassifierConfig(init="xavier")
    gen = torch.Generator().manual_seed(0)
    clf = _SoftmaxRegression(64, 200, cfg, gen, torch.device("cpu"), torch.float32)
    bound = 0.5 * math.sqrt(6.0 / (64 + 200))  # nn.init.xavier_uniform_(gain=0.5) of a Linear(64, 200)
    assert float(clf.weight.abs().max()) <= bound and float(clf.weight.abs().max()) > 0.95 * bound
    assert abs(float(clf.weight.std()) - bound / math.sqrt(3)) < 0.02 * bound and not clf.bias.any()
    normal = _SoftmaxRegression(64, 200, ClassifierConfig(), torch.Generator().manual_seed(0),
                                torch.device("cpu"), torch.float32)
    assert abs(float(normal.weight.std()) - 0.02) < 0.001  # the default: N(0, 0.02)


def test_drop_last_skips_the_partial_batch(monkeypatch):
    sizes = []
    real_step = _SoftmaxRegression.step
    monkeypatch.setattr(_SoftmaxRegression, "step", lambda self, x, y: (sizes.append(x.shape[0]),
                                                                          real_step(self, x, y)))
    inputs = _inputs()  # 240 GZSL training rows, 80 ZSL rows
    train_and_evaluate(inputs, dataclasses.replace(FAST, epochs=2, batch_size=50))
    assert sorted(sizes) == sorted(([50] * 4 + [40] + [50, 30]) * 2)  # GZSL 4 full + 40, ZSL 50 + 30
    sizes.clear()
    train_and_evaluate(inputs, dataclasses.replace(FAST, epochs=2, batch_size=50, drop_last=True))
    assert sizes == [50] * 10  # per epoch: GZSL 4 full batches, ZSL 1
    with pytest.raises(ConfigError, match="drop_last"):  # no full batch at all: refused, not a silent no-op
        train_and_evaluate(inputs, dataclasses.replace(FAST, batch_size=100, drop_last=True))


def test_config_accepts_lists():
    assert ClassifierConfig(calibration_gammas=[0.0, 0.5]).validate().calibration_gammas == (0.0, 0.5)


@pytest.mark.parametrize("field", ["train_x", "zsl_train_x", "seen_x"])
def test_nan_inputs_raise_data_error(field):
    inputs = _inputs()
    bad = getattr(inputs, field).clone()
    bad[0, 0] = math.nan if field != "zsl_train_x" else math.inf
    with pytest.raises(DataError, match=rf"NaN/Inf \({field}\)"):
        train_and_evaluate(dataclasses.replace(inputs, **{field: bad}), FAST)


def test_labels_outside_label_space_raise_data_error():
    inputs = _inputs()
    bad = inputs.train_y.clone()
    bad[0] = 99
    with pytest.raises(DataError, match=r"train_y.*\[99\]"):
        train_and_evaluate(dataclasses.replace(inputs, train_y=bad), FAST)
    bad = inputs.zsl_train_y.clone()
    bad[0] = 0  # a seen class in the ZSL training set
    with pytest.raises(DataError, match="zsl_train_y"):
        train_and_evaluate(dataclasses.replace(inputs, zsl_train_y=bad), FAST)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite_check_sees_any_single_bad_value(bad, dtype):
    x = torch.rand(37, 1031).to(dtype)  # odd sizes: the reduction's vectorised body and its scalar tail
    assert _all_finite(x) and _all_finite(x[:0])
    for row, col in ((0, 0), (18, 517), (36, 1030), (36, 1027)):
        y = x.clone()
        y[row, col] = bad
        assert not _all_finite(y), (row, col)
        assert not _all_finite(y.T)  # a non-contiguous view
