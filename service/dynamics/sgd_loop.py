"""Compiled loop of momentum GD and mini-batch SGD (numba), beside ``gd_loop``'s plain GD loop (untouched).

One step at step k, weights W_k (flat ``w``, ``gd_loop``'s layout) and momentum buffer v:

    g = ∂L_k/∂W + γ W_k          L_k: the full loss (momentum GD) or the loss of step k's mini-batch (SGD)
    v ← μ v + g                  (v ← g at k = 0: PyTorch initialises its buffer with the first gradient)
    d = g + μ v  (nesterov),  v  (heavy ball),  g  (μ = 0)
    W_{k+1} = W_k − η d

Gradient sources (``source``), all through ``gd_loop``'s BLAS calls (C ← α op(A) op(B) + β C):

* ``FULL``: the problem's Σ11, Σ31 (``gd_loop._raw_gradients``, the products of GD's checked step).
* ``BATCH_CORRELATIONS``: the batch's rows gathered into X_b, Y_b; Σ11_b = X_bᵀX_b/|b| and Σ31_b = Y_bᵀX_b/|b|
  (two GEMMs), then ``_raw_gradients`` on them: the GD step on the batch loss, literally.
* ``BATCH_SAMPLES``: the same gradient by backpropagation through the batch, without forming Σ11_b:
  H_0 = X_b, H_l = H_{l−1} W_lᵀ, R = Y_b − H_{D−1} W_Dᵀ (so E_b = Σ31_b − WΣ11_b = RᵀX_b/|b|), Δ_D = R,
  Δ_{l−1} = Δ_l W_l, and −½ ∂L_b/∂W_l = Δ_lᵀ H_{l−1} / |b|. It costs O(|b|·weights) against
  O(n_in·weights + |b|·n_in²): ``sgd.plan_source`` picks the cheaper by FLOPs (small batches, wide inputs).

Batches: step k of an SGD run is batch j = k mod S of epoch e = ⌊k/S⌋ (S = ⌈N/B⌉ steps per epoch): the rows
``order[(e − e0)·N + j·B :][: min(B, N − j·B)]`` of the samples, where ``order`` holds the permutations of
epochs e0, e0 + 1, … back to back (the driver, ``sgd``, draws them). No batch is drawn at k = n_steps.

Checks at every step (the gradient is formed anyway, so there is no replay as in ``gd_loop``): DIVERGED when
‖g‖² is not finite or exceeds the blow-up threshold (set from the first gradient, as ``gd_loop`` does);
CONVERGED (only with tol2 ≥ 0, momentum GD) when ‖g‖² ≤ tol2 and μ²‖v‖² ≤ tol2, i.e. the gradient and what the
buffer still carries are both below the tolerance; at k = n_steps a batch run checks that W is finite (no
batch there), a full-batch run checks its gradient as GD does. Records are copies into ``snap`` as in GD. The
whole loop state lives in ``gd_loop.new_state``'s arrays (so ``gd.finish_run`` applies) and in v: cutting a run
into chunks changes no bit. fastmath is off: runs are reproducible bit for bit for a BLAS and thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import gd_loop, kernel_cache
from .gd_loop import (
    BLOW2,
    CACHE,
    COMPLETED,
    CONVERGED,
    DIVERGED,
    G2,
    POS,
    RUNNING,
    STATUS,
    K,
    _finish_gradient,
    _layers,
    _raw_gradients,
    gd_workspace,
    gemm,
)

FULL, BATCH_CORRELATIONS, BATCH_SAMPLES = 0, 1, 2


def batch_workspace_size(dims: np.ndarray, batch_size: int) -> int:
    """Length of the flat batch workspace (``batch_views``): X_b, Y_b, Σ11_b, Σ31_b, H_1…H_{D−1}, Δ_1…Δ_{D−1}."""
    d = dims.size - 1
    n_in, n_out = int(dims[0]), int(dims[-1])
    hidden = int(sum(int(dims[l]) for l in range(1, d)))
    return batch_size * (n_in + n_out) + n_in * n_in + n_out * n_in + 2 * batch_size * hidden + 8


@njit(cache=CACHE, nogil=True)
def _segment(buf, start, rows, cols):
    """rows × cols C-ordered view of buf[start:start + rows·cols]."""
    return buf[start:start + rows * cols].reshape((rows, cols))


@njit(cache=CACHE, nogil=True)
def _batch_starts(dims, bmax):
    """Starts of X_b, Y_b, Σ11_b, Σ31_b, H_l (l = 1…D−1) and Δ_l (l = 1…D−1) in the batch workspace."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[d]
    starts = np.empty(4 + 2 * d, dtype=np.int64)
    pos = 0
    starts[0] = pos
    pos += bmax * n_in
    starts[1] = pos
    pos += bmax * n_out
    starts[2] = pos
    pos += n_in * n_in
    starts[3] = pos
    pos += n_out * n_in
    for l in range(1, d):
        starts[3 + l] = pos
        pos += bmax * dims[l]
    for l in range(1, d):
        starts[3 + d + l] = pos
        pos += bmax * dims[l]
    return starts


