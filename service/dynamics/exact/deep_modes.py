"""Deep balanced modes D ≥ 3 (docs/theory.md#saxe-deep; Σ11 = c·I as in docs/theory.md#whitening).

For depth D the mode ODE is du/dt = 2D |u|^{2−2/D} (s − c·u), derived from the per-layer equations and checked
against the matrix flow in tests/dynamics/test_exact.py. Solved through a closed-form antiderivative of the
learning-time integral, inverted by safeguarded Newton; learning times and half-way times likewise.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidParameterError
from ._common import _as_float_arrays
from .scalar_modes import _reach, balanced_mode, learning_time_two_layer

# ------------------------------------------------------------------------------------------------
# deep balanced modes D ≥ 3 (docs/theory.md#saxe-deep)
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
    """Strength u(t) of a balanced decoupled mode of a depth-D network (docs/theory.md#saxe-deep):

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
    """Time for a balanced depth-D mode to go from u0 to u_final (docs/theory.md#saxe-deep):

        t = ∫_{u0}^{uf} du / (2D |u|^{2−2/D}(s − c u)) = (G_σ(yf) − G_σ(y0)) / (2σ s κ^{D−2})

    evaluated in closed form (see G_σ above); NaN if u_final is not between u0 and the limit. D = 2 uses
    the two-layer closed form (docs/theory.md#saxe-learning-time). For small u0 it approaches
    τ/((D − 2) s u0^{(D−2)/D}) (docs/theory.md#saxe-deep, "Small initial strength").
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
