"""ESZSL (Romera-Paredes & Torr, ICML 2015): the closed-form embarrassingly simple ZSL baseline.

With training features ``X`` (D×N), labels ``Y`` ∈ {−1, 1}^{N×Z} and seen-class semantics ``S`` (A×Z):

    V = (X Xᵀ + γ I)⁻¹ X Y Sᵀ (S Sᵀ + λ I)⁻¹            score(x, c) = xᵀ V s_c

This module takes row-major tensors like the rest of zsl-gen (``x`` ``(N, D)``, semantics ``(Z, A)``) and
works in float64. The (γ, λ) grid of :func:`eszsl_curves` factorises once: with the thin SVD
``S_seen = U diag(σ) Vh`` (rows = classes), ``Sᵀ (S Sᵀ + λI)⁻¹ = U diag(σ / (σ² + λ)) Vh``, so

    scores(γ, λ) = [T (XᵀX + γI)⁻¹ Xᵀ Y U] · diag(σ / (σ² + λ)) · [Vh S_allᵀ]

needs one Cholesky solve per γ (of the smaller of the D×D and N×N Gram systems) and one small
``(Nt, r) @ (r, C)`` product per (γ, λ), ``r = min(Z, A)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from zsl_gen.data.types import ZSLData
from zsl_gen.errors import ConfigError, DataError
from zsl_gen.eval.classifier import calibrated_argmax
from zsl_gen.eval.metrics import (
    batched_per_class_accuracy,
    class_positions,
    harmonic_mean_array,
    nanmean_last,
)
from zsl_gen.eval.types import EvalCurves

__all__ = ["fit_eszsl", "eszsl_scores", "eszsl_curves"]

DEFAULT_EXPONENTS = tuple(range(-3, 4))


def _signed_labels(y_local: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(N,)`` local ids -> ``(N, Z)`` float64 matrix, +1 at the true class and −1 elsewhere."""
    y = -torch.ones(y_local.shape[0], n_classes, dtype=torch.float64, device=y_local.device)
    y[torch.arange(y_local.shape[0], device=y_local.device), y_local] = 1.0
    return y


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(f"ESZSL {name} must be a finite number > 0, got {value!r}")
    return float(value)


def fit_eszsl(x: torch.Tensor, y_local: torch.Tensor, seen_semantics: torch.Tensor, gamma: float,
              lam: float) -> torch.Tensor:
    """Closed-form ESZSL projection for one (γ, λ), solved with ``torch.linalg.solve`` in float64.

    Args:
        x: ``(N, D)`` training features.
        y_local: ``(N,)`` int64 indices into the rows of ``seen_semantics``.
        seen_semantics: ``(Z, A)`` semantics of the training classes.
        gamma: feature-space ridge γ > 0.
        lam: semantic-space ridge λ > 0.

    Returns:
        ``V`` ``(D, A)`` float64 such that scores are ``x @ V @ semanticsᵀ``.
    """
    gamma, lam = _check_positive("gamma", gamma), _check_positive("lambda", lam)
    xd, sem = x.double(), seen_semantics.to(device=x.device, dtype=torch.float64)
    y = _signed_labels(y_local.to(x.device).long(), sem.shape[0])
    eye_d = torch.eye(xd.shape[1], dtype=torch.float64, device=x.device)
    eye_a = torch.eye(sem.shape[1], dtype=torch.float64, device=x.device)
    left = torch.linalg.solve(xd.T @ xd + gamma * eye_d, (xd.T @ y) @ sem)  # (D, A)
    # (SᵀS + λI) is symmetric, so right-division is a transposed solve
    return torch.linalg.solve(sem.T @ sem + lam * eye_a, left.T).T


def eszsl_scores(x: torch.Tensor, V: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
    """Compatibility scores ``x V Sᵀ``.

    Args:
        x: ``(N, D)`` features.
        V: ``(D, A)`` projection from :func:`fit_eszsl`.
        semantics: ``(C, A)`` semantics of the candidate classes.

    Returns:
        ``(N, C)`` float64; column ``j`` scores the class of ``semantics[j]``.
    """
    return (x.to(V.device, torch.float64) @ V) @ semantics.to(V.device, torch.float64).T


def _spd_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrix @ out = rhs`` for a SPD ``(n, n)`` matrix; ``rhs`` ``(n, k)``."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:  # numerically indefinite (tiny γ on a huge Gram matrix): use the LU solve
        return torch.linalg.solve(matrix, rhs)
    return torch.cholesky_solve(rhs, chol)


def _exp_label(e: float) -> str:
    return f"1e{int(e):+d}" if float(e).is_integer() else f"{10.0 ** float(e):.3g}"


def _finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"ESZSL inputs: {name} contains NaN/Inf; check the dataset files and preprocessing")


