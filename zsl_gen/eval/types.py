"""Inputs and outputs of the final GZSL classifier, shared by the evaluator and the generators."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch


@dataclass
class ClassifierInputs:
    """What the final classifier is trained and evaluated on, in the feature space a method chooses
    (image features for most methods, ``[x, Dec(x), h]`` for tf-VAEGAN, the latent space for CADA-VAE).

    Attributes:
        train_x: ``(M, F)`` real seen + synthetic unseen features; train_y: ``(M,)`` global ids.
        zsl_train_x: ``(Mu, F)`` synthetic unseen features only (ZSL classifier); zsl_train_y: ``(Mu,)``.
        seen_x: ``(Ns, F)`` seen-class evaluation samples; seen_y: ``(Ns,)`` global ids.
        unseen_x: ``(Nu, F)`` unseen-class evaluation samples; unseen_y: ``(Nu,)`` global ids.
        seen_classes: ``(S,)`` sorted global ids; unseen_classes: ``(U,)`` sorted global ids.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    zsl_train_x: torch.Tensor
    zsl_train_y: torch.Tensor
    seen_x: torch.Tensor
    seen_y: torch.Tensor
    unseen_x: torch.Tensor
    unseen_y: torch.Tensor
    seen_classes: torch.Tensor
    unseen_classes: torch.Tensor

    def to(self, device: torch.device | str) -> "ClassifierInputs":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class EvalCurves:
    """Per-candidate GZSL/ZSL accuracies (fractions in [0, 1]) of one classifier training.

    Every array has shape ``(E, G)``: ``E`` classifier epochs (or ESZSL's first hyper-parameter) ×
    ``G`` calibration values γ (``G = 1`` without calibrated stacking). ``T1`` does not depend on γ
    and is broadcast along that axis.
    """

    S: np.ndarray
    U: np.ndarray
    H: np.ndarray
    T1: np.ndarray
    gammas: tuple[float, ...] = (0.0,)
    row_labels: list[str] | None = None  # what each of the E rows is; None means classifier epochs 1..E
