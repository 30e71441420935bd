"""Deep linear network y = W_D ⋯ W_1 x: network map, loss, gradients, balance (docs/theory.md#gradient,
docs/theory.md#conservation).

Weights are a list in input→output order: ``weights[0]`` is W_1 (= W21 for two layers), of shape
hidden[0] × n_in, and ``weights[-1]`` is W_D (= W32), of shape n_out × hidden[-1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidParameterError, NonFiniteError, ShapeError
from .problem import Problem, least_squares


def layer_shapes(n_in: int, hidden: Sequence[int], n_out: int) -> list[tuple[int, int]]:
    """Shapes of W_1 … W_D for widths n_in → hidden[0] → … → n_out (D = len(hidden) + 1)."""
    for k, h in enumerate(hidden):
        if int(h) < 1:
            raise InvalidParameterError(f"hidden width {h} must be at least 1", field=("network", "hidden", k),
                                        fix="give positive integer widths, or [] for linear regression")
    widths = [n_in, *[int(h) for h in hidden], n_out]
    return [(widths[l + 1], widths[l]) for l in range(len(widths) - 1)]


def check_weights(weights: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]],
                  field: tuple = ("init", "weights")) -> list[np.ndarray]:
    """Validate user-given weights against the network's shapes; return float64 copies."""
    try:
        count = None if isinstance(weights, (str, bytes)) else len(weights)
    except TypeError:  # a number or None instead of a list of matrices
        count = None
    if count != len(shapes):
        raise ShapeError(f"{'no list of' if count is None else count} weight matrices given, "
                         f"the network has {len(shapes)} layers",
                         field=field, fix="give one matrix per layer, input→output (weights[0] is W21)")
    out = []
    for l, (w, shape) in enumerate(zip(weights, shapes)):
        try:
            a = np.array(w, dtype=np.float64)
        except (TypeError, ValueError) as exc:  # ragged rows or non-numbers
            raise ShapeError(f"weights[{l}] is not a rectangular matrix of numbers", field=(*field, l),
                             fix=f"give a {shape[0]}×{shape[1]} matrix as a list of rows of equal length") from exc
        if a.shape != tuple(shape):
            raise ShapeError(f"weights[{l}] has shape {a.shape}, layer {l + 1} needs {tuple(shape)}",
                             field=(*field, l), fix=f"give a {shape[0]}×{shape[1]} matrix (rows = layer outputs)")
        if not np.all(np.isfinite(a)):
            i, j = np.argwhere(~np.isfinite(a))[0]
            raise NonFiniteError(f"weights[{l}] has a non-finite entry at [{i}][{j}]", field=(*field, l, int(i), int(j)),
                                 fix="replace NaN/Infinity with finite numbers")
        out.append(a)
    return out


def network_map(weights: Sequence[np.ndarray]) -> np.ndarray:
    """W = W_D ⋯ W_1, the end-to-end linear map (n_out × n_in)."""
    w = weights[0]
    for wl in weights[1:]:
        w = wl @ w
    return w


def fit_gap(problem: Problem, w: np.ndarray) -> np.ndarray | float:
    """‖W F − G‖²_F = L(W) − L_ls ≥ 0 for one map W (n_out × n_in) or a stack (T, n_out, n_in) (``least_squares``):
    how far W is from the least-squares fit, in the loss's units."""
    ls = least_squares(problem)
    r = np.asarray(w, dtype=np.float64) @ ls.f
    r -= ls.g
    gap = np.einsum("...ij,...ij->...", r, r)
    return float(gap) if gap.ndim == 0 else gap


def loss_without_sigma33(problem: Problem, w: np.ndarray) -> np.ndarray | float:
    """L − tr Σ33 = −2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ) = ‖W F − G‖² − ‖G‖²: the loss up to the data constant tr Σ33,
    all that is computable when Σ33 is unknown (docs/theory.md, "The loss")."""
    return fit_gap(problem, w) - least_squares(problem).g_norm2


def loss(problem: Problem, w: np.ndarray) -> np.ndarray | float | None:
    """L = (1/N) Σ ‖y − W x‖² = L_ls + ‖W F − G‖²_F ≥ 0 for one map or a stack; None when tr Σ33 is unknown.

    Equal to tr Σ33 − 2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ), but a sum of two non-negative terms: it cannot cancel to a
    negative number near a perfect fit (``problem.least_squares``).
    """
    residual = least_squares(problem).residual
    return None if residual is None else residual + fit_gap(problem, w)


def error_correlation(problem: Problem, w: np.ndarray) -> np.ndarray:
    """E = Σ31 − W Σ11, so that ∂L/∂W = −2 E for the end-to-end map."""
    return problem.sigma31 - w @ problem.sigma11


