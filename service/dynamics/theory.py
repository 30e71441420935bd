"""Theory overlay: the mode strengths a closed form predicts for any run (exact, flow or GD), and its learning times.

For a run from ``weights0`` with a given method, ``theory_overlay`` returns the predicted strengths
u_α(t) = u_αᵀ W(t) v_α on ``mode_basis(problem)`` (k = min(n_out, n_in) modes) at the run's record times,
naming the model, whether its assumptions hold exactly, and the predicted learning time of each mode: the time
a mode's strength first reaches half its strength at the optimum (docs/theory.md#optimum: s/c for the modes within the
bottleneck rank when Σ11 = cI, 0 otherwise → NaN), the definition the measured learning times use
(``learning_time``).

Cases, first match wins:

* D = 1: the shallow solution (docs/theory.md#exact-gd-shallow) — the exact GD map for GD, the flow formula
  otherwise. Exact.
* D ≥ 2, Σ11 = c·I, init aligned with Σ31 (see ``exact.decouple``): per-mode solutions. GD: the exact per-mode
  GD map (docs/theory.md#exact-gd-modes, for any per-layer amplitudes and weight decay). Flow/exact: the mode
  solutions of docs/theory.md#saxe-two-layer and docs/theory.md#saxe-deep (γ > 0 only for balanced two-layer
  modes). Exact.
* D = 2, Σ11 = c·I, λ-balanced (aligned or not), γ = 0: the chunked Riccati solution (docs/theory.md#riccati);
  exact for flow,
  approximate (O(η)) for GD. It runs in an invariant subspace of dimension ≤ 2·rank Σ31 + 2·hidden
  (``exact.RiccatiSubspace``); past ``exact.riccati.RICCATI_MAX_DIM`` it is skipped for the next case, which then says so.
* D ≥ 2, Σ11 ≈ c·I within APPROX_WHITENING_RTOL: Saxe's balanced formula per mode from an effective initial
  strength (small random init, approximately decoupled). Approximate.
* anything else (e.g. Σ11 far from c·I with hidden layers): None.

Learning times are the first time the theory curve reaches half the strength at the optimum: closed forms where a
mode is one channel, a bisected crossing on the exact curve otherwise (shallow with general Σ11, rotated degenerate
blocks, Riccati). For GD, which moves in steps, it is η·k at the first step k at which the map is there: the exact
per-mode GD maps track it step by step (NaN if it is not reached within the run's steps); the shallow GD map's
continuous-k extension is rounded up to that step (NaN when some 1 − η(2σ_j + γ) ≤ 0).

Cost: with hidden layers nothing here forms an n_out × n_out or n_in × n_in matrix (beyond Σ11 itself): the mode
basis is thin, the alignment test works with projections (``exact.decouple``) and the balance test with
hidden-size Grams, so tall tasks (few inputs, many output features) and wide ones cost O(n_out·n_in·(k + hidden)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import exact as ex
from .exact import riccati
from .generalization import mode_loss_theory
from .learning_time import ZERO_RTOL as LEARNING_ZERO_RTOL
from .learning_time import targets as learning_targets
from .methods import Exact, GradientDescent, GradientFlow
from .modes import bottleneck, mode_basis, mode_strengths, optimum
from .problem import Problem
from .trajectory import LossTheory

# Σ11 within this relative distance of c·I still gets the (approximate) per-mode overlay: the mode coupling
# through Σ11 − cI is then a ≤10 % perturbation of the rates. Beyond it no per-mode picture is offered.
APPROX_WHITENING_RTOL = 0.1
# A strength at the optimum at or below this fraction of the largest one is "not learned": its half is NaN.
FINAL_ZERO_RTOL = LEARNING_ZERO_RTOL
# Dense grid for numerical first crossings (shallow with general Σ11, Riccati, rotated degenerate blocks).
CROSSING_GRID = 600


@dataclass
class TheoryOverlay:
    """Predicted mode strengths (T, k) at the run's records, the model's name, whether it is exact, its
    assumptions in words, and the predicted learning time of each mode (k,), NaN where undefined."""

    strength: np.ndarray
    model: str
    exact: bool
    assumptions: str
    learning_time: np.ndarray


# ------------------------------------------------------------------------------------------------
# first crossings


def _targets(final: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(half of the strength at the optimum, mask of modes with a learning time): the measured times' rule."""
    return learning_targets(final)


