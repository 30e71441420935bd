"""The learning time of a mode: the time a mode's strength first reaches half its strength at the optimum.

Mode α's strength is u_α(t) = u_αᵀ W(t) v_α on Σ31 = U S Vᵀ, its strength at the optimum u*_α = u_αᵀ W* v_α
(``modes.optimum``: s_α/c for Σ11 = c·I within the bottleneck rank, 0 beyond it), and its learning time the first t
with u_α(t) ≥ u*_α/2 (≤ for u*_α < 0). Modes with |u*_α| ≤ ZERO_RTOL·max_β |u*_β| have none (NaN), nor do modes
that do not get there within the run. One definition, measured as precisely as each method allows:

* exact: the root of the closed form the run evaluates (``theory.theory_overlay`` solves the same closed form from
  the same initial weights: the analytic inverse of a mode's solution, or a bisection to round-off on the Riccati
  chunk map or the shallow solution), kept where it lies within the run;
* flow: the root on the integrator's dense output, found while integrating (``ModeWatch``, called by
  ``flow.run_flow`` after every accepted step): within the solver's tolerance;
* gd: η·k at the first step k at which the strength is there, found by stepping GD again (the compiled loop of the
  run, ``gd.run_gd``) from the record before the crossing to the record at it;
* sgd, and gd with momentum, whose state between records is not kept (the velocity, the batch order): the time of
  the first record at which it is there, so within one record interval above the crossing (``record_learning_times``).

Sequences (``sequence.py``) measure on the first task's modes; crossings after the first switch are taken at the
record (``refine_until``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .methods import Exact, GradientDescent, GradientFlow, Method, RunResult
from .modes import ModeBasis
from .problem import Problem

# A mode whose strength at the optimum is at most this fraction of the largest one has no learning time: half of
# ≈0 is not a meaningful target (it is crossed by round-off). The theory's learning times use the same rule.
ZERO_RTOL = 1e-9
# Memory for the records of one GD re-step (the weights at each step of a record interval): past it the interval is
# searched in passes of fewer records.
RESTEP_BYTES = 32 * 2 ** 20


def targets(optimum_strength) -> tuple[np.ndarray, np.ndarray]:
    """(u*_α/2, mask of the modes that have a learning time) for the strengths at the optimum u*_α."""
    final = np.asarray(optimum_strength, dtype=np.float64)
    finite = final[np.isfinite(final)]
    ref = float(np.max(np.abs(finite))) if finite.size else 0.0
    valid = np.isfinite(final) & (np.abs(final) > ZERO_RTOL * ref) & (ref > 0)
    return 0.5 * final, valid


def reached(u, target) -> np.ndarray:
    """u at or past ``target`` in the direction of the target's sign (NaN and ±inf never count)."""
    u = np.asarray(u, dtype=np.float64)
    sgn = np.sign(target)
    with np.errstate(invalid="ignore"):
        return np.isfinite(u) & ((u * sgn) >= (target * sgn))


