"""The MLPs of f-CLSWGAN, f-VAE, f-VAEGAN and tf-VAEGAN, as their official code builds them.

One hidden layer of ``hidden_dim`` (4096 published) units with LeakyReLU(0.2); weights ~ N(0, 0.02),
biases 0 (``init_weights``). Shapes: ``B`` batch, ``D`` image-feature dimension, ``A`` class-semantic
dimension, ``Z`` noise / latent dimension (= ``A`` in the papers), ``H`` hidden width.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zsl_gen.errors import ConfigError

OUTPUT_ACTIVATIONS = ("relu", "sigmoid", "none")


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every ``nn.Linear`` in ``module`` (``module.apply`` it)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A posterior sample ``z = μ + ε · exp(logvar / 2)``, ``ε ~ N(0, I)`` from the global RNG.

    Args:
        mu, logvar: ``(B, Z)``.

    Returns:
        ``(B, Z)``.
    """
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class ConditionalGenerator(nn.Module):
    """``G(z, a)``: ``[z, a] → H → D`` with LeakyReLU(0.2) and a chosen output activation.

    Also the decoder of the conditional VAEs. tf-VAEGAN's feedback enters after the hidden activation:
    ``h' = h + w · feedback`` (``forward(z, a, feedback, w)``).

    Args:
        noise_dim: ``Z``; semantic_dim: ``A``; feature_dim: ``D``; hidden_dim: ``H``.
        output: ``"relu"`` (f-CLSWGAN), ``"sigmoid"`` (the VAE family) or ``"none"``.
    """

    def __init__(self, noise_dim: int, semantic_dim: int, feature_dim: int, hidden_dim: int = 4096,
                 output: str = "relu"):
        super().__init__()
        if output not in OUTPUT_ACTIVATIONS:
            raise ConfigError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output!r}")
        self.fc1 = nn.Linear(noise_dim + semantic_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, feature_dim)
        self.output = output
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, a: torch.Tensor, feedback: torch.Tensor | None = None,
                feedback_weight: float = 0.0) -> torch.Tensor:
        """Features for noise ``z (B, Z)`` and semantics ``a (B, A)``.

        Args:
            feedback: optional ``(B, H)`` feedback added to the hidden activation, weighted by
                ``feedback_weight`` (tf-VAEGAN's a1 in training, a2 at synthesis).

        Returns:
            ``(B, D)``; float32 for the sigmoid output also under bf16 autocast.
        """
        h = F.leaky_relu(self.fc1(torch.cat([z, a], dim=1)), 0.2)
        if feedback is not None:
            h = h + feedback_weight * feedback
        x = self.fc2(h)
        if self.output == "relu":
            return F.relu(x)
        if self.output == "sigmoid":
            # in float32 even under bf16 autocast: bf16 has 8 mantissa bits, so every output above
            # 0.998 would round to exactly 1.0, where the BCE gradient (r − t) / (r (1 − r)) is divided by
            # ~0 (torch clamps the denominator at 1e-12). (f-VAE's CUB divergence at lr 1e-3 was not this:
            # fp32 diverges too, README "Results".)
            return torch.sigmoid(x.float())
        return x


CRITIC_SLOPE = 0.2  # the critic's LeakyReLU negative slope


class WGANGPStep(NamedTuple):
    """Detached scalars of one critic update (``Critic.wgan_gp_backward``)."""

    loss: torch.Tensor
    neg_wasserstein: torch.Tensor
    penalty: torch.Tensor
    grad_norm: torch.Tensor


