"""Gradient descent on many small two-layer nets at once, SIMD lanes across the points (numba).

A sweep of tiny nets spends its time in tiny products: at (8,16,8) a step is four 8×16-sized GEMMs, and one
BLAS call per product costs about as much as the arithmetic in it (``gd_loop`` reaches ~0.2 of the GEMM
bound per core there). Here the points of a group are packed into blocks of ``LANES`` points and every
array puts the point (lane) axis innermost: entry e of lane l of a block sits at ``e·LANES + l``. A product
is then, for each output entry, Σ_k A[m,k,·] B[k,n,·] with ``·`` a vector of LANES points: each term is one
vector FMA over lanes, with no horizontal work and nothing shared between lanes. The micro-kernel
(``_lmm``) keeps a 4×4 tile of output entries × LANES lanes in registers (16 vector accumulators) and
streams the k axis, so each FMA needs half a load; ``LANES`` = 8 float64 fill a 512-bit register. Used for
two-layer nets whose widths are all ≤ ``MAX_WIDTH`` (``lanes_for``); other groups keep the one-by-one loop.

Arithmetic, per lane, is the one-by-one step of ``gd_loop._fused_step2`` / the checked step of ``gd_chunk`` (same
formulas, same product order ``plan_order`` picks, same check schedule and stopping rules), with every sum over k
taken in increasing k and one multiplication moved: a fused step scales the error by 2η before the two updates'
products, (2ηE) W21ᵀ where BLAS forms 2η·(E W21ᵀ) (``_fused_step``). It differs from BLAS only in rounding: OpenBLAS
sums a dot product in its own blocked order, this kernel in plain order with each multiply-add fused
(``fastmath={"contract"}``: FMA contraction only, no reassociation, no finite-math or signed-zero
assumptions, so NaN and ±inf propagate and the blow-up checks see them). Results therefore agree with
``simulate`` on each point to round-off, not bit for bit: tests/dynamics/test_lanes.py measures ≤ 4e-14
relative difference of recorded weights, product, loss, gradient norm and balance drift over 10,000 steps (bound
asserted: 1e-11), and
checks that outcomes, stop steps and record steps are equal. The squared gradient norm of a check is summed
in entry order per lane (``gd_loop`` interleaves eight partial sums), so a stop can move by a step only where
g² is within round-off of its threshold (float32 near its convergence threshold, which sits at its round-off
floor). Runs through this kernel are reproducible bit for bit: the order of every operation is fixed, a
lane's arithmetic involves no other lane, and nothing depends on the thread count. Which product of a multiply-add
the compiler fuses may change with the code around it, so another version of this module can differ in last bits
(seen: 1e-15 relative after 3,000 steps, more only where a run amplifies round-off).

Checks and replays. The lanes of a block step in lock step (same k): checked steps at k ≡ 0 (mod
``CHECK_EVERY``) and at the last step compute the gradient explicitly, its squared norm per lane (float64,
summed over entries in order), and apply ``gd_chunk``'s rules per lane. A lane that meets a stopping rule
with unchecked steps since its last check must be replayed step by step from its saved state to find the
exact step; it leaves the block (its flag in ``solo`` is set, its lane is zeroed) and continues, from its
saved state with its loop state set exactly as ``gd_chunk`` sets it before a replay, in ``gd_chunk`` itself,
for the rest of its run. A zeroed lane stays exactly zero (0 products, no NaN), so it costs the block
nothing but its share of the arithmetic. Chunking (the worker hooks' ``k_stop``) changes no bit: the block
state lives in caller-owned arrays, as in ``gd_loop``.

Why SLP vectorisation is switched on for this compile: numba's pass pipeline disables LLVM's SLP
vectoriser by default (``NUMBA_SLP_VECTORIZE=0``), and with a compile-time LANES the lane loops are fully
unrolled before the loop vectoriser sees them, so without SLP they stay scalar (measured: ~4× slower).
``steps`` turns it on only while this module's kernel compiles (its first call per dtype in a process), under
numba's compiler lock, which every compile holds and inside which alone numba reads the setting: no other compile
sees it (tests/dynamics/test_lanes.py checks the lock and the restore). The kernels this one compiles in
(``gd_chunk``…) may be compiled with SLP on then; SLP reorders no floating-point operation, so they keep their bits. Two codegen details matter as much (each measured several-fold on its loop):
accumulators and per-lane constants live in stack buffers (``_stack_array``), which nothing else can alias,
so they stay in registers and a tile's loads can be grouped before its stores; and element-wise passes step
their rows by a stride the optimiser cannot see is constant (``_finish_gradient``).

Speed (bench/results.md, "## sweeps"): an in-process sweep of (8,16,8) nets runs ×1.8 the one-by-one loop; a
fused step reaches ~0.8 of one core's GEMM rate (1.3 µs a block). Every lane array starts on a cache line
(``empty_lanes``). ``lane_diagnostics`` computes the records'
gradient norm, balance drift and network map of a group's points in lanes after the run
(docs/performance.md#sweep-lanes).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import gd_loop, kernel_cache
from .gd_loop import (
    BLOW2,
    CACHE,
    CAREFUL_UNTIL,
    CHECK_EVERY,
    COMPLETED,
    CONVERGED,
    DIVERGED,
    G2,
    POS,
    RUNNING,
    SAVED_K,
    SAVED_POS,
    STATUS,
    K,
    gd_chunk,
    gd_workspace,
)

# Points per block (the SIMD lane count): 8 float64 fill one 512-bit register, so each accumulator of the 4×4
# tile is one register and the per-tile overhead (loop control, epilogue) is shared by 8 points. Measured on
# this repo's 2-core Zen 4 (in-process sweep of 256 (8,16,8) points, CPU time, against the one-by-one loop):
# 8 lanes ×1.34, 4 lanes ×1.08. float32 runs use the same blocks (a 256-bit register per accumulator).
LANES = 8
# Widest layer stepped in lanes. Above it a block's state leaves L1 (8 lanes × 8 bytes per weight) and the
# one-by-one loop's BLAS calls win or tie: lanes against it, same run, (4,8,4) ×1.68, (8,16,8) ×1.34,
# (16,16,16) ×1.09, (16,32,16) ×1.27 but (32,16,32) ×0.89, (32,32,32) ×0.91, (8,64,8) ×0.94.
MAX_WIDTH = 16
# fastmath: FMA contraction only (see the module docstring)
FASTMATH = {"contract"}
# Byte boundary of every lane array (``empty_lanes``): a cache line, so a block's lane vectors never straddle two
ALIGN = 64
_TILE = 16 * LANES  # accumulators of a 4×4 tile of output entries


@intrinsic
def _stack_array(typingctx, n, dtype):
    """Pointer to n entries of dtype on the stack (n a literal): a buffer the optimiser knows nothing else
    aliases, so that accumulators indexed by constants end up in registers."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value
    dt = dtype.dtype

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, context.get_value_type(dt), size=ir.Constant(ir.IntType(64), size))

    return types.CPointer(dt)(n, dtype), codegen


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _store(C, r, acc, q, mode, S, al, be, old):
    """One output entry of ``_lmm`` for all lanes: C[r:r+LANES] = acc[q:q+LANES] (mode 0), S − acc (mode 1),
    be·C + al·acc (mode 2), S + acc (mode 3), be·S + acc (mode 4), al·(S − acc) (mode 5); loads first, then stores
    (see ``_lmm``)."""
    if mode == 0:
        for l in range(LANES):
            C[r + np.uint64(l)] = acc[q + l]
        return
    for l in range(LANES):
        old[l] = C[r + np.uint64(l)] if mode == 2 else S[r + np.uint64(l)]
    if mode == 1:
        for l in range(LANES):
            C[r + np.uint64(l)] = old[l] - acc[q + l]
    elif mode == 2:
        for l in range(LANES):
            C[r + np.uint64(l)] = be[l] * old[l] + al[l] * acc[q + l]
    elif mode == 3:
        for l in range(LANES):
            C[r + np.uint64(l)] = old[l] + acc[q + l]
    elif mode == 4:
        for l in range(LANES):
            C[r + np.uint64(l)] = be[l] * old[l] + acc[q + l]
    else:
        for l in range(LANES):
            C[r + np.uint64(l)] = al[l] * (old[l] - acc[q + l])


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _lmm(M, N, K_, A, a0, a1, B, b0, b1, C, mode, S, alpha, beta):
    """For every lane: acc[m, n] = Σ_k A[m, k] B[k, n] (k increasing), then
    mode 0: C = acc, mode 1: C = S − acc, mode 2: C = beta·C + alpha·acc, mode 3: C = S + acc, mode 4:
    C = beta·S + acc, mode 5: C = alpha·(S − acc) (alpha, beta per lane; C may be S).

    Arrays are flat, lanes innermost: entry (m, k) of A is row m·a0 + k·a1 (so transposes are strides), C and
    S are row-major M × N. Indices are unsigned so that numba emits no negative-index wraparound.
    """
    acc = carray(_stack_array(_TILE, C.dtype), (_TILE,))
    # Per-lane constants and the loaded entries of C / S go through stack buffers, all loads of a tile row
    # before its stores: the optimiser cannot rule out that C overlaps S, alpha or beta, and would otherwise
    # keep the interleaved scalar order (no SIMD) in the epilogue.
    al = carray(_stack_array(LANES, C.dtype), (LANES,))
    be = carray(_stack_array(LANES, C.dtype), (LANES,))
    old = carray(_stack_array(LANES, C.dtype), (LANES,))
    if mode == 2 or mode >= 4:
        for l in range(LANES):
            al[l] = alpha[l]
            be[l] = beta[l]
    u = np.uint64
    ua0 = u(a0 * LANES)
    ua1 = u(a1 * LANES)
    ub0 = u(b0 * LANES)
    ub1 = u(b1 * LANES)
    m4 = M - M % 4
    n4 = N - N % 4
    for m in range(0, m4, 4):
        for n in range(0, n4, 4):
            for q in range(_TILE):
                acc[q] = 0.0
            ia = u(m * a0 * LANES)
            ib = u(n * b1 * LANES)
            for _ in range(K_):
                ia1 = ia + ua0
                ia2 = ia1 + ua0
                ia3 = ia2 + ua0
                ib1 = ib + ub1
                ib2 = ib1 + ub1
                ib3 = ib2 + ub1
                for l in range(LANES):
                    x0 = A[ia + u(l)]
                    x1 = A[ia1 + u(l)]
                    x2 = A[ia2 + u(l)]
                    x3 = A[ia3 + u(l)]
                    y0 = B[ib + u(l)]
                    y1 = B[ib1 + u(l)]
                    y2 = B[ib2 + u(l)]
                    y3 = B[ib3 + u(l)]
                    acc[0 * LANES + l] += x0 * y0
                    acc[1 * LANES + l] += x0 * y1
                    acc[2 * LANES + l] += x0 * y2
                    acc[3 * LANES + l] += x0 * y3
                    acc[4 * LANES + l] += x1 * y0
                    acc[5 * LANES + l] += x1 * y1
                    acc[6 * LANES + l] += x1 * y2
                    acc[7 * LANES + l] += x1 * y3
                    acc[8 * LANES + l] += x2 * y0
                    acc[9 * LANES + l] += x2 * y1
                    acc[10 * LANES + l] += x2 * y2
                    acc[11 * LANES + l] += x2 * y3
                    acc[12 * LANES + l] += x3 * y0
                    acc[13 * LANES + l] += x3 * y1
                    acc[14 * LANES + l] += x3 * y2
                    acc[15 * LANES + l] += x3 * y3
                ia += ua1
                ib += ub0
            for q in range(16):
                _store(C, u(((m + q // 4) * N + n + q % 4) * LANES), acc, q * LANES, mode, S, al, be, old)
    # entries outside the 4×4 tiles (a width not a multiple of 4), one at a time: the rows below the tiles, then
    # the columns right of them (loops that are empty for widths of multiples of 4: a test per entry here cost
    # ~20 % of an (8,16,8) step)
    for m in range(M):
        for n in range(n4 if m < m4 else 0, N):
            for l in range(LANES):
                acc[l] = 0.0
            ia = u(m * a0 * LANES)
            ib = u(n * b1 * LANES)
            for _ in range(K_):
                for l in range(LANES):
                    acc[l] += A[ia + u(l)] * B[ib + u(l)]
                ia += ua1
                ib += ub0
            _store(C, u((m * N + n) * LANES), acc, 0, mode, S, al, be, old)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _error(w21, w32, s11, s31, m0, ni, nh, no, x, e, mode, two_eta):
    """E = Σ31 − W32 W21 Σ11 per lane (``mode`` 1), or 2η E (``mode`` 5: η per lane), in ``gd_loop``'s order: m0 = 0:
    X = W21 Σ11, E = Σ31 − W32 X; m0 = 1: X = W32 W21, E = Σ31 − X Σ11. Inlined, so that ``mode`` reaches ``_lmm``
    as the caller's literal."""
    if m0 == 0:
        _lmm(nh, ni, ni, w21, ni, 1, s11, ni, 1, x, 0, x, s11, s11)
        _lmm(no, ni, nh, w32, nh, 1, x, ni, 1, e, mode, s31, two_eta, two_eta)
    else:
        _lmm(no, ni, nh, w32, nh, 1, w21, ni, 1, x, 0, x, s11, s11)
        _lmm(no, ni, ni, x, ni, 1, s11, ni, 1, e, mode, s31, two_eta, two_eta)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _fused_step(w21, w32, w32_next, s11, s31, m0, ni, nh, no, x, e, two_eta, shrink, decays):
    """One step of every lane without forming the gradients (``gd_loop._fused_step2``'s update, with 2η taken into
    the error first): E' = 2η (Σ31 − W32 W21 Σ11) in ``e``, W32' = (1 − ηγ) W32 + E' W21ᵀ into ``w32_next`` (W32 is
    left as it was), then W21 ← (1 − ηγ) W21 + W32ᵀ E' with the old W32, each update in its product's epilogue.

    Writing W32' beside W32 is what lets both updates happen there (otherwise W32ᵀ E must be stored and added in a
    pass of its own, as the old W32 is needed after W32's update). Scaling the 64-odd entries of E once, rather than
    each of the updates' outputs, and adding without the factor 1 − ηγ when no lane decays (``decays`` False: it is
    1), leaves the products' multiply-adds alone on the FMA units (a step is bound by them): 2η·(E W21ᵀ) becomes
    (2ηE) W21ᵀ, a rounding moved, not a formula changed."""
    _error(w21, w32, s11, s31, m0, ni, nh, no, x, e, 5, two_eta)
    # literal modes: with the mode a variable here, the epilogues stayed scalar (docs/performance.md#sweep-lanes)
    if decays:
        _lmm(no, nh, ni, e, ni, 1, w21, 1, ni, w32_next, 4, w32, two_eta, shrink)
        _lmm(nh, ni, no, w32, 1, nh, e, ni, 1, w21, 4, w21, two_eta, shrink)
    else:
        _lmm(no, nh, ni, e, ni, 1, w21, 1, ni, w32_next, 3, w32, two_eta, shrink)
        _lmm(nh, ni, no, w32, 1, nh, e, ni, 1, w21, 3, w21, two_eta, shrink)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _finish_gradient(g, w, decay, g2):
    """g ← −2 g + γ w per lane (∂L/∂W + γW from −½∂L/∂W, as ``gd_loop._finish_gradient``); g2[l] += Σ g² of
    lane l, in float64, entries in order.

    The row stride is ``decay.size`` (= LANES, but not a constant to the optimiser): with a constant stride LLVM's
    loop vectoriser rewrites such a row loop into interleaved groups behind runtime overlap checks, which ran ~7×
    slower than the plain SIMD body per row (1.3 µs for a 16×8 layer of 8 lanes, measured on y ← βy + αx).
    """
    # the sums and γ in stack buffers and a row's loads before its stores (see ``_lmm``): with g2 on the heap each
    # row's sums went through memory, a chain of store-to-load latencies (the pass ran ~3× slower)
    sq = carray(_stack_array(LANES, g2.dtype), (LANES,))
    de = carray(_stack_array(LANES, g.dtype), (LANES,))
    go = carray(_stack_array(LANES, g.dtype), (LANES,))
    wo = carray(_stack_array(LANES, g.dtype), (LANES,))
    for l in range(LANES):
        sq[l] = g2[l]
        de[l] = decay[l]
    step = np.uint64(decay.size)
    r = np.uint64(0)
    for _ in range(g.size // LANES):
        for l in range(LANES):
            go[l] = g[r + np.uint64(l)]
            wo[l] = w[r + np.uint64(l)]
        for l in range(LANES):
            gv = -2.0 * go[l] + de[l] * wo[l]
            g[r + np.uint64(l)] = gv
            sq[l] += float(gv) * float(gv)
        r += step
    for l in range(LANES):
        g2[l] = sq[l]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _gradient(w21, w32, s11, s31, m0, ni, nh, no, x, e, g32, bb, decay, g2, unused):
    """G = ∂L/∂W + γW of both layers per lane (W21's into ``bb``, W32's into ``g32``) and g2[l] = ‖G‖² of lane l, as
    a checked step of ``gd_chunk`` forms them: E = Σ31 − W32 W21 Σ11, then E W21ᵀ and W32ᵀ E, then
    ``_finish_gradient``. ``unused``: any per-lane array (``_lmm``'s alpha and beta, unread in its mode 0)."""
    _error(w21, w32, s11, s31, m0, ni, nh, no, x, e, 1, unused)
    _lmm(no, nh, ni, e, ni, 1, w21, 1, ni, g32, 0, x, unused, unused)
    _lmm(nh, ni, no, w32, 1, nh, e, ni, 1, bb, 0, x, unused, unused)
    for l in range(LANES):
        g2[l] = 0.0
    _finish_gradient(bb, w21, decay, g2)
    _finish_gradient(g32, w32, decay, g2)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _descend(w, g, eta):
    """w ← w − η g per lane (a checked step's update, as ``gd_chunk``'s). Row stride ``eta.size``: see
    ``_finish_gradient``."""
    step = np.uint64(eta.size)
    r = np.uint64(0)
    for _ in range(w.size // LANES):
        for l in range(LANES):
            w[r + np.uint64(l)] -= eta[l] * g[r + np.uint64(l)]
        r += step


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _unpack_lane(src, l, dst):
    """dst[e] = src[e·LANES + l] (a lane → one point's flat weights)."""
    for idx in range(dst.size):
        dst[idx] = src[idx * LANES + l]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _unpack_block(src, snap, j0, pos):
    """snap[j0 + l, pos[l], e] = src[e·LANES + l] for every lane l: a block's record in one pass, 8×8 squares at a
    time (each lane's row gets 8 consecutive entries; ``_unpack_lane`` per lane reads the block 8 times, a word at a
    time)."""
    size = snap.shape[2]
    e8 = size - size % 8
    for e0 in range(0, e8, 8):
        for l in range(LANES):
            row = snap[j0 + l, pos[l]]
            for d in range(8):
                row[e0 + d] = src[(e0 + d) * LANES + l]
    for l in range(LANES):
        row = snap[j0 + l, pos[l]]
        for e in range(e8, size):
            row[e] = src[e * LANES + l]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _pack_block(snap, j0, t, dst):
    """dst[e·LANES + l] = snap[j0 + l, t, e] for every lane l: a block's record gathered into lanes in one pass, 8×8
    squares at a time (the reverse of ``_unpack_block``)."""
    size = snap.shape[2]
    e8 = size - size % 8
    for e0 in range(0, e8, 8):
        for l in range(LANES):
            row = snap[j0 + l, t]
            for d in range(8):
                dst[(e0 + d) * LANES + l] = row[e0 + d]
    for l in range(LANES):
        row = snap[j0 + l, t]
        for e in range(e8, size):
            dst[e * LANES + l] = row[e]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _pack_lane(src, l, dst):
    """dst[e·LANES + l] = src[e] (one point's flat weights → a lane)."""
    for idx in range(src.size):
        dst[idx * LANES + l] = src[idx]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def _zero_lane(arr, l):
    for idx in range(arr.size // LANES):
        arr[idx * LANES + l] = 0.0


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def gd_lanes_steps(WL, SL, S11L, S31L, PL, ni, nh, no, m0, n_steps, rec, nrec, snap, tol2, blow_ratio,
                   blow_floor, blow_cap, state, fstate, solo, k_stop, W, saved, dims, offs, S11, S31, S13, pidx,
                   eta, decay, two_eta, shrink, lane_scratch, scratch):
    """Advance every running point of a two-layer group to step ``k_stop`` (exclusive) or its end.

    Lane layout (module docstring), block b of LANES points j = b·LANES + l: weights WL[b] (W21 then W32,
    entries × lanes), their state at the last check SL[b], Σ11 / Σ31 of each lane S11L[b] / S31L[b], and the
    lane parameters PL[b] = (η, γ, 2η, 1 − ηγ) × lanes (padding lanes: zeros, η = 0, 1 − ηγ = 1: they stay 0).
    Per point, as ``gd_loop.gd_batch_steps`` takes them: loop state state[j] / fstate[j], records
    rec[j, :nrec[j]] into snap[j], tol2[j], blow_floor[j]; W[j] (flat) receives a lane's weights whenever
    the point stops and at return; solo[j] = 1 marks a point that left its block for ``gd_chunk`` (with
    saved[j], Σ from S11/S31/S13[pidx[j]], its η… in eta/decay/two_eta/shrink, and ``scratch`` as
    ``gd_workspace``'s). ``lane_scratch``: 4·max(h, o)·i·LANES + 2·h·o·LANES entries of the weights' dtype.
    """
    npts = W.shape[0]
    n21 = nh * ni
    n32 = no * nh
    nx = max(nh, no) * ni * LANES
    x = lane_scratch[:nx]
    e = lane_scratch[nx:nx + no * ni * LANES]
    bb = lane_scratch[nx + no * ni * LANES:nx + no * ni * LANES + n21 * LANES]
    g32 = lane_scratch[nx + no * ni * LANES + n21 * LANES:nx + no * ni * LANES + (n21 + n32) * LANES]
    work = gd_workspace(dims, offs, m0, scratch)
    g2 = np.empty(LANES)
    pos = np.empty(LANES, dtype=np.int64)
    live = np.zeros(LANES, dtype=np.bool_)
    stopped = np.zeros(LANES, dtype=np.bool_)
    for j in range(npts):
        # points that left their block (a replay) run in gd_chunk from then on, chunk after chunk
        if solo[j] == 1 and state[j, STATUS] == RUNNING:
            q = pidx[j]
            gd_chunk(W[j], saved[j], work, dims, offs, S11[q], S31[q], S13[q], m0, eta[j], decay[j], two_eta[j],
                     shrink[j], n_steps, rec[j], nrec[j], snap[j], tol2[j], blow_ratio, blow_floor[j], blow_cap,
                     state[j], fstate[j], k_stop)
    for blk in range(WL.shape[0]):
        k = -1
        saved_k = -1
        for l in range(LANES):
            j = blk * LANES + l
            live[l] = j < npts and solo[j] == 0 and state[j, STATUS] == RUNNING
            if live[l]:
                k = state[j, K]
                saved_k = state[j, SAVED_K]
                pos[l] = state[j, POS]
        if k < 0:
            continue
        w = WL[blk]
        w21 = w[:n21 * LANES]
        w32 = w[n21 * LANES:]
        s11 = S11L[blk]
        s31 = S31L[blk]
        lp = PL[blk]
        l_eta = lp[0]
        l_decay = lp[1]
        l_two_eta = lp[2]
        l_shrink = lp[3]
        decays = False  # any lane with weight decay (1 − ηγ ≠ 1); a stopped lane's 1 changes nothing
        for l in range(LANES):
            decays = decays or l_shrink[l] != 1.0
        next_rec = -1  # the next record step of any live lane; < k: to be found again
        # W32 of the block after an odd number of fused steps since it was last home in w: in g32 (_fused_step), and
        # taken home before anything reads w or g32 is written (a check, a record, the end of the chunk)
        away = False
        while k < k_stop:
            if next_rec < k:  # records are rare: found again only after one is taken or a check
                next_rec = n_steps + 1
                for l in range(LANES):
                    j = blk * LANES + l
                    if live[l] and pos[l] < nrec[j] and rec[j, pos[l]] < next_rec:
                        next_rec = rec[j, pos[l]]
            if k == n_steps or k % CHECK_EVERY == 0:
                next_rec = -1  # the check may take a record or stop lanes
                if away:
                    w32[:] = g32
                    away = False
                # checked step: G = −2 raw + γ W, g² per lane, the rules of gd_chunk lane by lane
                _gradient(w21, w32, s11, s31, m0, ni, nh, no, x, e, g32, bb, l_decay, g2, l_eta)
                any_stop = False
                for l in range(LANES):
                    stopped[l] = False
                    if not live[l]:
                        continue
                    j = blk * LANES + l
                    blow2 = fstate[j, BLOW2]
                    if blow2 < 0:
                        blow2 = min(blow_ratio * max(np.sqrt(g2[l]), blow_floor[j]), blow_cap) ** 2
                        fstate[j, BLOW2] = blow2
                    fstate[j, G2] = g2[l]
                    stop = (not g2[l] <= blow2) or g2[l] <= tol2[j]
                    if stop and saved_k >= 0 and k - saved_k > 1:
                        # replay from the saved state, step by step, in gd_chunk (as gd_chunk itself would)
                        _unpack_lane(SL[blk], l, W[j])
                        state[j, K] = saved_k
                        state[j, POS] = state[j, SAVED_POS]
                        state[j, SAVED_K] = saved_k
                        state[j, CAREFUL_UNTIL] = k + CHECK_EVERY
                        state[j, STATUS] = RUNNING
                        solo[j] = 1
                        q = pidx[j]
                        gd_chunk(W[j], saved[j], work, dims, offs, S11[q], S31[q], S13[q], m0, eta[j], decay[j],
                                 two_eta[j], shrink[j], n_steps, rec[j], nrec[j], snap[j], tol2[j], blow_ratio,
                                 blow_floor[j], blow_cap, state[j], fstate[j], k_stop)
                        stopped[l] = True
                        any_stop = True
                        continue
                    status = RUNNING
                    if not g2[l] <= blow2:
                        status = DIVERGED
                    else:
                        if pos[l] < nrec[j] and rec[j, pos[l]] == k:
                            _unpack_lane(w, l, snap[j, pos[l]])
                            pos[l] += 1
                        if g2[l] <= tol2[j]:
                            status = CONVERGED
                        elif k == n_steps:
                            status = COMPLETED
                    if status != RUNNING:
                        _unpack_lane(w, l, W[j])
                        state[j, K] = k
                        state[j, POS] = pos[l]
                        state[j, STATUS] = status
                        state[j, SAVED_K] = saved_k
                        state[j, CAREFUL_UNTIL] = -1
                        stopped[l] = True
                        any_stop = True
                    else:
                        state[j, SAVED_POS] = pos[l]
                # save W_k, then W ← W − η G
                SL[blk][:] = w
                saved_k = k
                _descend(w21, bb, l_eta)
                _descend(w32, g32, l_eta)
                if any_stop:
                    for l in range(LANES):
                        if stopped[l]:
                            live[l] = False
                            _zero_lane(w, l)
                            _zero_lane(SL[blk], l)
                            _zero_lane(s11, l)
                            _zero_lane(s31, l)
                            lp[0, l] = 0.0
                            lp[1, l] = 0.0
                            lp[2, l] = 0.0
                            lp[3, l] = 1.0
                    alive = False
                    for l in range(LANES):
                        alive = alive or live[l]
                    if not alive:
                        break
            else:
                if k == next_rec:
                    if away:
                        w32[:] = g32
                        away = False
                    every = True  # every lane of the block records here (a sweep's usual case): in one pass
                    for l in range(LANES):
                        j = blk * LANES + l
                        every = every and live[l] and pos[l] < nrec[j] and rec[j, pos[l]] == k
                    if every:
                        _unpack_block(w, snap, blk * LANES, pos)
                    for l in range(LANES):
                        j = blk * LANES + l
                        if live[l] and pos[l] < nrec[j] and rec[j, pos[l]] == k:
                            if not every:
                                _unpack_lane(w, l, snap[j, pos[l]])
                            pos[l] += 1
                    next_rec = -1
                if away:
                    _fused_step(w21, g32, w32, s11, s31, m0, ni, nh, no, x, e, l_two_eta, l_shrink, decays)
                else:
                    _fused_step(w21, w32, g32, s11, s31, m0, ni, nh, no, x, e, l_two_eta, l_shrink, decays)
                away = not away
            k += 1
        if away:
            w32[:] = g32
        for l in range(LANES):
            if live[l]:
                j = blk * LANES + l
                _unpack_lane(w, l, W[j])
                state[j, K] = k
                state[j, POS] = pos[l]
                state[j, SAVED_K] = saved_k
                state[j, CAREFUL_UNTIL] = -1


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def lane_diagnostics(snap, n_rec, S11L, S31L, DL, ni, nh, no, m0, grad_norm, drift, product, scratch):
    """Per point j and record t < n_rec (``snap[j, t]``: its flat weights, W21 then W32), as
    ``gd_loop.record_diagnostics`` on each point, the points of block b in its LANES lanes:

        grad_norm[j, t] = sqrt(‖∂L/∂W21 + γW21‖²_F + ‖∂L/∂W32 + γW32‖²_F)   (γ = DL[b, l]; float64 sum)
        drift[j, t]     = max_ij |B(t) − B(0)|_ij,  B = W32ᵀW32 − W21W21ᵀ   (NaN where an entry is NaN; 0 at t = 0)
        product[j, t]   = W32 W21, the network map (o·i entries, row-major; the gradient's own when m0 = 1)

    The gradient as a checked step forms it (same products, same order), each Gram in plain k order. A block's
    records are gathered into lanes here, one record at a time (it stays in L1), not transposed in memory first.
    ``scratch``: ``diagnostics_scratch_size(ni, nh, no)`` entries of snap's dtype (aligned: ``empty_lanes``).
    """
    npts = snap.shape[0]
    size = snap.shape[2]
    n21 = nh * ni * LANES
    # carved in multiples of LANES entries, so every piece keeps the scratch's alignment
    cut = np.cumsum(np.array([size * LANES, max(nh, no) * ni * LANES, no * ni * LANES, n21, no * nh * LANES,
                              no * ni * LANES, nh * nh * LANES, nh * nh * LANES]))
    w = scratch[:cut[0]]
    w[:] = 0.0  # lanes past the last point stay 0
    w21 = w[:n21]
    w32 = w[n21:]
    x = scratch[cut[0]:cut[1]]
    e = scratch[cut[1]:cut[2]]
    bb = scratch[cut[2]:cut[3]]
    g32 = scratch[cut[3]:cut[4]]
    pm = x if m0 == 1 else scratch[cut[4]:cut[5]]  # the map: X of the error when m0 = 1
    b0 = scratch[cut[5]:cut[6]]
    bt = scratch[cut[6]:cut[7]]
    one = np.ones(LANES, dtype=snap.dtype)
    minus = -one
    g2 = np.empty(LANES)
    # per-lane reductions in stack buffers: nothing can alias them, so the drift pass stays in SIMD registers
    worst = carray(_stack_array(LANES, snap.dtype), (LANES,))
    nan = carray(_stack_array(LANES, snap.dtype), (LANES,))
    for blk in range(S11L.shape[0]):
        s11 = S11L[blk]
        s31 = S31L[blk]
        decay = DL[blk]
        for t in range(n_rec):
            if (blk + 1) * LANES <= npts:
                _pack_block(snap, blk * LANES, t, w)
            else:
                for l in range(LANES):
                    if blk * LANES + l < npts:
                        _pack_lane(snap[blk * LANES + l, t], l, w)
            _gradient(w21, w32, s11, s31, m0, ni, nh, no, x, e, g32, bb, decay, g2, one)
            if m0 == 0:
                _lmm(no, ni, nh, w32, nh, 1, w21, ni, 1, pm, 0, x, one, one)
            for l in range(LANES):
                j = blk * LANES + l
                if j < npts:
                    _unpack_lane(pm, l, product[j, t])
            b = b0 if t == 0 else bt
            _lmm(nh, nh, no, w32, 1, nh, w32, nh, 1, b, 0, x, one, one)  # W32ᵀW32
            _lmm(nh, nh, ni, w21, ni, 1, w21, 1, ni, b, 2, x, minus, one)  # then − W21W21ᵀ
            for l in range(LANES):
                worst[l] = 0.0
                nan[l] = 0.0
            if t > 0:
                step = np.uint64(one.size)  # a row stride not constant to the optimiser: see _finish_gradient
                r = np.uint64(0)
                for _ in range(nh * nh):
                    for l in range(LANES):
                        diff = abs(bt[r + np.uint64(l)] - b0[r + np.uint64(l)])
                        worst[l] = diff if diff > worst[l] else worst[l]
                        nan[l] += diff  # NaN iff a diff is NaN (diffs are ≥ 0: no inf − inf)
                    r += step
            for l in range(LANES):
                j = blk * LANES + l
                if j < npts:
                    grad_norm[j, t] = np.sqrt(g2[l])
                    drift[j, t] = nan[l] if np.isnan(nan[l]) else worst[l]


# gd_lanes_steps compiles gd_loop's gd_chunk and constants into its machine code: its cached copy must go stale
# when gd_loop.py changes too (numba watches only this file: kernel_cache.py)
kernel_cache.stale_with(globals(), gd_loop)

_READY: set = set()


def lanes_for(layout_dims) -> bool:
    """Whether a GD group of these widths is stepped in lanes: two layers, every width ≤ MAX_WIDTH.

    By shape only, never by group size: a point's result must not depend on which points share its batch
    (a lane's arithmetic involves no other lane, and a padding lane changes nothing).
    """
    dims = [int(d) for d in layout_dims]
    return len(dims) == 3 and max(dims) <= MAX_WIDTH


def lane_scratch_size(ni: int, nh: int, no: int) -> int:
    return (max(nh, no) * ni + no * ni + nh * ni + no * nh) * LANES


def diagnostics_scratch_size(ni: int, nh: int, no: int) -> int:
    """Entries of ``lane_diagnostics``' scratch: a block's weights, X, E, both gradients, the map, two Grams."""
    return (nh * ni + no * nh + max(nh, no) * ni + 2 * no * ni + nh * ni + no * nh + 2 * nh * nh) * LANES


def empty_lanes(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on a ``ALIGN``-byte boundary.

    A lane vector is LANES contiguous entries (64 bytes in float64): in numpy's 16-byte aligned buffers every such load
    and store may straddle two cache lines (measured in docs/performance.md#sweep-lanes)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dt.itemsize + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + n * dt.itemsize].view(dt).reshape(shape)


def to_lanes(rows: np.ndarray, n_blocks: int, fill: float = 0.0) -> np.ndarray:
    """(n, size) per-point rows → (n_blocks, size·LANES), entry e of point b·LANES + l at [b, e·LANES + l];
    padding lanes hold ``fill``. Aligned (``empty_lanes``)."""
    n, size = rows.shape
    pad = np.full((n_blocks * LANES, size), fill, dtype=rows.dtype)
    pad[:n] = rows
    out = empty_lanes((n_blocks, size * LANES), rows.dtype)
    out.reshape(n_blocks, size, LANES)[...] = pad.reshape(n_blocks, LANES, size).transpose(0, 2, 1)
    return out


def steps(*args) -> None:
    """``gd_lanes_steps(*args)``, compiled with SLP on (``_call``)."""
    _call(gd_lanes_steps, args)


def diagnostics(*args) -> None:
    """``lane_diagnostics(*args)``, compiled with SLP on (``_call``)."""
    _call(lane_diagnostics, args)


def _call(kernel, args) -> None:
    """``kernel(*args)``. The first call per kernel and weights dtype in a process first compiles (or loads from
    numba's cache) the kernel for these argument types with LLVM's SLP vectoriser on (module docstring), under
    numba's compiler lock; the run itself happens outside the lock."""
    key = (kernel, args[0].dtype)
    if key not in _READY:
        from numba import typeof
        from numba.core import config
        from numba.core.compiler_lock import global_compiler_lock

        signature = tuple(typeof(a) for a in args)
        # numba reads SLP_VECTORIZE only while it optimises a module it compiles (codegen._pass_builder), and every
        # compile holds this lock: no other compile can see the flip (the kernels this one compiles in do, harmlessly:
        # SLP reorders no floating-point operation)
        with global_compiler_lock:
            previous = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = 1
            try:
                kernel.compile(signature)
            finally:
                config.SLP_VECTORIZE = previous
        _READY.add(key)
    kernel(*args)
