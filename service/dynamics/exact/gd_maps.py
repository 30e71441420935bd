"""Exact GD maps per mode for decoupled inits: a_l ← a_l(1 − ηγ) + 2η (Π_{m≠l} a_m)(s − c u)
(docs/theory.md#exact-gd-modes)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import kernel_cache

kernel_cache.install()  # several processes may compile into one cache (kernel_cache.py)


@njit(cache=True, nogil=True)
def _gd_modes_kernel(a0, s, c, eta, decay, rec_steps, rows, cols, coefs, resid, targets):
    """Per-mode GD map for a decoupled init, all layers at once (docs/theory.md#exact-gd-modes):

        a_l ← a_l (1 − ηγ) + 2η (Π_{m≠l} a_m)(s − c Π_m a_m)

    ``a0`` is (m, D); records the amplitudes at the sorted ``rec_steps``. The mode-basis strengths
    strength_α = resid_α + Σ coefs·u_ch (sparse rows/cols/coefs) are tracked every step to find the first step at
    which each reaches ``targets[α]`` (NaN target: skip); the crossing is returned as that step (GD moves in steps:
    the learning time is η times it), NaN if not reached.
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
                    cross[j] = step
            prev[j] = cur[j]
    return out, cross


def gd_mode_map(a0, s, learning_rate: float, steps, c: float = 1.0, weight_decay: float = 0.0) -> np.ndarray:
    """Exact GD on decoupled modes (docs/theory.md#exact-gd-modes): per-layer amplitudes (T, m, D) at the given
    step numbers.

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
    """u_k for a balanced decoupled mode under GD, u0 > 0: a_{k+1} = a_k + 2η a_k^{D−1}(s − c a_k^D)
    (docs/theory.md#exact-gd-modes)."""
    u0 = np.atleast_1d(np.asarray(u0, dtype=np.float64))
    a = np.abs(u0) ** (1.0 / depth)
    amps = np.repeat(a[:, None], depth, axis=1)
    amps[:, -1] *= np.where(u0 < 0, -1.0, 1.0)
    res = gd_mode_map(amps, s, learning_rate, steps, c)
    return np.prod(res, axis=2)
