"""Task sequences: one run that switches tasks at given times (continual learning, reversal learning, transfer;
Braun et al. 2022/2023, docs/theory.md#task-sequences; Dominé et al.'s ``fivefive.m``, Anguita's ``continual_learning_test.py``).

    seq = TaskSequence((Phase(task_a, until=2.0), Phase(task_b)))     # A on [0, 2), then B to the end
    traj = simulate_sequence(seq, w0, GradientFlow(t_max=5.0))         # or simulate(seq, …), the same call

API (decided here): a ``TaskSequence`` of ``Phase(problem, until)`` is passed to ``simulate_sequence`` (``simulate``
accepts one in place of a problem and hands it on). Phase p drives the dynamics from its start (0, or the previous
phase's ``until``) to its ``until``; the last phase has ``until`` None and runs to the method's end (t = η·steps,
t_max). Times are t = η·step. Every phase has the same n_in and n_out (the network does not change); Σ11, Σ31, Σ33 and
the test data may all differ.

Methods at a switch:

* gd: W_l ← W_l − η(∂L_p/∂W_l + γW_l) with L_p the loss of the phase of step k's start; the switch is at the first
  step k with η·k ≥ until (``switch_step``), so phase p runs steps [k_p, k_{p+1}). Each phase is one ``run_gd``
  from the state at its start, so the weights are bit for bit those of a single GD run that changes its Σ's there.
* flow: each phase is integrated by its own DOP853 run from the state at the switch (the integrator is restarted:
  the right-hand side jumps there, and an adaptive step must not straddle the jump).
* exact: the closed form that applies to the next phase's task at the state at the switch (``exact._plan``):
  for the Riccati solution that state is a factorisation of QQᵀ (``exact.factorise``), which the next Riccati
  solution needs only through QQᵀ; λ-balance is conserved by the flow, so a λ-balanced two-layer run continues
  exactly through any switch to a task with Σ11 = c·I. Where no closed form holds (e.g. an aligned deep net meets a
  task with other singular vectors), ``ExactNotApplicableError`` names the phase, field ("phases", p, …), with the fix
  'use method "flow"'.

Convergence stops only the last phase: an earlier one steps (integrates) on to its switch. Divergence stops the run.
Records: the schedule's records plus one at every switch (the first record of the new phase, so forgetting curves
start exactly there); a record at a switch belongs to the phase that starts there.

What the trajectory holds beyond a single run's fields (``trajectory.Trajectory``):

* ``task_loss`` (T, P): every phase's task loss L_p(W(t)) = L_ls,p + ‖W F_p − G_p‖² at every record (``network.loss``),
  or, for a task without tr Σ33, its excess loss L_p − L*_p (``task_loss_kind[p]`` says which: "loss" or
  "excess_loss"); ``task_excess_loss`` (T, P) always;
* ``phase`` (T,) the phase of each record, ``phase_starts`` (P,) the switch times (GD: η·switch step ≥ until);
* ``loss``, ``excess_loss``, ``gradient_norm``, ``distance_to_optimum``, ``test_loss`` are the current phase's
  (``loss`` None unless every task has tr Σ33; ``test_loss`` None unless every task has test data); ``optimum`` is
  the last phase's;
* ``modes``: mode strengths on the first phase's task over the whole run. The theory overlays (``modes.theory``,
  ``loss_theory``, ``loss_theory_random_matrix``) hold for the first phase only: the mode theories assume one task from
  one init, and are NaN from the first switch on (their learning times too where they fall after it). They are not
  restarted from the state at the switch: that state is aligned with the old task, not the new one, so the aligned
  closed forms do not apply to it, and for the λ-balanced case ``method: "exact"`` already is that exact
  continuation;
* ``sharpness`` (with ``record.sharpness``): at every record the top Hessian eigenvalues of that record's task's loss,
  the one whose stability the step size meets there;
* ``final_weights``: the weights at the last record (for exact Riccati phases the factorisation), from which a later
  run can start (init "given").

``record.linearized`` is refused for sequences (the linearised model is defined for one task), and so are momentum and
SGD: their state beyond the weights (the momentum buffer, the epoch's sample order) has no defined carry-over across a
switch here; each phase can run as a run of its own that starts from the previous one's ``final_weights`` (its buffer
and sample order then start afresh).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from . import network
from .errors import DynamicsError, ExactNotApplicableError, InvalidParameterError, ShapeError, StopRequested
from .exact import ExactRun, check_exact, exact_run
from .exact._common import _FIX_FLOW, WHITENING_RTOL
from .flow import run_flow
from .gd import run_gd
from .generalization import early_stopping, test_loss
from .methods import Exact, GradientDescent, GradientFlow, Hooks, Method, RunResult, StochasticGradientDescent
from .modes import excess_loss, optimum
from .problem import Problem, least_squares
from .record import RecordSchedule
from .sharpness import sharpness_record
from .trajectory import LossTheory, Trajectory

PHASES_FIELD = ("phases",)


@dataclass(frozen=True)
class Phase:
    """One task of a sequence: ``problem`` drives the dynamics until t = ``until`` (None: to the end of the run)."""

    problem: Problem
    until: float | None = None


@dataclass(frozen=True)
class TaskSequence:
    """Phases in order; the first starts at t = 0, each later one at the previous one's ``until``."""

    phases: tuple[Phase, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))

    @property
    def problems(self) -> list[Problem]:
        return [ph.problem for ph in self.phases]


