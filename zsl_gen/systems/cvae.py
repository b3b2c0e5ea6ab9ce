"""f-VAE: the conditional VAE feature generator of f-VAEGAN-D2 (Xian et al., CVPR 2019), without the GAN.

Encoder ``E([x, a]) → (μ, logvar)``; decoder = generator ``G([z, a]) → x̂`` with a sigmoid output;
loss = binary cross-entropy (summed over feature dimensions, averaged over the batch) + KL to N(0, I).
At synthesis ``z ~ N(0, I)``. The networks are those of the official tf-VAEGAN code (on which f-VAEGAN's
only public implementation rests), including its quirks, each behind a flag (see ``ConditionalVAE``).
"""

from __future__ import annotations

import torch

from zsl_gen.losses.vae import vae_loss
from zsl_gen.models.networks import ConditionalGenerator, Encoder, reparameterize, sample_features
from zsl_gen.systems.base import GeneratorSystem, adam


class ConditionalVAE(GeneratorSystem):
    """f-VAE generator system (automatic optimisation, one Adam step per batch).

    Args:
        feature_dim: ``D``; semantic_dim: ``A``.
        noise_dim: latent size ``Z``; ``None`` means ``A`` (as in the papers).
        hidden_dim: hidden width of the encoder and the generator (4096).
        batch_size: training samples per step.
        lr: Adam learning rate of encoder and generator.
        beta1: Adam β1 of the generator (0.5).
        encoder_default_betas: official-code quirk (default ``True``): the encoder's Adam keeps the default
            betas (0.9, 0.999) while the generator uses (β1, 0.999). ``False``: the encoder uses β1 too.
        encoder_bottleneck: official-code quirk (default ``True``): the encoder is
            ``[x, a] → H → 2Z → (μ, logvar)``; ``False`` gives the paper's ``[x, a] → H → (μ, logvar)``.
        output_activation: generator output, ``"sigmoid"`` (published; BCE needs [0, 1]) | ``"relu"`` |
            ``"none"``.
    """

    # the VAE reconstruction loss is binary cross-entropy: training features must lie in [0, 1]
    RECONSTRUCTS_WITH_BCE = True

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
    ):
        super().__init__()
        # Collects the init args of subclasses too (Lightning walks the __init__ frames).
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.noise_dim = noise_dim or semantic_dim
        self.encoder = Encoder(feature_dim, semantic_dim, self.noise_dim, hidden_dim,
                               bottleneck=encoder_bottleneck)
        self.generator = ConditionalGenerator(self.noise_dim, semantic_dim, feature_dim, hidden_dim,
                                              output=output_activation)

    # ---- optimisation ------------------------------------------------------------------------------------
    def _vae_param_groups(self) -> list[dict]:
        """Adam parameter groups of encoder and generator (the encoder's betas follow the quirk flag)."""
        hp = self.hparams
        enc_betas = (0.9, 0.999) if hp.encoder_default_betas else (hp.beta1, 0.999)
        return [{"params": list(self.encoder.parameters()), "betas": enc_betas},
                {"params": list(self.generator.parameters()), "betas": (hp.beta1, 0.999)}]

    def configure_optimizers(self):
        return adam(self._vae_param_groups(), lr=self.hparams.lr)

    def _vae_forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode, sample, decode: ``(reconstruction (B, D), VAE loss)``."""
        mu, logvar = self.encoder(x, a)
        recon = self.generator(reparameterize(mu, logvar), a)
        return recon, vae_loss(recon, x, mu, logvar)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, _, a = self.batch(idx[0])
        _, loss = self._vae_forward(x, a)
        self.log_epoch_means({"train/vae": loss}, batch_size=x.shape[0], batch_idx=batch_idx)
        return loss

    # ---- synthesis ---------------------------------------------------------------------------------------
    def _decode(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Synthesis decoder ``(z (B, Z), a (B, A)) -> (B, D)``."""
        return self.generator(z, a)

    @torch.no_grad()
    def synthesize(self, semantics: torch.Tensor, n_per_class: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """``(K * n_per_class, D)`` class-major features for ``semantics (K, A)``, ``z ~ N(0, I)``."""
        return sample_features(self._decode, semantics, n_per_class, self.noise_dim, self.device, generator)
