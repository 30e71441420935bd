"""Full-batch gradient descent on a deep linear network (docs/theory.md#conventions):

    W_l ← W_l − η (∂L/∂W_l + γ W_l),   −∂L/∂W_l = 2 (W_D⋯W_{l+1})ᵀ (Σ31 − W Σ11) (W_{l−1}⋯W_1)ᵀ,   t = η·step.

The steps run in one compiled loop (``gd_loop.gd_steps``) that calls BLAS directly with no Python per
step, at every size. Measured side by side against a numpy loop over preallocated buffers (``out=``), it is
far ahead for small nets, where numpy's per-call overhead dominates, and level from a few hundred units wide
up, where BLAS does all the work (the "plain numpy loop" notes of the GD speed rows in bench/results.md); so
there is no separate numpy path. Products are evaluated in the cheapest order (``plan_order``).

BLAS threads: the process's setting (the job worker pins it), or what the ``blas_threads`` hook asks for
between chunks (the job worker's share of the host's cores, service/jobs/cores.py), except that steps below
``SINGLE_THREAD_MAX_FLOPS`` run with BLAS limited to one thread. Below that size a second thread costs more
than it gives: OpenBLAS splits some mid-size products across threads at a loss, and a multi-threaded
OpenBLAS spin-waits at its barriers when another process holds a core. Above it a second thread pays on a
quiet machine (figures: docs/performance.md#blas-threads).

Stopping rules (checked exactly at every step, see ``gd_loop``):

* converged: gradient norm sqrt(Σ‖∂L/∂W_l + γW_l‖²) ≤ rtol·‖Σ31‖_F, rtol = ``convergence_rtol(dtype)``
  (CONVERGENCE_RTOL = 1e-10 in float64; 1.2e-5 in float32, whose round-off floor lies above 1e-10);
* diverged: the gradient norm is not finite or exceeds ``blowup_threshold`` (1e12 × the larger of the
  initial gradient norm and ‖Σ31‖_F, capped by the dtype's range). A convergent run never comes near it:
  the gradient of a descending run stays within a modest factor of those scales, while a run past the
  stability bound grows geometrically and crosses it in O(30/log(growth per step)) steps.

Records are copies of the weights into preallocated snapshot buffers at the requested steps. Worker hooks
are called between chunks of steps whose length is adapted to the measured speed, about every
``hooks.interval`` seconds; the chunking changes no bit of the result (checks sit at fixed steps and the
kernel's loop state carries over between chunks), so a run with hooks equals one without.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from . import gd_loop
from .errors import InvalidParameterError, NonFiniteError, ShapeError, StopRequested
from .methods import CONVERGENCE_RTOL, GradientDescent, Hooks, RunResult
from .problem import Problem

# Steps cheaper than this run with BLAS limited to one thread (module docstring): 1e7 FLOPs is a two-layer
# net of width ≈ 108; 100³ (8e6) measured faster on one thread, 128³ (1.7e7) on two
# (docs/performance.md#blas-threads).
SINGLE_THREAD_MAX_FLOPS = 1e7

# Blow-up: gradient norm beyond BLOWUP_RATIO × max(initial gradient norm, ‖Σ31‖_F) counts as diverged.
BLOWUP_RATIO = 1e12

DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def convergence_rtol(dtype) -> float:
    """CONVERGENCE_RTOL, floored at 100 ε of the dtype: a float32 gradient cannot get below its round-off."""
    return max(CONVERGENCE_RTOL, 100.0 * float(np.finfo(dtype).eps))


def blowup_cap(dtype) -> float:
    """1e-3·sqrt(max float): keeps η·(gradient) and the squared norm far from overflow, so the state at the
    detected step is still finite (it binds for float32 only: 1.8e16)."""
    return 1e-3 * float(np.sqrt(np.finfo(dtype).max))


def blowup_threshold(initial_gradient_norm: float, sigma31_norm: float, dtype) -> float:
    """Gradient norm above which a run counts as diverged (see the module docstring)."""
    return min(BLOWUP_RATIO * max(initial_gradient_norm, sigma31_norm), blowup_cap(dtype))


# ------------------------------------------------------------------------------------------------
# layout and cost


@dataclass(frozen=True)
class Layout:
    """Widths n_0 = n_in, …, n_D = n_out and the offsets of each layer in the flat weight vector."""

    dims: np.ndarray   # (D+1,) int64
    offs: np.ndarray   # (D+1,) int64

    @classmethod
    def of_widths(cls, widths: Sequence[int]) -> Layout:
        """The layout of widths (n_in, hidden…, n_out): layer l (W_{l+1} in docs/theory.md) is n_{l+1} × n_l."""
        d = np.asarray(widths, dtype=np.int64)
        return cls(d, np.concatenate([[0], np.cumsum(d[1:] * d[:-1])]).astype(np.int64))

    @property
    def depth(self) -> int:
        return self.dims.size - 1

    @property
    def size(self) -> int:
        return int(self.offs[-1])

    def shape(self, l: int) -> tuple[int, int]:
        return int(self.dims[l + 1]), int(self.dims[l])

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        return [flat[self.offs[l]:self.offs[l + 1]].reshape(self.shape(l)) for l in range(self.depth)]

    def pack(self, weights: Sequence[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate([np.asarray(w, dtype=dtype).ravel() for w in weights])

    def unpack_stack(self, rows: np.ndarray, dtype, copy: bool = True) -> list[np.ndarray]:
        """(T, size) snapshots → per layer (T, rows_l, cols_l) in ``dtype``: contiguous copies (the snapshots may sit
        in a buffer the next run reuses), or with ``copy=False`` views of ``rows`` (copies only where its dtype is not
        ``dtype``)."""
        t = rows.shape[0]
        return [np.array(rows[:, self.offs[l]:self.offs[l + 1]], dtype=dtype, order="C" if copy else "K",
                         copy=True if copy else None).reshape((t, *self.shape(l))) for l in range(self.depth)]


def layout_of(problem: Problem, weights0: Sequence[np.ndarray]) -> Layout:
    """Check that the weights are finite, chain n_in → … → n_out and match the problem; return the layout."""
    if len(weights0) < 1:
        raise ShapeError("no weight matrices given", field=("init", "weights"),
                         fix="give one matrix per layer, input→output (weights[0] is W21)")
    dims = [problem.n_in]
    for l, w in enumerate(weights0):
        shape = np.shape(w)
        if len(shape) != 2 or shape[1] != dims[-1]:
            raise ShapeError(f"weights[{l}] has shape {shape}, expected (rows, {dims[-1]})",
                             field=("init", "weights", l),
                             fix="each layer's columns must equal the previous layer's rows (input→output order)")
        dims.append(int(shape[0]))
    if dims[-1] != problem.n_out:
        raise ShapeError(f"the last layer has {dims[-1]} outputs, sigma31 has {problem.n_out} rows",
                         field=("init", "weights", len(weights0) - 1), fix="the last layer must map to n_out")
    for l, w in enumerate(weights0):
        if not np.all(np.isfinite(w)):
            raise NonFiniteError(f"weights[{l}] has non-finite entries", field=("init", "weights", l),
                                 fix="replace NaN/Infinity with finite numbers")
    return Layout.of_widths(dims)


def plan_order(dims: Sequence[int]) -> tuple[int, int]:
    """(m0, FLOPs per step): where Σ11 enters the product chain, and the cost of one step.

    A step needs the prefixes P_l = W_l⋯W_1 for l < D (for the gradients' right factors), the error
    E = Σ31 − W Σ11, the backward products B_l = W_{l+1}ᵀ B_{l+1} and the gradients B_l P_{l−1}ᵀ. Σ11 can
    multiply the chain after any layer m (P_m Σ11, then W_{m+1}… on the left); m0 = m − 1 is the cheapest.
    Two layers: m = 1 costs 2hi² + 6ohi, m = 2 costs 2oi² + 6ohi (the latter wins when o < h).
    """
    n = [int(x) for x in dims]
    d, i = len(n) - 1, n[0]
    fixed = sum(2 * n[l + 1] * n[l] * i for l in range(1, d - 1))      # prefixes P_2 … P_{D−1}
    fixed += sum(4 * n[l + 1] * n[l] * i for l in range(1, d))          # B_l and gradients for l ≥ 2
    best = None
    for m0 in range(d):
        cost = 2 * n[m0 + 1] * i * i + sum(2 * n[l + 1] * n[l] * i for l in range(m0 + 1, d))
        if m0 == d - 1 and d >= 2:
            cost += 2 * n[d] * n[d - 1] * i                             # P_D, not otherwise needed
        if best is None or cost < best[1]:
            best = (m0, cost)
    return best[0], fixed + best[1]


def step_flops(dims: Sequence[int]) -> int:
    """FLOPs of one GD step in the cheapest order (multiply-adds count 2; elementwise work not counted)."""
    return plan_order(dims)[1]


@cache
def _threadpools() -> ThreadpoolController:
    # created once, after gd_loop has loaded the BLAS its kernels call (numpy's, or scipy's on the portable path)
    return ThreadpoolController()


# Scratch vectors of the GD kernel up to this size are kept per thread and reused by the next run.
SCRATCH_CACHE_MAX_BYTES = 64 * 2 ** 20
_scratch = threading.local()


def _thread_buffer(purpose: str, n: int, dt: np.dtype) -> np.ndarray:
    """A vector of at least n entries of ``dt`` kept on this thread for ``purpose`` (fresh above the cap)."""
    if n * dt.itemsize > SCRATCH_CACHE_MAX_BYTES:
        return np.empty(n, dtype=dt)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get((purpose, dt))
    if buf is None or buf.size < n:
        buf = buffers[(purpose, dt)] = np.empty(n, dtype=dt)
    return buf


def scratch_for(layout: Layout, m0: int, dtype) -> np.ndarray:
    """The GD kernel's scratch vector for this shape (``gd_loop.gd_workspace``), reused across runs on this
    thread (runs on one thread never overlap; contents don't carry between runs).

    Why: the first touch of a fresh page is a page fault, and a run of a 300³ net touched ~1,600 fresh pages
    of scratch (2 with reuse); short runs and sweeps of many points pay that per run. Larger scratch is
    allocated per run: its faults are negligible next to the steps of such a net.
    """
    dt = np.dtype(dtype)
    return _thread_buffer("scratch", int(gd_loop.scratch_size(layout.dims, layout.offs, m0)), dt)


@contextlib.contextmanager
def snapshot_buffer(rows: int, size: int, dtype):
    """A (rows, size) buffer for a run's snapshots, reused across runs on this thread; the run copies its
    records out (``finish_run``) before the buffer is released.

    Why: a fresh buffer is fresh pages, and freeing it with the run's outputs can leave enough free memory at
    the heap's top for glibc to trim it, so the next run faults its pages in again, which made recording a
    small net's run measurably slower (docs/performance.md#records). A run started from a hook of a run on the
    same thread gets a fresh buffer.
    """
    dt = np.dtype(dtype)
    busy = _scratch.__dict__.setdefault("snapshots_busy", [False])
    if busy[0]:
        yield np.empty((rows, size), dtype=dt)
        return
    busy[0] = True
    try:
        yield _thread_buffer("snapshots", rows * size, dt)[:rows * size].reshape(rows, size)
    finally:
        busy[0] = False


def frobenius_norm(a: np.ndarray) -> float:
    """‖A‖_F = sqrt(Σ_ij A_ij²), computed without BLAS.

    Why not ``np.linalg.norm``: it calls numpy's BLAS, which on the kernels' portable path
    (``gd_loop.BLAS == "scipy"``) is another OpenBLAS build than the one they call. After a multi-threaded
    call, OpenBLAS's idle threads spin for ~0.1 s before they sleep, on the cores the kernel's 2-thread
    GEMMs need, and the kernel's next steps run about twice as slow (docs/performance.md#one-blas). Called
    right before the kernel, it must not wake another pool.
    """
    return float(np.sqrt(np.einsum("ij,ij->", a, a)))


def set_blas_threads(n: int) -> None:
    """Set every BLAS pool of the process to ``n`` threads (threadpoolctl; cheap enough to call between
    chunks, docs/performance.md#blas-threads)."""
    for lib in _threadpools().select(user_api="blas").lib_controllers:
        if lib.get_num_threads() != n:
            lib.set_num_threads(n)


def blas_pool_info() -> dict:
    """threadpoolctl's description of the process's BLAS pool (library, version, threads now), from the controller made
    once (``threadpool_info()`` inspects every loaded library again: ~4 ms a call)."""
    return next((lib.info() for lib in _threadpools().select(user_api="blas").lib_controllers), {})


@contextlib.contextmanager
def leave_blas_alone():
    """Within this block, runs on this thread leave the process's BLAS thread counts as they are
    (``blas_threads_for`` does nothing): for a worker's warm-up, whose tiny runs may run beside a job (its later
    tier, service/jobs/warmup.py), and whose counts must stay the job's."""
    previous = getattr(_scratch, "blas_alone", False)
    _scratch.blas_alone = True
    try:
        yield
    finally:
        _scratch.blas_alone = previous


@contextlib.contextmanager
def blas_threads_for(flops: float, clock: HookClock | None = None):
    """Context manager for a run's stepping: BLAS limited to one thread for steps below
    SINGLE_THREAD_MAX_FLOPS; above, the count ``clock``'s ``blas_threads`` hook asks for, asked now and at
    every check (``HookClock.check``), or the process's setting without that hook. The process's counts
    are restored at the end.

    The limit is process-wide while it lasts (threadpoolctl; once per run); in a process already pinned to one
    thread (the job worker's default) the single-thread limit changes nothing.
    """
    if getattr(_scratch, "blas_alone", False):
        yield
        return
    if flops < SINGLE_THREAD_MAX_FLOPS:
        with _threadpools().limit(limits=1, user_api="blas"):
            yield
        return
    if clock is None or clock.blas_threads is None:
        yield
        return
    with _threadpools().limit(limits=None, user_api="blas"):  # changes nothing; restores the counts on exit
        clock.sharing = True
        try:
            clock.share_cores()
            yield
        finally:
            clock.sharing = False


# ------------------------------------------------------------------------------------------------
# hooks


class HookClock:
    """Calls the worker hooks about every ``hooks.interval`` seconds; cheap when no hooks are given."""

    def __init__(self, hooks: Hooks | None):
        self.hooks = hooks
        self.blas_threads = hooks.blas_threads if hooks is not None else None
        self.active = hooks is not None and (hooks.progress is not None or hooks.should_stop is not None
                                             or self.blas_threads is not None or hooks.records is not None)
        self.interval = max(0.0, float(hooks.interval)) if hooks is not None else 0.0
        self.last = time.perf_counter()
        self.sharing = False  # set by blas_threads_for while steps big enough for several threads run
        # set by the stepping driver: records [start:] made so far (a RunResult, outcome "stopped")
        self.so_far: Callable[[int], RunResult] | None = None
        self.sent = 0  # records handed to hooks.records so far

    def due(self) -> bool:
        return self.active and time.perf_counter() - self.last >= self.interval

    def check(self, fraction: float) -> None:
        """Report progress, then raise StopRequested if the caller asks to stop."""
        if not self.active:
            return
        self.last = time.perf_counter()
        self.send_records()
        if self.hooks.progress is not None:
            self.hooks.progress(min(1.0, max(0.0, float(fraction))))
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            raise StopRequested("stop requested", partial=self.so_far(0) if self.so_far is not None else None)
        self.share_cores()

    def send_records(self) -> None:
        """Hand the records made since the last call to ``hooks.records``."""
        if self.hooks is None or self.hooks.records is None or self.so_far is None:
            return
        new = self.so_far(self.sent)
        if new.times.size:
            self.hooks.records(self.sent, new)
            self.sent += int(new.times.size)

    def share_cores(self) -> None:
        """Give the next steps as many BLAS threads as the ``blas_threads`` hook allows (while sharing)."""
        if self.sharing:
            set_blas_threads(max(1, int(self.blas_threads())))

    def done(self) -> None:
        if self.active:
            self.send_records()
        if self.active and self.hooks.progress is not None:
            self.hooks.progress(1.0)


# ------------------------------------------------------------------------------------------------
# driver


def _check_method(method: GradientDescent) -> None:
    eta, steps, decay = method.learning_rate, method.steps, method.weight_decay
    if not (np.isfinite(eta) and eta > 0):
        raise InvalidParameterError(f"learning rate {eta} must be a positive number",
                                    field=("training", "learning_rate"), fix="use e.g. 0.01")
    if int(steps) != steps or steps < 0:
        raise InvalidParameterError(f"steps {steps} must be a non-negative integer",
                                    field=("training", "steps"), fix="give a whole number of steps")
    if not (np.isfinite(decay) and decay >= 0):
        raise InvalidParameterError(f"weight decay {decay} must be ≥ 0", field=("training", "weight_decay"),
                                    fix="use 0 for none")


def _check_record_steps(record_steps: np.ndarray, n_steps: int) -> np.ndarray:
    rec = np.asarray(record_steps)
    if (rec.ndim != 1 or rec.size == 0 or not np.issubdtype(rec.dtype, np.integer) or rec[0] != 0
            or np.any(np.diff(rec) <= 0) or rec[-1] > n_steps):
        raise InvalidParameterError("record steps must be sorted unique integers in [0, steps] starting at 0",
                                    field=("record",), fix="use RecordSchedule.gd_steps")
    return rec.astype(np.int64)


def run_gd(problem: Problem, weights0: Sequence[np.ndarray], method: GradientDescent, record_steps: np.ndarray,
           *, dtype=np.float64, hooks: Hooks | None = None) -> RunResult:
    """Run GD for ``method.steps`` steps from ``weights0``, recording the weights at ``record_steps``.

    Returns the weights at the record steps (per layer (T, rows, cols) in ``dtype``), ``times`` = η·steps,
    and the outcome. On convergence or divergence at step k the run stops there, later records are
    dropped and the state at k is the last record (for divergence: if finite, else the previous record).
    """
    _check_method(method)
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise InvalidParameterError(f"dtype {dt} is not supported", field=("dtype",), fix="use float64 or float32")
    n_steps = int(method.steps)
    rec = _check_record_steps(record_steps, n_steps)
    layout = layout_of(problem, weights0)
    m0, flops = plan_order(layout.dims)
    decay = float(method.weight_decay)

    s31_norm = frobenius_norm(problem.sigma31)
    # a negative tolerance never stops the run: it steps on to the end (stop_at_convergence False)
    tol2 = (convergence_rtol(dt) * s31_norm) ** 2 if method.stop_at_convergence else -1.0

    w = layout.pack(weights0, dt)
    s11 = np.ascontiguousarray(problem.sigma11, dtype=dt)
    s31 = np.ascontiguousarray(problem.sigma31, dtype=dt)
    s13 = np.ascontiguousarray(s31.T)
    eta_t, decay_t = dt.type(method.learning_rate), dt.type(decay)
    two_eta, shrink = dt.type(2.0 * method.learning_rate), dt.type(1.0 - method.learning_rate * decay)
    saved = np.empty_like(w)
    # the blow-up threshold is set by the first check, from the initial gradient norm: it equals
    # blowup_threshold(g0, ‖Σ31‖) (new_state marks it unknown)
    state, fstate = (a[0] for a in gd_loop.new_state(1))
    scratch = scratch_for(layout, m0, dt)

    def advance(k_stop):
        gd_loop.gd_steps(w, saved, layout.dims, layout.offs, s11, s31, s13, eta_t, decay_t, two_eta, shrink, m0,
                          n_steps, rec, snap, tol2, BLOWUP_RATIO, s31_norm, blowup_cap(dt), state, fstate, k_stop,
                          scratch)

    # Chunks only decide when the hooks run: the loop state carries over (see gd_loop), so no bit depends
    # on their lengths, which follow the measured speed.
    clock = HookClock(hooks)
    k_stop = 0
    # First chunk sized for a conservative 1e9 FLOP/s, then adapted to the measured rate.
    chunk = max(1, int(clock.interval * 1e9 / max(flops, 1))) if clock.active else n_steps + 1
    # + 1 row: the state where an early stop happens
    with snapshot_buffer(rec.size + 1, layout.size, dt) as snap, blas_threads_for(flops, clock):
        clock.so_far = records_so_far(method, layout, dt, rec, snap, state)
        while state[gd_loop.STATUS] == gd_loop.RUNNING:
            t0 = time.perf_counter()
            k_start = int(state[gd_loop.K])
            k_stop = min(k_stop + chunk, n_steps + 1)
            advance(k_stop)
            if state[gd_loop.STATUS] == gd_loop.RUNNING and clock.active:
                elapsed = time.perf_counter() - t0
                rate = (int(state[gd_loop.K]) - k_start) / max(elapsed, 1e-9)
                # at most ×4 growth per chunk: one noisy fast chunk must not make the next one very long
                chunk = int(min(max(1.0, rate * clock.interval), 4.0 * chunk))
                clock.check(int(state[gd_loop.K]) / max(n_steps, 1))
        clock.done()
        return finish_run(method, layout, dt, rec, snap, w, state)  # copies the records out of the buffer


def records_so_far(method, layout: Layout, dt: np.dtype, rec: np.ndarray, snap: np.ndarray,
                   state: np.ndarray) -> Callable[[int], RunResult]:
    """For ``HookClock.so_far``: the records [start:] a GD or SGD kernel has written into ``snap`` so far."""
    eta = float(method.learning_rate)

    def so_far(start: int) -> RunResult:
        steps = rec[start:int(state[gd_loop.POS])].copy()
        return RunResult(times=steps * eta, steps=steps, weights=layout.unpack_stack(snap[start:start + steps.size], dt),
                         outcome="stopped")

    return so_far


def finish_run(method: GradientDescent, layout: Layout, dt: np.dtype, rec: np.ndarray, snap: np.ndarray,
               w: np.ndarray, state: np.ndarray, copy: bool = True) -> RunResult:
    """The RunResult of a finished run from its kernel state: on an early stop at step k the state there
    is appended as the last record (for divergence only if finite), later records are dropped. ``copy=False``: the
    weights are views of ``snap`` (a buffer of this run alone, let go with the result)."""
    status, k, pos = int(state[gd_loop.STATUS]), int(state[gd_loop.K]), int(state[gd_loop.POS])
    steps_taken = list(rec[:pos])
    if (status in (gd_loop.CONVERGED, gd_loop.DIVERGED) and (not steps_taken or steps_taken[-1] != k)
            and (status == gd_loop.CONVERGED or np.all(np.isfinite(w)))):
        snap[pos] = w
        pos += 1
        steps_taken.append(k)
    diverged_at = int(k) if status == gd_loop.DIVERGED else None
    steps_arr = np.asarray(steps_taken, dtype=np.int64)
    outcome = {gd_loop.COMPLETED: "completed", gd_loop.CONVERGED: "converged",
               gd_loop.DIVERGED: "diverged"}[status]
    return RunResult(
        times=steps_arr * float(method.learning_rate),
        steps=steps_arr,
        weights=layout.unpack_stack(snap[:pos], dt, copy),
        outcome=outcome,
        diverged_at_step=diverged_at,
        diverged_at_time=None if diverged_at is None else diverged_at * float(method.learning_rate),
    )
