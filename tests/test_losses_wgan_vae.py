"""Unit tests of the VAE and WGAN-GP losses against hand-computed values (no Trainer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zsl_gen.errors import ConfigError
from zsl_gen.losses import vae as V
from zsl_gen.losses import wgan as W


# ---- VAE losses -----------------------------------------------------------------------------------------
def test_kl_is_zero_at_the_prior():
    assert V.kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0


def test_kl_sums_dimensions_and_averages_the_batch():
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 0: -0.5 * [(1 + 0 - 1 - 1) + (1 + ln2 - 4 - 2)] = 0.5 * (6 - ln2); row 1: 0
    expected = 0.5 * (6 - math.log(2.0)) / 2
    assert V.kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_bce_sums_dimensions_and_averages_the_batch():
    recon = torch.tensor([[0.9, 0.2], [0.5, 0.5]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (-(math.log(0.9) + math.log(0.8)) + 2 * math.log(2.0)) / 2
    assert V.bce_reconstruction(recon, target).item() == pytest.approx(expected, rel=1e-6)


def test_bce_is_finite_at_saturated_outputs_and_sends_no_gradient_to_the_target():
    recon = torch.tensor([[0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = V.bce_reconstruction(recon, target)
    loss.backward()
    assert torch.isfinite(loss) and target.grad is None


def test_vae_losses_and_sigmoid_output_run_in_float32_under_bf16_autocast():
    from zsl_gen.models.networks import ConditionalGenerator

    torch.manual_seed(0)
    g = ConditionalGenerator(4, 3, 6, hidden_dim=8, output="sigmoid")
    with torch.no_grad():
        g.fc2.bias.fill_(6.0)  # sigmoid ≈ 0.9975: bf16 has no value between 0.99609 and 1.0
    z, a, target = torch.randn(5, 4), torch.randn(5, 3), torch.rand(5, 6)
    mu, logvar = torch.randn(5, 2, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon = g(z, a)
        loss = V.vae_loss(recon, target, mu.to(torch.bfloat16), logvar.to(torch.bfloat16))
    assert recon.dtype == torch.float32 and loss.dtype == torch.float32
    assert bool((recon < 0.999).all()) and bool((recon > 0.99).all())  # not rounded onto 1.0 or 0.99609
    assert V.kl_divergence(mu.to(torch.bfloat16), logvar.to(torch.bfloat16)).dtype == torch.float32
    loss.backward()
    assert torch.isfinite(g.fc2.bias.grad).all() and torch.isfinite(logvar.grad).all()


def test_vae_loss_is_bce_plus_kl():
    recon, target = torch.full((2, 3), 0.25), torch.ones(2, 3)
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)
    expected = 3 * math.log(4.0) + 0.5 * 4  # BCE of 0.25 vs 1 on 3 dims + KL of μ = 1 on 4 dims
    assert V.vae_loss(recon, target, mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_l1_sums_dimensions_and_averages_the_batch():
    pred = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert V.l1_reconstruction(pred, torch.zeros(2, 2)).item() == pytest.approx(3.0)


def test_weighted_l1_matches_the_official_formula():
    pred, target = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # row 0: d = (3, 4), ‖d‖ = 5, Σ d²|d| / 5 = (27 + 64) / 5 = 18.2; row 1: perfect (no 0/0)
    loss = V.weighted_l1_reconstruction(pred, target)
    assert loss.item() == pytest.approx(18.2 / 2, rel=1e-6)
    pred.requires_grad_(True)
    V.weighted_l1_reconstruction(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


def test_semantic_reconstruction_by_name():
    pred, target = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert V.semantic_reconstruction(pred, target, "l1").item() == pytest.approx(7.0)
    assert V.semantic_reconstruction(pred, target, "weighted_l1").item() == pytest.approx(18.2)
    with pytest.raises(ConfigError, match="decoder_loss"):
        V.semantic_reconstruction(pred, target, "l2")


# ---- WGAN losses ----------------------------------------------------------------------------------------
def test_critic_and_generator_losses():
    d_real, d_fake = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [2.0]])
    assert W.critic_loss(d_real, d_fake).item() == pytest.approx(1.0 - 2.0)
    assert W.generator_loss(d_fake).item() == pytest.approx(-1.0)


def test_gradient_penalty_of_a_linear_critic_is_exact():
    """D(x, a) = w·x + v·a has ∇ₓD = w everywhere: penalty (‖w‖ − 1)², gradient norm ‖w‖."""
    torch.manual_seed(0)
    w = torch.tensor([2.0, -1.0, 2.0], requires_grad=True)  # ‖w‖ = 3
    v = torch.tensor([0.5, 0.5])

    def critic(x, a):
        return (x @ w + a @ v).unsqueeze(1)

    real, fake, cond = torch.rand(16, 3), torch.rand(16, 3), torch.rand(16, 2)
    penalty, grad_norm = W.gradient_penalty(critic, real, fake, cond)
    assert penalty.item() == pytest.approx(4.0, rel=1e-6)
    assert grad_norm.item() == pytest.approx(3.0, rel=1e-6)
    assert not grad_norm.requires_grad
    # create_graph: the penalty reaches the critic's weights, d/dw (‖w‖ − 1)² = 2(‖w‖ − 1) w / ‖w‖
    penalty.backward()
    assert torch.allclose(w.grad, 2 * (3 - 1) * w.detach() / 3, atol=1e-5)


def test_gradient_penalty_interpolates_with_alpha():
    """D(x) = ½‖x‖² has ∇D = x̂ = αx + (1 − α)x̃."""
    real = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    alpha = torch.tensor([[1.0], [0.5]])  # x̂ = (3, 4) (norm 5) and (0, 1) (norm 1)
    penalty, grad_norm = W.gradient_penalty(lambda x, a: 0.5 * (x * x).sum(1, keepdim=True), real, fake,
                                            torch.zeros(2, 1), alpha=alpha)
    assert penalty.item() == pytest.approx(((5 - 1) ** 2 + 0) / 2)
    assert grad_norm.item() == pytest.approx(3.0)


@pytest.mark.parametrize("stat, expected", [(1.2, 11.0), (1.05, 10.0), (1.02, 10.0), (1.001, 10.0),
                                             (0.5, 10.0 / 1.1)])
def test_adapt_lambda_rule(stat, expected):
    assert W.adapt_lambda(10.0, stat) == pytest.approx(expected)
    out = W.adapt_lambda(torch.tensor(10.0), torch.tensor(stat))
    assert isinstance(out, torch.Tensor) and out.item() == pytest.approx(expected)


def _autograd_critic_update(critic, real, fake, cond, lam, scale, alpha):
    """The reference: autograd through ``critic_loss`` + λ ``gradient_penalty`` (double backward)."""
    critic.zero_grad()
    scores = critic(torch.cat([real, fake]), torch.cat([cond, cond]))
    neg_w = W.critic_loss(scores[: real.shape[0]], scores[real.shape[0]:])
    penalty, norm = W.gradient_penalty(lambda x, a: critic(x, a), real, fake, cond, alpha=alpha)
    loss = scale * (neg_w + lam * penalty)
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in critic.parameters()]
    return (loss.detach(), neg_w.detach(), penalty.detach(), norm), grads


@pytest.mark.parametrize("seed, lam, scale", [(0, 10.0, 1.0), (1, 3.5, 0.7), (2, torch.tensor(12.0), 1.0)])
def test_closed_form_critic_update_equals_autograd(seed, lam, scale):
    """``Critic.wgan_gp_backward`` sets the gradients autograd computes through the reference losses."""
    from zsl_gen.models.networks import Critic

    torch.manual_seed(seed)
    critic = Critic(feature_dim=7, semantic_dim=3, hidden_dim=16).double()
    for p in critic.parameters():  # non-zero biases and larger weights: both LeakyReLU branches occur
        nn.init.normal_(p, 0.0, 0.5)
    real, fake, cond, alpha = (torch.rand(9, 7).double(), torch.rand(9, 7).double(), torch.rand(9, 3).double(),
                               torch.rand(9, 1).double())
    expected, expected_grads = _autograd_critic_update(critic, real, fake, cond, lam, scale, alpha)
    critic.zero_grad()
    step = critic.wgan_gp_backward(real, fake, cond, lam, scale=scale, alpha=alpha)
    for got, want in zip(step, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for p, want in zip(critic.parameters(), expected_grads, strict=True):
        assert p.grad is not None and p.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12)
    assert expected_grads[0].abs().sum() > 0 and expected_grads[2].abs().sum() > 0


def test_closed_form_critic_update_under_bf16_autocast_is_as_accurate_as_autocast_autograd():
    """Under bf16 autocast the large products run in bf16 and the gradients come back in fp32: against the
    fp32 reference, each gradient is at least as close as autograd under the same autocast gets."""
    from zsl_gen.models.networks import Critic

    torch.manual_seed(0)
    critic = Critic(feature_dim=64, semantic_dim=16, hidden_dim=256)
    real, fake, cond, alpha = torch.rand(32, 64), torch.rand(32, 64), torch.rand(32, 16), torch.rand(32, 1)
    expected, fp32_grads = _autograd_critic_update(critic, real, fake, cond, 10.0, 1.0, alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        _, autocast_grads = _autograd_critic_update(critic, real, fake, cond, 10.0, 1.0, alpha)
        critic.zero_grad()
        step = critic.wgan_gp_backward(real, fake, cond, 10.0, alpha=alpha)
    for got, want in zip(step, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)
    for p, want, autocast in zip(critic.parameters(), fp32_grads, autocast_grads, strict=True):
        assert p.grad.dtype == torch.float32
        error, autocast_error = (p.grad - want).norm(), (autocast - want).norm()
        assert error <= 1.25 * autocast_error + 1e-6 * want.norm() + 1e-8, (p.shape, error, autocast_error)
    assert (critic.fc1.weight.grad - fp32_grads[0]).norm() < 1e-2 * fp32_grads[0].norm()
