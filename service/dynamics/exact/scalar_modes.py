"""Two-layer scalar mode solutions (docs/theory.md#saxe-two-layer); our units τ = 1/2.

Two-layer modes for any (a0, b0) (balanced, anti-balanced, unbalanced in hyperbolic coordinates), with weight
decay for |a0| = |b0|, and learning times t(u0 → uf) and half-way times for all of them.

Σ11 = c·I ("scaled whitening", docs/theory.md#whitening) is handled by the exact rescaling W̃_l = c^{1/2} W_l:
W̃ follows the c = 1 flow with the same Σ31 and the same t, so every formula below is the c = 1 formula applied
to ũ = c·u, ã = √c·a.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExactNotApplicableError, InvalidParameterError
from ._common import NEAR_BALANCED_RTOL, _as_float_arrays, _phi


def balanced_mode(t, s, u0, c=1.0, weight_decay=0.0):
    """Balanced (a0 = b0, u0 > 0) or anti-balanced (a0 = −b0, u0 < 0) two-layer mode strength u(t).

    One formula for both signs σ = sign(u0), obtained by solving the Bernoulli equation
    du/dt = 4|u| (s' − c u) with s' = s − σγ/2 (weight decay γ keeps |a| = |b|):

        u(t) = σ / ( e^{−4σ s' t} / |u0| + 4c·φ(4σ s', t) ),   φ(r, t) = (1 − e^{−r t}) / r

    For σ = +1 this is u = (s/c) e^{4st} / (e^{4st} − 1 + s/(c u0)) (docs/theory.md#whitening; for c = 1
    docs/theory.md#saxe-balanced); for σ = −1 it is u = s u0 e^{−4st} / (s − c u0 + c u0 e^{−4st})
    (docs/theory.md#saxe-anti-balanced): the mode decays to the saddle u = 0. For s' = 0
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
    """Unbalanced two-layer mode, c = 1 units: u(t) for s > 0, c0 = |a0² − b0²|/2 > 0
    (docs/theory.md#saxe-unbalanced).

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
    * |a0| = |b0| (within NEAR_BALANCED_RTOL): ``balanced_mode`` (docs/theory.md#saxe-balanced), any γ ≥ 0;
    * otherwise (γ must be 0): the hyperbolic solution (docs/theory.md#saxe-unbalanced; any sign of a0·b0), or
      for s = 0
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
    """Time for a two-layer mode to go from u0 = a0·b0 to u_final (docs/theory.md#saxe-learning-time);
    NaN if never reached.

    Balanced (σ = sign u0, s' = s − σγ/2): from 1/u = c/s' + e^{−4σs't}(…),
        t = ln[ (1/u0 − c/s')/(1/uf − c/s') ] / (4 s')      (σ = +1; for γ = 0 (1/(4s)) ln[uf(s − cu0)/(u0(s − cuf))])
        t = ln[ (1/|uf| + c/s')/(1/|u0| + c/s') ] / (4 s')  (σ = −1), and (1/|uf| − 1/|u0|)/(4c) for s' = 0.
    Unbalanced: t = ln[ρ(x0)/ρ(xf)] / (4 sc) with ρ = (x − x₊)/(x − x₋) (docs/theory.md#saxe-unbalanced,
    equivalent to the artanh form), or (arsinh(c0/uf) − arsinh(c0/u0)) / (4c0) for s = 0; all in c = 1 units
    (ũ = c u).
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
    """t½: time for a two-layer mode to reach half its learned value s/(2c): ln(s/(c u0) − 1)/(4s) when
    balanced (docs/theory.md#saxe-learning-time)."""
    s, a0, b0, c = _as_float_arrays(s, a0, b0, c)
    return _reach(learning_time_two_layer, s / (2.0 * c), a0 * b0, s, a0, b0, c, weight_decay)


def _reach(time_fn, target, u0, *args):
    """Time of first reaching ``target`` (0 if u0 is already at/past it on the way up), NaN if never."""
    target, u0 = _as_float_arrays(target, u0)
    t = np.asarray(time_fn(target, *args), dtype=np.float64)
    sgn = np.sign(target)
    return np.where((sgn != 0) & (u0 * sgn >= target * sgn), 0.0, t)
