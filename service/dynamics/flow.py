"""Gradient flow dW_l/dt = −∂L/∂W_l − γ W_l (docs/theory.md#conventions), integrated with adaptive DOP853.

scipy's DOP853 (8th order, embedded 5th/3rd-order error control, rtol/atol from the method) is stepped by
hand rather than through ``solve_ivp`` so that between steps we can call the worker hooks, stop early and
detect blow-up. Records at the requested times come from the step's dense output (7th order, evaluated
only for steps that contain a record time) or the step end itself.

Outcomes, with the same thresholds as GD (``gd.convergence_rtol``, ``gd.blowup_threshold``):

* converged: after an accepted step the gradient norm (the right-hand side at the new state, which the
  solver has already evaluated) is ≤ ``flow_convergence_rtol(rtol)``·‖Σ31‖_F. The run stops there; the
  last record is that state. The bound is max(CONVERGENCE_RTOL, 1e3·rtol), not GD's 1e-10: near a stable
  minimum an explicit integrator runs at its stability limit and its error control lets the stiff
  components jitter at ~rtol·‖W‖, so the gradient it sees stalls at ~λ_max·rtol·‖W‖ (measured: ~20·rtol·
  ‖Σ31‖ for a 3-4-2 net with cond(Σ11) = 50) instead of decaying. Where the stall lies above the bound
  (very ill-conditioned Σ11) the flow simply runs to t_max and completes.
* diverged: the state or its gradient is not finite or beyond the blow-up threshold, or the solver fails
  (step size below round-off). On valid data this does not happen: L ≥ 0 is non-increasing along the
  flow, so ∫‖∇L‖² dt ≤ L(0) bounds the path length on any finite interval. It can happen when Σ31 is not
  in the range of Σ11 (correlations given without data, Σ33 unknown): L is then unbounded below and for
  D ≥ 3 the flow reaches infinity in finite time (scalar D = 3 balanced: da/dt = 2s a², a = a0/(1 − 2s a0 t)).
  The last record is the last finite state; ``diverged_at_time`` is the time of detection.
* completed otherwise.

dtype float32: the integration always runs in float64 (an adaptive integrator's error control at
rtol ≲ 1e-7 is meaningless in float32) and only the recorded weights are cast to float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.integrate import DOP853

from . import gd_loop
from .errors import InvalidParameterError, WorkLimitError
from .gd import (
    DTYPES,
    HookClock,
    Layout,
    blas_threads_for,
    blowup_threshold,
    layout_of,
    plan_order,
)
from .learning_time import ModeWatch
from .methods import CONVERGENCE_RTOL, GradientFlow, Hooks, RunResult
from .problem import Problem

# Converged when ‖∇L‖ ≤ max(CONVERGENCE_RTOL, FLOW_CONVERGENCE_FACTOR·rtol)·‖Σ31‖_F (module docstring).
FLOW_CONVERGENCE_FACTOR = 1e3


def flow_convergence_rtol(rtol: float) -> float:
    """The flow's convergence bound relative to ‖Σ31‖_F for integrator tolerance ``rtol``."""
    return max(CONVERGENCE_RTOL, FLOW_CONVERGENCE_FACTOR * rtol)


def _check_method(method: GradientFlow) -> None:
    if not (np.isfinite(method.t_max) and method.t_max >= 0):
        raise InvalidParameterError(f"t_max {method.t_max} must be a finite number ≥ 0", field=("training", "t_max"),
                                    fix="give the end time of the flow, e.g. 10")
    for name in ("rtol", "atol"):
        v = getattr(method, name)
        if not (np.isfinite(v) and v > 0):
            raise InvalidParameterError(f"{name} {v} must be a positive number", field=("training", name),
                                        fix="use e.g. rtol = 1e-8, atol = 1e-10")
    if method.rtol < 100 * np.finfo(np.float64).eps:
        raise InvalidParameterError(f"rtol {method.rtol} is below what float64 can deliver",
                                    field=("training", "rtol"), fix="use rtol ≥ 2.3e-14 (1e-8 is plenty for plots)")
    if not (np.isfinite(method.weight_decay) and method.weight_decay >= 0):
        raise InvalidParameterError(f"weight decay {method.weight_decay} must be ≥ 0",
                                    field=("training", "weight_decay"), fix="use 0 for none")


def _check_record_times(record_times: np.ndarray, t_max: float) -> np.ndarray:
    t = np.asarray(record_times, dtype=np.float64)
    if (t.ndim != 1 or t.size == 0 or t[0] != 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0)
            or t[-1] > t_max * (1 + 1e-12)):
        raise InvalidParameterError("record times must be sorted, unique, start at 0 and end by t_max",
                                    field=("record",), fix="use RecordSchedule.sample_times")
    return np.minimum(t, t_max)


