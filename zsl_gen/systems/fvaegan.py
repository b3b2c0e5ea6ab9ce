"""f-VAEGAN-D2 (Xian, Sharma, Schiele, Akata, CVPR 2019), inductive: the f-VAE whose decoder is also the
generator of a conditional WGAN-GP.

Per training step (``critic_steps`` + 1 optimiser steps, manual optimisation):

- ``critic_steps`` critic updates, each on its own batch: ``γ_D · (E[D(x̃)] − E[D(x)] + λ · GP)`` with
  ``x̃ = G(z, a)`` detached, ``z`` from the encoder (``encoded_noise``) or from N(0, I);
- one encoder + generator update on the last critic batch (official code; see ``generator_batch``):
  ``BCE(G(z_E, a), x) + KL + γ_G · (−E[D(x̃, a)])`` where ``x̃`` is the VAE reconstruction
  (``encoded_noise=True``) or ``G(z ~ N(0, I), a)``.

No official f-VAEGAN code is public; this follows tf-VAEGAN's official code (which is built on it) with
the decoder and feedback switched off. ``TFVAEGAN`` extends this class.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from zsl_gen.errors import ConfigError
from zsl_gen.losses.vae import vae_loss
from zsl_gen.losses.wgan import adapt_lambda, generator_loss
from zsl_gen.models.networks import Critic, PrecastForward, reparameterize
from zsl_gen.systems.base import CriticSchedule, adam
from zsl_gen.systems.cvae import ConditionalVAE

ADAPTIVE_STATS = ("penalty", "grad_norm")


class FVAEGAN(CriticSchedule, ConditionalVAE):
    """f-VAEGAN generator system.

    Args (beyond ``ConditionalVAE``'s; ``output_activation`` stays ``"sigmoid"``):
        critic_steps: critic updates per generator update (5).
        lambda_gp: gradient-penalty weight λ (10); the initial value when ``adaptive_lambda``.
        gamma_d: weight γ_D of the critic's whole WGAN loss (official ``gammaD``).
        gamma_g: weight γ_G of the generator's WGAN loss (official ``gammaG``).
        encoded_noise: official ``--encoded_noise``: the critic sees ``G(z_E, a)`` with ``z_E`` sampled from
            the encoder, and the generator's WGAN term uses the VAE reconstruction; ``False``: ``z ~ N(0, I)``
            for both (the official FLO setting).
        adaptive_lambda: tf-VAEGAN's adaptive λ (``False`` here: f-VAEGAN uses a fixed λ).
        adaptive_lambda_stat: what λ adapts on, see ``TFVAEGAN``.
        generator_batch: ``"last_critic"`` (official code: the generator update reuses the last critic
            batch, so a step draws ``critic_steps`` batches) or ``"fresh"`` (one more batch per step).
    """

    def __init__(
        self,
        feature_dim: int,
        semantic_dim: int,
        noise_dim: int | None = None,
        hidden_dim: int = 4096,
        batch_size: int = 512,
        lr: float = 1e-3,
        beta1: float = 0.5,
        encoder_default_betas: bool = True,
        encoder_bottleneck: bool = True,
        output_activation: str = "sigmoid",
        critic_steps: int = 5,
        lambda_gp: float = 10.0,
        gamma_d: float = 10.0,
        gamma_g: float = 10.0,
        encoded_noise: bool = True,
        adaptive_lambda: bool = False,
        adaptive_lambda_stat: str = "penalty",
        generator_batch: str = "last_critic",
    ):
        super().__init__(feature_dim, semantic_dim, noise_dim, hidden_dim, batch_size, lr, beta1,
                         encoder_default_betas, encoder_bottleneck, output_activation)
        self.check_critic_schedule(critic_steps, generator_batch)
        if adaptive_lambda_stat not in ADAPTIVE_STATS:
            raise ConfigError(
                f"adaptive_lambda_stat must be one of {ADAPTIVE_STATS}, got {adaptive_lambda_stat!r}")
        self.automatic_optimization = False
        self.critic = Critic(feature_dim, semantic_dim, hidden_dim)
        # λ lives in the state_dict so an adaptive λ survives checkpoint and resume.
        self.register_buffer("gp_weight", torch.tensor(float(lambda_gp)))
        self._precast: dict[str, PrecastForward] = {}  # see _critic_phase

    def configure_optimizers(self):
        hp = self.hparams
        opt_gen = adam(self._vae_param_groups(), lr=hp.lr)
        opt_d = adam(self.critic.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
        return [opt_gen, opt_d]

    # ---- generation hooks (tf-VAEGAN adds its feedback here) ---------------------------------------------
    def _generate(self, z: torch.Tensor, a: torch.Tensor, feedback: bool) -> torch.Tensor:
        """Training-time generation ``(B, D)``; ``feedback`` is tf-VAEGAN's second pass (unused here)."""
        return self._net("generator")(z, a)

    def _net(self, name: str):
        """The network ``name`` (``encoder``, ``generator``, tf-VAEGAN's ``feedback``): its ``PrecastForward``
        while ``_critic_phase`` holds one and no gradient is being recorded, else the module itself (so a
        forward that needs gradients can never run from the gradient-free copies)."""
        precast = self._precast.get(name)
        return precast if precast is not None and not torch.is_grad_enabled() else getattr(self, name)

    def _critic_phase(self, feedback: bool) -> contextlib.AbstractContextManager:
        """Context of a step's critic updates, during which the encoder and generator do not change.
        f-VAEGAN generates all their fakes in one forward, so there is nothing to set up (see tf-VAEGAN)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _precast_nets(self, names: tuple[str, ...]) -> Iterator[None]:
        """Within the block, ``_net(name)`` runs ``name`` with its Linear weights cast once to the autocast
        dtype (bit-identical outputs, see ``PrecastForward``); a no-op outside reduced-precision autocast."""
        device = self.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        if dtype == torch.float32:
            yield
            return
        self._precast = {name: PrecastForward(getattr(self, name), dtype) for name in names}
        try:
            yield
        finally:
            self._precast = {}

    def _prior_fake(self, a: torch.Tensor, recon: torch.Tensor, feedback: bool) -> torch.Tensor:
        """Generator-step fake from ``z ~ N(0, I)`` (``encoded_noise=False``); ``recon`` is the VAE output."""
        return self._generate(torch.randn(a.shape[0], self.noise_dim, device=a.device), a, feedback)

    def _extra_generator_loss(self, fake: torch.Tensor, a: torch.Tensor) -> torch.Tensor | float:
        """Further generator-step loss terms (tf-VAEGAN's semantic reconstruction)."""
        return 0.0

    # ---- training ----------------------------------------------------------------------------------------
    def _uses_feedback(self, batch_idx: int) -> bool:
        return False

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        opts = self.optimizers()
        feedback = self._uses_feedback(batch_idx)
        xs, _, semantics = self.batch(idx[: self.hparams.critic_steps].reshape(-1))  # (k·B, D), (k·B, A)
        batches = [t.split(idx.shape[1]) for t in (xs, semantics)]
        with self._critic_phase(feedback):
            if self._critic_fakes_fixed(feedback):  # one generator forward for all k critic updates
                batches.append(self._critic_fakes(xs, semantics, feedback).split(idx.shape[1]))
            critic_stats = [self._critic_step(opts, *batch, feedback=feedback) for batch in zip(*batches)]
        stats = {key: torch.stack([s[key] for s in critic_stats]).mean() for key in critic_stats[0]}
        if self.hparams.adaptive_lambda:
            stat = stats["penalty"] if self.hparams.adaptive_lambda_stat == "penalty" else stats["grad_norm"]
            self.gp_weight.copy_(adapt_lambda(self.gp_weight, stat))
        x, _, a = self.batch(idx[-1])
        stats.update(self._generator_step(opts, x, a, feedback), lambda_gp=self.gp_weight)
        # accumulated per step (not per critic step) and handed to Lightning once per epoch
        self.log_epoch_means({f"train/{k}": v for k, v in stats.items()}, batch_size=x.shape[0],
                             batch_idx=batch_idx)

    def _critic_fakes_fixed(self, feedback: bool) -> bool:
        """Whether the critic updates' fakes can be generated before the first of them: E and G do not
        change during the critic updates (tf-VAEGAN's feedback reads the decoder, which does)."""
        return True

    @torch.no_grad()
    def _critic_fakes(self, x: torch.Tensor, a: torch.Tensor, feedback: bool) -> torch.Tensor:
        """Generated features ``(N, D)`` for the critic, constants: the critic update never reaches E or G."""
        if self.hparams.encoded_noise:
            z = reparameterize(*self._net("encoder")(x, a))
        else:
            z = torch.randn(x.shape[0], self.noise_dim, device=x.device)
        return self._generate(z, a, feedback)

    def _critic_step(self, opts, x: torch.Tensor, a: torch.Tensor, fake: torch.Tensor | None = None, *,
                     feedback: bool = False):
        """One critic update on a batch ``x (B, D)``, ``a (B, A)`` against generated ``fake (B, D)``
        (generated here when ``None``).

        Returns:
            detached scalars ``{"penalty", "grad_norm", "wasserstein", "loss_d"}``.
        """
        opt_d = opts[1]
        if fake is None:
            fake = self._critic_fakes(x, a, feedback)
        # γ_D (neg. Wasserstein + λ GP) of losses.wgan, gradients in closed form (sets the critic's .grad)
        step = self.critic.wgan_gp_backward(x, fake, a, self.gp_weight, scale=self.hparams.gamma_d)
        opt_d.step()
        return {"penalty": step.penalty, "grad_norm": step.grad_norm, "wasserstein": -step.neg_wasserstein,
                "loss_d": step.loss}

    def _generator_step(self, opts, x: torch.Tensor, a: torch.Tensor, feedback: bool):
        """One encoder + generator update. Returns detached scalars ``{"loss_g", "vae"}``."""
        opt_gen = opts[0]
        with self.toggled_optimizer(opt_gen):
            self._before_generator_loss()
            mu, logvar = self.encoder(x, a)
            recon = self._generate(reparameterize(mu, logvar), a, feedback)
            loss_vae = vae_loss(recon, x, mu, logvar)
            fake = recon if self.hparams.encoded_noise else self._prior_fake(a, recon, feedback)
            loss = (loss_vae + self.hparams.gamma_g * generator_loss(self.critic(fake, a))
                    + self._extra_generator_loss(fake, a))
            opt_gen.zero_grad()
            with self.updates_in_backward(opt_gen):
                self.manual_backward(loss)
            self.step_and_release(opt_gen)
        return {"loss_g": loss.detach(), "vae": loss_vae.detach()}

    def _before_generator_loss(self) -> None:
        """Hook inside the generator step's toggled-optimiser context (tf-VAEGAN unfreezes its decoder)."""

