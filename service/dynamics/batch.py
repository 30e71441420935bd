"""Many simulations in one call, for sweeps: points that share a shape and a schedule are stepped together.

    points = [SweepPoint(problem, w0, GradientDescent(eta, 10_000), RecordSchedule()) for eta, w0 in grid]
    trajectories = simulate_batch(points)          # in input order, each simulate(*point) (to round-off
                                                   # for small two-layer nets, else bit for bit)

Grouping (``group_key``): GD points with the same layer widths (n_in, hidden…, n_out), step count, record
schedule and dtype form one group; learning rate, weight decay, Σ11, Σ31 and the initial weights may
differ per point. Flow, exact, SGD, GD-with-momentum and task-sequence points are not grouped: each runs through ``simulate``
(so a sweep can take SGD's seed, batch size or momentum as an axis).

A GD group runs in one compiled call over its points. Small two-layer groups (every width ≤
``gd_lanes.MAX_WIDTH``) are stepped in SIMD lanes, blocks of ``gd_lanes.LANES`` points whose arrays put the
point axis innermost, so each vector FMA advances 8 points and a tiny net stops paying a BLAS call per
product (``gd_lanes.gd_lanes_steps``; in-process (8,16,8) sweeps ×1.6 the one-by-one loop, bench/results.md).
Its products sum in plain order with fused multiply-adds where BLAS sums in its own order, so these points
agree with ``simulate`` to round-off, not bit for bit: outcomes, stop steps and record steps are equal, and
recorded weights, products, losses, gradient norms and balance drift agree to ≤ 4e-14 relative over 10,000 steps
as measured (tests/dynamics/test_lanes.py, which asserts 1e-11; a run left stepping at its round-off floor after
converging agrees to that floor's scale). A point's result does not depend on the other points of its
batch, the group size or the chunking: lanes never mix. The records' diagnostics (gradient norm, balance drift)
and network maps of a float64 lane group are computed in lanes too (``gd_lanes.lane_diagnostics``), and their fit
gaps, mode strengths and test losses at once for the points that share a problem (``_record_products``); both are
handed to ``build_trajectory``, instead of a BLAS call per product and record and a few numpy calls per point.
The records stay in the group's own buffer (``finish_run(copy=False)``), copied per point only when the
trajectories keep the weights.

Every other group (deeper or wider nets, or ``simulate_batch(..., lanes=False)``) runs through
``gd_loop.gd_batch_steps``, which advances each point with the single-simulation step loop itself
(``gd_loop.gd_chunk``, the loop ``run_gd`` runs), its loop state kept per point between calls. Checks sit at
fixed steps and that state carries over, so neither the grouping nor the chunking for the hooks changes a
bit: every point's weights are those of ``simulate`` on it, with or without hooks. Every trajectory is filled
by ``simulate.build_trajectory`` (the one post-processing); the optimum is cached on the problem, so the
points that share it compute it once.

Why not a batched numpy path for large nets: the compiled loop calls BLAS directly with no Python per step
(level with a numpy loop from a few hundred units wide up, see gd.py); stacking the points into
batched matmuls would change the BLAS calls and lose the bitwise equality with ``simulate`` for no gain.
What batching does buy there is the per-point overhead outside the steps: Python per run, and the
per-problem pieces of the post-processing.

Outcomes are per point: a point that converges or diverges at step k stops there (its state is frozen,
later records dropped, exactly as ``run_gd`` does) while the others continue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import gd_lanes, gd_loop, network
from .errors import DynamicsError, InvalidParameterError
from .gd import (
    BLOWUP_RATIO,
    HookClock,
    Layout,
    blas_threads_for,
    blowup_cap,
    convergence_rtol,
    finish_run,
    frobenius_norm,
    layout_of,
    plan_order,
    scratch_for,
)
from .gd_loop import RUNNING, STATUS
from .generalization import test_loss
from .live import RecordProducts
from .methods import GradientDescent, Hooks, Method
from .modes import mode_basis, mode_strengths
from .problem import Problem
from .record import RecordSchedule
from .sequence import TaskSequence
from .simulate import DTYPES, build_trajectory, preflight, simulate
from .trajectory import Trajectory

# A GD group is cut into sub-batches whose record buffers (points × records × weights) stay below this:
# 100³ two-layer nets with 200 records take 32 MB per point, so 8 points per sub-batch. Sub-batching does
# not change any result (the points are independent).
MAX_SNAPSHOT_BYTES = 256 * 2 ** 20
# ... and below this where that still leaves HEAP_MIN_POINTS points a sub-batch (small nets): under glibc's largest
# mmap threshold (32 MiB), so a freed buffer stays in the heap for the next sub-batch or chunk. A larger one is mapped
# afresh each time, its huge pages zeroed on first touch and, after an idle spell, backed again by the VM's host
# (docs/performance.md#sweep-lanes).
HEAP_SNAPSHOT_BYTES = 24 * 2 ** 20
HEAP_MIN_POINTS = 4 * gd_lanes.LANES

@dataclass(frozen=True, eq=False)
class SweepPoint:
    """One simulation of a sweep: the arguments of ``simulate`` (weights input→output, weights0[0] = W21)."""

    problem: Problem
    weights0: Sequence[np.ndarray]
    method: Method
    record: RecordSchedule
    dtype: str = "float64"


def group_key(point: SweepPoint) -> tuple | None:
    """Points with equal keys are stepped together; None: the point runs alone (flow, exact, sgd, task sequences, and
    GD with momentum, which the compiled GD loop does not step).

    GD key: ("gd", widths (n_in, hidden…, n_out), steps, record schedule, dtype). Learning rate, weight
    decay, Σ11/Σ31 and the initial weights are per point within a group.
    """
    if not isinstance(point.method, GradientDescent) or point.method.momentum:
        return None
    if isinstance(point.problem, TaskSequence):
        return None
    widths = (int(np.shape(point.weights0[0])[1]), *(int(np.shape(w)[0]) for w in point.weights0))
    return ("gd", widths, int(point.method.steps), point.record, point.dtype)


def simulate_batch(points: Sequence[SweepPoint], *, hooks: Hooks | None = None, lanes: bool = True
                   ) -> list[Trajectory]:
    """``simulate`` on every point, batched by ``group_key``; trajectories in input order.

    Every point is validated before anything runs: an invalid one raises its ``DynamicsError`` with the
    attribute ``point_index`` set to its position. ``hooks.progress`` gets the mean over the points of
    each point's completed fraction (GD: steps done / steps); ``hooks.should_stop`` returning True
    raises ``StopRequested`` (nothing is returned: callers that keep partial results batch in chunks).
    ``lanes=False`` steps small two-layer groups with the one-by-one loop too (bit for bit ``simulate``,
    slower; module docstring).
    """
    points = list(points)
    layouts = [_validate(i, p) for i, p in enumerate(points)]
    groups: dict[tuple, list[int]] = {}
    singles: list[int] = []
    for i, p in enumerate(points):
        key = group_key(p)
        if key is None:
            singles.append(i)
        else:
            groups.setdefault(key, []).append(i)
    progress = _Progress(hooks, len(points))
    out: list[Trajectory | None] = [None] * len(points)
    for idx in groups.values():
        for sub in _sub_batches(idx, layouts[idx[0]], points[idx[0]]):
            for i, traj in zip(sub, _run_gd_group([points[i] for i in sub], layouts[sub[0]], sub, progress, lanes)):
                out[i] = traj
    for i in singles:
        p = points[i]
        with _point(i):
            out[i] = simulate(p.problem, p.weights0, p.method, p.record, dtype=p.dtype, hooks=progress.point_hooks(i))
        progress.set(i, 1.0)
        progress.tick()
    progress.done()
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# validation, progress, sub-batches


@contextlib.contextmanager
def _point(i: int):
    """Tag a DynamicsError raised inside with the index of the point it concerns (``point_index``)."""
    try:
        yield
    except DynamicsError as err:
        err.point_index = i
        raise


def _validate(i: int, p: SweepPoint) -> Layout:
    """Every check ``simulate`` makes before running (preflight, shapes, finiteness), for point i."""
    with _point(i):
        if not isinstance(p, SweepPoint):
            raise InvalidParameterError(f"point {i} is a {type(p).__name__}, not a SweepPoint", field=(i,),
                                        fix="wrap each point's simulate() arguments in a SweepPoint")
        preflight(p.problem, p.weights0, p.method, p.record, dtype=p.dtype)
        problem = p.problem.phases[0].problem if isinstance(p.problem, TaskSequence) else p.problem
        return layout_of(problem, p.weights0)


class _Progress:
    """The batch's hooks: progress is the mean of the points' fractions; checks about every interval."""

    def __init__(self, hooks: Hooks | None, n: int):
        self.hooks = hooks
        self.clock = HookClock(hooks)
        self.fraction = np.zeros(max(n, 1))

    @property
    def active(self) -> bool:
        return self.clock.active

    def set(self, i, value) -> None:
        self.fraction[i] = value

    def tick(self, force: bool = False) -> None:
        """Report and honour a stop request when the interval has passed (or ``force``)."""
        if self.clock.active and (force or self.clock.due()):
            self.clock.check(float(np.mean(self.fraction)))

    def point_hooks(self, i: int) -> Hooks | None:
        """Hooks for a point run through ``simulate``: its progress folded into the batch's."""
        if not self.clock.active:
            return None

        def progress(f: float) -> None:
            self.fraction[i] = f
            if self.hooks.progress is not None:
                self.hooks.progress(float(np.mean(self.fraction)))
            self.clock.last = time.perf_counter()

        return Hooks(progress=progress, should_stop=self.hooks.should_stop, interval=self.hooks.interval,
                     blas_threads=self.hooks.blas_threads)

    def done(self) -> None:
        self.clock.done()