@torch.no_grad()
def eszsl_curves(
    data: ZSLData,
    *,
    gammas_exp: Sequence[float] = DEFAULT_EXPONENTS,
    lambdas_exp: Sequence[float] = DEFAULT_EXPONENTS,
    calibration_gammas: Sequence[float] = (0.0,),
) -> EvalCurves:
    """Fit ESZSL on ``data.train_*`` for every (γ, λ) = (10^g, 10^l) and score GZSL and ZSL.

    GZSL: argmax over the split's seen ∪ unseen classes (after subtracting each calibration γ from the
    seen-class scores) on ``seen_x`` / ``unseen_x``; ZSL: argmax over the unseen classes on ``unseen_x``.

    Args:
        data: one protocol of a dataset; runs on ``data.train_x``'s device in float64.
        gammas_exp: exponents g of the feature ridge γ = 10^g.
        lambdas_exp: exponents l of the semantic ridge λ = 10^l.
        calibration_gammas: calibrated-stacking values (``(0.0,)`` = none).

    Returns:
        :class:`EvalCurves` with arrays ``(len(gammas_exp) * len(lambdas_exp), len(calibration_gammas))``,
        rows γ-major (``row_labels`` like ``"gamma=1e-1,lambda=1e+0"``); ``T1`` broadcast over
        calibration values.
    """
    gammas_exp, lambdas_exp = tuple(gammas_exp), tuple(lambdas_exp)
    if not gammas_exp or not lambdas_exp:
        raise ConfigError("ESZSL gammas_exp and lambdas_exp must be non-empty lists of exponents")
    for name, exps in (("gammas_exp", gammas_exp), ("lambdas_exp", lambdas_exp)):
        for e in exps:
            if isinstance(e, bool) or not isinstance(e, (int, float, np.integer, np.floating)) \
                    or not -300 < float(e) < 300:
                raise ConfigError(f"ESZSL {name} must hold base-10 exponents in (-300, 300), got {e!r}")
    cal = tuple(float(g) for g in calibration_gammas)
    if not cal or not all(math.isfinite(g) for g in cal):
        raise ConfigError(f"ESZSL calibration_gammas must be a non-empty list of finite numbers, got {cal}")

    device = data.train_x.device
    seen = data.seen_classes.to(device).long().sort().values
    unseen = data.unseen_classes.to(device).long().sort().values
    classes = torch.cat([seen, unseen]).sort().values
    seen_columns = class_positions(classes, seen) >= 0
    unseen_columns = class_positions(unseen, classes)  # (U,) column of each unseen class
    for name in ("train_x", "seen_x", "unseen_x", "semantics"):
        _finite(name, getattr(data, name))
    y_local = class_positions(data.train_y.to(device), seen)
    if bool((y_local < 0).any()):
        raise DataError("ESZSL inputs: train_y contains classes outside seen_classes")
    seen_y, unseen_y = data.seen_y.to(device).long(), data.unseen_y.to(device).long()

    x = data.train_x.double()
    sem = data.semantics.to(device, torch.float64)
    u_mat, sigma, vh = torch.linalg.svd(sem[seen], full_matrices=False)  # (Z, r), (r,), (r, A)
    # Y U with Y = 2·onehot − 1, without materialising the N×Z matrix
    yu = 2.0 * u_mat[y_local] - u_mat.sum(0, keepdim=True)  # (N, r)
    # scores only feed an argmax: float32 is enough once the ill-conditioned solve is done in float64
    right = (vh @ sem[classes].T).float()  # (r, C)
    test = torch.cat([data.seen_x, data.unseen_x]).to(device, torch.float64)  # (Nt, D)
    n_seen_test = data.seen_x.shape[0]

    n, d = x.shape
    if d <= n:
        gram, rhs, lead = x.T @ x, x.T @ yu, test  # solve in feature space (D×D)
    else:
        # dual form (N×N): (XᵀX+γI)⁻¹Xᵀ = Xᵀ(XXᵀ+γI)⁻¹
        gram, rhs, lead = x @ x.T, yu, test @ x.T
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=device)
    cal_t = torch.tensor(cal, dtype=torch.float64, device=device)

    seen_preds, unseen_preds, zsl_preds, labels = [], [], [], []
    for g in gammas_exp:
        proj = lead @ _spd_solve(gram + 10.0 ** float(g) * eye, rhs)  # (Nt, r)
        for lam in lambdas_exp:
            weights = sigma / (sigma ** 2 + 10.0 ** float(lam))
            scores = (proj * weights).float() @ right  # (Nt, C)
            pred = classes[calibrated_argmax(scores, seen_columns, cal_t)]  # (G, Nt)
            seen_preds.append(pred[:, :n_seen_test])
            unseen_preds.append(pred[:, n_seen_test:])
            zsl_preds.append(unseen[scores[n_seen_test:, unseen_columns].argmax(dim=1)])
            labels.append(f"gamma={_exp_label(g)},lambda={_exp_label(lam)}")

    n_rows, n_cal = len(labels), len(cal)
    s = nanmean_last(batched_per_class_accuracy(torch.cat(seen_preds), seen_y, seen))
    u = nanmean_last(batched_per_class_accuracy(torch.cat(unseen_preds), unseen_y, unseen))
    s, u = s.view(n_rows, n_cal), u.view(n_rows, n_cal)
    t1 = nanmean_last(batched_per_class_accuracy(torch.stack(zsl_preds), unseen_y, unseen))
    s, u, t1 = s.cpu().numpy(), u.cpu().numpy(), t1.cpu().numpy()
    return EvalCurves(S=s, U=u, H=harmonic_mean_array(s, u), T1=np.repeat(t1[:, None], n_cal, axis=1),
                      gammas=cal, row_labels=labels)