# ------------------------------------------------------------------------------------------------
# the schedule


def switch_step(until: float, learning_rate: float) -> int:
    """The first GD step k with η·k ≥ until (exactly, in floating point: t = η·step is computed as ``k * η``)."""
    k = max(0, math.ceil(until / learning_rate))
    while k > 0 and (k - 1) * learning_rate >= until:
        k -= 1
    while k * learning_rate < until:
        k += 1
    return k


@dataclass(frozen=True)
class SequencePlan:
    """Where each phase starts and ends, and the records: ``starts``/``ends`` (P,) in t; for GD ``bounds`` (P + 1,) the
    switch steps [0, k_1, …, k_{P−1}, steps]; ``times`` (and for GD ``steps``) of the records; ``phase`` (T,)."""

    starts: np.ndarray
    ends: np.ndarray
    bounds: np.ndarray | None
    times: np.ndarray
    steps: np.ndarray | None
    phase: np.ndarray


def plan_sequence(sequence: TaskSequence, method: Method, record: RecordSchedule = RecordSchedule()) -> SequencePlan:
    """Validate the phases against the method (every ``until`` finite, increasing and before the run's end; for GD
    distinct switch steps) and lay out the records (the schedule's plus one at every switch)."""
    phases = sequence.phases
    if not phases:
        raise InvalidParameterError("a task sequence needs at least one phase", field=PHASES_FIELD,
                                    fix="give a list of phases, each a task and the time it ends (null for the last)")
    t_end = float(method.t_end)
    prev = 0.0
    untils = []
    for p, ph in enumerate(phases):
        where = (*PHASES_FIELD, p, "until")
        if p == len(phases) - 1:
            if ph.until is not None:
                raise InvalidParameterError(
                    f"the last phase runs to the end of the run (t = {t_end:g}); it has until = {ph.until!r}",
                    field=where, fix="set the last phase's until to null (or add the phase that follows it)")
            break
        u = ph.until
        if u is None or isinstance(u, bool) or not isinstance(u, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(u)):
            raise InvalidParameterError(f"phase {p} needs the time it ends: until must be a finite number, got {u!r}",
                                        field=where, fix="give until in units of t = learning_rate·step (or t_max)")
        u = float(u)
        if not u > prev:
            raise InvalidParameterError(f"phase {p} ends at t = {u:g}, not after it starts (t = {prev:g})",
                                        field=where, fix="give increasing until times, each after the previous one")
        if not u < t_end:
            raise InvalidParameterError(
                f"phase {p} ends at t = {u:g}, at or after the end of the run (t = {t_end:g}): phase {p + 1} would "
                "never start", field=where, fix=f"give until < {t_end:g}, or drop the phases after phase {p}")
        untils.append(u)
        prev = u
    if isinstance(method, GradientDescent):
        eta, n = float(method.learning_rate), int(method.steps)
        ks = [switch_step(u, eta) for u in untils]
        for p, k in enumerate(ks):
            lo = ks[p - 1] if p else 0
            if k <= lo or k >= n:
                raise InvalidParameterError(
                    f"phase {p} ends at t = {untils[p]:g}, GD step {k}, leaving phase {p if k <= lo else p + 1} "
                    f"without a step (steps {lo}…{n})", field=(*PHASES_FIELD, p, "until"),
                    fix="space the until times at least one learning_rate apart, and below learning_rate·steps")
        bounds = np.array([0, *ks, n], dtype=np.int64)
        rec = np.union1d(record.gd_steps(eta, n), bounds[:-1]).astype(np.int64)
        starts = bounds[:-1] * eta
        ends = np.append(starts[1:], n * eta)
        phase = np.searchsorted(bounds[1:-1], rec, side="right")
        return SequencePlan(starts, ends, bounds, rec * eta, rec, phase)
    starts = np.array([0.0, *untils])
    ends = np.append(starts[1:], t_end)
    times = np.union1d(record.sample_times(t_end), starts)
    phase = np.searchsorted(starts[1:], times, side="right")
    return SequencePlan(starts, ends, None, times, None, phase)


