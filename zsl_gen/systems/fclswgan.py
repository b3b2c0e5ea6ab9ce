"""f-CLSWGAN (Xian, Lorenz, Schiele, Akata, CVPR 2018): a conditional WGAN-GP feature generator whose
generator loss adds the NLL of a frozen softmax classifier pre-trained on the real seen features.

Per training step (manual optimisation, Lightning's GAN pattern): ``critic_steps`` (5) critic updates,
each on its own batch, minimising ``E[D(x̃, a)] − E[D(x, a)] + λ·GP`` with ``x̃ = G(z, a)`` detached
(gradients in closed form, ``Critic.wgan_gp_backward``);
then one generator update minimising ``−E[D(G(z, a), a)] + cls_weight · NLL(C(G(z, a)), y)`` on the last
critic batch's classes (as the official code) with fresh noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zsl_gen.errors import CheckpointError
from zsl_gen.losses.wgan import generator_loss
from zsl_gen.models.networks import ConditionalGenerator, Critic, LinearSoftmaxClassifier, sample_features
from zsl_gen.systems.base import CriticSchedule, GeneratorSystem, adam

_CLASSIFIER_KEY = "seen_classifier.fc.weight"


class FCLSWGAN(CriticSchedule, GeneratorSystem):
    """f-CLSWGAN generator system.

    The seen-class classifier is pre-trained once when fitting starts (skipped when it was restored from
    a checkpoint) and stored as the submodule ``seen_classifier`` (frozen, in the state_dict).

    Args:
        feature_dim: ``D``; semantic_dim: ``A``.
        noise_dim: ``Z``; ``None`` means ``A`` (as in the paper).
        hidden_dim: hidden width of generator and critic (4096).
        batch_size: samples per critic / generator batch (64).
        lr: Adam learning rate of generator and critic. beta1: their Adam β1 (0.5).
        critic_steps: critic updates per generator update (5).
        lambda_gp: gradient-penalty weight λ (10).
        cls_weight: weight of the classification loss in the generator loss.
        cls_lr, cls_beta1, cls_epochs, cls_batch_size: pre-training of the seen-class classifier
            (Adam 1e-3, β1 0.5, 50 epochs, batch 100).
        output_activation: generator output, ``"relu"`` (published; ResNet features are non-negative)
            | ``"sigmoid"`` | ``"none"``.
        generator_batch: ``"last_critic"`` (official code: the generator update reuses the classes and
            labels of the last critic batch) or ``"fresh"`` (a batch of its own).
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
        critic_steps: int = 5,
        lambda_gp: float = 10.0,
        cls_weight: float = 0.01,
        cls_lr: float = 1e-3,
        cls_beta1: float = 0.5,
        cls_epochs: int = 50,
        cls_batch_size: int = 100,
        output_activation: str = "relu",
        generator_batch: str = "last_critic",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.check_critic_schedule(critic_steps, generator_batch)
        self.automatic_optimization = False
        self.batch_size = batch_size
        self.noise_dim = noise_dim or semantic_dim
        self.generator = ConditionalGenerator(self.noise_dim, semantic_dim, feature_dim, hidden_dim,
                                              output=output_activation)
        self.critic = Critic(feature_dim, semantic_dim, hidden_dim)
        self.seen_classifier: LinearSoftmaxClassifier | None = None
        self._seen_index: torch.Tensor | None = None  # global class id -> seen-class index (-1: unseen)

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = adam(self.generator.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
        opt_d = adam(self.critic.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
        return [opt_g, opt_d]

    # ---- the frozen seen-class classifier ----------------------------------------------------------------
    def _set_classifier(self, n_seen: int) -> LinearSoftmaxClassifier:
        clf = LinearSoftmaxClassifier(self.hparams.feature_dim, n_seen).to(self.device)
        clf.requires_grad_(False)
        self.seen_classifier = clf
        return clf

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # The classifier's size (number of seen classes) is known only from the data or from saved weights;
        # every loading path (load_from_checkpoint, resume, exported weights) comes through here.
        weight = state_dict.get(_CLASSIFIER_KEY)
        if weight is not None and self.seen_classifier is None:
            self._set_classifier(int(weight.shape[0]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        seen = self.data.seen_classes
        self._seen_index = torch.full((self.data.n_classes,), -1, dtype=torch.long, device=self.device)
        self._seen_index[seen] = torch.arange(seen.numel(), device=self.device)
        if self.seen_classifier is None:
            self.pretrain_classifier()
        elif self.seen_classifier.fc.out_features != seen.numel():
            raise CheckpointError(
                f"the restored seen-class classifier has {self.seen_classifier.fc.out_features} classes but "
                f"the data has {seen.numel()} seen classes: fit it on the data it was trained on")

    @torch.no_grad()
    def pretrain_classifier(self) -> LinearSoftmaxClassifier:
        """Train the seen-class softmax classifier on the real training features, then freeze it.

        Adam(``cls_lr``, β1 ``cls_beta1``), ``cls_epochs`` epochs of shuffled ``cls_batch_size`` batches,
        NLL over the seen classes; shuffling is seeded by ``set_data``'s seed. The gradient of the mean NLL
        of ``log_softmax(x Wᵀ + b)`` is written in closed form (``(softmax − onehot) / n``, the value
        autograd computes, without building a graph per batch), applied by the fused Adam.
        """
        hp = self.hparams
        x, y = self.data.train_x, self._seen_index[self.data.train_y]
        clf = self._set_classifier(int(self.data.seen_classes.numel()))
        weight, bias = clf.fc.weight, clf.fc.bias
        opt = adam([weight, bias], lr=hp.cls_lr, betas=(hp.cls_beta1, 0.999))
        g = torch.Generator().manual_seed(self.sampling_seed)
        for _ in range(hp.cls_epochs):
            for b in torch.randperm(x.shape[0], generator=g).to(x.device).split(hp.cls_batch_size):
                xb = x[b]
                grad = torch.softmax(torch.addmm(bias, xb, weight.T), dim=1)
                grad[torch.arange(b.numel(), device=x.device), y[b]] -= 1.0
                grad /= b.numel()
                weight.grad = grad.T @ xb
                bias.grad = grad.sum(0)
                opt.step()
        weight.grad = bias.grad = None
        return clf

    # ---- training ----------------------------------------------------------------------------------------
    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.noise_dim, device=self.device)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        stats = []
        xs, _, semantics = self.batch(idx[: hp.critic_steps].reshape(-1))  # (k·B, D), (k·B, A)
        with torch.no_grad():  # G does not change during the critic updates: one forward for all k batches
            fakes = self.generator(self._noise(xs.shape[0]), semantics)
        for x, a, fake in zip(*(t.split(idx.shape[1]) for t in (xs, semantics, fakes)), strict=True):
            step = self.critic.wgan_gp_backward(x, fake, a, hp.lambda_gp)  # sets the critic's .grad
            opt_d.step()
            stats.append((step.loss, -step.neg_wasserstein, step.grad_norm))
        loss_d, wasserstein, grad_norm = (torch.stack(s).mean() for s in zip(*stats, strict=True))

        x, y, a = self.batch(idx[-1])
        with self.toggled_optimizer(opt_g):
            fake = self.generator(self._noise(x.shape[0]), a)
            adv = generator_loss(self.critic(fake, a))
            cls = F.nll_loss(self.seen_classifier(fake), self._seen_index[y])
            loss_g = adv + hp.cls_weight * cls
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            self.step_and_release(opt_g)
        self.log_epoch_means({"train/loss_d": loss_d, "train/wasserstein": wasserstein, "train/grad_norm": grad_norm,
                              "train/loss_g": loss_g, "train/cls": cls}, batch_size=x.shape[0], batch_idx=batch_idx)

    # ---- synthesis ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, semantics: torch.Tensor, n_per_class: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """``(K * n_per_class, D)`` class-major features for ``semantics (K, A)``, ``z ~ N(0, I)``."""
        return sample_features(self.generator, semantics, n_per_class, self.noise_dim, self.device, generator)