def _sub_batches(idx: list[int], layout: Layout, p: SweepPoint) -> list[list[int]]:
    """Consecutive slices of a group whose record buffers fit in HEAP_SNAPSHOT_BYTES when that leaves HEAP_MIN_POINTS
    points a slice, else in MAX_SNAPSHOT_BYTES (at least 1 point); a multiple of LANES points (whole blocks of SIMD
    lanes) but the last when the limit allows, as even as may be."""
    n_rec = p.record.gd_steps(p.method.learning_rate, int(p.method.steps)).size + 2
    per_point = max(n_rec * layout.size * np.dtype(DTYPES[p.dtype]).itemsize, 1)
    limit = int(HEAP_SNAPSHOT_BYTES // per_point)
    if limit < HEAP_MIN_POINTS:
        limit = max(1, int(MAX_SNAPSHOT_BYTES // per_point))
    even = -(-len(idx) // -(-len(idx) // limit))
    size = -(-even // gd_lanes.LANES) * gd_lanes.LANES
    if size > limit:  # whole blocks under the limit; a limit below one block: as even as may be
        size = limit // gd_lanes.LANES * gd_lanes.LANES or even
    return [idx[j:j + size] for j in range(0, len(idx), size)]


# ------------------------------------------------------------------------------------------------
# the GD group


def _run_gd_group(points: list[SweepPoint], layout: Layout, index: list[int], progress: _Progress,
                  lanes: bool = True) -> list[Trajectory]:
    """Step a group of GD points (same widths, steps, record schedule, dtype) together; their trajectories.

    The per-point set-up (thresholds, record steps, packed weights) is ``run_gd``'s, value for value.
    """
    dt = np.dtype(DTYPES[points[0].dtype])
    n_steps = int(points[0].method.steps)
    m0, flops = plan_order(layout.dims)
    nb = len(points)
    slots: dict[int, int] = {}
    problems: list[Problem] = []
    pidx = np.empty(nb, dtype=np.int64)
    for j, p in enumerate(points):
        if id(p.problem) not in slots:
            slots[id(p.problem)] = len(problems)
            problems.append(p.problem)
        pidx[j] = slots[id(p.problem)]
    s11 = np.ascontiguousarray(np.stack([q.sigma11 for q in problems]), dtype=dt)
    s31 = np.ascontiguousarray(np.stack([q.sigma31 for q in problems]), dtype=dt)
    s13 = np.ascontiguousarray(s31.transpose(0, 2, 1))

    weights0 = [[np.asarray(w, dtype=np.float64) for w in p.weights0] for p in points]  # as simulate passes them
    recs = [p.record.gd_steps(p.method.learning_rate, n_steps).astype(np.int64) for p in points]
    n_rec = max(r.size for r in recs)
    rec = np.full((nb, n_rec), -1, dtype=np.int64)
    nrec = np.empty(nb, dtype=np.int64)
    for j, r in enumerate(recs):
        rec[j, :r.size] = r
        nrec[j] = r.size
    w = np.stack([layout.pack(w0, dt) for w0 in weights0])
    eta = np.array([p.method.learning_rate for p in points], dtype=dt)
    decay = np.array([p.method.weight_decay for p in points], dtype=dt)
    two_eta = np.array([dt.type(2.0 * p.method.learning_rate) for p in points], dtype=dt)
    shrink = np.array([dt.type(1.0 - p.method.learning_rate * float(p.method.weight_decay)) for p in points],
                      dtype=dt)
    s31_norm = np.array([frobenius_norm(p.problem.sigma31) for p in points])
    tol2 = np.array([(convergence_rtol(dt) * x) ** 2 if p.method.stop_at_convergence else -1.0
                     for x, p in zip(s31_norm, points, strict=True)])
    snap = np.empty((nb, n_rec + 1, layout.size), dtype=dt)  # + 1: the state where an early stop happens
    saved = np.empty_like(w)
    state, fstate = gd_loop.new_state(nb)
    scratch = scratch_for(layout, m0, dt)

    in_lanes = lanes and gd_lanes.lanes_for(layout.dims)
    if in_lanes:
        # small two-layer nets: blocks of LANES points stepped together, SIMD across points (gd_lanes)
        ni, nh, no = (int(x) for x in layout.dims)
        n_blocks = -(-nb // gd_lanes.LANES)
        wl = gd_lanes.to_lanes(w, n_blocks)
        sl = gd_lanes.empty_lanes(wl.shape, dt)
        sl[...] = 0.0
        s11l = gd_lanes.to_lanes(s11.reshape(len(problems), -1)[pidx], n_blocks)
        s31l = gd_lanes.to_lanes(s31.reshape(len(problems), -1)[pidx], n_blocks)
        params = np.zeros((4, n_blocks * gd_lanes.LANES), dtype=dt)  # padding lanes: η = γ = 0, 1 − ηγ = 1
        params[3] = 1
        params[:, :nb] = np.stack([eta, decay, two_eta, shrink])
        pl = gd_lanes.empty_lanes((n_blocks, 4, gd_lanes.LANES), dt)
        pl[...] = params.reshape(4, n_blocks, gd_lanes.LANES).transpose(1, 0, 2)
        solo = np.zeros(nb, dtype=np.int64)
        lane_scratch = gd_lanes.empty_lanes(gd_lanes.lane_scratch_size(ni, nh, no), dt)

        def advance(k_stop: int) -> None:
            gd_lanes.steps(wl, sl, s11l, s31l, pl, ni, nh, no, m0, n_steps, rec, nrec, snap, tol2, BLOWUP_RATIO,
                           s31_norm, blowup_cap(dt), state, fstate, solo, k_stop, w, saved, layout.dims, layout.offs,
                           s11, s31, s13, pidx, eta, decay, two_eta, shrink, lane_scratch, scratch)
    else:
        def advance(k_stop: int) -> None:
            gd_loop.gd_batch_steps(w, saved, layout.dims, layout.offs, s11, s31, s13, pidx, eta, decay, two_eta,
                                   shrink, m0, n_steps, rec, nrec, snap, tol2, BLOWUP_RATIO, s31_norm,
                                   blowup_cap(dt), state, fstate, k_stop, scratch)

    # Without hooks: one call runs every point to its end. With hooks: chunks of steps (for all points)
    # sized to ~interval seconds, first for a conservative 1e9 FLOP/s, then from the measured rate.
    k_stop = 0
    chunk = max(1, int(progress.clock.interval * 1e9 / max(flops * nb, 1))) if progress.active else n_steps + 1
    with blas_threads_for(flops, progress.clock):
        while np.any(state[:, STATUS] == RUNNING):
            t0 = time.perf_counter()
            k_stop = min(k_stop + chunk, n_steps + 1)
            advance(k_stop)
            if k_stop > n_steps:
                break  # every point has reached a check at n_steps (or stopped before): none is RUNNING
            if progress.active:
                rate = chunk / max(time.perf_counter() - t0, 1e-9)
                chunk = int(min(max(1.0, rate * progress.clock.interval), 4.0 * chunk))
                k = state[:, gd_loop.K]
                done = np.where(state[:, STATUS] == RUNNING, np.minimum(k, n_steps) / max(n_steps, 1), 1.0)
                # a replay before a stop rewinds k by < CHECK_EVERY steps: keep the reported fraction monotone
                progress.fraction[index] = np.maximum(progress.fraction[index], done)
                progress.tick()

    # The records stay in this group's buffer (views), unless the trajectories keep them: then each its own copy, so
    # that one kept trajectory does not hold the whole group's records
    copy = points[0].record.weights
    runs = [finish_run(p.method, layout, dt, rec[j, :nrec[j]], snap[j], w[j], state[j], copy)
            for j, p in enumerate(points)]
    diagnostics, known = [None] * nb, [None] * nb
    if in_lanes and dt == np.float64:  # float32 records are taken to float64 first: build_trajectory does that
        diagnostics, maps = _lane_diagnostics(snap, [len(r.times) for r in runs], s11, s31, pidx, decay, layout, m0)
        known = _record_products(points, runs, maps)
    out = []
    for j, p in enumerate(points):
        with _point(index[j]):
            out.append(build_trajectory(p.problem, weights0[j], p.method, p.record, runs[j],
                                        between=progress.tick if progress.active else None,
                                        diagnostics=diagnostics[j], known=known[j]))
        progress.tick()  # post-processing a large group takes a while: honour a stop request meanwhile
    return out


def _lane_diagnostics(snap: np.ndarray, counts: list[int], s11: np.ndarray, s31: np.ndarray, pidx: np.ndarray,
                      decay: np.ndarray, layout: Layout, m0: int
                      ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each point's (gradient norm, balance drift) at its ``counts[j]`` records ``snap[j, :counts[j]]``, and the network
    maps of all points' records (nb, max count, o, i; rows past a point's count unset), computed for all points at once
    in SIMD lanes (``gd_lanes.lane_diagnostics``): ``simulate.record_diagnostics`` and ``network.network_map`` to
    round-off, without a BLAS call per product and record."""
    ni, nh, no = (int(x) for x in layout.dims)
    nb, n_rec = len(counts), max(counts)
    n_blocks = -(-nb // gd_lanes.LANES)
    grad_norm, drift, maps = np.empty((nb, n_rec)), np.empty((nb, n_rec)), np.empty((nb, n_rec, no * ni))
    gd_lanes.diagnostics(snap, n_rec, gd_lanes.to_lanes(s11.reshape(len(s11), -1)[pidx], n_blocks),
                         gd_lanes.to_lanes(s31.reshape(len(s31), -1)[pidx], n_blocks),
                         gd_lanes.to_lanes(decay[:, None], n_blocks), ni, nh, no, m0, grad_norm, drift, maps,
                         gd_lanes.empty_lanes(gd_lanes.diagnostics_scratch_size(ni, nh, no), snap.dtype))
    return [(grad_norm[j, :c], drift[j, :c]) for j, c in enumerate(counts)], maps.reshape(nb, n_rec, no, ni)


def _record_products(points: list[SweepPoint], runs: list, maps: np.ndarray) -> list[RecordProducts]:
    """Each point's ``live.RecordProducts`` (fit gap, mode strengths, test loss) from its records' network maps
    ``maps[j, :T_j]``, computed at once for the points that share a problem and a record count (a sweep's usual case:
    one call per quantity, not one per point)."""
    out: list[RecordProducts | None] = [None] * len(points)
    families: dict[tuple[int, int], list[int]] = {}
    for j, (p, run) in enumerate(zip(points, runs, strict=True)):
        families.setdefault((id(p.problem), len(run.times)), []).append(j)
    for (_, count), members in families.items():
        problem = points[members[0]].problem
        stack = maps[:, :count] if len(members) == len(points) else maps[members, :count]
        gap = network.fit_gap(problem, stack)
        strength = mode_strengths(stack, mode_basis(problem))
        test = test_loss(problem, stack)
        for q, j in enumerate(members):
            out[j] = RecordProducts(runs[j].times, runs[j].steps, stack[q], gap[q], strength[q],
                                    None if test is None else test[q])
    return out