def first_records(strengths, target, valid) -> np.ndarray:
    """Per mode the index of the first record at which its strength is at its target, −1 where none is (or the mode
    has no learning time). ``strengths`` (T, k)."""
    u = np.asarray(strengths, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    hit = reached(u, np.asarray(target)[None]) & np.asarray(valid)[None]
    return np.where(hit.any(axis=0), np.argmax(hit, axis=0), -1)


def record_learning_times(times, strengths, final=None) -> np.ndarray:
    """The learning time at the resolution of the records: per mode the time of the first record at which its
    strength has reached half its strength at the optimum ``final`` (default: the last record's strength). NaN where
    no record does, or where the mode has no learning time (``targets``)."""
    t = np.asarray(times, dtype=np.float64)
    u = np.asarray(strengths, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.shape[0] != t.shape[0]:
        raise ValueError(f"{t.shape[0]} times but {u.shape[0]} strength records")
    if t.size == 0:
        return np.full(u.shape[1], np.nan)
    f = u[-1] if final is None else np.broadcast_to(np.asarray(final, dtype=np.float64), (u.shape[1],))
    target, valid = targets(f)
    first = first_records(u, target, valid)
    return np.where(first >= 0, t[np.maximum(first, 0)], np.nan)


# ------------------------------------------------------------------------------------------------
# flow: the root on the integrator's dense output


@dataclass
class ModeWatch:
    """Tracks the strengths u_αᵀ W v_α of the modes that still have a learning time to find during a flow run, and
    finds each one's first crossing of its target on the dense output of the step in which it happens.

    ``u`` (n_out × k), ``v`` (n_in × k): the mode basis; ``target``, ``valid``: from ``targets``. ``times`` holds the
    crossings found so far (NaN: not yet). ``views(flat)`` maps the flat state to the layers (``gd.Layout.views``).
    """

    u: np.ndarray
    v: np.ndarray
    target: np.ndarray
    valid: np.ndarray
    times: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.times = np.full(self.target.shape, np.nan)
        self.pending = np.array(self.valid, dtype=bool, copy=True)

    @classmethod
    def of(cls, basis: ModeBasis, optimum_strength) -> ModeWatch:
        target, valid = targets(optimum_strength)
        return cls(basis.u, basis.v, target, valid)

    @property
    def active(self) -> bool:
        return bool(self.pending.any())

    def strengths(self, layers: Sequence[np.ndarray], modes: np.ndarray) -> np.ndarray:
        """u_αᵀ W_D ⋯ W_1 v_α for the modes ``modes`` (indices), without forming W."""
        z = self.v[:, modes]
        for w in layers:
            z = w @ z
        return np.einsum("ia,ia->a", self.u[:, modes], z)

    def start(self, t0: float, layers: Sequence[np.ndarray]) -> None:
        """The initial state: modes already at their target have learning time ``t0``."""
        modes = np.flatnonzero(self.pending)
        if modes.size:
            hit = reached(self.strengths(layers, modes), self.target[modes])
            self.times[modes[hit]] = t0
            self.pending[modes[hit]] = False

    def step(self, t_old: float, t_new: float, layers_new: Sequence[np.ndarray], dense, views) -> None:
        """After an accepted step from ``t_old`` to ``t_new`` (state ``layers_new``): every pending mode now at its
        target crossed within the step; its time is the root of u_α(t) − target on the step's dense output
        ``dense`` (callable t → flat state), bracketed by the step and found by bisection to round-off."""
        modes = np.flatnonzero(self.pending)
        if not modes.size:
            return
        hit = reached(self.strengths(layers_new, modes), self.target[modes])
        crossed = modes[hit]
        if not crossed.size:
            return
        interp = dense()
        lo = np.full(crossed.size, float(t_old))
        hi = np.full(crossed.size, float(t_new))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            got = np.array([reached(self.strengths(views(interp(m)), np.array([a])), self.target[[a]])[0]
                            for m, a in zip(mid, crossed, strict=True)])
            hi = np.where(got, mid, hi)
            lo = np.where(got, lo, mid)
            if np.all(hi - lo <= 4.0 * np.finfo(np.float64).eps * np.maximum(np.abs(hi), 1e-300)):
                break
        self.times[crossed] = hi
        self.pending[crossed] = False


# ------------------------------------------------------------------------------------------------
# gd: the crossing step


def stack_strengths(layers: Sequence[np.ndarray], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u_αᵀ W_D ⋯ W_1 v_α for stacks of layers (R, rows, cols), for the modes whose basis columns are ``u``, ``v``:
    (R, m), without forming W."""
    z = np.asarray(layers[0], dtype=np.float64) @ v
    for w in layers[1:]:
        z = np.asarray(w, dtype=np.float64) @ z
    return np.einsum("ia,ria->ra", u, z)


def gd_crossing_times(problem: Problem, method: GradientDescent, weights: Sequence[np.ndarray], steps: np.ndarray,
                      first: np.ndarray, basis: ModeBasis, target: np.ndarray, dtype) -> np.ndarray:
    """η·k at the first GD step k at which each mode with a record crossing (``first`` ≥ 1) reaches its target.

    ``weights`` are the per-layer (T, rows, cols) records of the run in its ``dtype`` (the state itself, so GD
    continues from them bit for bit); the record intervals holding a crossing are stepped again with the run's own
    compiled loop (``gd.run_gd``): small networks in one run that records every step of them, large ones interval by
    interval in passes that record fewer steps and narrow the interval (each pass starts from the last recorded state
    below every crossing still open)."""
    from .gd import run_gd  # deferred: gd imports the dynamics' shared modules

    out = np.full(first.shape, np.nan)
    size = sum(int(np.prod(w.shape[1:])) for w in weights) * np.dtype(dtype).itemsize
    per_pass = int(max(3, RESTEP_BYTES // max(size, 1)))
    intervals = np.unique(first[first >= 1])
    if not intervals.size:
        return out
    # small networks: one run from the first interval's start, recording every step of every crossing interval
    wanted = np.unique(np.concatenate([np.arange(steps[i - 1], steps[i] + 1) for i in intervals]))
    if wanted.size <= per_pass:
        a = int(steps[intervals[0] - 1])
        run = run_gd(problem, [np.asarray(w[intervals[0] - 1]) for w in weights],
                     GradientDescent(method.learning_rate, int(wanted[-1]) - a, method.weight_decay,
                                     stop_at_convergence=False), wanted - a, dtype=dtype)
        got = a + np.asarray(run.steps, dtype=np.int64)
        modes = np.flatnonzero(first >= 1)
        at = reached(stack_strengths(run.weights, basis.u[:, modes], basis.v[:, modes]), target[modes][None])
        for c, m in enumerate(modes):
            inside = (got > steps[first[m] - 1]) & (got <= steps[first[m]]) & at[:, c]
            out[m] = method.learning_rate * (got[np.argmax(inside)] if inside.any() else steps[first[m]])
        return out
    for i in intervals:
        modes = np.flatnonzero(first == i)
        lo = np.full(modes.size, int(steps[i - 1]))   # a step known to be below the target
        hi = np.full(modes.size, int(steps[i]))       # a step known to be at it
        a, state = int(steps[i - 1]), [np.asarray(w[i - 1]) for w in weights]
        while np.any(hi - lo > 1):
            open_ = hi - lo > 1
            b = int(hi[open_].max())
            # every open interval gets points of its own, so that each one narrows in every pass
            m = max(3, per_pass // int(open_.sum()))
            rel = np.unique(np.concatenate([[0], *(np.rint(np.linspace(lo[c], hi[c], min(m, hi[c] - lo[c] + 1)))
                                                   .astype(np.int64) - a for c in np.flatnonzero(open_))]))
            run = run_gd(problem, state, GradientDescent(method.learning_rate, b - a, method.weight_decay,
                                                         stop_at_convergence=False), rel, dtype=dtype)
            at = reached(stack_strengths(run.weights, basis.u[:, modes], basis.v[:, modes]), target[modes][None])
            got = a + np.asarray(run.steps, dtype=np.int64)
            for c in np.flatnonzero(open_):
                hits = np.flatnonzero(at[:, c])
                if hits.size:
                    hi[c] = min(hi[c], int(got[hits[0]]))
                    below = got[:hits[0]]
                else:
                    below = got
                if below.size:
                    lo[c] = max(lo[c], int(below[-1]))
            open_ = hi - lo > 1
            if open_.any():   # from the latest recorded state at or below every open crossing's lower end
                j = int(np.flatnonzero(got <= lo[open_].min())[-1])
                a, state = int(got[j]), [np.asarray(w[j]) for w in run.weights]
        out[modes] = method.learning_rate * hi
    return out


# ------------------------------------------------------------------------------------------------
# one entry point for build_trajectory


def measure(problem: Problem, method: Method, run, times: np.ndarray, steps: np.ndarray | None,
            strengths: np.ndarray, optimum_strength: np.ndarray, basis: ModeBasis, overlay=None,
            refine_until: float = np.inf) -> np.ndarray:
    """The measured learning times of a run (module docstring), per mode.

    ``run``: the method's raw result (``RunResult`` for gd, sgd and flow, ``exact.ExactRun``), with records already
    cut to ``times``; ``strengths`` (T, k) at the records; ``overlay``: the theory overlay of the run
    (``theory.TheoryOverlay``), whose roots an exact run uses when it solves the same closed form. Crossings in
    record intervals that end after ``refine_until`` are taken at the record.
    """
    t = np.asarray(times, dtype=np.float64)
    target, valid = targets(optimum_strength)
    first = first_records(strengths, target, valid)
    out = np.where(first >= 0, t[np.maximum(first, 0)], np.nan)
    refine = (first >= 1) & (t[np.maximum(first, 0)] <= refine_until)
    if not refine.any():
        return out
    if isinstance(method, Exact):
        model = getattr(run, "model", None)
        if overlay is not None and overlay.exact and overlay.model == model:
            root = np.asarray(overlay.learning_time, dtype=np.float64)
            lo = t[np.maximum(first - 1, 0)]
            hi = t[np.maximum(first, 0)]
            slack = 1e-9 * np.maximum(hi, 1e-300)
            ok = refine & np.isfinite(root) & (root >= lo - slack) & (root <= hi + slack)
            out[ok] = np.clip(root[ok], lo[ok], hi[ok])
        return out
    if isinstance(method, GradientFlow):
        found = getattr(run, "learning_times", None)
        if found is not None:
            found = np.asarray(found, dtype=np.float64)
            ok = refine & np.isfinite(found) & (found <= t[np.maximum(first, 0)])
            out[ok] = found[ok]
        return out
    if type(method) is GradientDescent and not method.momentum and isinstance(run, RunResult) and steps is not None:
        weights = [np.asarray(w)[:t.size] for w in run.weights]
        sel = np.where(refine, first, -1)
        got = gd_crossing_times(problem, method, weights, np.asarray(steps), sel, basis, target, weights[0].dtype)
        out[refine] = got[refine]
    return out