def _reached(u, target):
    sgn = np.sign(target)
    return (u * sgn) >= (target * sgn)


def _first_crossing(grid: np.ndarray, values: np.ndarray, target: np.ndarray, valid: np.ndarray,
                    refine: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """First time each mode's curve reaches its target on a sorted ``grid`` (values (G, k)).

    Between the two grid points around the crossing the time is refined by bisection on
    ``refine(t, modes, j_lo)`` (the exact curve of those modes at those times; j_lo is the index of the grid point
    below) when given, else linearly interpolated. NaN if not reached.
    """
    k = values.shape[1]
    out = np.full(k, np.nan)
    with np.errstate(invalid="ignore"):
        hit = _reached(values, target[None]) & np.isfinite(values)
    hit &= valid[None]
    ok = hit.any(axis=0)
    first = np.argmax(hit, axis=0)
    at0 = ok & (first == 0)
    out[at0] = grid[0]
    idx = np.flatnonzero(ok & (first > 0))
    if idx.size == 0:
        return out
    lo = grid[first[idx] - 1].astype(np.float64)
    hi = grid[first[idx]].astype(np.float64)
    if refine is None:
        u0, u1 = values[first[idx] - 1, idx], values[first[idx], idx]
        out[idx] = lo + (target[idx] - u0) / (u1 - u0) * (hi - lo)
        return out
    j_lo = first[idx] - 1
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        got = _reached(refine(mid, idx, j_lo), target[idx])
        hi = np.where(got, mid, hi)
        lo = np.where(got, lo, mid)
        if np.all(hi - lo <= 2e-16 * np.maximum(hi, 1e-300)):
            break
    out[idx] = hi
    return out


# ------------------------------------------------------------------------------------------------
# the cases


def _shallow(problem: Problem, w0: np.ndarray, method, times, steps, final) -> TheoryOverlay:
    """D = 1 (docs/theory.md#exact-gd-shallow): strengths u_αᵀ W(t) v_α = Σ_j A_αj decay_j + B_αj drive_j, per
    eigen-direction j of Σ11."""
    gamma = method.weight_decay
    basis = mode_basis(problem)
    is_gd = isinstance(method, GradientDescent)
    eta = method.learning_rate if is_gd else None
    terms = ex._shallow_terms(problem, w0, gamma)
    qv = terms.q.T @ basis.v                                   # (n_in, k): q_jᵀ v_α
    a_coef = (basis.u.T @ terms.w0q) * qv.T                    # (k, n_in)
    b_coef = 2.0 * (basis.u.T @ terms.s31q) * qv.T
    if is_gd:
        _, decay, drive = ex.shallow_coefficients(problem, w0, learning_rate=eta, steps=steps, weight_decay=gamma)
    else:
        _, decay, drive = ex.shallow_coefficients(problem, w0, times, weight_decay=gamma)
    with np.errstate(over="ignore", invalid="ignore"):
        strength = decay @ a_coef.T + drive @ b_coef.T
    strength = np.where(np.isfinite(strength), strength, np.nan)
    # learning time on continuous time: flow rates α_j; GD's map is e^{−r_j t} with r_j = −ln(1 − ηα_j)/η when
    # every ρ_j = 1 − ηα_j > 0 (otherwise the map oscillates and "time to half" is not defined here).
    rates = terms.rates
    if is_gd:
        rho = 1.0 - eta * rates
        decay_rates = -np.log1p(-eta * rates) / eta if np.all(rho > 0) else None
    else:
        decay_rates = rates
    target, valid = _targets(final)
    lt = np.full(final.shape, np.nan)
    if decay_rates is not None:
        def curve(t, modes=None):
            t = np.asarray(t, dtype=np.float64)
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                dec = np.exp(-np.outer(t, decay_rates))
                drv = np.where(rates != 0, (1.0 - dec) / np.where(rates != 0, rates, 1.0), t[:, None])
            if modes is None:
                return dec @ a_coef.T + drv @ b_coef.T
            return np.einsum("mj,mj->m", dec, a_coef[modes]) + np.einsum("mj,mj->m", drv, b_coef[modes])
        pos = decay_rates[decay_rates > 0]
        horizon = 60.0 / float(pos.min()) if pos.size else max(float(np.max(times, initial=0.0)), 1.0)
        grid = _union_grid(horizon, float(pos.max()) if pos.size else 1.0 / horizon)
        lt = _first_crossing(grid, curve(grid), target, valid, refine=lambda t, m, j: curve(t, m))
        if is_gd:  # the map's continuous-k extension agrees with it at whole steps: the first step at the target
            lt = eta * np.ceil(lt / eta - 1e-9)
    model = "shallow_gd_map" if is_gd else ex.MODEL_SHALLOW
    what = ("exact GD map W_k = W* + (W0 − W*)(I − η(2Σ11 + γI))^k" if is_gd else
            "W(t) = W* + (W0 − W*) expm(−(2Σ11 + γI) t)")
    return TheoryOverlay(strength, model, True,
                         f"linear regression (D = 1): {what}, any Σ11 (docs/theory.md#exact-gd-shallow)", lt)


def _union_grid(horizon: float, fastest: float) -> np.ndarray:
    """Times in [0, horizon]: uniform plus geometric from the fastest time scale, so that both early
    exponentials and late sigmoids are resolved."""
    lo = min(1e-3 / max(fastest, 1e-300), horizon * 1e-6)
    g = np.concatenate([[0.0], np.linspace(0.0, horizon, CROSSING_GRID)[1:], np.geomspace(lo, horizon, CROSSING_GRID)])
    return np.unique(g)


def _decoupled(problem: Problem, dec: ex.DecoupledInit, c: float, method, times, steps, final,
               gamma: float) -> TheoryOverlay:
    """Aligned decoupled init: per-channel closed forms (flow) or the exact per-mode GD map.

    Strengths on mode_basis are Σ_ch M[α, ch] u_ch + resid (M is the identity up to signs except in rotated
    degenerate blocks and the null space). GD learning times come from the map itself, within the run's steps.
    """
    m_mat, resid = dec.strength_matrix(problem)
    target, valid = _targets(final)
    is_gd = isinstance(method, GradientDescent)
    d = dec.depth
    if is_gd:
        rows, cols = np.nonzero(np.abs(m_mat) > 1e-15)
        coefs = m_mat[rows, cols]
        tg = np.where(valid, target, np.nan)
        steps = np.asarray(steps, dtype=np.int64)
        order = np.argsort(steps, kind="stable")
        amps, cross = ex._gd_modes_kernel(np.ascontiguousarray(dec.amps), np.ascontiguousarray(dec.s), float(c),
                                          float(method.learning_rate), float(gamma),
                                          np.ascontiguousarray(steps[order]), rows.astype(np.int64),
                                          cols.astype(np.int64), np.ascontiguousarray(coefs),
                                          np.ascontiguousarray(resid), np.ascontiguousarray(tg))
        u = np.empty((steps.size, dec.s.size))
        u[order] = np.prod(amps, axis=2)
        strength = u @ m_mat.T + resid[None]
        lt = method.learning_rate * cross
        return TheoryOverlay(strength, "gd_map_decoupled_modes", True,
                             f"Σ11 = c·I (c = {c:.6g}), init aligned with Σ31 (misalignment {dec.deviation:.2g}): GD "
                             f"keeps the modes decoupled, exact per-mode map a_l ← a_l(1 − ηγ) + 2η Π_(m≠l) a_m "
                             f"(s − c Π a) (docs/theory.md#exact-gd-modes)", lt)
    _, u = ex.decoupled_flow(dec, times, c, gamma)
    strength = u @ m_mat.T + resid[None]
    lt = np.full(final.shape, np.nan)
    # one channel per mode (the usual case): analytic learning times
    single = (np.sum(np.abs(m_mat) > 1e-12, axis=1) == 1) & (np.abs(np.max(np.abs(m_mat), axis=1) - 1.0) < 1e-9)
    ch_of = np.argmax(np.abs(m_mat), axis=1)
    if single.any():
        a = np.flatnonzero(single & valid)
        ch = ch_of[a]
        # the mode's strength is ±u_ch (sign of the frame pairing) plus a round-off residual
        sgn = np.sign(m_mat[a, ch])
        tgt = sgn * (target[a] - resid[a])
        lt[a] = _channel_reach(dec, ch, tgt, c, gamma)
    rest = np.flatnonzero(~single & valid)
    if rest.size:
        finite_times = _channel_reach(dec, np.arange(dec.s.size), 0.999 * _channel_limits(dec, c, gamma), c, gamma)
        finite_times = finite_times[np.isfinite(finite_times)]
        horizon = 2.0 * float(np.max(finite_times)) if finite_times.size else max(float(np.max(times, initial=0.0)), 1.0)
        grid = _union_grid(horizon, 4.0 * float(np.max(dec.s, initial=1.0)) * max(c, 1e-300))

        def curve(t, modes=None):
            uu = ex.decoupled_flow(dec, t, c, gamma)[1]
            if modes is None:
                return uu @ m_mat.T + resid[None]
            return np.einsum("mc,mc->m", uu, m_mat[modes]) + resid[modes]

        mask = np.zeros(final.shape, dtype=bool)
        mask[rest] = True
        got = _first_crossing(grid, curve(grid), target, mask, refine=lambda t, m, j: curve(t, m))
        lt[rest] = got[rest]
    model = ex.MODEL_MODES if d == 2 else ex.MODEL_DEEP
    detail = ("balanced/anti-balanced/unbalanced two-layer modes (docs/theory.md#saxe-two-layer)" if d == 2 else
              "balanced modes du/dt = 2D|u|^(2−2/D)(s − cu) (docs/theory.md#saxe-deep)")
    wd = f", weight decay γ = {gamma:g} (s → s − σγ/2)" if gamma else ""
    return TheoryOverlay(strength, model, True,
                         f"Σ11 = c·I (c = {c:.6g}), init aligned with Σ31 (misalignment {dec.deviation:.2g}){wd}: "
                         f"exact {detail}", lt)


def _channel_limits(dec: ex.DecoupledInit, c: float, gamma: float) -> np.ndarray:
    if dec.depth == 2:
        return ex.two_layer_limit(dec.s, dec.amps[:, 0], dec.amps[:, 1], c, gamma)
    return ex.deep_limit(dec.s, dec.u0, dec.depth, c)


def _channel_reach(dec: ex.DecoupledInit, ch: np.ndarray, target: np.ndarray, c: float, gamma: float) -> np.ndarray:
    """First time channel ``ch`` reaches ``target`` (0 if already there, NaN if never)."""
    u0 = dec.u0[ch]
    if dec.depth == 2:
        return ex._reach(ex.learning_time_two_layer, target, u0, dec.s[ch], dec.amps[ch, 0], dec.amps[ch, 1], c,
                         gamma)
    return ex._reach(lambda tg, *a: ex.learning_time_deep(tg, *a), target, u0, dec.s[ch], u0, dec.depth, c)


# Horizon for the Riccati learning-time search when the run ends earlier: the search stops at convergence,
# so looking this far costs no more than the convergence itself.
RICCATI_PROBE_TIME = 1e4


def _riccati(problem: Problem, ws, c: float, lam: float, bdev: float, method, times, final,
             space: ex.RiccatiSubspace) -> TheoryOverlay:
    """λ-balanced two layers: chunked Riccati (docs/theory.md#riccati) in its reduced invariant subspace ``space``;
    GD gets the flow at t = η·step (O(η))."""
    basis = mode_basis(problem)
    ev = ex.RiccatiEvaluator(problem.sigma31, ws[0], ws[1], c, basis=basis, space=space)
    ni = problem.n_in
    # u_αᵀ W v_α with W = (O P' Oᵀ)[Ni:, :Ni]/c, projected without forming P in the original basis (O is thin)
    left = ev.o[ni:, :].T @ basis.u
    right = ev.o[:ni, :].T @ basis.v

    def project_p(pp):
        return np.einsum("na,nm,ma->a", left, pp, right) / c

    def project_q(qq):                       # the same from the square root P' = Q'Q'ᵀ
        return np.einsum("ah,ah->a", left.T @ qq, right.T @ qq) / c

    strength = np.array(ev.evaluate(times, project_p)).reshape(len(times), -1)
    target, valid = _targets(final)
    t_cap = max(float(np.max(times, initial=0.0)), RICCATI_PROBE_TIME)
    lt = ev.first_crossings(project_q, target, valid, t_cap)
    gd = isinstance(method, GradientDescent)
    assumptions = (f"Σ11 = c·I (c = {c:.6g}), λ-balanced two-layer init (λ = {lam:.6g}, deviation {bdev:.2g}): "
                   "matrix Riccati solution of gradient flow (docs/theory.md#riccati), no alignment needed")
    if gd:
        assumptions += f"; evaluated at t = η·step for GD, which differs by O(η) from the flow (η = {method.learning_rate:g})"
    return TheoryOverlay(strength, ex.MODEL_RICCATI, not gd, assumptions, lt)


def _small_init(problem: Problem, ws, c: float, wdev: float, method, times, final, gamma: float) -> TheoryOverlay | None:
    """Small random init, Σ11 ≈ cI: Saxe's balanced mode formula per mode from an effective initial strength.

    D = 2: u_eff,α = ‖W21 v_α + W32ᵀ u_α‖²/4. While the weights are small, p = W21 v_α and q = W32ᵀ u_α obey
    p' = 2s q, q' = 2s p, so p + q grows like e^{2st}, p − q decays, and u_α = qᵀp → (‖p0 + q0‖²/4) e^{4st}: the
    balanced curve with that u0 (for an aligned balanced init it is u0 itself; for anti-balanced it is 0).
    D ≥ 3 (γ = 0): u0 where it exceeds the RMS of the entries of Uᵀ W0 V, else that RMS (a heuristic scale for
    modes whose initial projection is negative or tiny). Modes beyond the bottleneck width, or with s = 0, are
    predicted not to be learned (the s = 0 formula from their actual initial strength).
    """
    d = len(ws)
    if d >= 3 and gamma > 0:
        return None
    basis = mode_basis(problem)
    k = basis.s.size
    hidden = [w.shape[0] for w in ws[:-1]]
    r = bottleneck(problem, hidden)
    w0 = ws[0]
    for wl in ws[1:]:
        w0 = wl @ w0
    u0 = mode_strengths(w0, basis)
    s_max = float(basis.s[0]) if k else 0.0
    learnable = (np.arange(k) < r) & (basis.s > ex.S_ZERO_RTOL * s_max) & (s_max > 0)
    t = np.asarray(times, dtype=np.float64)[:, None]
    if d == 2:
        p = ws[0] @ basis.v
        q = ws[1].T @ basis.u
        u_eff = np.sum((p + q) ** 2, axis=0) / 4.0
        s_use = np.where(learnable, basis.s, 0.0)
        start = np.where(learnable, u_eff, u0)
        strength = ex.balanced_mode(t, s_use[None], start[None], c, gamma)
        target, valid = _targets(final)
        a0 = np.sqrt(np.abs(start))
        lt = np.where(valid, ex._reach(ex.learning_time_two_layer, target, start, s_use, a0, np.sign(start) * a0, c,
                                       gamma), np.nan)
        how = "u0 = ‖W21 v_α + W32ᵀ u_α‖²/4 (the growing solution of the linearised dynamics)"
        model = "saxe_small_init"
    else:
        proj = basis.u.T @ w0 @ basis.v
        rms = float(np.sqrt(np.mean(proj * proj))) if proj.size else 0.0
        u_eff = np.where(u0 > rms, u0, rms)
        s_use = np.where(learnable, basis.s, 0.0)
        start = np.where(learnable, u_eff, u0)
        strength = ex.deep_balanced_mode(t, s_use[None], start[None], d, c)
        target, valid = _targets(final)
        lt = np.where(valid, ex._reach(lambda tg, *a: ex.learning_time_deep(tg, *a), target, start, s_use, start, d, c),
                      np.nan)
        how = f"u0 = the initial strength where it exceeds the RMS of Uᵀ W0 V ({rms:.3g}), else that RMS"
        model = "saxe_deep_small_init"
    opt_norm = float(np.linalg.norm(final)) if final.size else 0.0
    scale = float(np.linalg.norm(u0)) / opt_norm if opt_norm > 0 else float("nan")
    assumptions = (f"small random init, approximately decoupled: Saxe's balanced mode formula per mode "
                   f"(docs/theory.md#small-init) with {how}; Σ11 ≈ c·I (c = {c:.6g}, max deviation {wdev:.2g}); "
                   f"modes beyond the bottleneck width {r} are predicted unlearned; accuracy degrades as the init "
                   f"grows (‖u(0)‖/‖u*‖ = {scale:.2g})")
    if gamma:
        assumptions += f"; weight decay γ = {gamma:g} as s → s − γ/2"
    if isinstance(method, GradientDescent):
        assumptions += f"; flow formula at t = η·step, O(η) from GD (η = {method.learning_rate:g})"
    return TheoryOverlay(strength, model, False, assumptions, lt)


# ------------------------------------------------------------------------------------------------


def theory_overlay(problem: Problem, weights0: Sequence[np.ndarray], method: GradientDescent | GradientFlow | Exact,
                   times: np.ndarray, steps: np.ndarray | None) -> TheoryOverlay | None:
    """The theory curve for a run (see the module docstring for the cases); None where no model applies.

    ``times`` are the record times (t = η·step for GD) and ``steps`` the GD step numbers (None otherwise; for GD
    they are derived from the times if missing).
    """
    ws = ex._check_shapes(problem, weights0)
    times = np.asarray(times, dtype=np.float64)
    gamma = float(method.weight_decay)
    is_gd = isinstance(method, GradientDescent)
    if is_gd and steps is None:
        steps = np.rint(times / method.learning_rate).astype(np.int64)
    basis = mode_basis(problem)
    hidden = [w.shape[0] for w in ws[:-1]]
    final = mode_strengths(optimum(problem, hidden).product, basis)
    d = len(ws)
    if d == 1:
        return _shallow(problem, ws[0], method, times, steps, final)
    c, wdev = problem.whitening_deviation()
    if not (c > 0):
        return None
    skipped = None
    if wdev <= ex.WHITENING_RTOL * c:
        dec = ex.decouple(problem, ws)
        if dec.deviation <= ex.ALIGN_RTOL:
            if is_gd:
                return _decoupled(problem, dec, c, method, times, steps, final, gamma)
            balanced_two = d == 2 and np.all(np.abs(dec.amps[:, 0] ** 2 - dec.amps[:, 1] ** 2)
                                             <= ex.NEAR_BALANCED_RTOL * np.maximum(np.abs(dec.u0), 1e-300))
            if gamma == 0 or balanced_two:
                return _decoupled(problem, dec, c, method, times, steps, final, gamma)
        if d == 2 and gamma == 0:
            lam, bdev = ex.lambda_balance(ws[0], ws[1])
            nh = ws[0].shape[0]
            dims_ok = (lam == 0) or (lam > 0 and problem.n_out >= nh) or (lam < 0 and problem.n_in >= nh)
            if bdev <= ex.BALANCE_RTOL and dims_ok:
                space = ex.riccati_subspace(basis, ws[0], ws[1])
                if space.dim <= riccati.RICCATI_MAX_DIM:
                    return _riccati(problem, ws, c, lam, bdev, method, times, final, space)
                skipped = (f"the init is λ-balanced (λ = {lam:.6g}) but the exact Riccati solution was not evaluated: "
                           f"its invariant subspace has {space.dim} dimensions, more than {ex.RICCATI_MAX_DIM}")
    if wdev <= APPROX_WHITENING_RTOL * c:
        ov = _small_init(problem, ws, c, wdev, method, times, final, gamma)
        if ov is not None and skipped:
            ov.assumptions += "; " + skipped
        return ov
    return None


# ------------------------------------------------------------------------------------------------
# train and test loss from the mode theory (Lampinen & Ganguli 2019; generalization.mode_loss_theory)

# W0 within this relative distance of Σ_α u_α(0) û_α v̂_αᵀ (the init lies in the span of the diagonal mode pairs,
# as an aligned init's does) lets an exact mode theory give the losses exactly too.
MODE_SPAN_RTOL = 1e-9


def loss_theory(problem: Problem, weights0: Sequence[np.ndarray], overlay: TheoryOverlay | None,
                basis=None) -> LossTheory | None:
    """L(t) and L_test(t) predicted from the mode strengths' theory ``overlay`` (generalization module docstring):
    W(t) = Σ_α u_α(t) û_α v̂_αᵀ with Σ11 = c·I. None without a mode theory, with Σ11 farther from c·I than
    APPROX_WHITENING_RTOL, or with neither tr Σ33 nor test data (nothing to predict).

    Exact when the mode theory is exact, Σ11 = c·I to round-off and W0 lies in the span of the diagonal mode
    pairs (an aligned init); otherwise as approximate as the mode theory, plus the part of W(t) off that span.
    """
    if overlay is None or (problem.sigma33_trace is None and problem.test is None):
        return None
    c, wdev = problem.whitening_deviation()
    if not (c > 0) or wdev > APPROX_WHITENING_RTOL * c:
        return None
    basis = basis if basis is not None else mode_basis(problem)
    train, test = mode_loss_theory(problem, basis, overlay.strength, c)
    w0 = weights0[0]
    for wl in weights0[1:]:
        w0 = wl @ w0
    u0 = mode_strengths(w0, basis)
    off_span = float(np.linalg.norm(w0 - (basis.u * u0) @ basis.v.T))
    in_span = off_span <= MODE_SPAN_RTOL * max(float(np.linalg.norm(w0)), 1e-300)
    exact = bool(overlay.exact and in_span and wdev <= ex.WHITENING_RTOL * c)
    assumptions = (f"W(t) = Σ_α u_α(t) û_α v̂_αᵀ on the SVD of the training Σ31, u_α(t) from {overlay.model} "
                   f"({'exact' if overlay.exact else 'approximate'}); Σ11 = c·I (c = {c:.6g}, max deviation "
                   f"{wdev:.2g}); L = tr Σ33 − 2 Σ ŝ_α u_α + c Σ u_α², L_test = tr Σ33ᵗ − 2 Σ (û_αᵀΣ31ᵗv̂_α) u_α + "
                   f"Σ (v̂_αᵀΣ11ᵗv̂_α) u_α² (Lampinen & Ganguli 2019, docs/theory.md#mode-loss-theory); W0 off the "
                   f"mode span by {off_span:.2g}")
    return LossTheory(None if problem.sigma33_trace is None else train, test, "modes_generalization", exact,
                      assumptions)
