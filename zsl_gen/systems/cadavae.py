"""CADA-VAE (Schönfeld et al., CVPR 2019): cross- and distribution-aligned VAEs, as the official code runs.

Two VAEs, one for image features and one for class semantics, share a 64-d latent space. The loss
(summed over batch and dimensions, see ``zsl_gen.losses.cada``) is

    L = rec(x) + rec(a) + β(e) · [KL_x + KL_a] + γ(e) · [rec(Dec_x(z_a), x) + rec(Dec_a(z_x), a)]
        + δ(e) · Σ_i W2(q(z|x_i), q(z|a_i))

with linear warm-ups over the integer epoch ``e``: β 0 → 0.25 over epochs 0–93, γ 0 → 2.37 over 21–75,
δ 0 → 8.13 over 6–22. A batch is 50 training features with their class's semantic vector.

The GZSL classifier of CADA-VAE lives in the latent space (``classifier_inputs``): it trains on
reparameterised latents of real seen features (200 per seen class) and of unseen class semantics
(400 per unseen class) and classifies the μ of encoded test features. ``synthesize`` is the
feature-space generator for reuse (decode semantic latents through the feature decoder); CADA's own
evaluation does not use it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from zsl_gen.data.types import ZSLData
from zsl_gen.errors import ConfigError
from zsl_gen.eval.types import ClassifierInputs
from zsl_gen.losses import cada as L
from zsl_gen.models.cadavae import SIGMA_MODES, ModalityVAE, reparameterize
from zsl_gen.models.networks import decode_in_chunks
from zsl_gen.systems.base import GeneratorSystem, adam

_ENCODE_CHUNK = 4096
SYNTHESIS_CHUNK = 1024  # rows decoded at a time by synthesize (as networks.sample_features)


class CADAVAE(GeneratorSystem):
    """CADA-VAE generator system.

    Args:
        feature_dim: ``D``, image-feature dimension. semantic_dim: ``A``, class-semantic dimension.
        latent_dim: shared latent size (64).
        feature_enc_hidden, feature_dec_hidden: feature VAE hidden sizes (1560, 1660).
        semantic_enc_hidden, semantic_dec_hidden: semantic VAE hidden sizes (1450, 665).
        lr, beta1, beta2, amsgrad: Adam (1.5e-4, 0.9, 0.999, AMSGrad on; eps 1e-8, no weight decay).
        batch_size: training samples per step (50).
        kl_max, kl_start, kl_end: KL warm-up (0.25 over epochs 0–93).
        cross_max, cross_start, cross_end: cross-reconstruction warm-up (2.37 over epochs 21–75).
        align_max, align_start, align_end: distribution-alignment warm-up (8.13 over epochs 6–22).
        reconstruction: ``"l1"`` (published) or ``"l2"``; summed, not averaged.
        reparam_sigma: ``"exp"`` (official quirk: σ = exp(logvar)) or ``"exp_half"`` (σ = exp(logvar/2)).
        shared_eps: ``True`` (official quirk): one ε per sample shared by all latent dimensions.
        n_latent_seen: latents per seen class for the latent-space classifier (200).
        n_latent_unseen: latents per unseen class for the latent-space classifier (400).
        fused_adam: use torch's fused Adam kernel (``zsl_gen.systems.base.adam``): the same update up to
            float rounding, ~5x cheaper per step on CPU, where the optimiser step of the 7.8M weights costs
            more than the batch's matrix products. ``False``: torch's default (foreach) Adam, bit for bit
            the numerics before this switch existed.
    """

    def __init__(
        self,
        feature_dim: int,
        semantic_dim: int,
        latent_dim: int = 64,
        feature_enc_hidden: int = 1560,
        feature_dec_hidden: int = 1660,
        semantic_enc_hidden: int = 1450,
        semantic_dec_hidden: int = 665,
        lr: float = 1.5e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        amsgrad: bool = True,
        batch_size: int = 50,
        kl_max: float = 0.25,
        kl_start: int = 0,
        kl_end: int = 93,
        cross_max: float = 2.37,
        cross_start: int = 21,
        cross_end: int = 75,
        align_max: float = 8.13,
        align_start: int = 6,
        align_end: int = 22,
        reconstruction: str = "l1",
        reparam_sigma: str = "exp",
        shared_eps: bool = True,
        n_latent_seen: int = 200,
        n_latent_unseen: int = 400,
        fused_adam: bool = True,
    ) -> None:
        super().__init__()
        if reconstruction not in L.RECONSTRUCTIONS:
            raise ConfigError(f"generator.system.reconstruction must be one of {L.RECONSTRUCTIONS}, "
                              f"got {reconstruction!r}")
        if reparam_sigma not in SIGMA_MODES:
            raise ConfigError(f"generator.system.reparam_sigma must be one of {SIGMA_MODES}, "
                              f"got {reparam_sigma!r}")
        for key, value in (("n_latent_seen", n_latent_seen), ("n_latent_unseen", n_latent_unseen),
                           ("batch_size", batch_size), ("latent_dim", latent_dim)):
            if int(value) < 1:
                raise ConfigError(f"generator.system.{key} must be a positive integer, got {value!r}")
        self.save_hyperparameters()
        self.batch_size = int(batch_size)
        self.feature_vae = ModalityVAE(feature_dim, feature_enc_hidden, latent_dim, feature_dec_hidden)
        self.semantic_vae = ModalityVAE(semantic_dim, semantic_enc_hidden, latent_dim, semantic_dec_hidden)

    # ---- schedule -----------------------------------------------------------------------------------
    def warmup_weights(self, epoch: int) -> dict[str, float]:
        """The three loss weights at (0-based, integer) ``epoch``: keys ``kl``, ``cross``, ``align``."""
        hp = self.hparams
        return {"kl": L.warmup(epoch, hp.kl_start, hp.kl_end, hp.kl_max),
                "cross": L.warmup(epoch, hp.cross_start, hp.cross_end, hp.cross_max),
                "align": L.warmup(epoch, hp.align_start, hp.align_end, hp.align_max)}

    def _sample(self, mu: torch.Tensor, logvar: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return reparameterize(mu, logvar, self.hparams.reparam_sigma, self.hparams.shared_eps, generator)

    # ---- training -----------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, _, a = self.batch(batch[0])
        kind = self.hparams.reconstruction
        fx, sx = self.feature_vae, self.semantic_vae

        mu_x, logvar_x = fx.encoder(x)
        mu_a, logvar_a = sx.encoder(a)
        z_x, z_a = self._sample(mu_x, logvar_x), self._sample(mu_a, logvar_a)

        # Each decoder sees both latents (its own reconstruction and the cross-reconstruction). One call on
        # the stacked (2B, Z) latents is the same computation row by row as two calls on (B, Z), but its
        # weight gradient is one (2B)-deep matrix product instead of two B-deep ones plus a sum: ~30% less
        # step time at batch 50 on CPU.
        z = torch.cat([z_x, z_a])
        x_from_x, x_from_a = fx.decoder(z).split(x.shape[0])
        a_from_x, a_from_a = sx.decoder(z).split(x.shape[0])
        rec = L.reconstruction(x_from_x, x, kind) + L.reconstruction(a_from_a, a, kind)
        cross = L.cross_reconstruction(x_from_a, x, a_from_x, a, kind)
        kl = L.kl_divergence(mu_x, logvar_x) + L.kl_divergence(mu_a, logvar_a)
        align = L.distribution_alignment(mu_x, logvar_x, mu_a, logvar_a)

        w = self.warmup_weights(self.current_epoch)
        loss = rec + w["kl"] * kl
        # Terms with a zero weight are left out rather than multiplied by 0, as the official code does
        # (so a degenerate sqrt(0) in the alignment cannot put NaN gradients into the loss before it counts).
        if w["cross"] > 0:
            loss = loss + w["cross"] * cross
        if w["align"] > 0:
            loss = loss + w["align"] * align

        self.log_epoch_means({"train/loss": loss, "train/reconstruction": rec,
                              "train/cross_reconstruction": cross, "train/kl": kl, "train/alignment": align,
                              **{f"train/weight_{k}": float(v) for k, v in w.items()}},
                             batch_size=x.shape[0], batch_idx=batch_idx)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return adam(self.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=1e-8,
                    weight_decay=0.0, amsgrad=hp.amsgrad, fused=bool(hp.get("fused_adam", True)))

    # ---- encoding and synthesis -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-encoder posterior ``(μ, logvar)``, each ``(N, Z)``, for features ``(N, D)`` (chunked)."""
        if x.shape[0] == 0:
            z = x.new_zeros(0, self.hparams.latent_dim)
            return z, z.clone()
        parts = [self.feature_vae.encoder(x[i:i + _ENCODE_CHUNK]) for i in range(0, x.shape[0], _ENCODE_CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def sample_semantic_latents(self, semantics: torch.Tensor, n_per_class: int,
                                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised latents of the semantic encoder.

        Args:
            semantics: ``(K, A)`` class-semantic vectors.
            n_per_class: latents per class.
            generator: noise source on the system's device.

        Returns:
            ``(K * n_per_class, Z)``, class-major.
        """
        mu, logvar = self.semantic_vae.encoder(semantics.to(self.device, torch.float32))
        mu, logvar = mu.repeat_interleave(n_per_class, 0), logvar.repeat_interleave(n_per_class, 0)
        return self._sample(mu, logvar, generator)

    @torch.no_grad()
    def synthesize(self, semantics: torch.Tensor, n_per_class: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Image features decoded from semantic latents: ``Dec_x(z)``, ``z ~ q(z | a)``.

        This is the feature-space synthesis for reusing a trained CADA-VAE as a generator; CADA-VAE's
        own classifier works in the latent space (``classifier_inputs``). The feature decoder has no
        output activation, so values are not clipped to the training features' range.

        Args:
            semantics: ``(K, A)`` class-semantic vectors (preprocessed like the training semantics).
            n_per_class: samples per class.
            generator: source of the noise (on the system's device).

        Returns:
            ``(K * n_per_class, D)`` features, class-major.
        """
        z = self.sample_semantic_latents(semantics, n_per_class, generator)
        return decode_in_chunks(self.feature_vae.decoder, z, chunk=SYNTHESIS_CHUNK)

    def classifier_train_sizes(self, data: ZSLData, n_per_class: int) -> tuple[int, int]:
        """``n_latent_seen`` latents per seen class and ``n_latent_unseen`` per unseen class (GZSL), the unseen
        ones alone (ZSL); ``n_per_class`` is ignored, as in ``classifier_inputs``."""
        n_unseen = int(self.hparams.n_latent_unseen) * data.unseen_classes.numel()
        return int(self.hparams.n_latent_seen) * torch.unique(data.train_y).numel() + n_unseen, n_unseen

    @torch.no_grad()
    def classifier_inputs(self, data: ZSLData, n_per_class: int, generator: torch.Generator | None = None,
                          dtype: torch.dtype | None = None,
                          offload: Callable[[Iterable[torch.Tensor]], Any] | None = None) -> ClassifierInputs:
        """CADA-VAE's latent-space classifier data (dimension ``Z``).

        - train: per seen class, its first ``n_latent_seen`` training features in data order, cycled
          when the class has fewer (the official code repeats and truncates; no random sampling),
          encoded and *reparameterised*; plus ``n_latent_unseen`` reparameterised latents of each unseen
          class's semantic vector.
        - seen/unseen evaluation sets: μ of the encoded test features (no noise).
        - zsl_train: the unseen latents.

        ``n_per_class`` (the pipeline's ``syn_num``) is ignored: the counts are the hyper-parameters
        ``n_latent_seen`` / ``n_latent_unseen`` (the generator config ties ``n_latent_unseen`` to
        ``syn_num`` by interpolation). ``dtype``: storage dtype of the latents (``None``: float32).
        ``offload``: as ``GeneratorSystem.classifier_inputs``'s (weights and image features, once encoded).
        """
        was_training = self.training
        self.eval()
        try:
            data = data.to(self.device)
            n_seen, n_unseen = int(self.hparams.n_latent_seen), int(self.hparams.n_latent_unseen)

            sel, sel_y = [], []
            for c in torch.unique(data.train_y):
                rows = (data.train_y == c).nonzero().squeeze(1)
                sel.append(rows[torch.arange(n_seen, device=rows.device) % rows.numel()])
                sel_y.append(c.repeat(n_seen))
            sel_t = torch.cat(sel)
            mu, logvar = self.encode_features(data.train_x[sel_t])
            z_seen, y_seen = self._sample(mu, logvar, generator), torch.cat(sel_y)

            z_unseen = self.sample_semantic_latents(data.semantics[data.unseen_classes], n_unseen, generator)
            y_unseen = data.unseen_classes.repeat_interleave(n_unseen)

            seen_mu, _ = self.encode_features(data.seen_x)
            unseen_mu, _ = self.encode_features(data.unseen_x)
            if offload is not None:  # the classifier reads latents only
                offload([*self.parameters(), data.train_x, data.seen_x, data.unseen_x])
        finally:
            self.train(was_training)
        store = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
        train_x = store(torch.cat([z_seen, z_unseen]))
        return ClassifierInputs(
            train_x=train_x, train_y=torch.cat([y_seen, y_unseen]),
            zsl_train_x=train_x[z_seen.shape[0]:], zsl_train_y=y_unseen,
            seen_x=store(seen_mu), seen_y=data.seen_y, unseen_x=store(unseen_mu), unseen_y=data.unseen_y,
            seen_classes=data.seen_classes, unseen_classes=data.unseen_classes)
