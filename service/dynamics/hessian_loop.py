"""Compiled Hessian-vector products of L and a Lanczos iteration for the top eigenvalue (numba), for ``sharpness``.

Products (1-based layers, W_l = layer l − 1 of ``gd_loop``'s flat layout, all float64): per point, ``hvp_setup``
forms P_l = W_l⋯W_1 (l ≥ 2; P_1 = W_1), S_l = W_D⋯W_{l+1} (l ≤ D − 2; S_{D−1} = W_D), E = Σ31 − P_D Σ11,
EP_l = E P_{l−1}ᵀ (l ≥ 2; EP_1 = E) and SE_l = S_lᵀ E (l ≤ D − 1; SE_D = E). ``hvp`` then evaluates
``sharpness``'s formula

    (H V)_l = 2 G_l P_{l−1}ᵀ − 2 Ṡ_lᵀ EP_l − 2 SE_l Ṗ_{l−1}ᵀ,     G_D = Ẇ Σ11,  G_{l−1} = W_lᵀ G_l

(the first term is 2 G_1 at l = 1, the second absent at l = D, the third at l = 1) with the tangents
Ṗ_1 = V_1, Ṗ_l = V_l P_{l−1} + W_l Ṗ_{l−1}, Ẇ = Ṗ_D; Ṡ_{D−1} = V_D, Ṡ_l = Ṡ_{l+1} W_{l+1} + S_{l+1} V_{l+1}:
seven GEMMs per product for two layers, each straight to BLAS (``gd_loop.gemm``).

Lanczos (``lanczos_top``): the three-term recurrence H q_j = β_{j−1} q_{j−1} + α_j q_j + β_j q_{j+1} from a given
unit start vector, without reorthogonalisation: for the extreme eigenvalue the top Ritz value θ of the tridiagonal
T_m converges from below to λ_max(H) and its residual ‖H y − θ y‖ = β_m |s_m| (s_m: last entry of T_m's top
eigenvector) stays a valid estimate in floating point (Paige 1976; the lost orthogonality only adds copies of
converged Ritz values, which do not affect the top one). θ and s_m come from ``_top_ritz`` (bisection on Sturm
counts to a bracket, inverse iteration from above it, Rayleigh quotient), O(m) per step. Stop when
β_m |s_m| ≤ tol · ‖T_m‖₂, or when β_m vanishes (an invariant subspace: T_m's top eigenvalue is then exact).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import gd_loop, kernel_cache
from .gd_loop import CACHE, _layers, gemm

# Lanczos steps between convergence tests once past the 8th
CHECK_STRIDE = 4

# the setup and tangent buffers of one shape: kinds (rows of the start table) and their per-layer sizes
_P, _S, _E, _EP, _SE, _PD, _F, _SD, _G = range(9)


@njit(cache=CACHE, nogil=True)
def hvp_plan(dims):
    """Start of each buffer in the flat workspace (table [kind, l], 1-based l; −1 where unused) and its length."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[d]
    starts = np.full((9, d + 1), -1, dtype=np.int64)
    pos = 0
    for l in range(2, d + 1):          # P_l
        starts[_P, l] = pos
        pos += dims[l] * n_in
    for l in range(1, d - 1):          # S_l, l ≤ D − 2
        starts[_S, l] = pos
        pos += n_out * dims[l]
    starts[_E, 0] = pos
    pos += n_out * n_in
    for l in range(2, d + 1):          # EP_l
        starts[_EP, l] = pos
        pos += n_out * dims[l - 1]
    for l in range(1, d):              # SE_l
        starts[_SE, l] = pos
        pos += dims[l] * n_in
    for l in range(2, d + 1):          # Ṗ_l
        starts[_PD, l] = pos
        pos += dims[l] * n_in
    starts[_F, 0] = pos
    pos += n_out * n_in
    for l in range(1, d - 1):          # Ṡ_l, l ≤ D − 2
        starts[_SD, l] = pos
        pos += n_out * dims[l]
    for l in range(1, d):              # G_l, l ≤ D − 1
        starts[_G, l] = pos
        pos += dims[l] * n_in
    return starts, pos + 2             # + α/β scratch of gemm