# ------------------------------------------------------------------------------------------------
# checks


def _phase_error(exc: DynamicsError, p: int, start: float) -> DynamicsError:
    """``exc`` raised for phase p, re-raised naming the phase: its data at ("phases", p, "data", …); for p ≥ 1 the state
    at the switch (the init of a single run) at ("phases", p); the training settings unchanged."""
    f = exc.field
    if f[:1] == ("data",):
        where = (*PHASES_FIELD, p, *f)
    elif f[:1] == ("init",) and p > 0:
        where = (*PHASES_FIELD, p)
    else:
        where = f
    what = "the state at the switch" if p > 0 else "the initial weights"
    message = f"phase {p} (from t = {start:g}; {what}): {exc.message}"
    # the usual fixes of a single run (another init, whitened inputs) do not reach the state at a later switch
    fix = _FIX_FLOW if p > 0 and isinstance(exc, ExactNotApplicableError) else exc.fix
    return type(exc)(message, field=where, fix=fix)


_FIX_STATEFUL = ("run each task as a simulation of its own, each starting from the previous one's final weights "
                 "(its buffer and sample order then start afresh)")


def _refuse_stateful(method: Method) -> None:
    """SGD and momentum carry state besides the weights (module docstring): refused for a sequence, naming the field."""
    if isinstance(method, StochasticGradientDescent):
        raise InvalidParameterError("task sequences run with gd (without momentum), flow or exact; sgd's sample order "
                                    "and momentum buffer do not carry over a task switch", field=("training", "method"),
                                    fix=f'use method "gd", "flow" or "exact"; or {_FIX_STATEFUL}')
    if isinstance(method, GradientDescent) and method.momentum:
        raise InvalidParameterError("task sequences run gd without momentum: the momentum buffer does not carry over "
                                    "a task switch", field=("training", "momentum"),
                                    fix=f"set momentum to 0; or {_FIX_STATEFUL}")


def preflight_sequence(sequence: TaskSequence, weights0: Sequence[np.ndarray], method: Method,
                       record: RecordSchedule = RecordSchedule(), *, dtype: str = "float64") -> SequencePlan:
    """Every check ``simulate_sequence`` can make before running (cheap), the plan if they pass.

    Those of ``simulate.preflight`` with the first task; every task's n_in and n_out against the first's; the until
    times (``plan_sequence``); ``record.linearized`` refused; for exact: the first phase's closed form, and for later
    phases of a network with hidden layers Σ11 = c·I. Whether the state at a later switch fits a closed form (aligned
    with the new task, or λ-balanced) is known only when the run gets there.
    """
    from .simulate import preflight  # deferred: simulate imports this module

    problems = sequence.problems
    if not problems:
        plan_sequence(sequence, method, record)  # raises the "no phases" error
    first = problems[0]
    for p, pb in enumerate(problems[1:], start=1):
        if pb.n_in != first.n_in or pb.n_out != first.n_out:
            raise ShapeError(f"phase {p}'s task maps {pb.n_in} → {pb.n_out}, phase 0's {first.n_in} → {first.n_out}",
                             field=(*PHASES_FIELD, p, "data"),
                             fix="every phase needs the same n_in and n_out: the network does not change between them")
    if record.linearized:
        raise InvalidParameterError("the linearised loss is defined for one task, this run switches tasks",
                                    field=("record", "linearized"), fix="set record.linearized to false")
    _refuse_stateful(method)
    try:
        preflight(first, weights0, method, record, dtype=dtype)
    except ExactNotApplicableError as exc:
        if exc.field[:2] == ("record", "weights"):
            raise
        raise _phase_error(exc, 0, 0.0) from None
    plan = plan_sequence(sequence, method, record)
    if isinstance(method, Exact) and len(weights0) >= 2:
        for p, pb in enumerate(problems[1:], start=1):
            c, dev = pb.whitening_deviation()
            if not (c > 0 and dev <= WHITENING_RTOL * c):
                raise ExactNotApplicableError(
                    f"phase {p} (from t = {plan.starts[p]:g}): exact needs Σ11 = c·I for a network with hidden layers; "
                    f"max |Σ11 − c·I| = {dev:.3g} with c = {c:.6g} (tolerance {WHITENING_RTOL:g}·c)",
                    field=(*PHASES_FIELD, p, "data", "sigma11"), fix=f"{_FIX_FLOW}; or whiten that task's inputs")
    return plan