class Critic(nn.Module):
    """``D(x, a)``: ``[x, a] → H → 1`` with LeakyReLU(0.2), unbounded score (WGAN critic).

    Args:
        feature_dim: ``D``; semantic_dim: ``A``; hidden_dim: ``H``.
    """

    def __init__(self, feature_dim: int, semantic_dim: int, hidden_dim: int = 4096):
        super().__init__()
        self.fc1 = nn.Linear(feature_dim + semantic_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, 1)`` of features ``x (B, D)`` conditioned on ``a (B, A)``."""
        return self.fc2(F.leaky_relu(self.fc1(torch.cat([x, a], dim=1)), CRITIC_SLOPE))

    @torch.no_grad()
    def wgan_gp_backward(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor,
                         lambda_gp: float | torch.Tensor, scale: float = 1.0,
                         alpha: torch.Tensor | None = None) -> WGANGPStep:
        """One WGAN-GP critic loss and its weight gradients, in closed form; sets ``.grad`` of every weight.

        The loss is ``scale · (critic_loss(D(x), D(x̃)) + λ · gradient_penalty(D, x, x̃, a))`` of
        ``zsl_gen.losses.wgan`` (the reference definitions; a test checks equality with autograd through
        them), replacing ``zero_grad(); loss.backward()``. Written out by hand because the critic is a
        fixed two-layer MLP, which buys three things autograd cannot give here:

        - the three uses of ``W₁`` (real, fake, interpolates) are one ``(3B, D + A)`` product forward
          and one ``(H, 3B) · (3B, D + A)`` product for ``∇W₁``, so the score and penalty gradients
          are summed inside one matrix product;
        - under autocast (bf16-mixed) ``W₁`` is cast once per update instead of four times, and its
          gradient is rounded to bf16 once instead of once per use; everything but the four large
          products runs in fp32;
        - no autograd graph, no second-order graph.

        Args:
            real: ``(B, D)`` real features; fake: ``(B, D)`` generated features (constants).
            cond: ``(B, A)`` the class semantics of both.
            lambda_gp: λ (float or 0-d tensor); scale: an overall weight (tf-VAEGAN's γ_D).
            alpha: ``(B, 1)`` interpolation weights; drawn with ``torch.rand`` when ``None``, as
                ``gradient_penalty`` draws them.

        Returns:
            ``WGANGPStep`` of detached scalars: ``loss``, ``neg_wasserstein``, ``penalty`` (unscaled) and
            ``grad_norm`` (``mean_b ‖∇ₓD‖₂``), as ``critic_loss`` and ``gradient_penalty`` return them.
        """
        b, d = real.shape
        if alpha is None:
            alpha = torch.rand(b, 1, device=real.device, dtype=real.dtype)
        w1, b1, w2, b2 = self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        device_type = w1.device.type
        acc = w1.dtype  # gradients, elementwise maths and the small products: the weights' own dtype
        compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else acc
        with torch.autocast(device_type, enabled=False):
            real, fake, cond = real.to(acc), fake.to(acc), cond.to(acc)
            interpolates = alpha.to(acc) * real + (1 - alpha.to(acc)) * fake
            inputs = torch.cat([torch.cat([real, fake, interpolates]), cond.repeat(3, 1)], dim=1)  # (3B, D+A)
            inputs_c, w1_c = inputs.to(compute), w1.to(compute)
            hidden = torch.addmm(b1.to(compute), inputs_c, w1_c.t()).to(acc)  # (3B, H)
            slope = hidden.new_full(hidden.shape, CRITIC_SLOPE).masked_fill_(hidden > 0, 1.0)
            act = hidden[: 2 * b] * slope[: 2 * b]  # LeakyReLU of the real and fake rows
            scores = act @ w2[0] + b2  # (2B,)
            neg_wasserstein = scores[b:].mean() - scores[:b].mean()

            # penalty: with s = LeakyReLU'(h) (1 where h > 0, else the slope, as torch's backward), ∇₍ₓ,ₐ₎D =
            # (s ⊙ w₂) W₁ per interpolate; s is piecewise constant, so this has autograd's value and weight
            # gradients without a second-order graph
            gp_rows = slope[2 * b:] * w2  # (B, H)
            grad_x = (gp_rows.to(compute) @ w1_c).to(acc)[:, :d]  # (B, D)
            norms = grad_x.norm(2, dim=1)
            penalty = (norms - 1).pow(2).mean()
            loss = scale * (neg_wasserstein + lambda_gp * penalty)

            # backward
            d_scores = torch.full((2 * b,), scale / b, device=w1.device, dtype=acc)
            d_scores[:b] = -scale / b
            d_hidden = (d_scores[:, None] * w2) * slope[: 2 * b]  # (2B, H)
            d_norms = scale * lambda_gp * 2 * (norms - 1) / b
            d_grad_x = torch.where(norms > 0, d_norms / norms, 0.0)[:, None] * grad_x  # (B, D)
            d_grad_input = F.pad(d_grad_x, (0, inputs.shape[1] - d))  # (B, D+A): ∇ₐD is not penalised
            left = torch.cat([d_hidden, gp_rows]).to(compute).t().contiguous()  # (H, 3B), row-major: faster
            right = torch.cat([inputs_c[: 2 * b], d_grad_input.to(compute)])  # (3B, D+A)
            d_gp_rows = (d_grad_input.to(compute) @ w1_c.t()).to(acc)  # (B, H)
            grads = (
                torch.mm(left, right),  # ∇W₁ (compute dtype): score and penalty rows in one product
                d_hidden.sum(0),  # ∇b₁
                (d_scores @ act + (d_gp_rows * slope[2 * b:]).sum(0))[None],  # ∇w₂ (1, H)
                d_scores.sum()[None],  # ∇b₂
            )
        for param, grad in zip((w1, b1, w2, b2), grads, strict=True):
            if param.grad is None or grad.dtype == param.dtype:
                param.grad = grad.to(param.dtype)
            else:  # bf16 → fp32 into the existing buffer: no fresh 4096×2360 allocation per update
                param.grad.copy_(grad)
        return WGANGPStep(loss.detach(), neg_wasserstein, penalty, norms.mean())


class Encoder(nn.Module):
    """``E(x, a) → (μ, logvar)`` of the conditional VAEs.

    ``[x, a] → H → (μ, logvar)``, or, as the official tf-VAEGAN code builds it (``bottleneck=True``),
    ``[x, a] → H → 2Z → (μ, logvar)`` with a second LeakyReLU layer of width ``2Z``.

    Args:
        feature_dim: ``D``; semantic_dim: ``A``; latent_dim: ``Z``; hidden_dim: ``H``.
        bottleneck: the official extra ``H → 2Z`` layer.
    """

    def __init__(self, feature_dim: int, semantic_dim: int, latent_dim: int, hidden_dim: int = 4096,
                 bottleneck: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(feature_dim + semantic_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 2 * latent_dim) if bottleneck else None
        head_in = 2 * latent_dim if bottleneck else hidden_dim
        self.mu = nn.Linear(head_in, latent_dim)
        self.logvar = nn.Linear(head_in, latent_dim)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, logvar)``, each ``(B, Z)``, for features ``x (B, D)`` of classes ``a (B, A)``."""
        h = F.leaky_relu(self.fc1(torch.cat([x, a], dim=1)), 0.2)
        if self.fc2 is not None:
            h = F.leaky_relu(self.fc2(h), 0.2)
        return self.mu(h), self.logvar(h)


class SemanticDecoder(nn.Module):
    """tf-VAEGAN's semantic embedding decoder ``Dec: x → H → A``, output L2-normalised per row.

    Args:
        feature_dim: ``D``; semantic_dim: ``A``; hidden_dim: ``H``.
    """

    def __init__(self, feature_dim: int, semantic_dim: int, hidden_dim: int = 4096):
        super().__init__()
        self.fc1 = nn.Linear(feature_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, semantic_dim)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode features ``x (B, D)``.

        Returns:
            ``(a_hat, hidden)``: ``(B, A)`` unit-norm reconstructed semantics and the ``(B, H)`` hidden
            activation (the input of the feedback module and part of the classifier's features).
        """
        h = F.leaky_relu(self.fc1(x), 0.2)
        return F.normalize(self.fc2(h), p=2, dim=1, eps=1e-12), h


class Feedback(nn.Module):
    """tf-VAEGAN's feedback module ``F: H → H → H``, LeakyReLU(0.2) after both layers.

    Args:
        hidden_dim: ``H`` (the decoder's and the generator's hidden width).
    """

    def __init__(self, hidden_dim: int = 4096):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.apply(init_weights)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, H)`` feedback for the decoder's hidden activation ``h (B, H)``."""
        return F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(h), 0.2)), 0.2)