@njit(cache=CACHE, nogil=True)
def _gather(x, y, order, base, size, xb, yb):
    """Rows order[base:base + size] of the samples into X_b (size × n_in) and Y_b (size × n_out)."""
    for r in range(size):
        i = order[base + r]
        for j in range(x.shape[1]):
            xb[r, j] = x[i, j]
        for j in range(y.shape[1]):
            yb[r, j] = y[i, j]


@njit(cache=CACHE, nogil=True)
def _batch_gradients(ws, gs, dims, m0, x, y, order, base, size, bbuf, starts, source, prefix, chain, back, e, scal):
    """gs[l] ← −½ ∂L_b/∂W_l for the batch order[base:base + size] (see the module docstring's two sources)."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[d]
    xb = _segment(bbuf, starts[0], size, n_in)
    yb = _segment(bbuf, starts[1], size, n_out)
    _gather(x, y, order, base, size, xb, yb)
    inv = 1.0 / size
    if source == BATCH_CORRELATIONS:
        s11b = _segment(bbuf, starts[2], n_in, n_in)
        s31b = _segment(bbuf, starts[3], n_out, n_in)
        gemm(True, False, inv, xb, xb, 0.0, s11b, scal)
        gemm(True, False, inv, yb, xb, 0.0, s31b, scal)
        _raw_gradients(ws, gs, s11b, s31b, m0, prefix, chain, back, e, scal)
        return
    # forward: H_l = H_{l−1} W_lᵀ (H_0 = X_b), then R = Y_b − H_{D−1} W_Dᵀ in place of Y_b
    for l in range(1, d):
        h_prev = xb if l == 1 else _segment(bbuf, starts[3 + l - 1], size, dims[l - 1])
        gemm(False, True, 1.0, h_prev, ws[l - 1], 0.0, _segment(bbuf, starts[3 + l], size, dims[l]), scal)
    h_last = xb if d == 1 else _segment(bbuf, starts[3 + d - 1], size, dims[d - 1])
    gemm(False, True, -1.0, h_last, ws[d - 1], 1.0, yb, scal)
    # backward: layer l (1-based) gets Δ_lᵀ H_{l−1} / |b|, and Δ_{l−1} = Δ_l W_l
    delta = yb
    for l in range(d, 0, -1):
        h_prev = xb if l == 1 else _segment(bbuf, starts[3 + l - 1], size, dims[l - 1])
        gemm(True, False, inv, delta, h_prev, 0.0, gs[l - 1], scal)
        if l > 1:
            nd = _segment(bbuf, starts[3 + d + l - 1], size, dims[l - 1])
            gemm(False, False, 1.0, delta, ws[l - 1], 0.0, nd, scal)
            delta = nd


@njit(cache=CACHE, nogil=True)
def _momentum_update(w, g, v, eta, mu, nesterov, first):
    """v ← μv + g (v ← g when ``first``), d = g + μv (nesterov) or v (μ = 0: d = g), W ← W − η d, in place."""
    if mu == 0.0:
        for i in range(w.size):
            w[i] -= eta * g[i]
        return
    for i in range(w.size):
        gi = g[i]
        vi = gi if first else mu * v[i] + gi
        v[i] = vi
        if nesterov:
            w[i] -= eta * (gi + mu * vi)
        else:
            w[i] -= eta * vi


@njit(cache=CACHE, nogil=True)
def _squared_norm(a):
    acc = 0.0
    for i in range(a.size):
        acc += float(a[i]) * float(a[i])
    return acc


@njit(cache=CACHE, nogil=True)
def _all_finite(a):
    for i in range(a.size):
        if not np.isfinite(a[i]):
            return False
    return True


@njit(cache=CACHE, nogil=True)
def momentum_chunk(w, v, dims, offs, m0, s11, s31, source, x, y, order, e0, n_samples, batch_size, steps_per_epoch,
                   eta, decay, mu, nesterov, n_steps, rec, snap, tol2, blow_ratio, blow_floor, blow_cap, state, fstate,
                   k_stop, scratch, bbuf):
    """Advance a momentum-GD or SGD run from its state until its step reaches ``k_stop`` (exclusive) or it ends.

    ``w`` (flat weights, in place), ``v`` (momentum buffer, in place; unused for μ = 0), record steps ``rec`` into
    ``snap`` rows, loop state ``state``/``fstate`` (``gd_loop.new_state`` rows). ``source`` FULL uses Σ11, Σ31;
    the batch sources use the samples x, y (C order, the weights' dtype) and ``order`` (permutations of epochs
    e0, e0 + 1, … back to back; it must cover every step below ``k_stop``). ``scratch`` is ``gd_loop``'s workspace
    vector for this shape, ``bbuf`` the batch workspace (``batch_workspace_size``). η, γ, μ in the weights' dtype.
    """
    g, gs, prefix, chain, back, e, _, scal = gd_workspace(dims, offs, m0, scratch)
    ws = _layers(w, dims, offs)
    starts = _batch_starts(dims, batch_size)
    k = state[K]
    pos = state[POS]
    blow2 = fstate[BLOW2]
    g2 = fstate[G2]
    nrec = rec.size
    status = RUNNING
    while k < k_stop:
        if source == FULL or k < n_steps:
            if source == FULL:
                _raw_gradients(ws, gs, s11, s31, m0, prefix, chain, back, e, scal)
            else:
                epoch = k // steps_per_epoch
                j = k - epoch * steps_per_epoch
                first_row = j * batch_size
                size = min(batch_size, n_samples - first_row)
                _batch_gradients(ws, gs, dims, m0, x, y, order, (epoch - e0) * n_samples + first_row, size, bbuf,
                                 starts, source, prefix, chain, back, e, scal)
            g2 = _finish_gradient(w, g, decay)
            if blow2 < 0:
                blow2 = min(blow_ratio * max(np.sqrt(g2), blow_floor), blow_cap) ** 2
            if not g2 <= blow2:  # also NaN
                status = DIVERGED
                break
        elif not _all_finite(w):
            status = DIVERGED
            break
        if pos < nrec and rec[pos] == k:
            snap[pos, :] = w
            pos += 1
        if tol2 >= 0 and g2 <= tol2 and (k == 0 or mu * mu * _squared_norm(v) <= tol2):
            status = CONVERGED
            break
        if k == n_steps:
            status = COMPLETED
            break
        _momentum_update(w, g, v, eta, mu, nesterov, k == 0)
        k += 1
    state[K] = k
    state[POS] = pos
    state[STATUS] = status
    fstate[BLOW2] = blow2
    fstate[G2] = g2


# these kernels compile gd_loop's kernels and constants into their machine code: numba watches only this file
kernel_cache.stale_with(globals(), gd_loop)
