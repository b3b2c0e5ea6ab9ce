"""tf-VAEGAN (Narayan, Gupta, Khan, Snoek, Shao, ECCV 2020), inductive, as the official code runs it.

f-VAEGAN (``FVAEGAN``) plus

- a semantic embedding decoder ``Dec: x → H → a`` (L2-normalised output), trained with a reconstruction
  loss weighted ``recons_weight``: on the real batch before every critic update (its own Adam,
  ``decoder_lr``), and on the generator's fake inside the generator loss (the decoder is updated there too
  unless ``freeze_decoder``);
- a feedback module ``F: H → H → H``. An epoch is ``feedback_loop`` (2) passes over the data; passes after
  the first generate in two passes: ``x̃₁ = G(z, a)``, then ``x̃ = G(z, a)`` with ``a1 · F(Dec.hidden(x̃₁))``
  added to the generator's hidden activation (``Dec.hidden`` detached, as the official code). Synthesis
  always uses the feedback, weighted ``a2``;
- an adaptive gradient-penalty weight: after each generator step's critic updates, λ ×1.1 when the
  statistic > 1.05, λ ÷1.1 when < 1.001 (``zsl_gen.losses.wgan.adapt_lambda``);
- the encoder's Adam with default betas (quirk shared with ``ConditionalVAE``);
- a GZSL classifier on ``[x, Dec(x), Dec.hidden(x)]`` for every set (``transform_features``, which the base
  ``classifier_inputs`` applies).
"""

from __future__ import annotations

import torch

from zsl_gen.data.types import ZSLData
from zsl_gen.errors import ConfigError
from zsl_gen.losses.vae import SEMANTIC_RECONSTRUCTIONS, semantic_reconstruction
from zsl_gen.models.networks import Feedback, SemanticDecoder
from zsl_gen.systems.base import adam
from zsl_gen.systems.fvaegan import FVAEGAN

# rows mapped at a time: the decoder's 4096-d activations, 8 MB per 256 rows, sit beside every mapped set at
# the evaluation's peak memory; the rows come out bit for bit the same for any chunk size (128-4096 checked)
_CHUNK = 256