@njit(cache=CACHE, nogil=True)
def _seg(buf, start, rows, cols):
    return buf[start:start + rows * cols].reshape((rows, cols))


@njit(cache=CACHE, nogil=True)
def _prefix(ws, buf, st, dims, l):
    """P_l (l ≥ 1): W_1 itself for l = 1."""
    return ws[0] if l == 1 else _seg(buf, st[_P, l], dims[l], dims[0])


@njit(cache=CACHE, nogil=True)
def _suffix(ws, buf, st, dims, l):
    """S_l for 1 ≤ l ≤ D − 1: W_D itself for l = D − 1."""
    d = dims.size - 1
    return ws[d - 1] if l == d - 1 else _seg(buf, st[_S, l], dims[d], dims[l])


@njit(cache=CACHE, nogil=True)
def hvp_setup(w, dims, offs, s11, s31, buf, st):
    """The per-point products P_l, S_l, E, EP_l, SE_l of the weights ``w`` (flat) into ``buf``."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[d]
    ws = _layers(w, dims, offs)
    scal = buf[buf.size - 2:]
    for l in range(2, d + 1):
        gemm(False, False, 1.0, ws[l - 1], _prefix(ws, buf, st, dims, l - 1), 0.0, _seg(buf, st[_P, l], dims[l], n_in),
             scal)
    e = _seg(buf, st[_E, 0], n_out, n_in)
    e[:, :] = s31
    gemm(False, False, -1.0, _prefix(ws, buf, st, dims, d), s11, 1.0, e, scal)
    for l in range(d - 2, 0, -1):
        gemm(False, False, 1.0, _suffix(ws, buf, st, dims, l + 1), ws[l], 0.0, _seg(buf, st[_S, l], n_out, dims[l]),
             scal)
    for l in range(2, d + 1):
        gemm(False, True, 1.0, e, _prefix(ws, buf, st, dims, l - 1), 0.0, _seg(buf, st[_EP, l], n_out, dims[l - 1]),
             scal)
    for l in range(1, d):
        gemm(True, False, 1.0, _suffix(ws, buf, st, dims, l), e, 0.0, _seg(buf, st[_SE, l], dims[l], n_in), scal)


@njit(cache=CACHE, nogil=True)
def hvp(w, dims, offs, s11, buf, st, v, out):
    """out ← H v (flat, ``w``'s layout) at the point ``hvp_setup`` prepared in ``buf`` (module docstring)."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[d]
    ws = _layers(w, dims, offs)
    vs = _layers(v, dims, offs)
    hs = _layers(out, dims, offs)
    scal = buf[buf.size - 2:]
    e = _seg(buf, st[_E, 0], n_out, n_in)
    for l in range(2, d + 1):  # Ṗ_l = V_l P_{l−1} + W_l Ṗ_{l−1}
        pd = _seg(buf, st[_PD, l], dims[l], n_in)
        gemm(False, False, 1.0, vs[l - 1], _prefix(ws, buf, st, dims, l - 1), 0.0, pd, scal)
        gemm(False, False, 1.0, ws[l - 1], vs[0] if l == 2 else _seg(buf, st[_PD, l - 1], dims[l - 1], n_in), 1.0, pd,
             scal)
    f = _seg(buf, st[_F, 0], n_out, n_in)
    gemm(False, False, 1.0, vs[0] if d == 1 else _seg(buf, st[_PD, d], n_out, n_in), s11, 0.0, f, scal)
    for l in range(d - 2, 0, -1):  # Ṡ_l = Ṡ_{l+1} W_{l+1} + S_{l+1} V_{l+1}
        sd = _seg(buf, st[_SD, l], n_out, dims[l])
        gemm(False, False, 1.0, vs[d - 1] if l == d - 2 else _seg(buf, st[_SD, l + 1], n_out, dims[l + 1]), ws[l],
             0.0, sd, scal)
        gemm(False, False, 1.0, _suffix(ws, buf, st, dims, l + 1), vs[l], 1.0, sd, scal)
    g = f
    for l in range(d, 0, -1):
        h = hs[l - 1]
        if l >= 2:
            gemm(False, True, 2.0, g, _prefix(ws, buf, st, dims, l - 1), 0.0, h, scal)
        else:
            hf, gf = h.reshape(h.size), g.reshape(g.size)
            for i in range(hf.size):
                hf[i] = 2.0 * gf[i]
        if l < d:
            sd = vs[d - 1] if l == d - 1 else _seg(buf, st[_SD, l], n_out, dims[l])
            gemm(True, False, -2.0, sd, e if l == 1 else _seg(buf, st[_EP, l], n_out, dims[l - 1]), 1.0, h, scal)
        if l >= 2:
            se = e if l == d else _seg(buf, st[_SE, l], dims[l], n_in)
            gemm(False, True, -2.0, se, vs[0] if l == 2 else _seg(buf, st[_PD, l - 1], dims[l - 1], n_in), 1.0, h,
                 scal)
            gn = _seg(buf, st[_G, l - 1], dims[l - 1], n_in)
            gemm(True, False, 1.0, ws[l - 1], g, 0.0, gn, scal)
            g = gn


# ------------------------------------------------------------------------------------------------
# Lanczos


@njit(cache=CACHE, nogil=True)
def _sturm_below(alpha, beta, m, x):
    """Number of eigenvalues of the tridiagonal T_m (diagonal α, off-diagonal β) below x (LDLᵀ pivots' signs)."""
    count = 0
    q = 1.0
    tiny = 1e-300
    for i in range(m):
        q = alpha[i] - x - (beta[i - 1] * beta[i - 1] / q if i > 0 else 0.0)
        if q == 0.0:
            q = -tiny
        if q < 0.0:
            count += 1
    return count


@njit(cache=CACHE, nogil=True)
def _bisect_extreme(alpha, beta, m, top, steps):
    """A bracket end of T_m's largest (``top``: the upper end, ≥ λ_max) or smallest (the lower end, ≤ λ_min)
    eigenvalue after ``steps`` bisections of its Gershgorin interval on Sturm counts (width 2^−steps of it)."""
    lo, hi = np.inf, -np.inf
    for i in range(m):
        r = (abs(beta[i - 1]) if i > 0 else 0.0) + (abs(beta[i]) if i < m - 1 else 0.0)
        lo = min(lo, alpha[i] - r)
        hi = max(hi, alpha[i] + r)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        below = _sturm_below(alpha, beta, m, mid)
        if top:
            if below == m:
                hi = mid
            else:
                lo = mid
        else:
            if below == 0:
                lo = mid
            else:
                hi = mid
    return hi if top else lo


@njit(cache=CACHE, nogil=True)
def _top_ritz(alpha, beta, m, scale_hint, x, cp, dp):
    """(θ, |s_m|): T_m's largest eigenvalue and the last entry of its unit eigenvector.

    A bracket end σ₀ ≥ λ_max to 2^−32 of the Gershgorin width (bisection on Sturm counts), then two steps of
    inverse iteration with σ = σ₀ + 1e-12·scale (T_m − σI is negative definite, so Thomas' algorithm without
    pivoting is stable; each step shrinks the other eigenvectors' share by (σ − λ_max)/(σ − λ_2)), and θ = xᵀT_m x,
    the Rayleigh quotient: its error is the square of the vector's.
    """
    sigma = _bisect_extreme(alpha, beta, m, True, 32) + 1e-12 * scale_hint
    for i in range(m):
        x[i] = 1.0
    for _ in range(2):
        for i in range(m):
            denom = alpha[i] - sigma - (beta[i - 1] * cp[i - 1] if i > 0 else 0.0)
            cp[i] = beta[i] / denom if i < m - 1 else 0.0
            dp[i] = (x[i] - (beta[i - 1] * dp[i - 1] if i > 0 else 0.0)) / denom
        x[m - 1] = dp[m - 1]
        for i in range(m - 2, -1, -1):
            x[i] = dp[i] - cp[i] * x[i + 1]
        norm = 0.0
        for i in range(m):
            norm += x[i] * x[i]
        norm = np.sqrt(norm)
        for i in range(m):
            x[i] /= norm
    theta = 0.0
    for i in range(m):
        tx = alpha[i] * x[i]
        if i > 0:
            tx += beta[i - 1] * x[i - 1]
        if i < m - 1:
            tx += beta[i] * x[i + 1]
        theta += x[i] * tx
    return theta, abs(x[m - 1])


@njit(cache=CACHE, nogil=True)
def lanczos_top(w, dims, offs, s11, buf, st, v0, tol, max_iter, q, qprev, r, alpha, beta, x, cp, dp):
    """(θ, residual estimate, iterations, converged) for the top eigenvalue of H at the point in ``buf``.

    Starts from v0 (normalised here); q, qprev, r: vectors of the weights' length; α, β, x, cp, dp: ≥ max_iter.
    Convergence (module docstring): β_m |s_m| ≤ tol · ‖T_m‖₂, tested at steps 4…8, then every CHECK_STRIDE steps.
    """
    n = v0.size
    norm = np.sqrt(np.sum(v0 * v0))
    for i in range(n):
        q[i] = v0[i] / norm
        qprev[i] = 0.0
    bprev = 0.0
    theta, resid = 0.0, np.inf
    for j in range(max_iter):
        hvp(w, dims, offs, s11, buf, st, q, r)
        a = 0.0
        for i in range(n):
            a += q[i] * r[i]
        b2 = 0.0
        for i in range(n):
            ri = r[i] - a * q[i] - bprev * qprev[i]
            r[i] = ri
            b2 += ri * ri
        b = np.sqrt(b2)
        alpha[j] = a
        beta[j] = b
        m = j + 1
        # tests at m = 4…8, then every CHECK_STRIDE steps: a test (two bisections, O(m·40) dependent divisions)
        # costs about an HVP at (32,32,32) and m = 48; the stride wastes at most CHECK_STRIDE − 1 products
        if (m >= 4 and (m <= 8 or m % CHECK_STRIDE == 0)) or m == n or m == max_iter or b <= 1e-14 * abs(a):
            # ‖T_m‖₂ to ~1e-3 (12 bisections of each end): a scale for the tests, not a result
            scale = max(abs(_bisect_extreme(alpha, beta, m, True, 12)), abs(_bisect_extreme(alpha, beta, m, False, 12)),
                        1e-300)
            theta, last = _top_ritz(alpha, beta, m, scale, x, cp, dp)
            if b <= 1e-14 * scale or m == n:  # invariant subspace (or the whole space): T_m's top is exact
                return theta, 0.0, m, True
            resid = b * last
            if resid <= tol * scale:
                return theta, resid, m, True
        for i in range(n):
            qprev[i] = q[i]
            q[i] = r[i] / b
        bprev = b
    return theta, resid, max_iter, False


@njit(cache=CACHE, nogil=True)
def top_sharpness(flat, dims, offs, s11, s31, v0, tol, max_iter, theta, resid, iters, converged, buf, st, q, qprev, r,
                  alpha, beta, x, cp, dp):
    """``lanczos_top`` at every record (row t of ``flat``, T × weights, float64) into theta[t], resid[t], iters[t],
    converged[t]."""
    for t in range(flat.shape[0]):
        w = flat[t]
        hvp_setup(w, dims, offs, s11, s31, buf, st)
        th, rs, it, ok = lanczos_top(w, dims, offs, s11, buf, st, v0, tol, max_iter, q, qprev, r, alpha, beta, x, cp,
                                     dp)
        theta[t] = th
        resid[t] = rs
        iters[t] = it
        converged[t] = ok


# these kernels compile gd_loop's kernels and constants into their machine code: numba watches only this file
kernel_cache.stale_with(globals(), gd_loop)
