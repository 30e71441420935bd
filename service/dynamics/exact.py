"""Closed-form ("exact") gradient-flow solutions of deep linear networks (reference §1, §2, §3, §5e, §7).

Conventions (reference §0): L = (1/N) Σ ||y − W x||², gradient flow dW_l/dt = −∂L/∂W_l, t = η·step, so the
papers' τ is 1/2 here. Σ11 = c·I ("scaled whitening", §5e) is handled everywhere by the exact rescaling

    W̃_l = c^{1/2} W_l  (two layers):  W̃ follows the c = 1 flow with the same Σ31 and the same t,

so every two-layer formula below is the c = 1 formula applied to ũ = c·u, ã = √c·a (and λ̃ = c·λ for §3).
For depth D the mode ODE is du/dt = 2D |u|^{2−2/D} (s − c·u), derived from the per-layer equations and
checked against the matrix flow in tests/dynamics/test_exact.py.

What is here:

* scalar mode solutions: two-layer modes for any (a0, b0) (balanced §1a, anti-balanced §1d, unbalanced §1e
  in hyperbolic coordinates), with weight decay for |a0| = |b0|; deep balanced modes D ≥ 3 (§2) through a
  closed-form antiderivative of the learning-time integral, inverted by safeguarded Newton;
* learning times t(u0 → uf) and half-way times for all of them;
* exact GD maps (§7b) per mode for decoupled inits, and shallow GD / flow (§7a) for any Σ11 and weight decay;
* the matrix Riccati solution (§3) for λ-balanced two-layer nets, evaluated in chunks by the semigroup law in
  an F-invariant subspace of dimension ≤ 2·rank Σ31 + 2·hidden (not Ni + No), refused past RICCATI_MAX_DIM;
* ``exact_run`` / ``check_exact``: pick the closed form that applies to a problem and initial condition, or
  raise ``ExactNotApplicableError`` naming the failed condition and its measured deviation.

Cost: with hidden layers nothing here builds an orthonormal basis of the whole input or output space or
decomposes an n_out × n_out (n_in × n_in) matrix: alignment is measured with projections on the thin SVD of Σ31
and thin factors of the layers, balance with hidden-size Grams. Tall tasks (few inputs, many output features)
and wide ones cost O(n_out·n_in·(k + hidden)) plus what is returned. (D = 1 diagonalises Σ11, as any Σ11 needs.)

Tolerances (all relative, see the constants): Σ11 = c·I within WHITENING_RTOL·c; an init is "aligned" when
its Gram and cross matrices in the mode frame are diagonal within ALIGN_RTOL of the layer norms; λ-balanced
when W32ᵀW32 − W21W21ᵀ − λI is within BALANCE_RTOL of ‖W21‖² + ‖W32‖².
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.linalg
from numba import njit

from .errors import ExactNotApplicableError, InvalidParameterError, ShapeError
from .modes import ModeBasis, mode_basis
from .problem import Problem

# ------------------------------------------------------------------------------------------------
# tolerances

# Σ11 = c·I: max |Σ11 − c I| ≤ WHITENING_RTOL · c. Exactly whitened or one-hot data gives ~1e-16; data whitened
# in float64 ~1e-15. A real deviation δ changes the solution by O(δ·t), so anything above round-off is refused.
WHITENING_RTOL = 1e-9
# Aligned (decoupled) init: off-diagonal Gram / cross entries ≤ ALIGN_RTOL × the layer norms (Frobenius). An
# init built as R A Vᵀ in float64 is aligned to ~1e-15; the misaligned part grows at most like the modes do,
# so 1e-8 keeps the closed form within ~1e-8 relative of the true flow while accepting round-off.
ALIGN_RTOL = 1e-8
# λ-balanced init: max |W32ᵀW32 − W21W21ᵀ − λ I| ≤ BALANCE_RTOL · (‖W21‖²_F + ‖W32‖²_F). Same reasoning.
BALANCE_RTOL = 1e-8
# A layer's image W_l r of a unit vector with norm ≤ ROUNDOFF_RTOL · ‖W_l‖_F is round-off, not a direction.
ROUNDOFF_RTOL = 1e-13
# Singular values of Σ31 at or below S_ZERO_RTOL · s_max are zeros (round-off of a rank-deficient Σ31).
S_ZERO_RTOL = 1e-12
# Singular values closer than DEGENERATE_RTOL · s_max form one degenerate block (the hierarchy's repeated splits).
DEGENERATE_RTOL = 1e-10
# Two-layer modes with |a0² − b0²|/2 ≤ NEAR_BALANCED_RTOL · |a0 b0| use the balanced formula: the
# unbalanced correction to du/dt is O((c0/u)²) ≤ 1e-16, below round-off.
NEAR_BALANCED_RTOL = 1e-8
# Riccati: largest chunk Δx (x = 2t) and the cap on (μ_max − μ_min)·Δx that keeps one chunk well conditioned
# (reference §3 caveat: Δx = 0.5 for spectra of width ~4.4 is exact to 1e-14).
RICCATI_MAX_CHUNK = 0.5
RICCATI_SPREAD_CHUNK = 2.0
# Riccati convergence: one full chunk changes P (apart from the slow block) by ≤ RICCATI_CONV_ULPS·n·eps·max|P|
# (the round-off of forming P = QQᵀ, n = the dimension r of the reduced Riccati space, see RiccatiSubspace), and by no more than the chunk before (a growing change is an
# escape from a saddle, not convergence). A component still decaying at rate r is then within
# ~tol/(r·Δx) of its limit, which is what freezing it costs.
RICCATI_CONV_ULPS = 16.0
# Eigen-directions of F with |μ| ≤ RICCATI_SLOW_RTOL · max|μ| form the "slow block" that keeps evolving on its
# own (in large chunks) after the rest has converged: e.g. μ = 0 for λ = 0 with Ni ≠ No, where P decays like 1/x.
RICCATI_SLOW_RTOL = 1e-3


# ------------------------------------------------------------------------------------------------
# small numerical helpers


def _phi(r, t):
    """(1 − e^{−r t}) / r, with its limit t at r = 0 (any sign of r; overflows to inf for r t ≪ 0)."""
    r, t = np.broadcast_arrays(np.asarray(r, dtype=np.float64), np.asarray(t, dtype=np.float64))
    out = np.array(t, dtype=np.float64, copy=True)
    nz = r != 0
    with np.errstate(over="ignore", invalid="ignore"):
        out[nz] = -np.expm1(-r[nz] * t[nz]) / r[nz]
    return out


def _as_float_arrays(*values):
    return np.broadcast_arrays(*[np.asarray(v, dtype=np.float64) for v in values])


# ------------------------------------------------------------------------------------------------
# two-layer modes (reference §1, §5e); our units τ = 1/2


def balanced_mode(t, s, u0, c=1.0, weight_decay=0.0):
    """Balanced (a0 = b0, u0 > 0) or anti-balanced (a0 = −b0, u0 < 0) two-layer mode strength u(t).

    One formula for both signs σ = sign(u0), obtained by solving the Bernoulli equation
    du/dt = 4|u| (s' − c u) with s' = s − σγ/2 (weight decay γ keeps |a| = |b|):

        u(t) = σ / ( e^{−4σ s' t} / |u0| + 4c·φ(4σ s', t) ),   φ(r, t) = (1 − e^{−r t}) / r

    For σ = +1 this is reference §5e, u = (s/c) e^{4st} / (e^{4st} − 1 + s/(c u0)) (§1a for c = 1); for σ = −1
    it is §1d, u = s u0 e^{−4st} / (s − c u0 + c u0 e^{−4st}): the mode decays to the saddle u = 0. For s' = 0
    it is u0 / (1 + 4c|u0|t). u0 = 0 stays 0. Written without e^{+4st} so that it never overflows to inf/inf.
    """
    t, s, u0, c, g = _as_float_arrays(t, s, u0, c, weight_decay)
    sig = np.sign(u0)
    sp = s - sig * g / 2.0
    out = np.zeros(t.shape)
    nz = sig != 0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        e = np.exp(-4.0 * sig[nz] * sp[nz] * t[nz])
        out[nz] = sig[nz] / (e / np.abs(u0[nz]) + 4.0 * c[nz] * _phi(4.0 * sig[nz] * sp[nz], t[nz]))
    return out


def _hyperbolic_mode(t, s, c0, u0):
    """Unbalanced two-layer mode, c = 1 units: u(t) for s > 0, c0 = |a0² − b0²|/2 > 0 (reference §1e).

    With u = c0 sinh θ and x = tanh(θ/2) the flow is the scalar Riccati dx/dt = −2s (x − x₊)(x − x₋),
    x₊ = s/(sc + c0), x₋ = −(sc + c0)/s, sc = √(c0² + s²), solved by the Möbius form

        ρ(t) = ρ0 e^{−4 sc t},  ρ = (x − x₊)/(x − x₋),   u = 2c0 x / (1 − x²).

    Every difference that could cancel (1 − x₊, 1 + x₋, 1 ∓ x0) is written in a cancellation-free form, so
    the result is accurate to round-off also for c0 ≪ s (nearly balanced) and near the fixed point u = s.
    """
    sc = np.hypot(c0, s)
    xp = s / (sc + c0)
    one_m_xp = c0 * (sc + s + c0) / ((sc + s) * (sc + c0))
    one_p_xp = 1.0 + xp
    xm = -(sc + c0) / s
    one_m_xm = 1.0 - xm
    neg_one_p_xm = c0 * (sc + s + c0) / (s * (sc + s))       # −(1 + x₋) > 0
    z = u0 / c0
    root = np.hypot(1.0, z)
    with np.errstate(divide="ignore", over="ignore"):
        e_theta = np.where(z >= 0, z + root, 1.0 / (root - z))  # e^θ0 without cancellation
    one_m_x0 = 2.0 / (e_theta + 1.0)
    one_p_x0 = 2.0 * e_theta / (e_theta + 1.0)
    rho0 = (one_m_xp - one_m_x0) / (one_p_x0 + neg_one_p_xm)   # (x0 − x₊)/(x0 − x₋), always < 1
    rho = rho0 * np.exp(-4.0 * sc * t)
    n1 = one_m_xp - rho * one_m_xm                              # (1 − x)(1 − ρ)
    n2 = one_p_xp + rho * neg_one_p_xm                          # (1 + x)(1 − ρ)
    return 2.0 * c0 * (xp - rho * xm) * (1.0 - rho) / (n1 * n2)


def _zero_s_unbalanced(t, c0, u0):
    """Unbalanced mode with s = 0, c = 1 units: du/dt = −2u √(Δ² + 4u²) gives u = c0 / sinh(arsinh(c0/u0) + 4 c0 t)."""
    sig = np.sign(u0)
    out = np.zeros(np.shape(t))
    nz = sig != 0
    with np.errstate(over="ignore"):
        out[nz] = sig[nz] * c0[nz] / np.sinh(np.arcsinh(c0[nz] / np.abs(u0[nz])) + 4.0 * c0[nz] * t[nz])
    return out


def two_layer_mode(t, s, a0, b0, c=1.0, weight_decay=0.0):
    """Exact (a(t), b(t)) of a decoupled two-layer mode: da/dt = 2b(s − c ab) − γa, db/dt = 2a(s − c ab) − γb.

    Arrays broadcast (e.g. t[:, None] against per-mode vectors). u = a b follows
    * |a0| = |b0| (within NEAR_BALANCED_RTOL): ``balanced_mode`` (reference §1a, §1d, §5e), any γ ≥ 0;
    * otherwise (γ must be 0): the hyperbolic solution of reference §1e (any sign of a0·b0), or for s = 0
      u = c0 / sinh(arsinh(c0/u0) + 4 c c0 t) (c0 = c|a0² − b0²|/2).
    Then a, b follow from u and the conserved Δ = a² − b² (Δ e^{−2γt} with decay; exactly 0 for modes treated as
    balanced): the larger of |a|, |b| never changes sign, a² + b² = √(Δ² + 4u²), and the smaller one is u divided
    by the larger.
    """
    t, s, a0, b0, c, g = _as_float_arrays(t, s, a0, b0, c, weight_decay)
    if np.any(c <= 0):
        raise InvalidParameterError("two-layer modes need Σ11 = c·I with c > 0", field=("data", "sigma11"),
                                    fix="give inputs with non-zero variance")
    u0 = a0 * b0
    c0 = c * np.abs(a0 * a0 - b0 * b0) / 2.0          # in c = 1 units (ã = √c a)
    bal = (c0 <= NEAR_BALANCED_RTOL * c * np.abs(u0)) | (c0 == 0)
    if np.any(~bal & (g > 0)):
        raise ExactNotApplicableError(
            "with weight decay the two-layer closed form needs balanced modes (|a0| = |b0|); "
            f"max |a0² − b0²| = {float(np.max(np.abs(a0 * a0 - b0 * b0)[~bal & (g > 0)])):.3g}",
            field=("training", "weight_decay"), fix='use method "flow", or a balanced init')
    u = np.zeros(t.shape)
    u[bal] = balanced_mode(t[bal], s[bal], u0[bal], c[bal], g[bal])
    ub = ~bal & (s > 0)
    u[ub] = _hyperbolic_mode(t[ub], s[ub], c0[ub], c[ub] * u0[ub]) / c[ub]
    uz = ~bal & (s <= 0)
    u[uz] = _zero_s_unbalanced(t[uz], c0[uz], c[uz] * u0[uz]) / c[uz]
    # modes classified balanced are exactly balanced: a round-off Δ ~ 1e-18 would otherwise leave √Δ ~ 1e-9 in the
    # smaller factor of a mode that decays to the saddle
    delta = np.where(bal, 0.0, a0 * a0 - b0 * b0) * np.exp(-2.0 * g * t)
    big = np.sqrt((np.hypot(delta, 2.0 * u) + np.abs(delta)) / 2.0)   # max(|a|, |b|)
    a = np.zeros(t.shape)
    b = np.zeros(t.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        pa = delta > 0
        a[pa] = np.sign(a0[pa]) * big[pa]
        b[pa] = u[pa] / a[pa]
        pb = delta < 0
        b[pb] = np.sign(b0[pb]) * big[pb]
        a[pb] = u[pb] / b[pb]
    eq = delta == 0
    root_u = np.sqrt(np.abs(u[eq]))
    a[eq] = np.sign(a0[eq]) * root_u
    b[eq] = np.sign(b0[eq]) * root_u
    return a, b


def two_layer_limit(s, a0, b0, c=1.0, weight_decay=0.0):
    """lim_{t→∞} u(t) of ``two_layer_mode``: s'/c when the mode is learned, else 0 (anti-balanced, u0 = 0 = c0)."""
    s, a0, b0, c, g = _as_float_arrays(s, a0, b0, c, weight_decay)
    u0 = a0 * b0
    c0 = np.abs(a0 * a0 - b0 * b0) / 2.0
    bal = (c0 <= NEAR_BALANCED_RTOL * np.abs(u0)) | (c0 == 0)
    sp = s - np.sign(u0) * g / 2.0
    learns = np.where(bal, (u0 > 0) & (sp > 0), s > 0)
    return np.where(learns, np.where(bal, sp, s) / c, 0.0)


def learning_time_two_layer(u_final, s, a0, b0, c=1.0, weight_decay=0.0):
    """Time for a two-layer mode to go from u0 = a0·b0 to u_final (reference §1c, §1e); NaN if never reached.

    Balanced (σ = sign u0, s' = s − σγ/2): from 1/u = c/s' + e^{−4σs't}(…),
        t = ln[ (1/u0 − c/s')/(1/uf − c/s') ] / (4 s')      (σ = +1; §1c: (1/(4s)) ln[uf(s − cu0)/(u0(s − cuf))])
        t = ln[ (1/|uf| + c/s')/(1/|u0| + c/s') ] / (4 s')  (σ = −1), and (1/|uf| − 1/|u0|)/(4c) for s' = 0.
    Unbalanced: t = ln[ρ(x0)/ρ(xf)] / (4 sc) with ρ = (x − x₊)/(x − x₋) (reference §1e, equivalent to its artanh
    form), or (arsinh(c0/uf) − arsinh(c0/u0)) / (4c0) for s = 0; all in c = 1 units (ũ = c u).
    Reached means u_final lies between u0 (inclusive, t = 0) and the mode's limit (exclusive).
    """
    uf, s, a0, b0, c, g = _as_float_arrays(u_final, s, a0, b0, c, weight_decay)
    u0 = a0 * b0
    lim = two_layer_limit(s, a0, b0, c, g)
    out = np.full(uf.shape, np.nan)
    at0 = uf == u0
    out[at0] = 0.0
    on_path = ((uf - u0) * (lim - uf) > 0) & ~at0
    c0 = c * np.abs(a0 * a0 - b0 * b0) / 2.0
    bal = (c0 <= NEAR_BALANCED_RTOL * c * np.abs(u0)) | (c0 == 0)
    sig = np.sign(u0)
    sp = s - sig * g / 2.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = on_path & bal & (sp != 0)
        x0 = 1.0 / np.abs(u0[m]) - sig[m] * c[m] / sp[m]
        xf = 1.0 / np.abs(uf[m]) - sig[m] * c[m] / sp[m]
        out[m] = sig[m] * np.log(x0 / xf) / (4.0 * sp[m])
        m = on_path & bal & (sp == 0)
        out[m] = (1.0 / np.abs(uf[m]) - 1.0 / np.abs(u0[m])) / (4.0 * c[m])
        m = on_path & ~bal & (s > 0)
        if m.any():
            ut0, utf, cc, ss = c[m] * u0[m], c[m] * uf[m], c0[m], s[m]
            out[m] = (_log_rho(ut0, cc, ss) - _log_rho(utf, cc, ss)) / (4.0 * np.hypot(cc, ss))
        m = on_path & ~bal & (s <= 0)
        out[m] = (np.arcsinh(c0[m] / np.abs(c[m] * uf[m])) - np.arcsinh(c0[m] / np.abs(c[m] * u0[m]))) / (4.0 * c0[m])
    return out


def _log_rho(u, c0, s):
    """ln|ρ(x)| with ρ = (x − x₊)/(x − x₋) for the unbalanced mode at strength u (c = 1 units, s > 0)."""
    sc = np.hypot(c0, s)
    one_m_xp = c0 * (sc + s + c0) / ((sc + s) * (sc + c0))
    neg_one_p_xm = c0 * (sc + s + c0) / (s * (sc + s))
    z = u / c0
    root = np.hypot(1.0, z)
    e_theta = np.where(z >= 0, z + root, 1.0 / (root - z))
    one_m_x = 2.0 / (e_theta + 1.0)
    one_p_x = 2.0 * e_theta / (e_theta + 1.0)
    return np.log(np.abs(one_m_xp - one_m_x)) - np.log(one_p_x + neg_one_p_xm)


def half_time_two_layer(s, a0, b0, c=1.0, weight_decay=0.0):
    """t½: time for a two-layer mode to reach half its learned value s/(2c) (reference §1c: ln(s/u0 − 1)/(4s))."""
    s, a0, b0, c = _as_float_arrays(s, a0, b0, c)
    return _reach(learning_time_two_layer, s / (2.0 * c), a0 * b0, s, a0, b0, c, weight_decay)


def _reach(time_fn, target, u0, *args):
    """Time of first reaching ``target`` (0 if u0 is already at/past it on the way up), NaN if never."""
    target, u0 = _as_float_arrays(target, u0)
    t = np.asarray(time_fn(target, *args), dtype=np.float64)
    sgn = np.sign(target)
    return np.where((sgn != 0) & (u0 * sgn >= target * sgn), 0.0, t)


# ------------------------------------------------------------------------------------------------
# deep balanced modes D ≥ 3 (reference §2)
#
# Per layer a (u = σ|a|^D, σ = sign u0): d|a|/dt = 2σ |a|^{D−1} (s − cσ|a|^D). With y = |a| / κ, κ = (s/c)^{1/D},
# dy/dt = 2σ s κ^{D−2} y^{D−1} (1 − σ y^D), so the learning time is (G_σ(y) − G_σ(y0)) / (2σ s κ^{D−2}) with the
# antiderivative of 1/(y^{D−1}(1 − σy^D)) = y^{1−D} + σ y/(1 − σ y^D) (partial fractions over ω^D = σ):
#
#     G_σ(y) = y^{2−D}/(2−D) − (σ/D) Σ_{ω^D = σ} Re[ω² ln(y − ω)]
#
# (each pair of conjugate roots contributes twice the real part; ln|y − 1| is evaluated from the
# parametrisation so that y → 1 keeps full precision). No quadrature is needed; u(t) is its inverse.


def _root_angles(depth: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles θ ∈ [0, π] of the roots ω = e^{iθ} of ω^D = σ, with weight 2 for conjugate pairs, 1 for real roots."""
    if sigma > 0:
        th = 2.0 * np.pi * np.arange(depth // 2 + 1) / depth
    else:
        th = np.pi * (2 * np.arange((depth - 1) // 2 + 1) + 1) / depth
    w = np.where(np.isclose(th, 0.0) | np.isclose(th, np.pi), 1.0, 2.0)
    return th, w


def _g_deep(log_y, y, log_abs_1my, depth: int, sigma: float):
    """G_σ(y) from y, ln y and ln|1 − y| (the last only used for σ = +1)."""
    th, w = _root_angles(depth, sigma)
    with np.errstate(over="ignore"):
        total = np.exp((2 - depth) * log_y) / (2 - depth)
    acc = np.zeros(np.shape(y))
    for theta, weight in zip(th, w):
        if np.isclose(theta, 0.0):
            term = log_abs_1my
        elif np.isclose(theta, np.pi):
            term = np.log1p(y)
        else:
            ct, st = np.cos(theta), np.sin(theta)
            ln_abs = 0.5 * np.log((y - ct) ** 2 + st * st)
            arg = np.arctan2(-st, y - ct)
            term = np.cos(2 * theta) * ln_abs - np.sin(2 * theta) * arg
        acc = acc + weight * term
    return total - (sigma / depth) * acc


class _DeepParam:
    """y as a function of the unbounded variable q in which G is inverted, per region of the flow.

    region "below" (σ = +1, y0 < 1): q = logit y;  "above" (σ = +1, y0 > 1): q = ln(y − 1);  "neg" (σ = −1): q = ln y.
    """

    def __init__(self, region: str, depth: int):
        self.region, self.depth = region, depth
        self.sigma = -1.0 if region == "neg" else 1.0

    def q_of_y(self, y):
        if self.region == "below":
            return np.log(y) - np.log1p(-y)
        if self.region == "above":
            return np.log(y - 1.0)
        return np.log(y)

    def logs(self, q):
        """(ln y, y, ln|1 − y|) at q, each without cancellation."""
        if self.region == "below":
            log_y = -np.logaddexp(0.0, -q)
            return log_y, np.exp(log_y), -np.logaddexp(0.0, q)
        if self.region == "above":
            log_y = np.logaddexp(0.0, q)
            return log_y, np.exp(log_y), q
        return q, np.exp(q), np.zeros(np.shape(q))

    def g(self, q):
        log_y, y, l1 = self.logs(q)
        return _g_deep(log_y, y, l1, self.depth, self.sigma)

    def dg(self, q):
        """dG/dq = dy/dq / (y^{D−1}(1 − σ y^D)), simplified per region so that y → 1 keeps precision."""
        log_y, _, _ = self.logs(q)
        d = self.depth
        with np.errstate(over="ignore", under="ignore"):
            if self.region == "neg":
                return np.exp((2 - d) * log_y) / (1.0 + np.exp(d * log_y))
            one_m_yd = -np.expm1(d * log_y)                   # 1 − y^D
            if self.region == "below":
                one_m_y = np.exp(-np.logaddexp(0.0, q))       # 1 − y
                return one_m_y * np.exp((2 - d) * log_y) / one_m_yd
            return np.exp(q) * np.exp((1 - d) * log_y) / one_m_yd    # (y − 1)/(y^{D−1}(1 − y^D)) < 0


def _solve_increasing(f, df, target, lo, hi, q):
    """Vectorised safeguarded Newton for f(q) = target with f increasing, f(lo) ≤ target ≤ f(hi)."""
    for _ in range(200):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fq = f(q) - target
            lo = np.where(fq <= 0, q, lo)
            hi = np.where(fq >= 0, q, hi)
            qn = q - fq / df(q)
        bad = ~np.isfinite(qn) | (qn <= lo) | (qn >= hi)
        qn = np.where(bad, 0.5 * (lo + hi), qn)
        tol = 4e-16 * np.maximum(1.0, np.abs(q))
        done = (np.abs(qn - q) <= tol) | (fq == 0) | (hi - lo <= tol)
        q = qn
        if np.all(done):
            break
    return q


# q-range beyond which y equals its limit in float64: expit(40) = 1 − 4e-18 rounds to 1, ln(y − 1) = −40 likewise.
_Q_CAP = 40.0


def _deep_region(q0, target, param: _DeepParam):
    """Solve G(q) = target for one region; returns q (vectorised)."""
    if param.region == "below":          # G increasing in q, q moves up from q0
        f, df, tgt = param.g, param.dg, target
        lo, hi = q0.copy(), np.maximum(q0, 0.0) + 1.0
        for _ in range(8):
            short = (f(hi) < tgt) & (hi < _Q_CAP)
            if not short.any():
                break
            hi = np.where(short, np.minimum(2.0 * hi + 1.0, _Q_CAP), hi)
        cap = f(hi) < tgt                # beyond float resolution of y: y = 1
    elif param.region == "above":        # G decreasing in q, q moves down from q0: solve −G = −target
        f, df, tgt = (lambda q: -param.g(q)), (lambda q: -param.dg(q)), -target
        hi, lo = q0.copy(), np.minimum(q0, 0.0) - 1.0
        for _ in range(8):
            short = (f(lo) > tgt) & (lo > -_Q_CAP)
            if not short.any():
                break
            lo = np.where(short, np.maximum(2.0 * lo - 1.0, -_Q_CAP), lo)
        cap = f(lo) > tgt
    else:                                # σ = −1: G increasing in q, q moves down from q0 (|u| decays)
        f, df, tgt = param.g, param.dg, target
        hi, lo = q0.copy(), q0 - 1.0
        for _ in range(12):
            short = (f(lo) > tgt) & (lo > -700.0)
            if not short.any():
                break
            lo = np.where(short, np.maximum(q0 - 2.0 * (q0 - lo), -700.0), lo)
        cap = f(lo) > tgt
    start = np.where(param.region == "below", lo, hi)
    q = _solve_increasing(f, df, tgt, lo, hi, start)
    if param.region == "below":
        q = np.where(cap, _Q_CAP, q)
    elif param.region == "above":
        q = np.where(cap, -_Q_CAP, q)
    else:
        q = np.where(cap, -700.0, q)
    return q


def deep_balanced_mode(t, s, u0, depth: int, c=1.0):
    """Strength u(t) of a balanced decoupled mode of a depth-D network (reference §2, §5e scaling):

        du/dt = 2D |u|^{2−2/D} (s − c u)

    (τ du/dt = D u^{2−2/D}(s − u) with τ = 1/2 for c = 1). u0 > 0 learns towards s/c (from below or above);
    u0 < 0 (an odd number of negative layers; for even D all layers negative gives u0 > 0 and the same curve as
    |a|) decays to the saddle u = 0 without crossing it; u0 = 0 stays 0; s = 0 gives
    |u| = |u0| (1 + 4c(D−1)|u0|^{2−2/D} t)^{−D/(2D−2)}. D = 2 delegates to ``balanced_mode``.
    Solved by inverting the closed-form learning-time antiderivative G_σ (see the comment above), so the cost
    does not depend on t.
    """
    if depth == 2:
        return balanced_mode(t, s, u0, c)
    if depth < 2:
        raise InvalidParameterError("deep modes need depth ≥ 2", field=("network", "hidden"),
                                    fix="use the shallow closed form for depth 1")
    t, s, u0, c = _as_float_arrays(t, s, u0, c)
    out = np.zeros(t.shape)
    d = depth
    p = 2.0 - 2.0 / d
    sig = np.sign(u0)
    m = (s <= 0) & (sig != 0)
    with np.errstate(over="ignore"):
        out[m] = u0[m] * (1.0 + 4.0 * c[m] * (d - 1) * np.abs(u0[m]) ** p * t[m]) ** (-1.0 / p)
    live = (s > 0) & (sig != 0)
    if not live.any():
        return out
    kappa = (s / np.where(c > 0, c, 1.0)) ** (1.0 / d)
    with np.errstate(divide="ignore"):
        y0 = np.where(live, (c * np.abs(u0) / np.where(s > 0, s, 1.0)) ** (1.0 / d), 0.0)
    rate = 2.0 * s * kappa ** (d - 2)
    fixed = live & (sig > 0) & (y0 == 1.0)
    out[fixed] = u0[fixed]
    for region in ("below", "above", "neg"):
        if region == "below":
            m = live & (sig > 0) & (y0 < 1.0)
        elif region == "above":
            m = live & (sig > 0) & (y0 > 1.0)
        else:
            m = live & (sig < 0)
        if not m.any():
            continue
        param = _DeepParam(region, d)
        q0 = param.q_of_y(y0[m])
        target = param.g(q0) + param.sigma * rate[m] * t[m]
        q = _deep_region(q0, target, param)
        log_y, _, _ = param.logs(q)
        out[m] = param.sigma * (s[m] / c[m]) * np.exp(d * log_y)
    return out


def deep_limit(s, u0, depth: int, c=1.0):
    """lim u(t) of a balanced mode: s/c for u0 > 0 and s > 0, else 0."""
    s, u0, c = _as_float_arrays(s, u0, c)
    return np.where((u0 > 0) & (s > 0), s / c, 0.0)


def learning_time_deep(u_final, s, u0, depth: int, c=1.0):
    """Time for a balanced depth-D mode to go from u0 to u_final (reference §2):

        t = ∫_{u0}^{uf} du / (2D |u|^{2−2/D}(s − c u)) = (G_σ(yf) − G_σ(y0)) / (2σ s κ^{D−2})

    evaluated in closed form (see G_σ above); NaN if u_final is not between u0 and the limit. D = 2 uses §1c.
    For small u0 it approaches τ/((D − 2) s u0^{(D−2)/D}) (reference §2 asymptotics).
    """
    uf, s, u0, c = _as_float_arrays(u_final, s, u0, c)
    if depth == 2:
        a0 = np.sqrt(np.abs(u0))
        return learning_time_two_layer(uf, s, a0, np.sign(u0) * a0, c)
    d = depth
    out = np.full(uf.shape, np.nan)
    out[uf == u0] = 0.0
    lim = deep_limit(s, u0, d, c)
    on = ((uf - u0) * (lim - uf) > 0) & (uf != u0)
    sig = np.sign(u0)
    p = 2.0 - 2.0 / d
    m = on & (s <= 0)
    out[m] = (np.abs(uf[m]) ** -p - np.abs(u0[m]) ** -p) / (4.0 * c[m] * (d - 1))
    m = on & (s > 0)
    if m.any():
        ss, cc, a, b, sg = s[m], c[m], np.abs(u0[m]), np.abs(uf[m]), sig[m]
        y0 = (cc * a / ss) ** (1.0 / d)
        yf = (cc * b / ss) ** (1.0 / d)
        rate = 2.0 * ss * (ss / cc) ** ((d - 2.0) / d)
        res = np.empty(ss.shape)
        for sgn in (1.0, -1.0):
            k = sg == sgn
            if not k.any():
                continue
            ga = _g_deep(np.log(y0[k]), y0[k], np.log(np.abs(1.0 - y0[k])), d, sgn)
            gb = _g_deep(np.log(yf[k]), yf[k], np.log(np.abs(1.0 - yf[k])), d, sgn)
            res[k] = (gb - ga) / (sgn * rate[k])
        out[m] = res
    return out


def half_time_deep(s, u0, depth: int, c=1.0):
    """t½ of a balanced depth-D mode: first time u reaches s/(2c) (0 if u0 is already past it; NaN if never)."""
    s, u0, c = _as_float_arrays(s, u0, c)
    return _reach(lambda target, *a: learning_time_deep(target, *a), s / (2.0 * c), u0, s, u0, depth, c)


# ------------------------------------------------------------------------------------------------
# exact GD maps (reference §7)


@njit(cache=True, nogil=True)
def _gd_modes_kernel(a0, s, c, eta, decay, rec_steps, rows, cols, coefs, resid, targets):
    """Per-mode GD map for a decoupled init, all layers at once (reference §7b generalised):

        a_l ← a_l (1 − ηγ) + 2η (Π_{m≠l} a_m)(s − c Π_m a_m)

    ``a0`` is (m, D); records the amplitudes at the sorted ``rec_steps``. The mode-basis strengths
    strength_α = resid_α + Σ coefs·u_ch (sparse rows/cols/coefs) are tracked every step to find the first step at
    which each reaches ``targets[α]`` (NaN target: skip); the crossing is returned as a fractional step
    (linear interpolation between the two steps around it), NaN if not reached.
    """
    m, d = a0.shape
    t_rec = rec_steps.shape[0]
    out = np.full((t_rec, m, d), np.nan)
    k_modes = resid.shape[0]
    cross = np.full(k_modes, np.nan)
    a = a0.copy()
    new = np.empty(d)
    prefix = np.empty(d + 1)
    prev = resid.copy()
    cur = np.empty(k_modes)
    u = np.empty(m)
    for ch in range(m):
        pr = 1.0
        for l in range(d):
            pr *= a[ch, l]
        u[ch] = pr
    for j in range(k_modes):
        prev[j] = resid[j]
    for z in range(rows.shape[0]):
        prev[rows[z]] += coefs[z] * u[cols[z]]
    for j in range(k_modes):
        tg = targets[j]
        if tg == tg and ((tg > 0 and prev[j] >= tg) or (tg < 0 and prev[j] <= tg)):
            cross[j] = 0.0
    r = 0
    last = rec_steps[t_rec - 1] if t_rec > 0 else 0
    step = 0
    finite = True
    while True:
        while r < t_rec and rec_steps[r] == step:
            out[r] = a
            r += 1
        if step >= last or not finite:
            break
        for ch in range(m):
            prefix[0] = 1.0
            for l in range(d):
                prefix[l + 1] = prefix[l] * a[ch, l]
            uu = prefix[d]
            err = s[ch] - c * uu
            suffix = 1.0
            for l in range(d - 1, -1, -1):
                other = prefix[l] * suffix
                new[l] = a[ch, l] * (1.0 - eta * decay) + 2.0 * eta * other * err
                suffix *= a[ch, l]
            for l in range(d):
                a[ch, l] = new[l]
            pr = 1.0
            for l in range(d):
                pr *= a[ch, l]
            u[ch] = pr
            if not np.isfinite(pr):
                finite = False
        step += 1
        for j in range(k_modes):
            cur[j] = resid[j]
        for z in range(rows.shape[0]):
            cur[rows[z]] += coefs[z] * u[cols[z]]
        for j in range(k_modes):
            tg = targets[j]
            if tg == tg and cross[j] != cross[j]:
                if (tg > 0 and cur[j] >= tg) or (tg < 0 and cur[j] <= tg):
                    den = cur[j] - prev[j]
                    frac = (tg - prev[j]) / den if den != 0 else 1.0
                    cross[j] = step - 1 + frac
            prev[j] = cur[j]
    return out, cross


def gd_mode_map(a0, s, learning_rate: float, steps, c: float = 1.0, weight_decay: float = 0.0) -> np.ndarray:
    """Exact GD on decoupled modes (reference §7b): per-layer amplitudes (T, m, D) at the given step numbers.

    ``a0`` is (m, D) (per mode, per layer: a_l with W_l = R_{l+1} diag(a_l) R_lᵀ), ``s`` (m,). GD preserves the
    decoupled structure exactly, so with u = Π_l a_l each step is
    a_l ← a_l(1 − ηγ) + 2η (Π_{m≠l} a_m)(s − c u); for a balanced init and γ = 0 this is
    a_{k+1} = a_k + 2η a_k^{D−1}(s − c a_k^D) (D = 2: u_{k+1} = u_k (1 + 2η(s − c u_k))²).
    Once a value overflows, later records are NaN.
    """
    a0 = np.ascontiguousarray(np.atleast_2d(np.asarray(a0, dtype=np.float64)))
    s = np.ascontiguousarray(np.broadcast_to(np.asarray(s, dtype=np.float64), (a0.shape[0],)))
    steps = np.asarray(steps, dtype=np.int64)
    order = np.argsort(steps, kind="stable")
    empty_i = np.zeros(0, dtype=np.int64)
    out, _ = _gd_modes_kernel(a0, s, float(c), float(learning_rate), float(weight_decay),
                              np.ascontiguousarray(steps[order]), empty_i, empty_i, np.zeros(0), np.zeros(0),
                              np.zeros(0))
    res = np.empty_like(out)
    res[order] = out
    return res


def gd_balanced_mode(u0, s, learning_rate: float, steps, depth: int, c: float = 1.0) -> np.ndarray:
    """u_k for a balanced decoupled mode under GD (reference §7b), u0 > 0: a_{k+1} = a_k + 2η a_k^{D−1}(s − c a_k^D)."""
    u0 = np.atleast_1d(np.asarray(u0, dtype=np.float64))
    a = np.abs(u0) ** (1.0 / depth)
    amps = np.repeat(a[:, None], depth, axis=1)
    amps[:, -1] *= np.where(u0 < 0, -1.0, 1.0)
    res = gd_mode_map(amps, s, learning_rate, steps, c)
    return np.prod(res, axis=2)


# ------------------------------------------------------------------------------------------------
# shallow regression (reference §7a), any Σ11 and weight decay


@dataclass(frozen=True)
class _ShallowTerms:
    """Σ11 = Q diag(σ) Qᵀ; per eigen-direction j the rate α_j = 2σ_j + γ, W̃0 = W0 Q, S̃ = Σ31 Q."""

    rates: np.ndarray
    q: np.ndarray
    w0q: np.ndarray
    s31q: np.ndarray


def _shallow_terms(problem: Problem, w0: np.ndarray, weight_decay: float) -> _ShallowTerms:
    sig, q = np.linalg.eigh(problem.sigma11)
    return _ShallowTerms(2.0 * sig + weight_decay, q, w0 @ q, problem.sigma31 @ q)


def _gd_geometric(rates, eta: float, k):
    """(1 − ρ^k)/α with ρ = 1 − ηα (= η Σ_{j<k} ρ^j), stable for small ηα, η k at α = 0; and ρ^k."""
    rates, k = np.broadcast_arrays(np.asarray(rates, dtype=np.float64), np.asarray(k, dtype=np.float64))
    rho = 1.0 - eta * rates
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pos = rho > 0
        log_rho = np.log1p(-eta * rates, where=pos, out=np.zeros(rates.shape))
        pow_k = np.where(pos, np.exp(k * log_rho), np.power(rho, k))
        geo = np.where(pos, -np.expm1(k * log_rho), 1.0 - pow_k) / np.where(rates != 0, rates, 1.0)
        geo = np.where(rates == 0, eta * k, geo)
    return pow_k, geo


def shallow_coefficients(problem: Problem, w0: np.ndarray, times=None, *, learning_rate: float | None = None,
                         steps=None, weight_decay: float = 0.0):
    """Per eigen-direction j of Σ11 the two time factors of the shallow solution (reference §7a):

        flow: W(t) = Σ_j [ W̃0_j e^{−α_j t} + 2 S̃_j φ(α_j, t) ] q_jᵀ,         α_j = 2σ_j + γ
        GD:   W_k  = Σ_j [ W̃0_j ρ_j^k + 2 S̃_j (1 − ρ_j^k)/α_j ] q_jᵀ,       ρ_j = 1 − η α_j

    i.e. W* + (W0 − W*) expm(−(2Σ11 + γI) t) with W* = 2Σ31(2Σ11 + γI)⁻¹ where that inverse exists, and the
    exact limit (linear growth 2 S̃_j t, or 2η S̃_j k) along null directions of 2Σ11 + γI — no matrix inverse.
    Returns (terms, decay (T, n_in), drive (T, n_in)).
    """
    terms = _shallow_terms(problem, w0, weight_decay)
    if steps is not None:
        k = np.asarray(steps, dtype=np.float64)[:, None]
        decay, drive = _gd_geometric(terms.rates[None, :], float(learning_rate), k)
    else:
        t = np.asarray(times, dtype=np.float64)[:, None]
        with np.errstate(under="ignore"):
            decay = np.exp(-terms.rates[None, :] * t)
        drive = _phi(terms.rates[None, :], t)
    return terms, decay, drive


def shallow_solution(problem: Problem, w0, times=None, *, learning_rate: float | None = None, steps=None,
                     weight_decay: float = 0.0) -> np.ndarray:
    """W(t) (flow, at ``times``) or W_k (GD, at ``steps`` with ``learning_rate``), shape (T, n_out, n_in), §7a."""
    w0 = np.asarray(w0, dtype=np.float64)
    terms, decay, drive = shallow_coefficients(problem, w0, times, learning_rate=learning_rate, steps=steps,
                                               weight_decay=weight_decay)
    with np.errstate(over="ignore", invalid="ignore"):
        wt = terms.w0q[None, :, :] * decay[:, None, :] + 2.0 * terms.s31q[None, :, :] * drive[:, None, :]
        return wt @ terms.q.T


# ------------------------------------------------------------------------------------------------
# matrix Riccati solution for λ-balanced two-layer networks (reference §3)


@dataclass
class RiccatiSolution:
    """P(t) = Q Qᵀ with Q = [W21ᵀ; W32] at each time (original scale), kept in the reduced eigen-coordinates of
    ``RiccatiEvaluator``: P = O P' Oᵀ / c with O = ``o`` ((Ni + No) × r, orthonormal columns). The blocks
    W32W21 (``product``), W21ᵀW21 (``w21_gram``) and W32W32ᵀ (``w32_gram``, No × No: only for small No) are formed
    on request; ``p`` is the full (Ni + No)² matrix (small problems only).

    ``chunk_evaluations`` counts applications of the chunk map Φ_h (the cost); ``converged_time`` is the time
    after which only the slow block still moves (None if not reached before the last time)."""

    times: np.ndarray
    states: np.ndarray          # (T, r, r) symmetric P' (eigen-coordinates of F restricted, c-scaled)
    o: np.ndarray               # (Ni + No, r)
    c: float
    n_in: int
    lam: float
    chunk_evaluations: int
    converged_time: float | None

    @property
    def o_in(self) -> np.ndarray:
        return self.o[:self.n_in]

    @property
    def o_out(self) -> np.ndarray:
        return self.o[self.n_in:]

    @cached_property
    def product(self) -> np.ndarray:
        """W32W21 (T, No, Ni) = O_out (P' O_inᵀ) / c: one (No × r)·(r × T·Ni) product."""
        return _left_apply(self.o_out, self.states @ self.o_in.T) / self.c

    @cached_property
    def w21_gram(self) -> np.ndarray:
        return _left_apply(self.o_in, self.states @ self.o_in.T) / self.c

    @property
    def w32_gram(self) -> np.ndarray:
        return _left_apply(self.o_out, self.states @ self.o_out.T) / self.c

    @property
    def p(self) -> np.ndarray:
        return _left_apply(self.o, self.states @ self.o.T) / self.c


def _left_apply(a: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """a @ stack[t] for every t as one matrix product (n × r)·(r × T·m) (a stacked matmul would loop over T)."""
    t, r, m = stack.shape
    out = a @ np.moveaxis(stack, 0, 1).reshape(r, t * m)
    return np.moveaxis(out.reshape(a.shape[0], t, m), 1, 0)


def lambda_balance(w21: np.ndarray, w32: np.ndarray) -> tuple[float, float]:
    """(λ, deviation): λ = tr(W32ᵀW32 − W21W21ᵀ)/Nh and max |W32ᵀW32 − W21W21ᵀ − λI| / (‖W21‖²_F + ‖W32‖²_F).

    λ within BALANCE_RTOL of zero (relative to the same scale) is returned as exactly 0: round-off must not
    turn a zero-balanced init into λ > 0, which would then demand No ≥ Nh.
    """
    b = w32.T @ w32 - w21 @ w21.T
    nh = b.shape[0]
    lam = float(np.trace(b)) / nh
    scale = float(np.sum(w21 * w21) + np.sum(w32 * w32))
    if scale == 0:
        return 0.0, 0.0
    dev = float(np.max(np.abs(b - lam * np.eye(nh)))) / scale
    if abs(lam) <= BALANCE_RTOL * scale:
        lam = 0.0
    return lam, dev


def _riccati_chunk(pp: np.ndarray, mu: np.ndarray, h: float) -> np.ndarray:
    """One exact step of length h (x units) in the eigenbasis of F (reference §3 push-through form):

        Φ_h(P) = e^{Fh} P [I + K(h) P]⁻¹ e^{Fh},   K(h) = ∫_0^h e^{2Fr} dr = diag((e^{2μh} − 1)/(2μ))

    Used for the slow block after convergence (no unstable growth there, so the P form is accurate).
    """
    e = np.exp(mu * h)
    k = _k_diag(mu, h)
    m = np.eye(mu.size) + k[:, None] * pp
    y = np.linalg.solve(m.T, pp).T             # P (I + K P)⁻¹  (P symmetric)
    out = e[:, None] * y * e[None, :]
    return _flush(0.5 * (out + out.T))


def _k_diag(mu: np.ndarray, h: float) -> np.ndarray:
    return np.where(mu != 0, np.expm1(2.0 * mu * h) / np.where(mu != 0, 2.0 * mu, 1.0), h)


def _riccati_chunk_q(qq: np.ndarray, mu: np.ndarray, h: float, ek: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> np.ndarray:
    """The same step on a square root P = Q Qᵀ (Q is n × Nh, eigenbasis of F):

        Q ← e^{Fh} Q L⁻ᵀ,   L Lᵀ = I + Qᵀ K(h) Q      (so that Q Qᵀ ← e^{Fh} Q (I + QᵀKQ)⁻¹ Qᵀ e^{Fh} = Φ_h(P))

    I + QᵀKQ ⪰ I is well conditioned, and the row scaling by e^{μh} is exact, so every row (eigen-direction)
    keeps its own relative precision: a small component sitting on a saddle is not swamped by the round-off of
    the large ones (the P form mixes rows in its solve and lost P ⪰ 0 at the 1e-9 level in such plateaus).
    """
    e, k = ek if ek is not None else (np.exp(mu * h), _k_diag(mu, h))
    g = qq.T @ (k[:, None] * qq)
    g[np.diag_indices_from(g)] += 1.0
    low = _flush(np.linalg.cholesky(g))
    out = e[:, None] * scipy.linalg.solve_triangular(low, qq.T, lower=True, check_finite=False).T
    return _flush(out)


# Entries below this fraction of the largest are set to 0 (Q and its Cholesky factor, after each chunk). The
# directions with μ < 0 shrink by e^{μΔx} per chunk without end and would otherwise sink into subnormal numbers
# (after x ≈ 700/|μ|), on which floating-point arithmetic is many times slower; products of up to three kept
# entries stay normal. Such a row only keeps shrinking relative to the others, so dropping it changes nothing.
FLUSH_RTOL = 1e-100


def _flush(a: np.ndarray) -> np.ndarray:
    if a.size:
        mag = np.abs(a)
        a[mag < FLUSH_RTOL * mag.max()] = 0.0
    return a


@dataclass(frozen=True)
class RiccatiSubspace:
    """An F-invariant subspace Z = Z_in ⊕ Z_out that contains the initial Q = [W21ᵀ; W32] (reference §3).

    With Σ31 = U_nz diag(s) V_nzᵀ (non-zero singular values), F = [[−(λ̃/2) I, Σ31ᵀ], [Σ31, (λ̃/2) I]] maps
    span[V_nz, W21ᵀ] ⊕ span[U_nz, W32] into itself (F[a; 0] = [−(λ̃/2)a; Σ31 a], Σ31 a ∈ span U_nz, and
    symmetrically), and dQ/dx = FQ − Q(QᵀQ)/2 keeps the columns of Q in the smallest F-invariant subspace that
    contains them. So P = QQᵀ = Z P_Z Zᵀ for all times and the Riccati equation holds for P_Z with
    F_Z = ZᵀFZ = [[−(λ̃/2) I, Mᵀ], [M, (λ̃/2) I]], M = Z_outᵀ Σ31 Z_in = [[diag(s), 0], [0, 0]]:
    dimension r = r_in + r_out ≤ 2·rank Σ31 + 2 Nh instead of Ni + No.

    Z_in = [V_nz, A], A an orthonormal basis of the part of W21ᵀ orthogonal to V_nz (numerical rank: singular
    values above max(Ni, Nh)·eps·‖Q‖₂, numpy's matrix_rank rule, so only round-off is dropped); Z_out likewise.
    """

    z_in: np.ndarray
    z_out: np.ndarray
    s: np.ndarray

    @property
    def dim(self) -> int:
        return self.z_in.shape[1] + self.z_out.shape[1]


def _span_extension(base: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Orthonormal columns spanning the part of span(x) orthogonal to the orthonormal ``base`` (numerical rank)."""
    for _ in range(2):                       # projecting twice leaves eps·‖x‖ along base, not eps·‖x before‖
        x = x - base @ (base.T @ x)
    if x.size == 0:
        return np.zeros((x.shape[0], 0))
    a, sig, _ = np.linalg.svd(x, full_matrices=False)
    a = a[:, sig > max(x.shape) * np.finfo(np.float64).eps * scale]
    for _ in range(2):                       # directions of small σ carry base components of order eps·‖x‖/σ
        a = a - base @ (base.T @ a)
    return np.linalg.qr(a)[0] if a.shape[1] else a


def riccati_subspace(basis: ModeBasis, w21: np.ndarray, w32: np.ndarray) -> RiccatiSubspace:
    """The reduced Riccati space (see ``RiccatiSubspace``); cost O((Ni + No)·Nh·(k + Nh)), no (Ni + No)² matrix."""
    s_max = float(basis.s[0]) if basis.s.size else 0.0
    nz = basis.s > S_ZERO_RTOL * s_max if s_max > 0 else np.zeros(basis.s.shape, dtype=bool)
    v, u = basis.v[:, nz], basis.u[:, nz]
    scale = max(float(np.linalg.norm(w21, 2)) if w21.size else 0.0,
                float(np.linalg.norm(w32, 2)) if w32.size else 0.0)
    z_in = np.hstack([v, _span_extension(v, w21.T, scale)])
    z_out = np.hstack([u, _span_extension(u, w32, scale)])
    return RiccatiSubspace(z_in, z_out, basis.s[nz].copy())


def _full_space(sigma31: np.ndarray) -> RiccatiSubspace:
    """Z = the whole space (no reduction): F_Z = F exactly; for checks against the reduced evaluation."""
    no, ni = sigma31.shape
    return RiccatiSubspace(np.eye(ni), np.eye(no), np.zeros(0))


class RiccatiEvaluator:
    """Exact gradient flow of a λ-balanced two-layer network with Σ11 = c·I (reference §3, Dominé et al.).

    With x = 2t, F = [[−(λ̃/2) I, Σ31ᵀ], [Σ31, (λ̃/2) I]] and P̃ = c·QQᵀ, λ̃ = c·λ (the exact rescaling W̃ = √c W):

        dP̃/dx = F P̃ + P̃ F − P̃²,      P̃(x) = e^{Fx} P̃0 [I + K(x) P̃0]⁻¹ e^{Fx}

    Everything runs in the F-invariant subspace Z of ``RiccatiSubspace`` (dimension r ≤ 2·rank Σ31 + 2Nh, so a
    tall or wide task costs what its rank and hidden width cost); ``reduce=False`` uses the whole space (the
    (Ni + No)² form, for checks). ``o`` ((Ni + No) × r) holds the eigenvectors of F_Z in original coordinates.

    The one-shot form is ill-conditioned at large x (reference §3 caveat), so P is advanced by the semigroup law
    in chunks Δx = min(0.5, 2/(μ_max − μ_min)), in the eigenbasis of F_Z (decomposed once), on the square root Q
    (see ``_riccati_chunk_q``). To keep the cost independent of t_max, stepping stops once a full chunk leaves P
    unchanged to RICCATI_CONV_ULPS·r·eps·max|P| (and the change is not growing): P is then at its limit in every
    direction except the slow block (|μ| ≤ RICCATI_SLOW_RTOL·max|μ|, e.g. μ = 0 for λ = 0 and Ni ≠ No, where P
    decays like 1/x), which decouples once the rest has converged and evolves on its own in chunks of
    2/(its own spread) — one closed-form step when its μ are all 0. So the number of chunks is bounded by the
    convergence time, not by t_max. Components that a chunk changes by less than that round-off level while
    they would grow later (an init within round-off of a saddle) are frozen at that point.
    Raises ExactNotApplicableError past RICCATI_MAX_DIM (reduced) dimensions.
    """

    def __init__(self, sigma31: np.ndarray, w21: np.ndarray, w32: np.ndarray, c: float = 1.0, *,
                 basis: ModeBasis | None = None, space: RiccatiSubspace | None = None, reduce: bool = True):
        sigma31 = np.asarray(sigma31, dtype=np.float64)
        w21 = np.asarray(w21, dtype=np.float64)
        w32 = np.asarray(w32, dtype=np.float64)
        self.n_in, self.n_out, self.c = w21.shape[1], w32.shape[0], float(c)
        lam, dev = lambda_balance(w21, w32)
        if dev > BALANCE_RTOL:
            raise ExactNotApplicableError(
                f"the Riccati solution needs a λ-balanced init W32ᵀW32 − W21W21ᵀ = λI; max deviation {dev:.3g} "
                f"(relative to ‖W21‖² + ‖W32‖², tolerance {BALANCE_RTOL:g})", field=("init",),
                fix='use a lambda_balanced init, or method "flow"')
        self.lam = lam
        lt = c * lam
        if not reduce:
            space = _full_space(sigma31)
            ni, no = self.n_in, self.n_out
            f = np.block([[-(lt / 2.0) * np.eye(ni), sigma31.T], [sigma31, (lt / 2.0) * np.eye(no)]])
        else:
            if space is None:
                space = riccati_subspace(basis if basis is not None else _thin_basis(sigma31), w21, w32)
            _check_riccati_dim(space)
            ni, no = space.z_in.shape[1], space.z_out.shape[1]
            m = np.zeros((no, ni))
            m[np.arange(space.s.size), np.arange(space.s.size)] = space.s
            f = np.block([[-(lt / 2.0) * np.eye(ni), m.T], [m, (lt / 2.0) * np.eye(no)]])
        self.space = space
        self.mu, o_z = np.linalg.eigh(f)
        r_in = space.z_in.shape[1]
        self.o = np.vstack([space.z_in @ o_z[:r_in], space.z_out @ o_z[r_in:]])
        self.q0 = self.o.T @ (np.sqrt(c) * np.vstack([w21.T, w32]))
        mu = self.mu
        mu_max = float(np.max(np.abs(mu))) if mu.size else 0.0
        self.slow = np.abs(mu) <= RICCATI_SLOW_RTOL * mu_max
        spread = float(mu.max() - mu.min()) if mu.size else 0.0
        self.dx = RICCATI_MAX_CHUNK if spread == 0 else min(RICCATI_MAX_CHUNK, RICCATI_SPREAD_CHUNK / spread)
        mu_s = mu[self.slow]
        spread_s = float(mu_s.max() - mu_s.min()) if mu_s.size else 0.0
        self.dx_slow = np.inf if spread_s == 0 else RICCATI_SPREAD_CHUNK / spread_s
        self.conv_rtol = RICCATI_CONV_ULPS * max(mu.size, 1) * np.finfo(np.float64).eps
        self._ek_dx = (np.exp(mu * self.dx), _k_diag(mu, self.dx))
        self.chunk_evaluations = 0
        self.converged_time: float | None = None

    def _step_q(self, qq: np.ndarray, h: float) -> np.ndarray:
        self.chunk_evaluations += 1
        return _riccati_chunk_q(qq, self.mu, h, self._ek_dx if h == self.dx else None)

    def _converged(self, pp: np.ndarray, new: np.ndarray, prev_change: float) -> tuple[bool, float]:
        """Convergence test of one full chunk (see the class docstring); returns (converged, change)."""
        pred = pp.copy()
        if self.slow.any():
            ix = np.ix_(self.slow, self.slow)
            pred[ix] = _riccati_chunk(pp[ix], self.mu[self.slow], self.dx)
        change = float(np.max(np.abs(new - pred)))
        scale = float(np.max(np.abs(new)))
        return scale == 0 or (change <= self.conv_rtol * scale and change <= prev_change), change

    def _advance_p(self, pp: np.ndarray, h: float, mask: np.ndarray | None = None) -> np.ndarray:
        """P-form advance by h (x units) of the whole P' or of its ``mask`` block, in chunks ≤ its own Δx."""
        mu = self.mu if mask is None else self.mu[mask]
        limit = self.dx if mask is None else self.dx_slow
        done = 0.0
        while done < h:
            step = min(limit, h - done)
            pp = _riccati_chunk(pp, mu, step)
            self.chunk_evaluations += 1
            done += step
        return pp

    def evaluate(self, times, project: Callable[[np.ndarray], np.ndarray] | None = None) -> list:
        """P' (eigenbasis of F, c-scaled) at each time, or ``project(P')`` of it, in the order of ``times``."""
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or np.any(~np.isfinite(times)) or np.any(times < 0):
            raise InvalidParameterError("times must be finite and ≥ 0", field=("record", "times"),
                                        fix="give times between 0 and t_max")
        project = project or (lambda p: p)
        order = np.argsort(times, kind="stable")
        out: list = [None] * times.size
        slow, ix = self.slow, np.ix_(self.slow, self.slow)
        qq = self.q0
        pp = qq @ qq.T
        x_cur, converged_x, p_conv, prev_change = 0.0, None, None, np.inf
        for i in order:
            x = 2.0 * times[i]
            while converged_x is None and x_cur < x:
                h = min(self.dx, x - x_cur)
                qq = self._step_q(qq, h)
                new = qq @ qq.T
                if h == self.dx:
                    done, prev_change = self._converged(pp, new, prev_change)
                    if done:
                        converged_x, p_conv = x_cur + h, new
                pp = new
                x_cur += h
            if converged_x is not None and x > converged_x:
                res = p_conv.copy()
                if slow.any():
                    res[ix] = self._advance_p(p_conv[ix], x - converged_x, slow)
                out[i] = project(res)
            else:
                out[i] = project(pp)
        self.converged_time = None if converged_x is None else converged_x / 2.0
        return out

    def first_crossings(self, project: Callable[[np.ndarray], np.ndarray], target: np.ndarray, valid: np.ndarray,
                        t_cap: float) -> np.ndarray:
        """First time each projected value ``project(Q')`` (Q' the square root, eigenbasis) reaches ``target``.

        One pass over the chunk boundaries (every Δx, until convergence or 2·t_cap), which serve as the grid;
        within the chunk where a value first reaches its target the time is bisected to round-off, each trial
        being one exact chunk from the stored square root at the chunk's start. NaN where not reached
        (including values that only move in the slow block after convergence). "Reached" means
        value·sign(target) ≥ |target|.
        """
        sgn = np.sign(target)
        out = np.full(target.shape, np.nan)
        qq = self.q0
        cur = project(qq)
        hit = valid & (cur * sgn >= target * sgn)
        out[hit] = 0.0
        pending = valid & ~hit
        pp = qq @ qq.T
        x, prev_change = 0.0, np.inf
        while pending.any() and x < 2.0 * t_cap:
            new_q = self._step_q(qq, self.dx)
            val = project(new_q)
            crossed = pending & (val * sgn >= target * sgn)
            for a in np.flatnonzero(crossed):
                lo, hi = 0.0, self.dx
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    v = project(self._step_q(qq, mid))[a]
                    if v * sgn[a] >= target[a] * sgn[a]:
                        hi = mid
                    else:
                        lo = mid
                    if hi - lo <= 4e-16 * (x + hi):
                        break
                out[a] = (x + hi) / 2.0
            pending &= ~crossed
            new = new_q @ new_q.T
            done, prev_change = self._converged(pp, new, prev_change)
            qq, pp, x = new_q, new, x + self.dx
            if done:
                break
        return out

def _thin_basis(sigma31: np.ndarray) -> ModeBasis:
    u, s, vt = np.linalg.svd(np.asarray(sigma31, dtype=np.float64), full_matrices=False)
    return ModeBasis(u, s, vt.T)


# Largest reduced Riccati dimension r (see RiccatiSubspace) evaluated: F_Z is decomposed once (r³) and every chunk
# forms P' = Q'Q'ᵀ (r²·Nh); at r = 1000 that is ~1 s in all, beyond it minutes. Above it the exact method is refused
# and the theory overlay falls back to the small-init approximation.
RICCATI_MAX_DIM = 1000


def _check_riccati_dim(space: RiccatiSubspace) -> None:
    if space.dim > RICCATI_MAX_DIM:
        raise ExactNotApplicableError(
            f"the Riccati solution would work in {space.dim} dimensions (2·rank Σ31 + the hidden directions of W21ᵀ "
            f"and W32: {space.z_in.shape[1]} input + {space.z_out.shape[1]} output), more than {RICCATI_MAX_DIM}",
            field=("init",), fix=f"{_FIX_FLOW}; or use a narrower hidden layer")


def riccati_flow(sigma31: np.ndarray, w21: np.ndarray, w32: np.ndarray, times, c: float = 1.0, *,
                 basis: ModeBasis | None = None, reduce: bool = True) -> RiccatiSolution:
    """P(t) of the exact Riccati solution (see ``RiccatiEvaluator``) at ``times``, original scale, kept factored."""
    ev = RiccatiEvaluator(sigma31, w21, w32, c, basis=basis, reduce=reduce)
    times = np.asarray(times, dtype=np.float64)
    states = ev.evaluate(times)
    r = ev.mu.size
    st = np.array(states) if states else np.zeros((0, r, r))
    st = 0.5 * (st + np.swapaxes(st, -1, -2))
    return RiccatiSolution(times=times, states=st, o=ev.o, c=ev.c, n_in=ev.n_in, lam=ev.lam,
                           chunk_evaluations=ev.chunk_evaluations, converged_time=ev.converged_time)


def riccati_gradient_norm(problem: Problem, sol: RiccatiSolution) -> np.ndarray:
    """sqrt(‖∂L/∂W21‖² + ‖∂L/∂W32‖²) from the blocks of P only (Σ11 = cI, E = Σ31 − c W32W21):

        ‖∂L/∂W21‖² = 4 tr(Eᵀ W32W32ᵀ E),   ‖∂L/∂W32‖² = 4 tr(W21ᵀW21 EᵀE)

    with W32W32ᵀ = O_out P' O_outᵀ/c, so the first is 4 tr(Yᵀ P' Y)/c with Y = O_outᵀE (r × Ni) and no No × No
    matrix is formed; the second uses EᵀE (Ni × Ni) when Ni ≤ r, else X = E O_in (No × r) and 4 tr(X P' Xᵀ)/c.
    """
    c = float(np.mean(np.diag(problem.sigma11)))
    e = problem.sigma31[None] - c * sol.product
    n_t, n_out, n_in = e.shape
    r = sol.states.shape[-1]
    y = np.moveaxis((sol.o_out.T @ np.moveaxis(e, 0, 1).reshape(n_out, n_t * n_in)).reshape(r, n_t, n_in), 1, 0)
    g1 = 4.0 * np.einsum("tri,tri->t", sol.states @ y, y) / sol.c
    if n_in <= r:
        g2 = 4.0 * np.einsum("tij,tij->t", sol.w21_gram, np.swapaxes(e, 1, 2) @ e)
    else:
        x = e @ sol.o_in
        g2 = 4.0 * np.einsum("tor,tor->t", x @ sol.states, x) / sol.c
    return np.sqrt(np.maximum(g1, 0.0) + np.maximum(g2, 0.0))


# ------------------------------------------------------------------------------------------------
# decoupled (aligned) initial conditions


@dataclass
class DecoupledInit:
    """An init of the form W_l = R_{l+1} diag(a_l) R_lᵀ on a (block-rotated) mode frame of Σ31 (reference §1, §2).

    Channel ch pairs an input direction ``frames[0][:, ch]`` with an output direction ``frames[-1][:, ch]``
    (either may be a zero column: input or output directions of Σ31's null space that have no partner), with
    singular value ``s[ch]`` (0 in the null space) and per-layer amplitudes ``amps[ch, l]``. ``frames[l]``
    (n_l × m) holds the unit vectors R_l (zero columns where a channel has no direction in that layer).
    ``deviation`` is the measured misalignment (max over layers of ‖W_l − reconstruction‖_F/‖W_l‖_F, the
    amplitude-weighted non-orthogonality of the hidden frames and, for D ≥ 3, the relative imbalance).
    Channels coincide with the modes of ``mode_basis`` except inside degenerate blocks of Σ31 whose init is
    diagonal only in a rotated basis (``rotated``), and in the null space, where only directions some layer does
    not map to round-off get a channel (the others have zero amplitudes forever): m ≤ k + 3·(hidden width).
    """

    s: np.ndarray
    frames: list[np.ndarray]
    amps: np.ndarray
    deviation: float
    rotated: bool
    weights0: list[np.ndarray] = field(repr=False)

    @property
    def depth(self) -> int:
        return self.amps.shape[1]

    @property
    def u0(self) -> np.ndarray:
        return np.prod(self.amps, axis=1)

    def strength_matrix(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """(M, resid): mode-basis strengths are u_αᵀ W v_α = Σ_ch M[α, ch] u_ch + resid_α (resid ≈ 0)."""
        b = mode_basis(problem)
        m = (b.u.T @ self.frames[-1]) * (b.v.T @ self.frames[0])
        w0 = self.weights0[0]
        for wl in self.weights0[1:]:
            w0 = wl @ w0
        resid = np.einsum("oa,oi,ia->a", b.u, w0, b.v) - m @ self.u0
        return m, resid

    def weights_at(self, amps_t: np.ndarray) -> list[np.ndarray]:
        """W_l(t) = W_l(0) + Σ_ch (a_l(t) − a_l(0)) R_{l+1}[:, ch] R_l[:, ch]ᵀ for amplitudes (T, m, D)."""
        out = []
        for l, w0 in enumerate(self.weights0):
            da = amps_t[:, :, l] - self.amps[None, :, l]
            out.append(w0[None] + (self.frames[l + 1][None] * da[:, None, :]) @ self.frames[l].T)
        return out

    def product_at(self, u_t: np.ndarray) -> np.ndarray:
        """W(t) = W(0) + Σ_ch (u_ch(t) − u_ch(0)) out_ch in_chᵀ for strengths (T, m)."""
        w0 = self.weights0[0]
        for wl in self.weights0[1:]:
            w0 = wl @ w0
        du = u_t - self.u0[None]
        return w0[None] + (self.frames[-1][None] * du[:, None, :]) @ self.frames[0].T


def _offdiag_max(a: np.ndarray) -> float:
    if a.shape[0] < 2:
        return 0.0
    return float(np.max(np.abs(a - np.diag(np.diag(a)))))


def _block_rotation(x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float) -> np.ndarray:
    """Common rotation O of a degenerate block that diagonalises the input Gram x, output Gram y and cross z.

    Identity when they are already diagonal (the usual case: the init was built on this very basis); otherwise
    the eigenvectors of a generic combination (any simultaneous diagonaliser of x, y, z diagonalises it, and
    distinct (x, y, z) triples get distinct eigenvalues). Whether it worked is checked by the caller.
    """
    if max(_offdiag_max(x), _offdiag_max(y), _offdiag_max(z)) <= ALIGN_RTOL * scale:
        return np.eye(x.shape[0])
    g = np.zeros_like(x)
    for mat, coef in ((x, 1.0), (y, np.sqrt(2.0)), (0.5 * (z + z.T), np.sqrt(3.0))):
        nrm = float(np.max(np.abs(mat)))
        if nrm > 0:
            g += coef * mat / nrm
    return np.linalg.eigh(g)[1]


def _project_out(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(I − base baseᵀ) x for orthonormal columns ``base``, applied twice (the second pass removes the eps·‖x‖
    left along base by the first, which matters when x is mostly in span(base))."""
    for _ in range(2):
        if base.shape[1]:
            x = x - base @ (base.T @ x)
    return x


def _reorthonormalise(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Columns x (orthonormal up to round-off) made exactly orthogonal to ``base`` and orthonormal again.

    Singular vectors of small singular value σ carry components of order eps·‖M‖/σ along directions the matrix M
    was projected off (round-off in M, amplified); with W_l's large images along base such a component would
    show up as a spurious misalignment of ~eps·‖W‖²/σ. QR keeps the order; signs keep columns close to x.
    """
    if x.shape[1] == 0:
        return x
    q, r = np.linalg.qr(_project_out(base, x))
    sgn = np.sign(np.diag(r))
    sgn[sgn == 0] = 1.0
    return q * sgn


def _side_channels(x: np.ndarray, floor: float, base: np.ndarray) -> np.ndarray:
    """Left singular vectors of x (x ⟂ ``base``) whose singular value exceeds ``floor``, descending."""
    if x.size == 0:
        return np.zeros((x.shape[0], 0))
    left, sig, _ = np.linalg.svd(x, full_matrices=False)
    return _reorthonormalise(base, left[:, sig > floor])


def _null_pairs(a: np.ndarray, mid: np.ndarray | None, bt: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Singular pairs (left n_out × p, right n_in × p) of a·mid·bt with singular value > ``floor``, from QR factors
    of a (n_out × h_D) and btᵀ (n_in × h_1): O((n_out + n_in)·h²), never an n_out × n_out or n_in × n_in matrix."""
    if a.size == 0 or bt.size == 0:
        return np.zeros((a.shape[0], 0)), np.zeros((bt.shape[1], 0))
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(bt.T)
    core = ra @ (rb.T if mid is None else mid @ rb.T)
    x, sig, yt = np.linalg.svd(core, full_matrices=False)
    npair = int(np.sum(sig > floor))
    return qa @ x[:, :npair], qb @ yt[:npair].T


def decouple(problem: Problem, weights: Sequence[np.ndarray]) -> DecoupledInit:
    """Find the channels of a decoupled init (any D ≥ 2) and measure how far ``weights`` are from one.

    Frames: Σ31 = U S Vᵀ from ``mode_basis`` (thin). Non-zero singular values are grouped into degenerate
    blocks, each rotated (only if needed) so that W_1ᵀW_1, W_DW_Dᵀ and W = W_D⋯W_1 are diagonal in it. The null
    block (s = 0: everything orthogonal to the non-zero modes, never given a basis) is handled by projections:
    its part Pu W Pv of W is paired by a thin SVD (Pu = I − U_nzU_nzᵀ, Pv likewise), and what is left of
    W_1 Pv and (D = 2) Pu W_D after removing the pairs gives the unpaired input-only / output-only channels
    (their singular vectors, descending). Null directions that every layer maps to round-off
    (≤ ROUNDOFF_RTOL·‖W_l‖_F) carry no channel: their amplitudes are 0 and stay 0 (also under weight decay),
    so they change neither the weights, the strengths nor the deviation. For D ≥ 3 output-only directions have
    zero amplitudes in every layer (nothing reaches them from the input) and any W_D component along them shows
    up as a reconstruction error. Everything is thin: k + O(hidden) channels, matrices n × (k + hidden).
    Hidden directions are then propagated: for two layers from whichever of W21 v, W32ᵀ u is larger, for D ≥ 3
    forward from v. The init is decoupled iff ``deviation`` (see ``DecoupledInit``) ≤ ALIGN_RTOL.
    """
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    d = len(ws)
    b = mode_basis(problem)
    k = b.s.size
    s_max = float(b.s[0]) if k else 0.0
    nz = np.flatnonzero(b.s > S_ZERO_RTOL * s_max) if s_max > 0 else np.zeros(0, dtype=int)
    w = ws[0]
    for wl in ws[1:]:
        w = wl @ w
    n_first = float(np.linalg.norm(ws[0]))
    n_last = float(np.linalg.norm(ws[-1]))
    n_prod = float(np.linalg.norm(w))
    ins, outs, svals = [], [], []
    rotated = False
    # degenerate blocks of non-zero singular values
    start = 0
    while start < nz.size:
        stop = start + 1
        while stop < nz.size and b.s[nz[stop - 1]] - b.s[nz[stop]] <= DEGENERATE_RTOL * s_max:
            stop += 1
        g = nz[start:stop]
        vg, ug = b.v[:, g], b.u[:, g]
        if g.size > 1:
            p, q = ws[0] @ vg, ws[-1].T @ ug
            rot = _block_rotation(p.T @ p, q.T @ q, ug.T @ w @ vg, max(n_first, n_last, n_prod) ** 2)
            if not np.allclose(rot, np.eye(g.size)):
                rotated = True
            vg, ug = vg @ rot, ug @ rot
        ins.append(vg)
        outs.append(ug)
        svals.append(np.full(g.size, float(np.mean(b.s[g]))))
        start = stop
    # null block (s = 0), by projections off the non-zero modes
    v_nz, u_nz = b.v[:, nz], b.u[:, nz]
    first_null = _project_out(v_nz, ws[0].T).T            # W_1 Pv   (h_1 × n_in)
    last_null = _project_out(u_nz, ws[-1])                 # Pu W_D   (n_out × h_D)
    mid = None
    for wl in ws[1:-1]:
        mid = wl if mid is None else wl @ mid
    out_pair, in_pair = _null_pairs(last_null, mid, first_null,
                                    ALIGN_RTOL * max(n_prod, n_first * n_last, 1e-300))
    out_pair, in_pair = _reorthonormalise(u_nz, out_pair), _reorthonormalise(v_nz, in_pair)
    if in_pair.shape[1]:
        rotated = True
        ins.append(in_pair)
        outs.append(out_pair)
        svals.append(np.zeros(in_pair.shape[1]))
    # unpaired: what is left of W_1 (input side) and, for D = 2, of W_D (output side)
    rest_in = _side_channels(_project_out(in_pair, first_null.T), ROUNDOFF_RTOL * n_first, np.hstack([v_nz, in_pair]))
    ins.append(rest_in)
    outs.append(np.zeros((problem.n_out, rest_in.shape[1])))
    svals.append(np.zeros(rest_in.shape[1]))
    if d == 2:
        rest_out = _side_channels(_project_out(out_pair, last_null), ROUNDOFF_RTOL * n_last, np.hstack([u_nz, out_pair]))
        ins.append(np.zeros((problem.n_in, rest_out.shape[1])))
        outs.append(rest_out)
        svals.append(np.zeros(rest_out.shape[1]))
    inp = np.hstack(ins) if ins else np.zeros((problem.n_in, 0))
    out = np.hstack(outs) if outs else np.zeros((problem.n_out, 0))
    s = np.concatenate(svals) if svals else np.zeros(0)
    m = s.size
    amps = np.zeros((m, d))
    frames = [inp] + [np.zeros((wl.shape[0], m)) for wl in ws[:-1]] + [out]
    # images of size round-off (≤ ROUNDOFF_RTOL·‖W_l‖_F) carry no direction: normalising them would invent one
    if d == 2:
        p = ws[0] @ inp                      # W21 v per channel (n_h × m)
        q = ws[1].T @ out                    # W32ᵀ u per channel
        npn, nqn = np.linalg.norm(p, axis=0), np.linalg.norm(q, axis=0)
        npn[npn <= ROUNDOFF_RTOL * n_first] = 0.0
        nqn[nqn <= ROUNDOFF_RTOL * n_last] = 0.0
        for ch in range(m):
            if npn[ch] >= nqn[ch] and npn[ch] > 0:
                r = p[:, ch] / npn[ch]
                amps[ch] = (npn[ch], q[:, ch] @ r)
            elif nqn[ch] > 0:
                r = q[:, ch] / nqn[ch]
                amps[ch] = (p[:, ch] @ r, nqn[ch])
            else:
                continue
            frames[1][:, ch] = r
    else:
        cur = inp.copy()
        for l in range(d - 1):
            h = ws[l] @ cur
            nrm = np.linalg.norm(h, axis=0)
            nrm[nrm <= ROUNDOFF_RTOL * float(np.linalg.norm(ws[l]))] = 0.0
            amps[:, l] = nrm
            with np.errstate(invalid="ignore", divide="ignore"):
                cur = np.where(nrm > 0, h / np.where(nrm > 0, nrm, 1.0), 0.0)
            frames[l + 1] = cur
        amps[:, d - 1] = np.einsum("om,om->m", out, ws[d - 1] @ cur)
    # deviation: reconstruction of every layer, orthonormality of hidden frames, balance (D ≥ 3)
    dev = 0.0
    for l, wl in enumerate(ws):
        rec = (frames[l + 1] * amps[:, l]) @ frames[l].T
        nrm = float(np.linalg.norm(wl))
        if nrm > 0:
            dev = max(dev, float(np.linalg.norm(wl - rec)) / nrm)
    for l in range(1, d):
        r = frames[l]
        wgt = np.maximum(np.abs(amps[:, l - 1]), np.abs(amps[:, l]))
        gram = (r.T @ r) * np.outer(wgt, wgt)
        scale = max(float(np.linalg.norm(ws[l - 1])), float(np.linalg.norm(ws[l]))) ** 2
        if scale > 0:
            dev = max(dev, _offdiag_max(gram) / scale)
    if d >= 3:
        dev = max(dev, balance_deviation(ws))
    return DecoupledInit(s=s, frames=frames, amps=amps, deviation=dev, rotated=rotated, weights0=ws)


def balance_deviation(weights: Sequence[np.ndarray]) -> float:
    """max_l max |W_{l+1}ᵀW_{l+1} − W_lW_lᵀ| / max(‖W_{l+1}‖²_F, ‖W_l‖²_F): 0 for a balanced init (§4a)."""
    dev = 0.0
    for l in range(len(weights) - 1):
        a, b = weights[l], weights[l + 1]
        scale = max(float(np.sum(a * a)), float(np.sum(b * b)))
        if scale > 0:
            dev = max(dev, float(np.max(np.abs(b.T @ b - a @ a.T))) / scale)
    return dev


# ------------------------------------------------------------------------------------------------
# the exact method: choose the closed form


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


MODEL_SHALLOW = "shallow_closed_form"
MODEL_MODES = "saxe_decoupled_modes"
MODEL_DEEP = "saxe_deep_balanced_modes"
MODEL_RICCATI = "riccati_lambda_balanced"

_FIX_FLOW = 'use method "flow" (numerical gradient flow), which has no such condition'


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
                                    "exact for any Σ11 and weight decay (reference §7a)")
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
                                  f"with s − σγ/2 (reference §1a/§1d/§5e)", c=c, decoupled=dec)
    if dec.deviation <= ALIGN_RTOL:
        if d == 2:
            return _Plan(MODEL_MODES, f"Σ11 = c·I (c = {c:.6g}), init aligned with Σ31 (misalignment "
                                      f"{dec.deviation:.2g}): exact per-mode solutions, balanced/anti-balanced/"
                                      f"unbalanced (reference §1a, §1d, §1e, §5e)", c=c, decoupled=dec)
        return _Plan(MODEL_DEEP, f"Σ11 = c·I (c = {c:.6g}), balanced init aligned with Σ31 (misalignment "
                                 f"{dec.deviation:.2g}): exact per-mode solutions of du/dt = 2D|u|^(2−2/D)(s − cu) "
                                 f"(reference §2, §5e)", c=c, decoupled=dec)
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
                                f"{bdev:.2g}): exact matrix Riccati solution (reference §3), no alignment needed; "
                                f"only W32W21 and the Gram blocks W21ᵀW21, W32W32ᵀ are determined", c=c, lam=lam)


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
              weight_decay: float = 0.0) -> ExactRun:
    """Evaluate the applicable closed form at ``times`` (see ``check_exact``; raises ExactNotApplicableError).

    D = 1: shallow solution (any Σ11, any γ). D ≥ 2 with Σ11 = cI and an aligned decoupled init: per-mode
    formulas (D = 2 any a, b per mode; D ≥ 3 balanced; γ > 0 only for balanced D = 2), weights reconstructed
    exactly. D = 2, γ = 0, λ-balanced (aligned or not): chunked Riccati, weights None.
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
                        plan.assumptions)
    if plan.model == MODEL_RICCATI:
        sol = riccati_flow(problem.sigma31, ws[0], ws[1], t, plan.c, basis=mode_basis(problem))
        return ExactRun(t, sol.product, None, riccati_gradient_norm(problem, sol), plan.model,
                        plan.assumptions, sol.w21_gram)
    dec = plan.decoupled
    amps, u = decoupled_flow(dec, t, plan.c, weight_decay)
    weights = dec.weights_at(amps)
    product = dec.product_at(u)
    return ExactRun(t, product, weights, _gradient_norm_stack(problem, weights, weight_decay), plan.model,
                    plan.assumptions)