# ------------------------------------------------------------------------------------------------
# running


def _phase_hooks(hooks: Hooks | None, plan: SequencePlan, p: int, offset: int,
                 on_run_clock: Callable[[RunResult, int], RunResult]) -> Hooks | None:
    """The caller's hooks for phase p: its progress mapped onto the whole run's fraction [start_p, end_p]/t_end; its
    records as the whole run's (``offset`` records before this phase's first, times and steps on the run's clock),
    without the phase's switch record, which the next phase reports as its first."""
    if hooks is None:
        return None
    total = float(plan.ends[-1]) or 1.0
    lo, hi = float(plan.starts[p]) / total, float(plan.ends[p]) / total
    progress = None
    if hooks.progress is not None:
        def progress(f: float) -> None:
            hooks.progress(lo + (hi - lo) * min(1.0, max(0.0, float(f))))
    records = None
    if hooks.records is not None:
        switch = len(_local(plan, p)) - 1 if p < len(plan.starts) - 1 else None

        def records(start: int, run: RunResult) -> None:
            count = run.times.size if switch is None else max(0, min(run.times.size, switch - start))
            if count:
                hooks.records(offset + start, on_run_clock(_head(run, count), start))
    return Hooks(progress=progress, should_stop=hooks.should_stop, interval=hooks.interval,
                 blas_threads=hooks.blas_threads, records=records)


def _head(run: RunResult, count: int) -> RunResult:
    """The first ``count`` records of ``run``."""
    if count == run.times.size:
        return run
    return replace(run, times=run.times[:count], steps=None if run.steps is None else run.steps[:count],
                   weights=[w[:count] for w in run.weights])


def _flow_eval_times(plan: SequencePlan, p: int) -> np.ndarray:
    """Phase p's record times from its start (flow): its closed interval's records, the last one at exactly the
    integrator's t_max when it is the phase's end (every switch is a record)."""
    idx = _local(plan, p)
    t0, t1 = float(plan.starts[p]), float(plan.ends[p])
    local_eval = plan.times[idx] - t0
    if plan.times[idx[-1]] == t1:
        local_eval[-1] = t1 - t0
    return local_eval


def _on_run_clock(plan: SequencePlan, p: int, method: GradientDescent | GradientFlow, run: RunResult,
                  first: int = 0) -> RunResult:
    """Phase p's records ``first``, ``first`` + 1, … (``run``, on the phase's own clock) on the whole run's: GD steps
    from the phase's switch step k_p (t = η·step); flow times from its start, the planned record times where a record
    fell on one."""
    if isinstance(method, GradientDescent):
        steps = run.steps + int(plan.bounds[p])
        return replace(run, times=steps * float(method.learning_rate), steps=steps)
    idx, local_eval, t0 = _local(plan, p), _flow_eval_times(plan, p), float(plan.starts[p])
    times = np.array([plan.times[idx[j]] if j < idx.size and t == local_eval[j] else t0 + t
                      for j, t in enumerate(run.times, start=first)])
    return replace(run, times=times, steps=None)


def _local(plan: SequencePlan, p: int) -> np.ndarray:
    """Indices of the records in phase p's closed interval [start, end] (its first record to the next one's first)."""
    if plan.steps is not None:
        lo, hi = plan.bounds[p], plan.bounds[p + 1]
        return np.flatnonzero((plan.steps >= lo) & (plan.steps <= hi))
    return np.flatnonzero((plan.times >= plan.starts[p]) & (plan.times <= plan.ends[p]))


