"""The exact method: choose the closed form that applies to a problem and initial condition.

``exact_run`` / ``check_exact`` pick the closed form, or raise ``ExactNotApplicableError`` naming the failed
condition and its measured deviation. D = 1: shallow solution. D ≥ 2 with Σ11 = c·I and an aligned decoupled
init: per-mode formulas. D = 2, γ = 0, λ-balanced: chunked Riccati. The order and the conditions are
docs/theory.md#exact-method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ExactNotApplicableError, InvalidParameterError, ShapeError
from ..modes import mode_basis
from ..problem import Problem
from ._common import (
    _FIX_FLOW,
    ALIGN_RTOL,
    BALANCE_RTOL,
    NEAR_BALANCED_RTOL,
    WHITENING_RTOL,
)
from .decouple import DecoupledInit, balance_deviation, decouple
from .deep_modes import deep_balanced_mode
from .factorise import riccati_factors
from .riccati import (
    _check_riccati_dim,
    lambda_balance,
    riccati_flow,
    riccati_gradient_norm,
    riccati_subspace,
)
from .scalar_modes import two_layer_mode
from .shallow import shallow_solution


@dataclass
class ExactRun:
    """The exact solution at the requested times: network map, weights (None for Riccati), gradient norm."""

    times: np.ndarray
    product: np.ndarray
    weights: list[np.ndarray] | None
    gradient_norm: np.ndarray
    model: str
    assumptions: str
    w21_gram: np.ndarray | None = None     # (T, Ni, Ni) W21ᵀW21, exact for Riccati (whose weights are None)
    w32_gram: np.ndarray | None = None     # (T, No, No) W32W32ᵀ for Riccati, when asked for (the NTK)
    # the weights at the last record, input→output: for Riccati a factorisation of its state (``factorise``), so that
    # another run (a task switch, a continuation) can start from the network this one ends with
    final_weights: list[np.ndarray] | None = None


MODEL_SHALLOW = "shallow_closed_form"
MODEL_MODES = "saxe_decoupled_modes"
MODEL_DEEP = "saxe_deep_balanced_modes"
MODEL_RICCATI = "riccati_lambda_balanced"


@dataclass
class _Plan:
    model: str
    assumptions: str
    c: float = 1.0
    decoupled: DecoupledInit | None = None
    lam: float = 0.0


def _check_shapes(problem: Problem, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    if not ws:
        raise ShapeError("no weight matrices given", field=("init", "weights"), fix="give one matrix per layer")
    if ws[0].ndim != 2 or ws[0].shape[1] != problem.n_in or ws[-1].shape[0] != problem.n_out:
        raise ShapeError(f"the weights map {ws[0].shape[-1]} → {ws[-1].shape[0]} but the task is "
                         f"{problem.n_in} → {problem.n_out}", field=("init", "weights"),
                         fix="weights[0] needs n_in columns and weights[-1] n_out rows")
    for l in range(1, len(ws)):
        if ws[l].ndim != 2 or ws[l].shape[1] != ws[l - 1].shape[0]:
            raise ShapeError(f"weights[{l}] has {ws[l].shape[-1]} columns but weights[{l - 1}] has "
                             f"{ws[l - 1].shape[0]} rows", field=("init", "weights", l),
                             fix="consecutive layers must chain (rows of one = columns of the next)")
    return ws


def _plan(problem: Problem, weights: Sequence[np.ndarray], weight_decay: float) -> _Plan:
    ws = _check_shapes(problem, weights)
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise InvalidParameterError(f"weight_decay must be ≥ 0, got {weight_decay}",
                                    field=("training", "weight_decay"), fix="give weight_decay ≥ 0 (0 = none)")
    d = len(ws)
    if d == 1:
        return _Plan(MODEL_SHALLOW, "linear regression (D = 1): W(t) = W* + (W0 − W*) expm(−(2Σ11 + γI) t), "
                                    "exact for any Σ11 and weight decay (docs/theory.md#exact-gd-shallow)")
    c, wdev = problem.whitening_deviation()
    if not (c > 0 and wdev <= WHITENING_RTOL * c):
        raise ExactNotApplicableError(
            f"exact needs Σ11 = c·I for a network with hidden layers; max |Σ11 − c·I| = {wdev:.3g} "
            f"with c = {c:.6g} (tolerance {WHITENING_RTOL:g}·c)", field=("data", "sigma11"),
            fix=f"{_FIX_FLOW}; or whiten the inputs")
    dec = decouple(problem, ws)
    if weight_decay > 0:
        if d >= 3:
            raise ExactNotApplicableError(
                f"exact with weight decay covers depth 1 and balanced two-layer modes; this network has depth {d}",
                field=("training", "weight_decay"), fix=f"{_FIX_FLOW}; or set weight_decay to 0")
        if dec.deviation > ALIGN_RTOL:
            raise ExactNotApplicableError(
                f"exact with weight decay needs an init aligned with Σ31 (W21 = R A Vᵀ, W32 = U B Rᵀ); "
                f"misalignment {dec.deviation:.3g} (tolerance {ALIGN_RTOL:g})", field=("init",),
                fix=f"{_FIX_FLOW}; or use the aligned init, or weight_decay 0")
        a, bb = dec.amps[:, 0], dec.amps[:, 1]
        scale = max(float(np.max(a * a + bb * bb)), 1e-300)
        imb = float(np.max(np.abs(a * a - bb * bb))) / scale
        if imb > NEAR_BALANCED_RTOL:
            raise ExactNotApplicableError(
                f"exact with weight decay needs balanced modes |a| = |b|; relative imbalance {imb:.3g} "
                f"(tolerance {NEAR_BALANCED_RTOL:g})", field=("init",),
                fix=f"{_FIX_FLOW}; or use a balanced aligned init")
        return _Plan(MODEL_MODES, f"Σ11 = c·I (c = {c:.6g}), aligned balanced two-layer init (misalignment "
                                  f"{dec.deviation:.2g}), weight decay γ = {weight_decay:g}: per-mode logistic "
                                  f"with s − σγ/2 (docs/theory.md#saxe-balanced)", c=c, decoupled=dec)
    if dec.deviation <= ALIGN_RTOL:
        if d == 2:
            return _Plan(MODEL_MODES, f"Σ11 = c·I (c = {c:.6g}), init aligned with Σ31 (misalignment "
                                      f"{dec.deviation:.2g}): exact per-mode solutions, balanced/anti-balanced/"
                                      f"unbalanced (docs/theory.md#saxe-two-layer)", c=c, decoupled=dec)
        return _Plan(MODEL_DEEP, f"Σ11 = c·I (c = {c:.6g}), balanced init aligned with Σ31 (misalignment "
                                 f"{dec.deviation:.2g}): exact per-mode solutions of du/dt = 2D|u|^(2−2/D)(s − cu) "
                                 f"(docs/theory.md#saxe-deep)", c=c, decoupled=dec)
    if d >= 3:
        bdev = balance_deviation(ws)
        what = (f"imbalance {bdev:.3g}" if bdev > ALIGN_RTOL else
                f"balanced, but misaligned with Σ31 by {dec.deviation:.3g}")
        raise ExactNotApplicableError(
            f"exact for depth {d} needs a balanced init aligned with Σ31 (W_l = R_(l+1) diag(a) R_lᵀ); {what} "
            f"(tolerance {ALIGN_RTOL:g})", field=("init",), fix=f"{_FIX_FLOW}; or use the aligned init")
    lam, bdev = lambda_balance(ws[0], ws[1])
    if bdev > BALANCE_RTOL:
        raise ExactNotApplicableError(
            f"exact for two layers needs an init aligned with Σ31 (misalignment {dec.deviation:.3g}) or λ-balanced "
            f"W32ᵀW32 − W21W21ᵀ = λI (deviation {bdev:.3g}); tolerances {ALIGN_RTOL:g}, {BALANCE_RTOL:g}",
            field=("init",), fix=f"{_FIX_FLOW}; or use the aligned or lambda_balanced init")
    ni, nh, no = problem.n_in, ws[0].shape[0], problem.n_out
    if lam > 0 and no < nh:
        raise ExactNotApplicableError(f"λ = {lam:.6g} > 0 needs n_out ≥ hidden width; {no} < {nh}",
                                      field=("init", "lambda"), fix="use λ ≤ 0 or a narrower hidden layer")
    if lam < 0 and ni < nh:
        raise ExactNotApplicableError(f"λ = {lam:.6g} < 0 needs n_in ≥ hidden width; {ni} < {nh}",
                                      field=("init", "lambda"), fix="use λ ≥ 0 or a narrower hidden layer")
    _check_riccati_dim(riccati_subspace(mode_basis(problem), ws[0], ws[1]))
    return _Plan(MODEL_RICCATI, f"Σ11 = c·I (c = {c:.6g}), λ-balanced two-layer init (λ = {lam:.6g}, deviation "
                                f"{bdev:.2g}): exact matrix Riccati solution (docs/theory.md#riccati), no "
                                f"alignment needed; only W32W21 and the Gram blocks W21ᵀW21, W32W32ᵀ are "
                                f"determined", c=c, lam=lam)


def check_exact(problem: Problem, weights0: Sequence[np.ndarray], weight_decay: float = 0.0) -> str:
    """Which closed form ``exact_run`` would use (cheap), or the ``ExactNotApplicableError`` it would raise."""
    return _plan(problem, weights0, weight_decay).model


def decoupled_flow(dec: DecoupledInit, times, c: float, weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(amplitudes (T, m, D), strengths (T, m)) of every channel of a decoupled init under gradient flow."""
    t = np.asarray(times, dtype=np.float64)[:, None]
    if dec.depth == 2:
        a, b = two_layer_mode(t, dec.s[None], dec.amps[None, :, 0], dec.amps[None, :, 1], c, weight_decay)
        return np.stack([a, b], axis=2), a * b
    u = deep_balanced_mode(t, dec.s[None], dec.u0[None], dec.depth, c)
    mag = np.abs(u) ** (1.0 / dec.depth)
    amps = np.sign(dec.amps)[None] * mag[:, :, None]
    return amps, u


