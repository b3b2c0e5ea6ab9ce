"""Conditional WGAN-GP losses (Gulrajani et al., 2017) as f-CLSWGAN, f-VAEGAN and tf-VAEGAN use them.

The critic minimises ``E[D(x̃)] − E[D(x)] + λ · GP``; the generator minimises ``−E[D(x̃)]``. The
gradient penalty is returned *without* λ, so a caller can scale it (λ, tf-VAEGAN's γ_D) and adapt λ
from it (``adapt_lambda``).

``critic_loss`` and ``gradient_penalty`` are the reference definitions (autograd, any critic). The systems
train their fixed two-layer critic with ``zsl_gen.models.networks.Critic.wgan_gp_backward``, the same loss
with its weight gradients in closed form (tested equal to autograd through these functions); the benchmark's
official-code loops use these.

Shapes: ``B`` batch, ``D`` feature dimension, ``A`` semantic dimension.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T", float, torch.Tensor)


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss ``mean(D(x̃)) − mean(D(x))`` (the negative Wasserstein estimate), to minimise.

    Args:
        d_real: ``(B, 1)`` or ``(B,)`` critic scores of real samples.
        d_fake: ``(B', 1)`` or ``(B',)`` critic scores of generated samples.

    Returns:
        scalar.
    """
    return d_fake.mean() - d_real.mean()


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss ``−mean(D(x̃))``, to minimise.

    Args:
        d_fake: ``(B, 1)`` or ``(B,)`` critic scores of generated samples.

    Returns:
        scalar.
    """
    return -d_fake.mean()


def gradient_penalty(critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, cond: torch.Tensor, alpha: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided gradient penalty on random interpolates between real and generated samples.

    ``x̂ = α·x + (1 − α)·x̃`` with one ``α ~ U[0, 1)`` per row; penalty ``mean_b (‖∇_x̂ D(x̂, a)‖₂ − 1)²``.
    The graph is kept (``create_graph``) so the penalty back-propagates into the critic's weights.

    Args:
        critic: ``D(x (B, D), a (B, A)) -> (B, 1)``.
        real: ``(B, D)`` real features; fake: ``(B, D)`` generated features (treated as constants).
        cond: ``(B, A)`` the class semantics both were conditioned on.
        alpha: ``(B, 1)`` interpolation weights; drawn from the global RNG when ``None``.

    Returns:
        ``(penalty, grad_norm)``: the unscaled penalty (scalar, multiply by λ yourself) and the mean
        gradient norm ``mean_b ‖∇_x̂ D‖₂`` (scalar, detached; a diagnostic and tf-VAEGAN's alternative
        statistic for adapting λ).
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    interpolates = alpha * real.detach() + (1 - alpha) * fake.detach()
    interpolates.requires_grad_(True)
    scores = critic(interpolates, cond)
    (grads,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = grads.norm(2, dim=1)
    return (norms - 1).pow(2).mean(), norms.mean().detach()


def adapt_lambda(lam: T, statistic: T, upper: float = 1.05, lower: float = 1.001, factor: float = 1.1) -> T:
    """tf-VAEGAN's adaptive gradient-penalty weight: one multiplicative step per generator step.

    ``λ·factor`` when ``statistic > upper``, ``λ/factor`` when ``statistic < lower``, else ``λ``.
    Works on Python floats and on tensors (``torch.where``, no host sync).

    Args:
        lam: current λ (float or 0-d tensor).
        statistic: what the official code compares with the thresholds: the critic steps' mean *unscaled
            penalty* ``mean (‖∇D‖ − 1)²`` (see ``TFVAEGAN.adaptive_lambda_stat``), or the mean gradient norm.
        upper, lower, factor: 1.05, 1.001, 1.1 in the official code.

    Returns:
        the new λ, of the type of ``lam``.
    """
    if isinstance(lam, torch.Tensor) or isinstance(statistic, torch.Tensor):
        lam_t = torch.as_tensor(lam)
        stat_t = torch.as_tensor(statistic, device=lam_t.device)
        return torch.where(stat_t > upper, lam_t * factor, torch.where(stat_t < lower, lam_t / factor, lam_t))
    if statistic > upper:
        return lam * factor
    if statistic < lower:
        return lam / factor
    return lam