def _run_stepping(problems: list[Problem], weights0: list[np.ndarray], method: GradientDescent | GradientFlow,
                  plan: SequencePlan, dtype, hooks: Hooks | None) -> RunResult:
    """GD or flow phase by phase; the RunResult of the whole run (records of every phase, switch states once). A stop
    request raises ``StopRequested`` with the records so far, every phase's (``partial``, outcome "stopped")."""
    is_gd = isinstance(method, GradientDescent)
    last_p = len(problems) - 1
    times, steps, layers = [], [], [[] for _ in weights0]
    outcome, div_step, div_time = "completed", None, None
    state = [np.asarray(w, dtype=np.float64) for w in weights0]

    def keep(run: RunResult) -> None:
        times.append(run.times)
        if is_gd:
            steps.append(run.steps)
        for layer, w in zip(layers, run.weights):
            layer.append(w)

    def whole(outcome: str, *diverged) -> RunResult:
        weights = [np.concatenate(layer).astype(dtype, copy=False) for layer in layers]
        return RunResult(np.concatenate(times), np.concatenate(steps) if is_gd else None, weights, outcome, *diverged)

    for p, pb in enumerate(problems):
        idx = _local(plan, p)
        stop = method.stop_at_convergence if p == last_p else False
        h = _phase_hooks(hooks, plan, p, sum(t.size for t in times),
                         lambda run, first, p=p: _on_run_clock(plan, p, method, run, first))
        try:
            if is_gd:
                k0, k1 = int(plan.bounds[p]), int(plan.bounds[p + 1])
                m = GradientDescent(method.learning_rate, k1 - k0, method.weight_decay, stop)
                run = run_gd(pb, state, m, plan.steps[idx] - k0, dtype=dtype, hooks=h)
            else:
                m = GradientFlow(float(plan.ends[p]) - float(plan.starts[p]), method.rtol, method.atol,
                                 method.weight_decay, method.max_steps, stop)
                # float64 throughout: the next phase starts from this one's last state, which a float32 record would
                # round
                run = run_flow(pb, state, m, _flow_eval_times(plan, p), dtype=np.float64, hooks=h)
        except StopRequested as stopped:
            if stopped.partial is not None and stopped.partial.times.size:
                keep(_on_run_clock(plan, p, method, stopped.partial))
            raise StopRequested(str(stopped), partial=whole("stopped") if times else None) from None
        more = p < last_p and run.outcome == "completed"
        # the switch state is the next phase's first record
        keep(_head(_on_run_clock(plan, p, method, run), run.times.size - 1 if more else run.times.size))
        state = [w[-1].astype(np.float64) for w in run.weights]
        if run.outcome == "diverged":
            outcome = "diverged"
            if is_gd:
                div_step = None if run.diverged_at_step is None else run.diverged_at_step + int(plan.bounds[p])
                div_time = None if div_step is None else div_step * float(method.learning_rate)
            else:
                div_time = None if run.diverged_at_time is None else float(plan.starts[p]) + run.diverged_at_time
            break
        if not more:
            outcome = run.outcome
            break
    return whole(outcome, div_step, div_time)