def run_flow(problem: Problem, weights0: Sequence[np.ndarray], method: GradientFlow, record_times: np.ndarray,
             *, dtype=np.float64, hooks: Hooks | None = None, watch: ModeWatch | None = None) -> RunResult:
    """Integrate the gradient flow on [0, t_max] from ``weights0`` and record the weights at ``record_times``.

    Returns per layer (T, rows, cols) arrays in ``dtype`` and the outcome (see the module docstring). With a
    ``watch`` (``learning_time.ModeWatch``) the modes' learning times are found on the dense output of the step in
    which each mode first reaches half its strength at the optimum (``RunResult.learning_times``).
    """
    _check_method(method)
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise InvalidParameterError(f"dtype {dt} is not supported", field=("dtype",), fix="use float64 or float32")
    t_eval = _check_record_times(record_times, float(method.t_max))
    layout = layout_of(problem, weights0)
    m0, flops = plan_order(layout.dims)
    clock = HookClock(hooks)
    with blas_threads_for(flops, clock):  # one gradient costs about one GD step
        return _integrate(problem, weights0, method, t_eval, dt, clock, layout, m0, watch)


def _integrate(problem: Problem, weights0, method: GradientFlow, t_eval: np.ndarray, dt: np.dtype,
               clock: HookClock, layout: Layout, m0: int, watch: ModeWatch | None = None) -> RunResult:
    """The DOP853 loop of ``run_flow`` (arguments already checked)."""
    decay = float(method.weight_decay)
    s11 = np.ascontiguousarray(problem.sigma11, dtype=np.float64)
    s31 = np.ascontiguousarray(problem.sigma31, dtype=np.float64)
    dims, offs = layout.dims, layout.offs

    def rhs(t, y):
        """dW/dt = −(∂L/∂W + γW), flat."""
        out = np.empty_like(y)
        gd_loop.gradient(y, dims, offs, s11, s31, decay, m0, out)
        np.negative(out, out=out)
        return out

    y0 = layout.pack(weights0, np.float64)
    s31_norm = float(np.linalg.norm(s31))
    tol = flow_convergence_rtol(method.rtol) * s31_norm if method.stop_at_convergence else -1.0
    g0 = float(np.linalg.norm(rhs(0.0, y0)))
    blow = blowup_threshold(g0, s31_norm, np.float64)

    rows = np.empty((t_eval.size + 1, layout.size))  # + 1: the state where an early stop happens
    times = np.empty(t_eval.size + 1)
    rows[0], times[0] = y0, 0.0
    n = 1  # records written; t_eval[n] is the next time to record
    clock.so_far = lambda start: RunResult(times=times[start:n].copy(), steps=None,
                                           weights=layout.unpack_stack(rows[start:n], dt), outcome="stopped")
    t_end = float(method.t_max)
    outcome, diverged_at = "completed", None

    def finish():
        clock.done()
        return RunResult(times=times[:n].copy(), steps=None, weights=layout.unpack_stack(rows[:n], dt),
                         outcome=outcome, diverged_at_step=None, diverged_at_time=diverged_at,
                         learning_times=None if watch is None else watch.times.copy())

    if watch is not None:
        watch.start(0.0, layout.views(y0))

    if g0 <= tol:
        outcome = "converged"
        return finish()
    if t_end == 0.0:
        return finish()

    solver = DOP853(rhs, 0.0, y0, t_end, rtol=method.rtol, atol=method.atol)
    taken = 0
    while solver.status == "running":
        if method.max_steps is not None and taken >= method.max_steps:
            raise WorkLimitError(
                f"gradient flow took {taken} integrator steps and reached t = {solver.t:.6g} of t_max = {t_end:g} "
                f"(step size now {solver.step_size:.3g}: the problem is stiff there)",
                field=("training", "t_max"),
                fix="shorten t_max (the dynamics have usually settled long before), use method exact where it "
                    "applies, or gd with a learning rate below the stability bound")
        taken += 1
        t_old, y_old = solver.t, solver.y
        solver.step()
        if solver.status == "failed":
            # step size collapsed: the solution leaves every bounded set near t_old (see module docstring)
            outcome, diverged_at = "diverged", float(t_old)
            if times[n - 1] != t_old:
                rows[n], times[n] = y_old, t_old
                n += 1
            break
        t_new, y_new = solver.t, solver.y
        g_new = float(np.linalg.norm(solver.f))  # f = rhs(t_new, y_new), already evaluated by the step
        if not (g_new <= blow) or not np.all(np.isfinite(y_new)):  # first clause also catches NaN
            outcome, diverged_at = "diverged", float(t_new)
            finite = np.all(np.isfinite(y_new))
            rows[n], times[n] = (y_new, t_new) if finite else (y_old, t_old)
            if times[n - 1] != times[n]:
                n += 1
            break
        dense = _DenseOutput(solver)
        if watch is not None and watch.active:
            watch.step(t_old, t_new, layout.views(y_new), dense, layout.views)
        # records strictly inside the step from its dense output, one at its end from the state itself
        j = int(np.searchsorted(t_eval, t_new, side="left"))
        if j > n:
            rows[n:j] = dense()(t_eval[n:j]).T
            times[n:j] = t_eval[n:j]
            n = j
        if n < t_eval.size and t_eval[n] == t_new:
            rows[n], times[n] = y_new, t_new
            n += 1
        if g_new <= tol:
            outcome = "converged"
            if times[n - 1] != t_new:
                rows[n], times[n] = y_new, t_new
                n += 1
            break
        if clock.due():
            clock.check(t_new / t_end)
    return finish()


class _DenseOutput:
    """The last step's dense output (7th order), made once on first use."""

    def __init__(self, solver: DOP853) -> None:
        self.solver, self.interp = solver, None

    def __call__(self):
        if self.interp is None:
            self.interp = self.solver.dense_output()
        return self.interp
