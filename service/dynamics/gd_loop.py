"""Compiled inner loop of gradient descent (numba): many steps per call, nothing per step in Python.

Layout. The D weight matrices live in one flat vector ``w``: layer l (0-based; layer 0 is W21) is
``w[offs[l]:offs[l+1]].reshape(dims[l+1], dims[l])`` with ``dims`` = (n_in, hidden…, n_out). Snapshots are
rows of a (T, len(w)) buffer, so recording is one contiguous copy.

Products go straight to BLAS ``xGEMM`` (C ← α op(A) op(B) + β C), row-major, through numpy's own OpenBLAS
(``cblas_xgemm`` of the scipy-openblas64 build numpy wheels bundle, see ``BLAS``): one BLAS, one thread pool in
the process. Where numpy has another BLAS, numba's entry point ``numba_xxgemm`` (scipy's BLAS) is used
instead. Why numpy's: OpenBLAS keeps idle threads spinning ~0.1 s after a multi-threaded call, so two
builds in one process slow each other after every switch; and its CBLAS entry, called by value, is a little
cheaper per small product than numba's (figures: docs/performance.md#one-blas). α and β let a step fold the
error E = Σ31 − WΣ11 and the update W ← (1 − ηγ)W + 2η(…) into the products, so a plain step touches
memory outside BLAS only to copy Σ31 into E and to update the first layer. Measured from 8×8 up, this beats
hand-written loops (which cannot vectorise well without fastmath) and a numpy loop, whose Python overhead per
call dominates small products (bench/results.md, the GD speed rows).

fastmath is off and every reduction runs in a fixed order: runs are reproducible bit for bit for a given
BLAS and thread count.

Checks. At every step k ≡ 0 (mod ``CHECK_EVERY``) and at the last one, a step computes the gradient
explicitly, its norm, and tests the stopping rules; the state is then saved. If a check finds the run
converged or blown up, the loop rewinds to the saved state and replays with a check at every step, so the
reported step is the first one that meets the rule and the state there is finite whenever it can be.
Checked and fused steps round differently (when γ > 0), so the checks sit at fixed step numbers and the
whole loop state (step, record position, status, saved state and its step, replay horizon, blow-up
threshold) lives in caller-owned arrays: cutting a run into chunks (for the worker hooks) or running it
inside a batch changes no bit. Status codes: RUNNING (chunk end reached), COMPLETED (last step reached),
CONVERGED, DIVERGED.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload
from numba.np.linalg import ensure_blas

from . import kernel_cache

RUNNING, COMPLETED, CONVERGED, DIVERGED = 0, 1, 2, 3

# Steps between explicit gradient checks. A check costs about two extra passes over the weights; 32 makes
# that < 1 % of a step at every size, and the replay after a positive check is at most 32 steps.
CHECK_EVERY = 32


def _numpy_cblas() -> str | None:
    """Path of numpy's bundled scipy-openblas64 library, loaded into LLVM's symbol table, or None when numpy
    has another BLAS or DLNSIM_KERNEL_BLAS=scipy asks for the portable path (then the kernels call scipy's
    BLAS through numba)."""
    if os.environ.get("DLNSIM_KERNEL_BLAS", "").strip().lower() == "scipy":
        return None
    try:
        import llvmlite.binding as llvm
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            path = lib.get("filepath") or ""
            if lib.get("internal_api") == "openblas" and "scipy_openblas64_" in os.path.basename(path):
                llvm.load_library_permanently(path)
                if llvm.address_of_symbol("scipy_cblas_dgemm64_") and llvm.address_of_symbol("scipy_cblas_sgemm64_"):
                    return path
    except Exception:  # noqa: BLE001 - any surprise: the portable path
        return None
    return None


# Which BLAS the kernels call: "numpy" (numpy's OpenBLAS through CBLAS) or "scipy" (numba_xxgemm).
NUMPY_CBLAS_PATH = _numpy_cblas()
BLAS = "numpy" if NUMPY_CBLAS_PATH else "scipy"
# Compiled kernels are cached on disk only with numpy's CBLAS: a cache written under one BLAS choice must
# never be loaded under the other (the choice is not part of numba's cache key).
CACHE = BLAS == "numpy"
kernel_cache.install()  # several processes may compile into one cache (kernel_cache.py)
if BLAS == "scipy":
    ensure_blas()  # makes numba's helper resolve scipy's BLAS (raises if scipy is missing)


def _gemm_signature(dt):
    p = types.CPointer(dt)
    return types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                      p, p, types.intp, p, types.intp, p, p, types.intp)


def _cblas_signature(dt):
    p = types.CPointer(dt)
    return types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, dt, p,
                      types.int64, p, types.int64, dt, p, types.int64)


# numba's C helper: numba_xxgemm(kind, transa, transb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc),
# column-major like Fortran BLAS. numpy's: cblas_xgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb,
# beta, c, ldc) by value, 64-bit integers (ILP64). Referenced by symbol name, so compiled callers can be cached.
_DGEMM = types.ExternalFunction("numba_xxgemm", _gemm_signature(types.float64))
_SGEMM = types.ExternalFunction("numba_xxgemm", _gemm_signature(types.float32))
_CBLAS_DGEMM = types.ExternalFunction("scipy_cblas_dgemm64_", _cblas_signature(types.float64))
_CBLAS_SGEMM = types.ExternalFunction("scipy_cblas_sgemm64_", _cblas_signature(types.float32))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def gemm(ta, tb, alpha, a, b, beta, c, scal):
    """c ← alpha·op(a)·op(b) + beta·c for C-ordered 2-D arrays; op transposes when ta / tb is True.

    ``scal`` is a 2-element scratch array of c's dtype (holds α and β for numba_xxgemm, which takes them by
    pointer; unused with numpy's CBLAS).
    Only callable from compiled code.
    """
    raise NotImplementedError("gemm is only available inside numba-compiled functions")


@overload(gemm)
def _gemm_overload(ta, tb, alpha, a, b, beta, c, scal):
    for arr in (a, b, c):
        # leading dimensions below assume C order; a strided or Fortran array would be read wrongly
        if not (isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype == c.dtype):
            raise TypingError(f"gemm needs C-contiguous arrays of one dtype, got {arr}")
    if BLAS == "numpy":
        cblas = _CBLAS_DGEMM if c.dtype == types.float64 else _CBLAS_SGEMM
        dt = c.dtype

        def impl_cblas(ta, tb, alpha, a, b, beta, c, scal):
            m, n = c.shape
            k = a.shape[0] if ta else a.shape[1]
            cblas(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, m, n, k, dt(alpha),
                  a.ctypes, a.shape[1], b.ctypes, b.shape[1], dt(beta), c.ctypes, n)

        return impl_cblas
    fn, kind = (_DGEMM, ord("d")) if c.dtype == types.float64 else (_SGEMM, ord("s"))

    def impl(ta, tb, alpha, a, b, beta, c, scal):
        # Row-major c (m×n) is column-major cᵀ; cᵀ = op(b)ᵀ op(a)ᵀ, and a row-major array read
        # column-major is its own transpose: pass b first, and flip no flags.
        m, n = c.shape
        k = a.shape[0] if ta else a.shape[1]
        scal[0] = alpha
        scal[1] = beta
        fn(kind, 116 if tb else 110, 116 if ta else 110, n, m, k, scal[0:1].ctypes, b.ctypes, b.shape[1],
           a.ctypes, a.shape[1], scal[1:2].ctypes, c.ctypes, n)

    return impl


@njit(cache=CACHE, nogil=True)
def _layers(flat, dims, offs):
    """Views of the D layers inside a flat vector (shared memory, no copy)."""
    return [flat[offs[l]:offs[l + 1]].reshape((dims[l + 1], dims[l])) for l in range(dims.size - 1)]


@njit(cache=CACHE, nogil=True)
def _error(ws, s11, s31, m0, prefix, chain, e, scal):
    """Prefixes P_l = W_l⋯W_1 (l < D, and P_D when Σ11 enters last), then E = Σ31 − W_D⋯W_{m0+2}(P_{m0+1} Σ11).

    Written into ``e`` (o × n_in). The chain multiplies Σ11 in after layer m0 (``plan_order`` picks the
    cheapest m0; for two layers that is W21 Σ11 first unless n_out < hidden).
    """
    d = len(ws)
    for l in range(1, d - 1):
        gemm(False, False, 1.0, ws[l], ws[0] if l == 1 else prefix[l - 1], 0.0, prefix[l], scal)
    if m0 == d - 1 and d >= 2:
        gemm(False, False, 1.0, ws[d - 1], ws[0] if d == 2 else prefix[d - 2], 0.0, prefix[d - 1], scal)
    e[:, :] = s31
    src = ws[0] if m0 == 0 else prefix[m0]
    if m0 == d - 1:
        gemm(False, False, -1.0, src, s11, 1.0, e, scal)
        return
    gemm(False, False, 1.0, src, s11, 0.0, chain[m0], scal)
    for l in range(m0 + 1, d - 1):
        gemm(False, False, 1.0, ws[l], chain[l - 1], 0.0, chain[l], scal)
    gemm(False, False, -1.0, ws[d - 1], chain[d - 2], 1.0, e, scal)


@njit(cache=CACHE, nogil=True)
def _raw_gradients(ws, gs, s11, s31, m0, prefix, chain, back, e, scal):
    """gs[l] ← (W_D⋯W_{l+2})ᵀ E (W_l⋯W_1)ᵀ = −½ ∂L/∂W for layer l (0-based), docs/theory.md#gradient.

    Backward: B_D = E, B_l = W_{l+1}ᵀ B_{l+1}; the gradient of layer l ≥ 1 is B P_{l}ᵀ, of layer 0 it is B_1.
    """
    d = len(ws)
    if d == 1:
        _error(ws, s11, s31, m0, prefix, chain, gs[0], scal)
        return
    _error(ws, s11, s31, m0, prefix, chain, e, scal)
    b = e
    for l in range(d - 1, 0, -1):
        gemm(False, True, 1.0, b, ws[0] if l == 1 else prefix[l - 1], 0.0, gs[l], scal)
        nb = gs[0] if l == 1 else back[l - 1]  # the last backward product is layer 0's gradient
        gemm(True, False, 1.0, ws[l], b, 0.0, nb, scal)
        b = nb


@njit(cache=CACHE, nogil=True)
def _finish_gradient(w, g, decay):
    """g ← −2 g + γ w in place (∂L/∂W + γW from −½∂L/∂W); returns Σ g² accumulated in float64.

    Eight interleaved partial sums: without fastmath a single running sum is one dependent add per
    element; eight fixed lanes keep the order deterministic and the pipeline full.
    """
    n = w.size
    acc = np.zeros(8)
    n8 = n - n % 8
    for base in range(0, n8, 8):
        for j in range(8):
            gv = -2.0 * g[base + j] + decay * w[base + j]
            g[base + j] = gv
            acc[j] += float(gv) * float(gv)
    for idx in range(n8, n):
        gv = -2.0 * g[idx] + decay * w[idx]
        g[idx] = gv
        acc[0] += float(gv) * float(gv)
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


@njit(cache=CACHE, nogil=True)
def gradient(w, dims, offs, s11, s31, decay, m0, out):
    """out ← ∂L/∂W_l + γ W_l for all layers (flat, same layout as w); returns the squared norm."""
    _, _, prefix, chain, back, e, _, scal = gd_workspace(dims, offs, m0,
                                                          np.empty(scratch_size(dims, offs, m0), dtype=w.dtype))
    _raw_gradients(_layers(w, dims, offs), _layers(out, dims, offs), s11, s31, m0, prefix, chain, back, e, scal)
    return _finish_gradient(w, out, decay)


@njit(cache=CACHE, nogil=True)
def record_diagnostics(flat, dims, offs, s11, s31, decay, m0, grad_norm, drift):
    """Per record t (row t of ``flat``, T × len(w), float64): the gradient norm and the balance drift.

        grad_norm[t] = sqrt(Σ_l ‖∂L/∂W_l + γ W_l‖²_F)   at W(t)
        drift[t]     = max_l max_ij |B_l(t) − B_l(0)|_ij,   B_l = W_{l+1}ᵀ W_{l+1} − W_l W_lᵀ
                       (docs/theory.md#conservation)

    drift is 0 for D = 1 and NaN where a B_l(t) has a NaN entry (so that a cut at the first non-finite
    record sees it). One BLAS call per product: for a small net's records this is several times cheaper than
    stacked numpy matmuls, which matters in sweep post-processing (docs/performance.md#records).
    """
    d = dims.size - 1
    # one workspace for all records (``gradient`` would allocate one per record)
    g, gs, prefix, chain, back, e, _, scal = gd_workspace(dims, offs, m0,
                                                          np.empty(scratch_size(dims, offs, m0)))
    b0 = [np.empty((dims[l + 1], dims[l + 1])) for l in range(d - 1)]
    bt = [np.empty((dims[l + 1], dims[l + 1])) for l in range(d - 1)]
    for t in range(flat.shape[0]):
        w = flat[t]
        ws = _layers(w, dims, offs)
        _raw_gradients(ws, gs, s11, s31, m0, prefix, chain, back, e, scal)
        grad_norm[t] = np.sqrt(_finish_gradient(w, g, decay))
        worst = 0.0
        for l in range(d - 1):
            b = b0[l] if t == 0 else bt[l]
            gemm(True, False, 1.0, ws[l + 1], ws[l + 1], 0.0, b, scal)
            gemm(False, True, -1.0, ws[l], ws[l], 1.0, b, scal)
            if t > 0:
                for i in range(b.shape[0]):
                    for j in range(b.shape[1]):
                        diff = abs(b[i, j] - b0[l][i, j])
                        if np.isnan(diff):  # NaN sticks: the record is cut as non-finite
                            worst = diff
                            break
                        if diff > worst:
                            worst = diff
        drift[t] = worst


@njit(cache=CACHE, nogil=True)
def _fused_step(ws, s11, s31, m0, prefix, chain, back, e, scal, two_eta, shrink):
    """One GD step without forming the gradients: W_l ← (1 − ηγ) W_l + 2η B_l P_{l−1}ᵀ, top layer first.

    B_{l−1} = W_lᵀ B_l is computed before W_l is overwritten; the prefixes P_{l−1} only involve lower
    layers, which are still at their old values. Layer 0 (W_1 ← (1 − ηγ) W_1 + 2η B_1) is a flat loop.
    """
    d = len(ws)
    _error(ws, s11, s31, m0, prefix, chain, e, scal)
    b = e
    for l in range(d - 1, 0, -1):
        nb = back[l - 1]
        gemm(True, False, 1.0, ws[l], b, 0.0, nb, scal)
        gemm(False, True, two_eta, b, ws[0] if l == 1 else prefix[l - 1], shrink, ws[l], scal)
        b = nb
    _axpby(ws[0].reshape(ws[0].size), b.reshape(b.size), shrink, two_eta)


@njit(cache=CACHE, nogil=True)
def _axpby(y, x, beta, alpha):
    """y ← β y + α x on flat arrays."""
    for idx in range(y.size):
        y[idx] = beta * y[idx] + alpha * x[idx]


@njit(cache=CACHE, nogil=True)
def _copy(dst, src):
    for idx in range(dst.size):
        dst[idx] = src[idx]


@njit(cache=CACHE, nogil=True)
def _fused_step2(w21, w32, w21_flat, s11, s13_flat, m0, x, et, et_flat, b, b_flat, scal, two_eta, shrink):
    """``_fused_step`` for two layers, with the arrays unpacked (list access costs atomic refcounts).

    Works with Eᵀ (n_in × n_out) rather than E: small row-major A·Bᵀ products are about twice as slow in
    OpenBLAS as the other three transpose combinations (docs/performance.md#one-blas), and with Eᵀ every
    product here avoids that form. With Σ13 = Σ31ᵀ and Σ11 symmetric:
      m0 = 0: X = W21 Σ11, Eᵀ = Σ13 − Xᵀ W32ᵀ;   m0 = 1: X = W32 W21, Eᵀ = Σ13 − Σ11 Xᵀ;
      B = W32ᵀ E, W32 ← (1 − ηγ) W32 + 2η E W21ᵀ, W21 ← (1 − ηγ) W21 + 2η B.
    """
    _copy(et_flat, s13_flat)
    if m0 == 0:
        gemm(False, False, 1.0, w21, s11, 0.0, x, scal)
        gemm(True, True, -1.0, x, w32, 1.0, et, scal)
    else:
        gemm(False, False, 1.0, w32, w21, 0.0, x, scal)
        gemm(True, True, -1.0, s11, x, 1.0, et, scal)
    gemm(True, True, 1.0, w32, et, 0.0, b, scal)
    gemm(True, True, two_eta, et, w21, shrink, w32, scal)
    _axpby(w21_flat, b_flat, shrink, two_eta)


# Columns of a run's integer state (``new_state``) and of its float state.
K, POS, STATUS, SAVED_K, SAVED_POS, CAREFUL_UNTIL = range(6)
BLOW2, G2 = range(2)


def new_state(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop state of n runs before their first step: (n, 6) int64 and (n, 2) float64 (see ``gd_chunk``)."""
    state = np.zeros((n, 6), dtype=np.int64)
    state[:, STATUS] = RUNNING
    state[:, SAVED_K] = -1        # no saved state yet
    state[:, CAREFUL_UNTIL] = -1  # not replaying
    fstate = np.empty((n, 2))
    fstate[:, BLOW2] = -1.0       # blow-up threshold not known yet: set at the first check
    fstate[:, G2] = np.nan
    return state, fstate


@njit(cache=CACHE, nogil=True)
def _round8(n):
    return (n + 7) // 8 * 8  # 64-byte steps for float64 buffers


@njit(cache=CACHE, nogil=True)
def _scratch_plan(dims, offs, m0):
    """Start of each ``gd_workspace`` buffer inside one flat scratch vector, and its total length.

    Order: g (len w), prefix[l], chain[l], back[l] (l < D), e, eᵀ, scal.
    """
    d = dims.size - 1
    n_in, n_out = dims[0], dims[-1]
    starts = np.empty(3 * d + 4, dtype=np.int64)
    pos = 0
    starts[0] = pos
    pos += _round8(offs[d])
    for l in range(d):
        starts[1 + l] = pos
        pos += _round8((dims[l + 1] if l > 0 else 0) * n_in)
    for l in range(d):
        starts[1 + d + l] = pos
        pos += _round8((dims[l + 1] if l >= m0 else 0) * n_in)
    for l in range(d):
        starts[1 + 2 * d + l] = pos
        pos += _round8(dims[l + 1] * n_in)
    for j in range(2):  # e and eᵀ
        starts[1 + 3 * d + j] = pos
        pos += _round8(n_out * n_in)
    starts[3 + 3 * d] = pos
    return starts, pos + 8


@njit(cache=CACHE, nogil=True)
def scratch_size(dims, offs, m0):
    """Length of the flat scratch vector ``gd_workspace`` carves its buffers from."""
    return _scratch_plan(dims, offs, m0)[1]


@njit(cache=CACHE, nogil=True)
def gd_workspace(dims, offs, m0, scratch):
    """Scratch buffers of ``gd_chunk`` (and ``gradient``, ``record_diagnostics``) for one shape, as views
    into ``scratch`` (``scratch_size`` long, the weights' dtype): g and its per-layer views; the prefixes
    P_l = W_l⋯W_1 (l ≥ 1), the Σ11 chain (l ≥ m0) and the backward chain B, each n_{l+1} × n_in (0×0 where
    unused: prefix[0] is W_1 itself); E (n_out × n_in), Eᵀ, and α/β. Contents don't carry between steps,
    runs or calls, so one scratch vector serves every run of a thread: fresh memory costs a page fault per
    page on first touch, reused memory none."""
    d = dims.size - 1
    n_in, n_out = dims[0], dims[-1]
    at, _ = _scratch_plan(dims, offs, m0)
    g = scratch[at[0]:at[0] + offs[d]]
    prefix = [scratch[at[1 + l]:at[1 + l] + (dims[l + 1] if l > 0 else 0) * n_in].reshape(
        (dims[l + 1] if l > 0 else 0, n_in if l > 0 else 0)) for l in range(d)]
    chain = [scratch[at[1 + d + l]:at[1 + d + l] + (dims[l + 1] if l >= m0 else 0) * n_in].reshape(
        (dims[l + 1] if l >= m0 else 0, n_in if l >= m0 else 0)) for l in range(d)]
    back = [scratch[at[1 + 2 * d + l]:at[1 + 2 * d + l] + dims[l + 1] * n_in].reshape((dims[l + 1], n_in))
            for l in range(d)]
    e = scratch[at[1 + 3 * d]:at[1 + 3 * d] + n_out * n_in].reshape((n_out, n_in))
    et = scratch[at[2 + 3 * d]:at[2 + 3 * d] + n_out * n_in].reshape((n_in, n_out))
    scal = scratch[at[3 + 3 * d]:at[3 + 3 * d] + 2]
    return g, _layers(g, dims, offs), prefix, chain, back, e, et, scal


@njit(cache=CACHE, nogil=True)
def gd_chunk(w, saved, work, dims, offs, s11, s31, s13, m0, eta, decay, two_eta, shrink, n_steps, rec, nrec,
             snap, tol2, blow_ratio, blow_floor, blow_cap, state, fstate, k_stop):
    """Advance one GD run from its state until its step reaches ``k_stop`` (exclusive) or the run ends.

    The run: weights ``w`` (flat, updated in place) at step state[K], ``saved`` its state at the last check
    (step state[SAVED_K]), record steps rec[:nrec] written into snap at position state[POS]. ``work`` is
    ``gd_workspace``'s. A checked step k evaluates G = ∂L/∂W + γW at W_k and g² = Σ‖G_l‖², stops as
    DIVERGED if g² is not finite or exceeds fstate[BLOW2] (W_k is not recorded: it may be non-finite, the
    caller decides), records W_k into ``snap[pos]`` when k == rec[pos], stops as CONVERGED if g² ≤ ``tol2``
    and as COMPLETED at k == n_steps, else steps W_{k+1} = W_k − η G. Unchecked steps record and take a
    fused step. See the module docstring for the check/replay scheme. ``s13`` is Σ31ᵀ (C order);
    ``two_eta`` = 2η and ``shrink`` = 1 − ηγ come in the weights' dtype so that float32 runs stay in float32.
    fstate[BLOW2] < 0 means "not known yet": the first check then sets the threshold from the gradient norm
    g there, blow2 = min(blow_ratio·max(g, blow_floor), blow_cap)² (saves a separate gradient evaluation).
    On return state/fstate hold the loop state (status in state[STATUS], last checked g² in fstate[G2]).
    """
    d = dims.size - 1
    g, gs, prefix, chain, back, e, et, scal = work
    ws = _layers(w, dims, offs)
    # two-layer fast path: unpack once (list access costs atomic refcounts at every use)
    w21, w32 = ws[0], ws[d - 1]
    x2 = prefix[1] if (d == 2 and m0 == 1) else chain[0]
    et_flat = et.reshape(et.size)
    s13_flat = s13.reshape(s13.size)
    s31_flat = s31.reshape(s31.size)
    b2 = back[0]
    b2_flat = b2.reshape(b2.size)
    w21_flat = w[offs[0]:offs[1]]
    k = state[K]
    pos = state[POS]
    saved_k = state[SAVED_K]
    saved_pos = state[SAVED_POS]
    careful_until = state[CAREFUL_UNTIL]
    blow2 = fstate[BLOW2]
    g2 = fstate[G2]
    status = RUNNING
    while k < k_stop:
        if k == n_steps or k % CHECK_EVERY == 0 or k <= careful_until:
            _raw_gradients(ws, gs, s11, s31, m0, prefix, chain, back, e, scal)
            g2 = _finish_gradient(w, g, decay)
            if blow2 < 0:
                blow2 = min(blow_ratio * max(np.sqrt(g2), blow_floor), blow_cap) ** 2
            stop = (not g2 <= blow2) or g2 <= tol2  # first clause also catches NaN
            if stop and saved_k >= 0 and k - saved_k > 1:
                # unchecked steps since the last check: replay them one by one from the saved state
                w[:] = saved
                careful_until = k + CHECK_EVERY
                k = saved_k
                pos = saved_pos
                continue
            if not g2 <= blow2:
                status = DIVERGED
                break
            if pos < nrec and rec[pos] == k:
                snap[pos, :] = w
                pos += 1
            if g2 <= tol2:
                status = CONVERGED
                break
            if k == n_steps:
                status = COMPLETED
                break
            saved[:] = w
            saved_k = k
            saved_pos = pos
            for idx in range(w.size):
                w[idx] -= eta * g[idx]
        else:
            if pos < nrec and rec[pos] == k:
                snap[pos, :] = w
                pos += 1
            if d == 2:
                _fused_step2(w21, w32, w21_flat, s11, s13_flat, m0, x2, et, et_flat, b2, b2_flat, scal,
                             two_eta, shrink)
            elif d == 1:
                # one layer: W ← (1 − ηγ) W + 2η (Σ31 − W Σ11)
                _copy(b2_flat, s31_flat)
                gemm(False, False, -1.0, w21, s11, 1.0, b2, scal)
                _axpby(w21_flat, b2_flat, shrink, two_eta)
            else:
                _fused_step(ws, s11, s31, m0, prefix, chain, back, e, scal, two_eta, shrink)
        k += 1
    state[K] = k
    state[POS] = pos
    state[STATUS] = status
    state[SAVED_K] = saved_k
    state[SAVED_POS] = saved_pos
    state[CAREFUL_UNTIL] = careful_until
    fstate[BLOW2] = blow2
    fstate[G2] = g2


@njit(cache=CACHE, nogil=True)
def gd_steps(w, saved, dims, offs, s11, s31, s13, eta, decay, two_eta, shrink, m0, n_steps, rec, snap, tol2,
             blow_ratio, blow_floor, blow_cap, state, fstate, k_stop, scratch):
    """``gd_chunk`` for a single run (state: rows of ``new_state(1)``), workspace in ``scratch``."""
    gd_chunk(w, saved, gd_workspace(dims, offs, m0, scratch), dims, offs, s11, s31, s13, m0, eta, decay, two_eta, shrink,
             n_steps, rec, rec.size, snap, tol2, blow_ratio, blow_floor, blow_cap, state, fstate, k_stop)


@njit(cache=CACHE, nogil=True)
def gd_batch_steps(W, saved, dims, offs, S11, S31, S13, pidx, eta, decay, two_eta, shrink, m0, n_steps, rec, nrec,
                   snap, tol2, blow_ratio, blow_floor, blow_cap, state, fstate, k_stop, scratch):
    """``gd_chunk`` on every running point j of a group (same widths and step count), one workspace for all
    (in ``scratch``).

    Point j: weights W[j], saved state saved[j], Σ11 = S11[pidx[j]] (Σ31, Σ13 = Σ31ᵀ alike), its own η, γ,
    2η, 1 − ηγ (weights' dtype), tol2[j], blow_floor[j], record steps rec[j, :nrec[j]] into snap[j], loop
    state state[j] / fstate[j]. Each point's bits are those of ``gd_steps`` on it alone.
    """
    work = gd_workspace(dims, offs, m0, scratch)
    for j in range(W.shape[0]):
        if state[j, STATUS] != RUNNING:
            continue
        q = pidx[j]
        gd_chunk(W[j], saved[j], work, dims, offs, S11[q], S31[q], S13[q], m0, eta[j], decay[j], two_eta[j],
                 shrink[j], n_steps, rec[j], nrec[j], snap[j], tol2[j], blow_ratio, blow_floor[j], blow_cap,
                 state[j], fstate[j], k_stop)