def _run_exact(problems: list[Problem], weights0: list[np.ndarray], method: Exact, plan: SequencePlan,
               record: RecordSchedule, hooks: Hooks | None) -> tuple[ExactRun, list[str]]:
    """The closed form of each phase from the state at its switch (module docstring); one ExactRun for the whole run
    and the model of each phase."""
    last_p = len(problems) - 1
    state = [np.asarray(w, dtype=np.float64) for w in weights0]
    parts: list[ExactRun] = []
    models: list[str] = []
    for p, pb in enumerate(problems):
        idx = _local(plan, p)
        t0 = float(plan.starts[p])
        try:
            model = check_exact(pb, state, method.weight_decay)
            if record.weights and model.startswith("riccati"):
                raise ExactNotApplicableError(
                    "the Riccati solution determines W = W32·W21 and the Gram blocks W21ᵀW21, W32W32ᵀ, not the "
                    "individual weights", field=("record", "weights"),
                    fix='set record.weights to false, or use method "flow" to record every layer')
            run = exact_run(pb, state, plan.times[idx] - t0, method.weight_decay, w32_gram=record.kernel)
        except ExactNotApplicableError as exc:
            if exc.field[:2] == ("record", "weights"):
                raise ExactNotApplicableError(f"phase {p} (from t = {t0:g}): {exc.message}", field=exc.field,
                                              fix=exc.fix) from None
            raise _phase_error(exc, p, t0) from None
        models.append(run.model)
        more = p < last_p
        keep = slice(0, idx.size - 1) if more else slice(None)
        parts.append((run, keep, idx))
        state = run.final_weights
        if hooks is not None and hooks.progress is not None:
            hooks.progress(float(plan.ends[p]) / (float(plan.ends[-1]) or 1.0))
        if hooks is not None and hooks.should_stop is not None and hooks.should_stop():
            raise StopRequested("stop requested")
    runs = [r for r, _, _ in parts]
    have_weights = all(r.weights is not None for r in runs)
    depth = len(weights0)

    def cat(get):
        return np.concatenate([get(r)[k] for r, k, _ in parts])

    weights = [cat(lambda r, l=l: r.weights[l]) for l in range(depth)] if have_weights else None
    w21 = w32 = None
    if not have_weights:   # a Riccati phase: its Gram blocks; the other phases' from their weights
        w21 = cat(lambda r: r.w21_gram if r.weights is None else np.einsum("tji,tjk->tik", r.weights[0], r.weights[0]))
        if record.kernel:
            w32 = cat(lambda r: r.w32_gram if r.weights is None else
                      np.einsum("tij,tkj->tik", r.weights[-1], r.weights[-1]))
    times = np.concatenate([plan.times[idx][k] for _, k, idx in parts])
    assumptions = "; ".join(f"phase {p} ({r.model}): {r.assumptions}" for p, r in enumerate(runs))
    merged = ExactRun(times, cat(lambda r: r.product), weights, cat(lambda r: r.gradient_norm), models[0], assumptions,
                      w21, w32, final_weights=runs[-1].final_weights)
    return merged, models


def simulate_sequence(sequence: TaskSequence, weights0: Sequence[np.ndarray], method: Method,
                      record: RecordSchedule = RecordSchedule(), *, dtype: str = "float64",
                      hooks: Hooks | None = None) -> Trajectory:
    """Run ``method`` from ``weights0`` (input→output) over the phases of ``sequence`` (module docstring)."""
    from .simulate import DTYPES  # deferred: simulate imports this module

    plan = preflight_sequence(sequence, weights0, method, record, dtype=dtype)
    problems = sequence.problems
    weights0 = [np.asarray(w, dtype=np.float64) for w in weights0]
    if isinstance(method, Exact):
        run, _ = _run_exact(problems, weights0, method, plan, record, hooks)
        return build_sequence_trajectory(problems, weights0, method, record, run, plan)
    try:
        run = _run_stepping(problems, weights0, method, plan, DTYPES[dtype], hooks)
    except StopRequested as stop:
        if stop.partial is None:
            raise
        # cancelled: the records so far as a trajectory (outcome "stopped"), without the sharpness (simulate.simulate)
        kept = build_sequence_trajectory(problems, weights0, method, replace(record, sharpness=False), stop.partial,
                                         plan)
        raise StopRequested(str(stop), partial=stop.partial, trajectory=kept) from None
    return build_sequence_trajectory(problems, weights0, method, record, run, plan)


# ------------------------------------------------------------------------------------------------
# the trajectory


def _after_switch(arr: np.ndarray | None, later: np.ndarray) -> np.ndarray | None:
    """``arr`` (T, …) with the records of phases after the first set to NaN (a theory that holds for phase 0 only)."""
    if arr is None:
        return None
    out = np.array(arr, dtype=np.float64, copy=True)
    out[later] = np.nan
    return out


def _mask_theory(lt: LossTheory | None, later: np.ndarray) -> LossTheory | None:
    if lt is None or not later.any():
        return lt
    return replace(lt, loss=_after_switch(lt.loss, later), test_loss=_after_switch(lt.test_loss, later),
                   assumptions=lt.assumptions + "; for the first phase only (NaN from the first switch on)")


def phase_of(plan: SequencePlan, steps: np.ndarray | None, times: np.ndarray) -> np.ndarray:
    """The phase of each record: by its step for GD (a switch at the first step with t ≥ until), else by its time."""
    if plan.steps is not None:
        return np.searchsorted(plan.bounds[1:-1], steps, side="right")
    return np.searchsorted(plan.starts[1:], times, side="right")