def gradients(problem: Problem, weights: Sequence[np.ndarray], weight_decay: float = 0.0) -> list[np.ndarray]:
    """∂L/∂W_l + γ W_l for every layer (docs/theory.md#gradient):

        −∂L/∂W_l = 2 (W_D ⋯ W_{l+1})ᵀ (Σ31 − W Σ11) (W_{l−1} ⋯ W_1)ᵀ

    For two layers this is −∂L/∂W32 = 2 (Σ31 − W32 W21 Σ11) W21ᵀ and −∂L/∂W21 = 2 W32ᵀ (Σ31 − W32 W21 Σ11).
    Some texts print Σ32ᵀ in the second; W32ᵀ is right, see docs/theory.md#gradient-typo (checked by finite
    differences in tests/dynamics/test_network.py). Weight decay γ adds the gradient of (γ/2) Σ_l ‖W_l‖²_F.
    """
    d = len(weights)
    # prefix[l] = W_l ⋯ W_1 (prefix[0] = I implicitly), suffix[l] = W_D ⋯ W_{l+1}
    prefix: list[np.ndarray | None] = [None] * (d + 1)
    for l in range(d):
        prefix[l + 1] = weights[0] if l == 0 else weights[l] @ prefix[l]
    e = error_correlation(problem, prefix[d])
    grads: list[np.ndarray] = [None] * d  # type: ignore[list-item]
    suffix = None  # W_D ⋯ W_{l+1}
    for l in range(d - 1, -1, -1):
        # .mT (not .T) so that stacks of weights (..., rows, cols) work too
        left = e if suffix is None else suffix.mT @ e
        g = -2.0 * (left if l == 0 else left @ prefix[l].mT)
        if weight_decay:
            g = g + weight_decay * weights[l]
        grads[l] = g
        suffix = weights[l] if suffix is None else suffix @ weights[l]
    return grads


def balance(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """W_{l+1}ᵀ W_{l+1} − W_l W_lᵀ for l = 1 … D−1: conserved under gradient flow
    (docs/theory.md#conservation)."""
    return [weights[l + 1].mT @ weights[l + 1] - weights[l] @ weights[l].mT for l in range(len(weights) - 1)]


def balance_drift(weights: Sequence[np.ndarray], initial_balance: Sequence[np.ndarray]) -> float:
    """max over layers and entries of |(W_{l+1}ᵀW_{l+1} − W_l W_lᵀ) − its initial value|; 0 for D = 1."""
    return max((float(np.max(np.abs(b - b0))) for b, b0 in zip(balance(weights), initial_balance)), default=0.0)


def gradient_norm(grads: Sequence[np.ndarray]) -> float:
    """sqrt(Σ_l ‖∂L/∂W_l‖²_F), the stopping criterion for ``converged``."""
    return float(np.sqrt(sum(float(np.sum(g * g)) for g in grads)))


@dataclass(frozen=True)
class VectorField:
    """The vector field GD and gradient flow follow, at given weights: the loss there and the gradient GD subtracts
    (docs/theory.md#gradient)."""

    loss: float | None                 # L, None when tr Σ33 is unknown
    loss_without_sigma33: float        # L − tr Σ33
    objective: float | None            # L + (γ/2) Σ_l ‖W_l‖²_F: the function whose gradient ``gradients`` is
    gradients: list[np.ndarray]        # ∂L/∂W_l + γ W_l, input→output
    gradient_norm: float               # sqrt(Σ_l ‖∂L/∂W_l + γ W_l‖²_F)


def vector_field(problem: Problem, weights: Sequence[np.ndarray], weight_decay: float = 0.0) -> VectorField:
    """L, ∂L/∂W_l + γW_l and its norm at ``weights`` (input→output; docs/theory.md#gradient):

        L = tr Σ33 − 2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ) = L_ls + ‖W F − G‖²,   W = W_D ⋯ W_1
        −∂L/∂W_l = 2 (W_D ⋯ W_{l+1})ᵀ (Σ31 − W Σ11) (W_{l−1} ⋯ W_1)ᵀ

    so that GD is W_l ← W_l − η·gradients[l] and gradient flow dW_l/dt = −gradients[l]. With weight decay γ
    the gradients are those of the objective L + (γ/2) Σ_l ‖W_l‖²_F.
    """
    w = network_map(weights)
    wo = loss_without_sigma33(problem, w)
    full = loss(problem, w)
    penalty = 0.5 * float(weight_decay) * sum(float(np.sum(wl * wl)) for wl in weights)
    grads = gradients(problem, weights, weight_decay)
    return VectorField(full, wo, None if full is None else full + penalty, grads, gradient_norm(grads))


def gd_stability_bound(problem: Problem, depth: int, weight_decay: float = 0.0) -> float:
    """Largest learning rate for which GD can settle at the global minimum (docs/theory.md#gd-stability).

    GD is stable near a minimum iff η (λ_max(H) + γ) < 2, H the Hessian of L there and γ the weight decay
    (the decay term (γ/2)‖W‖² adds γ to every Hessian eigenvalue), so η < 2 / (λ_max(H) + γ).
    D = 1: H = 2 Σ11, so η < 1/(λ_max(Σ11) + γ/2), exact for any Σ11 (the GD map is linear).
    D ≥ 2 with Σ11 = c I: H at the balanced minimum (mode strength u* = s/c, per-layer a* = u*^{1/D}) has
    λ_max = 2 c D (s/c)^{2−2/D}, so η < 1/(c D (s_max/c)^{2−2/D}) for γ = 0; for c = 1 this is
    1/(D s_max^{2−2/D}). With γ > 0 the minimum shrinks, so adding γ to the γ = 0 curvature
    errs on the safe side. For a general Σ11 the same expression with c = λ_max(Σ11) is an estimate, not
    a theorem. It is a local condition: a run above it diverges or oscillates near the minimum.
    """
    c = float(problem.sigma11_eigenvalues[-1])
    if depth == 1:
        curvature = 2.0 * c
    else:
        s = float(np.linalg.norm(problem.sigma31, 2))
        curvature = 2.0 * c * depth * (s / c) ** (2.0 - 2.0 / depth) if c > 0 and s > 0 else 0.0
    total = curvature + max(float(weight_decay), 0.0)
    return 2.0 / total if total > 0 else float("inf")
