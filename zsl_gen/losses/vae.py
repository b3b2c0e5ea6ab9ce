"""Losses of the conditional VAEs (f-VAE, f-VAEGAN, tf-VAEGAN) and tf-VAEGAN's semantic decoder.

Every loss here is **summed over the data dimensions and averaged over the batch**, as the official
tf-VAEGAN code computes them (``binary_cross_entropy(..., size_average=False) / B``,
``-0.5 * sum(...) / B``, ``WeightedL1``): a scalar per batch whose size does not depend on ``B``.

Shapes: ``B`` batch, ``D`` data dimension (features or semantics), ``Z`` latent dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zsl_gen.errors import ConfigError, TrainingDiverged

SEMANTIC_RECONSTRUCTIONS = ("weighted_l1", "l1")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag(exp(logvar))) ‖ N(0, I)), summed over latent dimensions, averaged over the batch.

    ``−0.5 · Σ_j (1 + logvar_j − μ_j² − exp(logvar_j))``, then the mean over the ``B`` rows.

    Args:
        mu: ``(B, Z)`` posterior means; logvar: ``(B, Z)`` posterior log-variances (log σ²).

    Returns:
        scalar (≥ 0; 0 exactly when μ = 0 and logvar = 0).
    """
    mu, logvar = mu.float(), logvar.float()  # float32 under bf16 autocast too (a no-op in fp32)
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def bce_reconstruction(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, summed over dimensions, averaged over the batch.

    ``−Σ_j [t_j log r_j + (1 − t_j) log(1 − r_j)]``, mean over rows. ``torch`` clamps each log at −100,
    so a reconstruction of exactly 0 or 1 stays finite (the official code adds 1e-12 for the same reason).
    Computed in float32 under bf16 autocast too: 1 − r near 1 needs float32's resolution.

    Args:
        recon: ``(B, D)`` reconstruction in ``[0, 1]`` (a sigmoid output).
        target: ``(B, D)`` target in ``[0, 1]`` (MinMax-scaled features). No gradient flows into it.

    Returns:
        scalar; NaN on a CUDA device when ``recon`` contains NaN (the divergence guard stops on it).

    Raises:
        TrainingDiverged: ``recon`` contains NaN, on the CPU (torch's kernel would raise an opaque range error).
    """
    recon, target = recon.float(), target.detach().float()
    # CUDA autocast refuses binary_cross_entropy outright, even on float32 inputs: run it outside autocast
    with torch.autocast(recon.device.type, enabled=False):
        if recon.is_cuda:
            return bce_nan_propagating(recon, target)
        try:
            return F.binary_cross_entropy(recon, target, reduction="sum") / recon.shape[0]
        except RuntimeError as err:
            # torch refuses inputs outside [0, 1]; a sigmoid output is outside only when it is NaN, i.e. the
            # generator diverged. Checked here, on the failure path only: no per-step host sync.
            if not bool(torch.isfinite(recon).all()):
                raise TrainingDiverged("the generator's reconstruction contains NaN (its input or weights "
                                       "overflowed)") from err
            raise


def bce_nan_propagating(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``bce_reconstruction`` for CUDA: the same value and gradient where ``recon`` is finite, NaN where not.

    CUDA's kernel checks the ``[0, 1]`` range with a device-side assert, which on a NaN would leave the
    whole process's CUDA context unusable (no error to catch, no divergence handling). So NaN entries go to
    the kernel as 0.5, and ``0 · Σ recon`` brings the NaN back into the loss, where the divergence guard
    finds it at the epoch's end — without a host sync per step.

    Args:
        recon, target: ``(B, D)`` float32.

    Returns:
        scalar.
    """
    loss = F.binary_cross_entropy(recon.nan_to_num(0.5), target, reduction="sum") + recon.sum() * 0
    return loss / recon.shape[0]


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor,
             logvar: torch.Tensor) -> torch.Tensor:
    """The conditional-VAE objective: ``bce_reconstruction + kl_divergence`` (both per-sample sums).

    Args:
        recon, target: ``(B, D)``; mu, logvar: ``(B, Z)``.

    Returns:
        scalar.
    """
    return bce_reconstruction(recon, target) + kl_divergence(mu, logvar)


def l1_reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 error ``Σ_j |p_j − t_j|``, summed over dimensions, averaged over the batch.

    Args:
        pred, target: ``(B, D)``.

    Returns:
        scalar.
    """
    return (pred - target).abs().sum() / pred.shape[0]


def weighted_l1_reconstruction(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """tf-VAEGAN's ``WeightedL1``: an L1 error whose terms are weighted by their share of the row's L2 error.

    With ``d = p − t`` per row: ``Σ_j (d_j² / ‖d‖₂) · |d_j|``, averaged over the batch. The official code
    names this the L1 reconstruction of the semantic decoder; large per-dimension errors dominate it.
    ``eps`` keeps ``‖d‖₂ = 0`` (perfect reconstruction) from dividing by zero.

    Args:
        pred, target: ``(B, D)``.

    Returns:
        scalar.
    """
    d = pred - target
    # clamp before the square root: sqrt's gradient at 0 is infinite
    weight = d.pow(2) / d.pow(2).sum(dim=1, keepdim=True).clamp_min(eps * eps).sqrt()
    return (weight * d.abs()).sum() / pred.shape[0]


def semantic_reconstruction(pred: torch.Tensor, target: torch.Tensor,
                            kind: str = "weighted_l1") -> torch.Tensor:
    """The semantic decoder's reconstruction loss, by name.

    Args:
        pred, target: ``(B, A)``.
        kind: ``"weighted_l1"`` (the official tf-VAEGAN code) or ``"l1"`` (the paper's wording).

    Returns:
        scalar (summed over dimensions, averaged over the batch).
    """
    if kind == "weighted_l1":
        return weighted_l1_reconstruction(pred, target)
    if kind == "l1":
        return l1_reconstruction(pred, target)
    raise ConfigError(f"decoder_loss must be one of {SEMANTIC_RECONSTRUCTIONS}, got {kind!r}")