class PrecastForward:
    """``module``'s forward with the weights and biases of its ``nn.Linear`` layers cast to ``dtype`` once.

    Under autocast every ``nn.Linear`` call casts its float32 weight and bias to the autocast dtype anew
    (Lightning's ``bf16-mixed`` always turns autocast's cast cache off: a manual-optimisation step updates
    weights inside one autocast region, where a cached cast would go stale). Where a module runs several
    times without gradients between two updates of its weights (tf-VAEGAN's critic fakes: encoder, generator and feedback module in each of the 5 critic updates of a
    feedback step), casting once gives bit-identical outputs (a cast is deterministic, and autocast does not
    cast an argument that already has its dtype) for a fraction of the memory traffic: each cast of a
    4096 × 4096 weight reads 67 MB and writes a fresh 34 MB block.

    Valid only while the module's parameters do not change: build one per phase and drop it after. The
    copies are held for the phase (tf-VAEGAN at CUB shapes: 57 M elements, 115 MB in bf16), where per-call
    casts were freed after each call. Gradients never flow through them (``__call__`` runs under no_grad).
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.module = module
        self.params = {f"{name}.{param_name}" if name else param_name: param.detach().to(dtype)
                       for name, layer in module.named_modules() if isinstance(layer, nn.Linear)
                       for param_name, param in layer.named_parameters(recurse=False)}

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.func.functional_call(self.module, self.params, args, kwargs)


class LinearSoftmaxClassifier(nn.Module):
    """Linear softmax classifier ``x → log p(y | x)`` (f-CLSWGAN's frozen seen-class classifier).

    Args:
        feature_dim: ``D``; n_classes: ``K``.
    """

    def __init__(self, feature_dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(feature_dim, n_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` log-probabilities for features ``x (B, D)``."""
        return F.log_softmax(self.fc(x), dim=1)


def sample_features(decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], semantics: torch.Tensor,
                    n_per_class: int, noise_dim: int, device: torch.device,
                    generator: torch.Generator | None = None, chunk: int = 1024) -> torch.Tensor:
    """Class-major synthesis ``decode(z, a)`` with ``z ~ N(0, I)``, run in chunks to bound memory.

    All noise is drawn first (from ``generator``, which must live on ``device``), so the result does not
    depend on ``chunk`` (row blocks of the same products: bit-identical for 512–4096 on CPU). Each chunk is
    written into one preallocated output: no list of chunks beside their concatenation. 1024 rows keep a
    chunk's activations small (tf-VAEGAN's feedback pass at 4096 hidden units: ≈ 100 MB per chunk, against
    ≈ 400 MB at 4096 rows) while the products stay large enough to run at full speed.

    Args:
        decode: ``(z (B, Z), a (B, A)) -> (B, D)``, e.g. a generator's forward.
        semantics: ``(K, A)`` class-semantic vectors (moved to ``device``).
        n_per_class: ``n`` samples per class.
        noise_dim: ``Z``.

    Returns:
        ``(K * n, D)`` on ``device``: all ``n`` samples of class 0 first.
    """
    a = semantics.to(device).repeat_interleave(n_per_class, dim=0)
    # float32 whatever the caller's torch.set_default_dtype: the same seed gives the same features
    z = torch.randn(a.shape[0], noise_dim, generator=generator, device=device, dtype=torch.float32)
    return decode_in_chunks(decode, z, a, chunk=chunk)


def decode_in_chunks(decode: Callable[..., torch.Tensor], *inputs: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``decode(*inputs)`` run on blocks of ``chunk`` rows (each input ``(N, ·)``), each block written into one
    preallocated ``(N, D)`` output: bounded activations, no list of blocks beside their concatenation."""
    n = inputs[0].shape[0]
    out = None
    for i in range(0, n, chunk):
        rows = decode(*(x[i:i + chunk] for x in inputs))
        if out is None:
            out = rows.new_empty((n, *rows.shape[1:]))
        out[i:i + rows.shape[0]] = rows
    return decode(*inputs) if out is None else out  # (no row asked for: the empty result of its shape)