def build_sequence_trajectory(problems: list[Problem], weights0: list[np.ndarray], method: Method,
                              record: RecordSchedule, run: RunResult | ExactRun, plan: SequencePlan) -> Trajectory:
    """The trajectory of a sequence run: ``simulate.build_trajectory`` with the first task (modes, similarity, kernel,
    balance, final weights, outcome), then every per-task quantity for the current phase (module docstring)."""
    from .simulate import build_trajectory  # deferred: simulate imports this module

    # the sharpness is of each record's own task: taken below, phase by phase, not with the first task's Hessian;
    # learning times on the first task's modes, found between records only before the first switch
    # gd, flow: each record's gradient norm on its own task, taken once (exact runs bring theirs)
    tasks = None if isinstance(run, ExactRun) else (phase_of(plan, run.steps, run.times), problems)
    base = build_trajectory(problems[0], weights0, method, replace(record, sharpness=False), run,
                            refine_until=float(plan.starts[1]) if len(problems) > 1 else np.inf, record_tasks=tasks)
    t = len(base.time)
    product = base.product
    phase = phase_of(plan, base.step, base.time)
    hidden = [w.shape[0] for w in weights0[:-1]]
    n_p = len(problems)
    rows = np.arange(t)
    gaps = np.stack([network.fit_gap(pb, product) for pb in problems], axis=1)            # (T, P)
    opts = [optimum(pb, hidden) for pb in problems]
    residuals = [least_squares(pb).residual for pb in problems]
    task_excess = np.stack([excess_loss(gaps[:, p], opts[p]) for p in range(n_p)], axis=1)
    kinds = tuple("loss" if r is not None else "excess_loss" for r in residuals)
    task_loss = np.stack([gaps[:, p] + residuals[p] if residuals[p] is not None else task_excess[:, p]
                          for p in range(n_p)], axis=1)
    loss = task_loss[rows, phase] if all(k == "loss" for k in kinds) else None
    diff = product - opts[0].product          # as simulate.build_trajectory computes it (same layout, same sums)
    for p in range(1, n_p):
        sel = phase == p
        diff[sel] = product[sel] - opts[p].product
    distance = np.sqrt(np.einsum("tij->t", diff ** 2))
    grad = base.gradient_norm
    test = None
    if all(pb.test is not None for pb in problems):
        test = np.empty(t)
        for p in range(n_p):
            sel = phase == p
            test[sel] = test_loss(problems[p], product[sel])
    sharp = None
    if record.sharpness:   # every record's task's Hessian (exact Riccati runs, without weights, are refused earlier)
        weights = [np.asarray(w[:t], dtype=np.float64) for w in run.weights]
        sharp = np.empty((t, int(record.sharpness_k)))
        for p in range(n_p):
            sel = np.flatnonzero(phase == p)
            if sel.size:
                sharp[sel] = sharpness_record(problems[p], [w[sel] for w in weights], int(record.sharpness_k))
    later = phase > 0
    modes = base.modes
    if later.any():
        first_switch = float(plan.starts[1])
        lt_theory = modes.learning_time_theory
        if lt_theory is not None:
            lt_theory = np.where(lt_theory <= first_switch, lt_theory, np.nan)
        modes = replace(modes, theory=_after_switch(modes.theory, later), learning_time_theory=lt_theory,
                        theory_assumptions=None if modes.theory_assumptions is None else
                        modes.theory_assumptions + "; for the first phase only (NaN from the first switch on)")
    hint = base.stability_hint
    if base.outcome == "diverged" and isinstance(method, GradientDescent):
        p_div = int(phase[-1]) if t else 0
        bound = network.gd_stability_bound(problems[p_div], len(weights0), method.weight_decay)
        hint = (f"GD diverged at step {base.diverged_at_step} (phase {p_div}) with learning_rate "
                f"{method.learning_rate:g}; near that task's optimum GD is stable only for learning_rate < "
                f"{bound:.6g} (docs/theory.md#gd-stability): lower the learning rate")
    return replace(
        base,
        loss=loss,
        excess_loss=task_excess[rows, phase],
        gradient_norm=grad,
        distance_to_optimum=distance,
        optimum=opts[-1],
        modes=modes,
        test_loss=test,
        early_stopping=early_stopping(base.time, base.step, test),
        loss_theory=_mask_theory(base.loss_theory, later),
        loss_theory_random_matrix=_mask_theory(base.loss_theory_random_matrix, later),
        stability_hint=hint,
        sharpness=sharp,
        task_loss=task_loss,
        task_loss_kind=kinds,
        task_excess_loss=task_excess,
        phase=phase.astype(np.int64),
        phase_starts=np.asarray(plan.starts, dtype=np.float64).copy(),
    )