def _gradient_norm_stack(problem: Problem, weights: Sequence[np.ndarray], weight_decay: float) -> np.ndarray:
    """sqrt(Σ_l ‖∂L/∂W_l + γW_l‖²) for stacks (T, rows, cols) of weights (network.gradients, vectorised)."""
    d = len(weights)
    prefix = [None, weights[0]]
    for l in range(1, d):
        prefix.append(weights[l] @ prefix[l])
    e = problem.sigma31[None] - prefix[d] @ problem.sigma11
    total = np.zeros(weights[0].shape[0])
    suffix = None
    for l in range(d - 1, -1, -1):
        left = e if suffix is None else np.swapaxes(suffix, 1, 2) @ e
        g = -2.0 * (left if l == 0 else left @ np.swapaxes(prefix[l], 1, 2))
        if weight_decay:
            g = g + weight_decay * weights[l]
        total += np.einsum("tij,tij->t", g, g)
        suffix = weights[l] if suffix is None else suffix @ weights[l]
    return np.sqrt(total)


def exact_run(problem: Problem, weights0: Sequence[np.ndarray], times: np.ndarray,
              weight_decay: float = 0.0, *, w32_gram: bool = False) -> ExactRun:
    """Evaluate the applicable closed form at ``times`` (see ``check_exact``; raises ExactNotApplicableError).

    ``w32_gram``: also return W32W32ᵀ(t) = P(t)[Ni:, Ni:] of the Riccati solution (n_out × n_out per record, so only
    on request: the NTK needs it, ``kernel.kernel_record``).

    D = 1: shallow solution (any Σ11, any γ). D ≥ 2 with Σ11 = cI and an aligned decoupled init: per-mode
    formulas (D = 2 any a, b per mode; D ≥ 3 balanced; γ > 0 only for balanced D = 2), weights reconstructed
    exactly. D = 2, γ = 0, λ-balanced (aligned or not): chunked Riccati, weights None. Every model returns
    ``final_weights``, the weights at the last record (Riccati: a factorisation of its state, ``factorise``).
    """
    plan = _plan(problem, weights0, weight_decay)
    ws = _check_shapes(problem, weights0)
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or np.any(~np.isfinite(t)) or np.any(t < 0):
        raise InvalidParameterError("times must be a 1-D array of finite values ≥ 0", field=("record", "times"),
                                    fix="give times between 0 and t_max")
    if plan.model == MODEL_SHALLOW:
        w = shallow_solution(problem, ws[0], t, weight_decay=weight_decay)
        weights = [w]
        return ExactRun(t, w, weights, _gradient_norm_stack(problem, weights, weight_decay), plan.model,
                        plan.assumptions, final_weights=_last(weights))
    if plan.model == MODEL_RICCATI:
        sol = riccati_flow(problem.sigma31, ws[0], ws[1], t, plan.c, basis=mode_basis(problem))
        return ExactRun(t, sol.product, None, riccati_gradient_norm(problem, sol), plan.model,
                        plan.assumptions, sol.w21_gram, sol.w32_gram if w32_gram else None,
                        final_weights=riccati_factors(sol, ws[0].shape[0]) if t.size else None)
    dec = plan.decoupled
    amps, u = decoupled_flow(dec, t, plan.c, weight_decay)
    weights = dec.weights_at(amps)
    product = dec.product_at(u)
    return ExactRun(t, product, weights, _gradient_norm_stack(problem, weights, weight_decay), plan.model,
                    plan.assumptions, final_weights=_last(weights))


def _last(weights: list[np.ndarray]) -> list[np.ndarray] | None:
    """Each layer at the last record (copies), None without records."""
    return [np.array(w[-1]) for w in weights] if weights and len(weights[0]) else None
