"""Generalization: the loss on held-out data along a run, the best early-stopping point, and the mode theory of
train and test loss (Lampinen & Ganguli 2019, docs/theory.md#generalization).

A problem may carry the statistics of a test distribution, ``problem.test`` (Σ11ᵗ, Σ31ᵗ, Σ33ᵗ, same n_in and n_out;
see ``problem.with_test``). The test loss of a network map W is the training loss's formula on them
(docs/theory.md#test-loss):

    L_test(W) = tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ) = E_test ‖y − W x‖²      (no ½, like L)

Mode theory (``loss_theory``). Where the mode strengths u_α(t) along the SVD Σ31 = Û diag(ŝ) V̂ᵀ of the *training*
correlations are predicted (``theory.theory_overlay``) and Σ11 = c·I, the network map is W(t) = Σ_α u_α(t) û_α v̂_αᵀ
(exactly for an aligned init, approximately for a small random one), so both losses follow from the strengths alone:

    L(t)      = tr Σ33 − 2 Σ_α ŝ_α u_α(t) + c Σ_α u_α(t)²
    L_test(t) = tr Σ33ᵗ − 2 Σ_α (û_αᵀ Σ31ᵗ v̂_α) u_α(t) + Σ_α (v̂_αᵀ Σ11ᵗ v̂_α) u_α(t)²

The test loss is not minimised where the training loss is: a mode whose empirical direction carries little of the
teacher (û_αᵀ Σ31ᵗ v̂_α ≪ ŝ_α, the noise modes of a noisy teacher with few samples) lowers L but raises L_test once
learned. Saxe's sigmoids learn the strong (high-SNR) modes first, so the test loss has a minimum before
convergence: the early-stopping time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import network
from .problem import Problem, least_squares
from .trajectory import EarlyStopping

if TYPE_CHECKING:
    from .modes import ModeBasis


def mse(problem: Problem, product: np.ndarray) -> np.ndarray:
    """L(W) = tr Σ33 − 2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ) = L_ls + ‖W F − G‖² ≥ 0 for one W (n_out × n_in) or a stack
    (T, n_out, n_in) (``network.loss``).

    Needs tr Σ33 (``problem.sigma33_trace``); held-out statistics always have it (``problem.with_test``).
    """
    return network.loss(problem, product)


def test_loss(problem: Problem, product: np.ndarray) -> np.ndarray | None:
    """L_test(W(t)) per record on ``problem.test`` (module docstring); None when the problem has no test data."""
    if problem.test is None:
        return None
    return mse(problem.test, product)


test_loss.__test__ = False  # a function of the core, not a test (pytest collects test_* names it is given)


def early_stopping(times: np.ndarray, steps: np.ndarray | None, test_losses: np.ndarray | None) -> EarlyStopping | None:
    """The first record where the test loss is smallest (argmin over the finite records); None without test loss."""
    if test_losses is None or len(test_losses) == 0:
        return None
    values = np.where(np.isfinite(test_losses), test_losses, np.inf)
    i = int(np.argmin(values))
    if not np.isfinite(values[i]):
        return None
    return EarlyStopping(i, float(times[i]), None if steps is None else int(steps[i]), float(test_losses[i]))


def mode_loss_theory(problem: Problem, basis: ModeBasis, strength: np.ndarray, c: float) -> tuple[np.ndarray,
                                                                                                    np.ndarray | None]:
    """(L(t), L_test(t)) of W(t) = Σ_α u_α(t) û_α v̂_αᵀ for predicted strengths ``strength`` (T, k) on the
    training modes ``basis`` with Σ11 = c·I (module docstring); L_test is None without test data.

    Both as sums of squares, never negative (``problem.least_squares``): with Σ11 = c·I, ‖W F − G‖² = Σ_α
    (c u_α − ŝ_α)²/c, so L = L_ls + Σ_α (c u_α − ŝ_α)²/c. On the test data, with A = V̂ᵀFᵗ and B = ÛᵀGᵗ (rows a_α,
    b_α), ‖W Fᵗ − Gᵗ‖² = ‖(I − ÛÛᵀ) Gᵗ‖² + Σ_α ‖u_α a_α − b_α‖², and each row term is ‖a_α‖² (u_α − ū_α)² +
    ‖b_α − ū_α a_α‖² with ū_α = ⟨a_α, b_α⟩/‖a_α‖² — the same quadratic as tr Σ33ᵗ − 2 Σ (û_αᵀΣ31ᵗv̂_α) u_α +
    Σ (v̂_αᵀΣ11ᵗv̂_α) u_α², since ⟨a_α, b_α⟩ = û_αᵀΣ31ᵗv̂_α and ‖a_α‖² = v̂_αᵀΣ11ᵗv̂_α.

    Needs tr Σ33 for L (NaN without it: the caller reports none).
    """
    u = np.asarray(strength, dtype=np.float64)
    residual = least_squares(problem).residual
    train = (np.nan if residual is None else residual) + np.sum((c * u - basis.s) ** 2, axis=1) / c
    if problem.test is None:
        return train, None
    held_out = least_squares(problem.test)
    a = basis.v.T @ held_out.f                       # (k, n_in)
    b = basis.u.T @ held_out.g                       # (k, n_in)
    outside = held_out.g - basis.u @ b               # (I − ÛÛᵀ) Gᵗ: the test targets no mode of W can reach
    gain = np.einsum("ai,ai->a", a, a)               # v̂_αᵀ Σ11ᵗ v̂_α
    target = np.divide(np.einsum("ai,ai->a", a, b), gain, out=np.zeros_like(gain), where=gain > 0)
    miss = b - target[:, None] * a
    floor = held_out.residual + float(np.sum(outside * outside)) + float(np.sum(miss * miss))
    return train, floor + ((u - target) ** 2) @ gain