class TFVAEGAN(FVAEGAN):
    """tf-VAEGAN generator system.

    Args (beyond ``FVAEGAN``'s; defaults are the CUB setting):
        recons_weight: weight of the semantic reconstruction loss (0.01 CUB).
        decoder_lr: Adam learning rate of the semantic decoder (1e-4).
        feedback_lr: Adam learning rate of the feedback module (1e-5 CUB).
        a1: feedback weight during training (1 CUB). a2: feedback weight at synthesis (1 CUB).
        feedback_loop: passes over the data per epoch; all passes but the first use the feedback (2).
        freeze_decoder: official ``--freeze_dec`` (AWA2): the decoder is not updated by the generator loss.
        decoder_loss: official-code quirk (default ``"weighted_l1"``): the official ``WeightedL1``
            ``Σ_j d_j² |d_j| / ‖d‖₂``; ``"l1"`` is the paper's plain L1.
        adaptive_lambda: ``True`` (official). adaptive_lambda_stat: official-code quirk (default
            ``"penalty"``): λ adapts on the critic steps' mean *unscaled penalty* ``mean (‖∇D‖ − 1)²``, which
            is what the official code compares with 1.05 / 1.001 (in practice λ shrinks until
            ``‖∇D‖ ≈ 2``); ``"grad_norm"`` adapts on the mean gradient norm ``‖∇D‖`` instead.
        prior_feedback_from_recon: official-code quirk (default ``True``), only with ``encoded_noise=False``:
            the generator step's prior-noise fake takes its feedback from ``Dec(VAE reconstruction)``
            instead of from ``Dec(G(z_prior, a))``.
    """

    def __init__(
        self,
        feature_dim: int,
        semantic_dim: int,
        noise_dim: int | None = None,
        hidden_dim: int = 4096,
        batch_size: int = 64,
        lr: float = 1e-4,
        beta1: float = 0.5,
        encoder_default_betas: bool = True,
        encoder_bottleneck: bool = True,
        output_activation: str = "sigmoid",
        critic_steps: int = 5,
        lambda_gp: float = 10.0,
        gamma_d: float = 10.0,
        gamma_g: float = 10.0,
        encoded_noise: bool = True,
        adaptive_lambda: bool = True,
        adaptive_lambda_stat: str = "penalty",
        generator_batch: str = "last_critic",
        recons_weight: float = 0.01,
        decoder_lr: float = 1e-4,
        feedback_lr: float = 1e-5,
        a1: float = 1.0,
        a2: float = 1.0,
        feedback_loop: int = 2,
        freeze_decoder: bool = False,
        decoder_loss: str = "weighted_l1",
        prior_feedback_from_recon: bool = True,
    ):
        super().__init__(feature_dim, semantic_dim, noise_dim, hidden_dim, batch_size, lr, beta1,
                         encoder_default_betas, encoder_bottleneck, output_activation, critic_steps,
                         lambda_gp, gamma_d, gamma_g, encoded_noise, adaptive_lambda, adaptive_lambda_stat,
                         generator_batch)
        if decoder_loss not in SEMANTIC_RECONSTRUCTIONS:
            raise ConfigError(f"decoder_loss must be one of {SEMANTIC_RECONSTRUCTIONS}, got {decoder_loss!r}")
        if feedback_loop < 1:
            raise ConfigError(f"feedback_loop must be at least 1, got {feedback_loop}")
        self.decoder = SemanticDecoder(feature_dim, semantic_dim, hidden_dim)
        self.feedback = Feedback(hidden_dim)

    def configure_optimizers(self):
        hp = self.hparams
        opt_gen, opt_d = super().configure_optimizers()
        opt_gen.add_param_group({"params": list(self.feedback.parameters()), "lr": hp.feedback_lr,
                                 "betas": (hp.beta1, 0.999)})
        opt_dec = adam(self.decoder.parameters(), lr=hp.decoder_lr, betas=(hp.beta1, 0.999))
        return [opt_gen, opt_d, opt_dec]

    # ---- schedule ----------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return super().steps_per_epoch() * self.hparams.feedback_loop

    def _uses_feedback(self, batch_idx: int) -> bool:
        # the step's index in the epoch (under DDP each rank runs every world_size-th step)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer else (0, 1)
        return batch_idx * world + rank >= super().steps_per_epoch()

    # ---- generation with feedback ------------------------------------------------------------------------
    def _generate(self, z: torch.Tensor, a: torch.Tensor, feedback: bool,
                  source: torch.Tensor | None = None, weight: float | None = None) -> torch.Tensor:
        """``G(z, a)``, or with feedback the second pass ``G(z, a) + w·F(Dec.hidden(source))`` at the hidden
        layer, ``source`` defaulting to the first pass ``G(z, a)`` and ``w`` to ``a1``."""
        generator = self._net("generator")
        if not feedback:
            return generator(z, a)
        with torch.no_grad():  # the official code detaches Dec.hidden: nothing upstream of it is trained
            _, hidden = self.decoder(generator(z, a) if source is None else source)
        return generator(z, a, self._net("feedback")(hidden), self.hparams.a1 if weight is None else weight)

    def _prior_fake(self, a: torch.Tensor, recon: torch.Tensor, feedback: bool) -> torch.Tensor:
        z = torch.randn(a.shape[0], self.noise_dim, device=a.device)
        source = recon if self.hparams.prior_feedback_from_recon else None
        return self._generate(z, a, feedback, source=source)

    def _decode(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._generate(z, a, True, weight=self.hparams.a2)

    # ---- training ----------------------------------------------------------------------------------------
    def _train_decoder_with_generator(self) -> bool:
        return self.hparams.recons_weight > 0 and not self.hparams.freeze_decoder

    def _critic_fakes_fixed(self, feedback: bool) -> bool:
        return not feedback  # the feedback pass reads the decoder, which each critic update trains first

    def _critic_phase(self, feedback: bool):
        # Feedback steps generate each critic update's fakes anew (the decoder changes in between), but
        # encoder, generator and feedback module stay fixed until the generator step: under bf16 autocast
        # their weights are cast once per step instead of once per call (5 critic updates x 2 generator
        # passes). The decoder keeps autocast's per-call casts: each critic update trains it first.
        if not feedback:
            return super()._critic_phase(feedback)
        nets = ("encoder", "generator", "feedback") if self.hparams.encoded_noise else ("generator", "feedback")
        return self._precast_nets(nets)

    def _critic_step(self, opts, x: torch.Tensor, a: torch.Tensor, fake: torch.Tensor | None = None, *,
                     feedback: bool = False):
        opt_dec = opts[2]
        with self.toggled_optimizer(opt_dec):
            a_hat, _ = self.decoder(x)
            loss_r = self.hparams.recons_weight * semantic_reconstruction(a_hat, a, self.hparams.decoder_loss)
            opt_dec.zero_grad()
            self.manual_backward(loss_r)
            self.step_and_release(opt_dec)
        return {**super()._critic_step(opts, x, a, fake, feedback=feedback), "recons_real": loss_r.detach()}

    def _before_generator_loss(self) -> None:
        # The toggled generator optimiser froze the decoder; the official code trains it here too.
        self.decoder.requires_grad_(self._train_decoder_with_generator())

    def _extra_generator_loss(self, fake: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a_hat, _ = self.decoder(fake)
        return self.hparams.recons_weight * semantic_reconstruction(a_hat, a, self.hparams.decoder_loss)

    def _generator_step(self, opts, x: torch.Tensor, a: torch.Tensor, feedback: bool):
        opt_dec = opts[2]
        opt_dec.zero_grad()  # the generator loss's decoder gradients must not add to older ones
        out = super()._generator_step(opts, x, a, feedback)
        if self._train_decoder_with_generator():
            self.step_and_release(opt_dec)
        return out

    # ---- the classifier's feature space ------------------------------------------------------------------
    @torch.no_grad()
    def transform_features(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
        """``[x, Dec(x), Dec.hidden(x)]``: ``(N, D)`` → ``(N, D + A + H)``, on ``x``'s device, stored in
        ``dtype`` (``None``: float32; the decoder always runs in float32), or written into ``out`` (an
        ``(N, D + A + H)`` tensor; its own dtype then applies and ``dtype`` is not used)."""
        # chunk by chunk into one preallocated tensor: no list of chunks and no concatenated copy
        # (AWA2: 41k training rows x 6229 dims = 1 GB, which the list + cat held twice)
        d, a = x.shape[1], self.hparams.semantic_dim
        shape = (x.shape[0], d + a + self.hparams.hidden_dim)  # (N, classifier_feature_dim)
        if out is None:
            out = x.new_empty(shape, dtype=dtype or torch.float32)
        elif tuple(out.shape) != shape:
            raise ValueError(f"transform_features: out has shape {tuple(out.shape)}, expected {shape}")
        for start in range(0, x.shape[0], _CHUNK):
            chunk = x[start:start + _CHUNK].to(self.device, torch.float32)
            a_hat, hidden = self.decoder(chunk)
            rows = out[start:start + chunk.shape[0]]
            rows[:, :d] = chunk
            rows[:, d:d + a] = a_hat
            rows[:, d + a:] = hidden
        return out

    def classifier_feature_dim(self, data: ZSLData) -> int:
        return data.feature_dim + self.hparams.semantic_dim + self.hparams.hidden_dim

    def feature_map_modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.decoder,)
