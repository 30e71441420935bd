"""The cost of the analysis records of issue 12, the test loss on held-out data and the NTK (record.kernel), and of
the sharpness (record.sharpness), the linearised loss (record.linearized: the lazy limit as theory) and a task
sequence's task losses (issue 20), each as a fraction of a whole run: ``simulate`` (the GD steps and every derived
quantity) with 200 records. Bar: < 5 %.

    python -m bench.recording      # these rows alone (make bench runs them too)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from service.dynamics.generalization import early_stopping, test_loss
from service.dynamics.linearized import linearized_loss
from service.dynamics.methods import GradientDescent
from service.dynamics.ntk import kernel_record
from service.dynamics.problem import Problem, with_test
from service.dynamics.record import RecordSchedule
from service.dynamics.sharpness import (
    LANCZOS_MAX_ITER,
    SHARPNESS_RTOL,
    CompiledHessian,
    sharpness_record,
    start_vector,
)
from service.dynamics.simulate import simulate

from .common import Context, Row, best_time, run_standalone
from .stepping import LEARNING_RATE, make_problem

STEPS = 10_000
RECORDS = 200


def _held_out(problem: Problem, seed: int = 1) -> Problem:
    """``problem`` with test statistics of the same shapes (a second draw of make_problem's kind, with Σ33)."""
    rng = np.random.default_rng(seed)
    i, o = problem.n_in, problem.n_out
    x = rng.standard_normal((4 * i, i))
    y = x @ rng.standard_normal((o, i)).T + 0.1 * rng.standard_normal((4 * i, o))
    test = Problem(x.T @ x / len(x), y.T @ x / len(x), y.T @ y / len(x))
    return with_test(problem, test)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    return best_time(fn, repeats)


def analysis_recording_overhead(ctx: Context) -> list[Row]:
    """test_loss + kernel at 200 records cost < 5 % of a 10,000-step GD run.

    A run is ``simulate`` end to end (the steps and every derived quantity). The cost is the time of exactly what
    those records add to it, timed on that run's 201 recorded weight stacks: the test loss and early-stopping point
    (``generalization.test_loss``, ``early_stopping``) and the NTK's Grams and kernel distance
    (``kernel.kernel_record``), best of many, over the best plain run. Timing the difference of two whole runs
    instead drowns a 1 % effect in this shared VM's noise (runs swing by ±5 % from one to the next).
    """
    with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread, as a worker runs (DLNSIM_BLAS_THREADS)
        return _overhead_rows(ctx)


def _overhead_rows(ctx: Context) -> list[Row]:
    repeats = 5 if ctx.quick else 40
    return [_overhead_row(size, repeats) for size in ([(8, 16, 8)] if ctx.quick else
                                                       [(8, 16, 8), (32, 32, 32), (100, 100, 100)])]


def _overhead_row(size: tuple[int, int, int], repeats: int) -> Row:
    method = GradientDescent(LEARNING_RATE, STEPS)
    plain, w0 = make_problem(*size)
    analysed = _held_out(plain)
    run = _best(lambda: simulate(plain, w0, method, RecordSchedule(points=RECORDS)), max(3, repeats // 4))
    traj = simulate(plain, w0, method, RecordSchedule(points=RECORDS, weights=True))
    cost_test = _best(lambda: early_stopping(traj.time, traj.step, test_loss(analysed, traj.product)), repeats) / run
    cost_kernel = _best(lambda: kernel_record(traj.weights, plain.n_in, plain.n_out), repeats) / run
    both = cost_test + cost_kernel
    return Row("(i12) test_loss + kernel, 200 records", str(size), flops=None,
               value=f"{100 * both:.2f} % of the run", bar="< 5 %", passed=both < 0.05,
               note=f"{STEPS:,} GD steps, simulate {1e3 * run:.2f} ms; test loss {100 * cost_test:.2f} %, "
                    f"NTK Grams + distance {100 * cost_kernel:.2f} % ({len(traj.time)} records)")


def sharpness_recording_overhead(ctx: Context) -> list[Row]:
    """record.sharpness (k = 1) at 200 records against the 10,000-step GD run it records, side by side in one process.

    The cost is ``sharpness.sharpness_record`` on that run's 201 recorded weight stacks (the compiled Lanczos), best
    of a few, over the best plain ``simulate``. The same records through ARPACK (``eigsh`` on a ``LinearOperator``
    of the same compiled product) are timed beside it, for the choice of solver (sharpness.py).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return [_sharpness_row(size, 2 if ctx.quick else 5) for size in ([(8, 16, 8)] if ctx.quick else
                                                                        [(8, 16, 8), (32, 32, 32)])]


def _sharpness_row(size: tuple[int, int, int], repeats: int) -> Row:
    method = GradientDescent(LEARNING_RATE, STEPS)
    problem, w0 = make_problem(*size)
    run = _best(lambda: simulate(problem, w0, method, RecordSchedule(points=RECORDS)), max(3, repeats))
    traj = simulate(problem, w0, method, RecordSchedule(points=RECORDS, weights=True))
    lanczos = _best(lambda: sharpness_record(problem, traj.weights, 1), repeats)
    arpack = _best(lambda: sharpness_record(problem, traj.weights, 1, solver="arpack"), 1)
    op = CompiledHessian(problem, size)
    flat = np.concatenate([w.reshape(len(traj.time), -1) for w in traj.weights], axis=1)
    _, _, iters, _ = op.top_lanczos(flat, start_vector(op.n), SHARPNESS_RTOL, LANCZOS_MAX_ITER)
    cost = lanczos / run
    return Row("(s) record.sharpness, 200 records", str(size), flops=None,
               value=f"{100 * cost:.0f} % of the run", bar="< 5 %", passed=cost < 0.05,
               note=f"{STEPS:,} GD steps, simulate {1e3 * run:.2f} ms; sharpness {1e3 * lanczos:.1f} ms "
                    f"({len(traj.time)} records × {np.mean(iters):.0f} Hessian products, "
                    f"{1e6 * lanczos / iters.sum():.1f} µs each); ARPACK on the same products {1e3 * arpack:.0f} ms "
                    f"(×{arpack / lanczos:.1f})")


def sequence_overhead(ctx: Context) -> list[Row]:
    """What a task sequence records beyond a single task's trajectory (task_loss and task_excess_loss of every task at
    every record, phase, the later phases' gradient norms, distances and optima: ``sequence.build_sequence_trajectory``
    over ``simulate.build_trajectory``), timed on one 2-phase run's records (the switch at half-time, a second task of
    the same sizes), best of many, over the best plain 10,000-step run at that size (as above). Bar: < 5 %."""
    with threadpool_limits(limits=1, user_api="blas"):
        repeats = 5 if ctx.quick else 40
        return [_sequence_row(size, repeats) for size in ([(8, 16, 8)] if ctx.quick else
                                                           [(8, 16, 8), (32, 32, 32), (100, 100, 100)])]


def _sequence_row(size: tuple[int, int, int], repeats: int) -> Row:
    from service.dynamics.sequence import (
        Phase,
        TaskSequence,
        _run_stepping,
        build_sequence_trajectory,
        preflight_sequence,
    )
    from service.dynamics.simulate import build_trajectory

    method = GradientDescent(LEARNING_RATE, STEPS)
    first, w0 = make_problem(*size)
    second, _ = make_problem(*size, seed=1)
    record = RecordSchedule(points=RECORDS)
    sequence = TaskSequence([Phase(first, LEARNING_RATE * STEPS / 2), Phase(second)])
    run = _best(lambda: simulate(first, w0, method, record), max(3, repeats // 4))
    plan = preflight_sequence(sequence, w0, method, record)
    stepped = _run_stepping(sequence.problems, w0, method, plan, np.float64, None)
    whole = _best(lambda: build_sequence_trajectory(sequence.problems, w0, method, record, stepped, plan), repeats)
    single = _best(lambda: build_trajectory(first, w0, method, record, stepped), repeats)
    cost = (whole - single) / run
    barred = size == (32, 32, 32)  # issue 20's bar; a small net's run is too short for a second task's fixed costs
    return Row("(i20) task sequence, 2 phases, 200 records", str(size), flops=None,
               value=f"{100 * cost:.2f} % of the run", bar="< 5 %" if barred else "",
               passed=(cost < 0.05) if barred else None,
               note=f"{STEPS:,} GD steps, simulate {1e3 * run:.2f} ms; the sequence's trajectory {1e3 * whole:.2f} ms "
                    f"against a single task's {1e3 * single:.2f} ms on the same {len(stepped.times)} records")


def linearized_overhead(ctx: Context) -> list[Row]:
    """The linearised loss (``linearized.linearized_loss``) at a 10,000-step GD run's 201 records costs < 5 % of that
    run at (32, 32, 32): timed on the run's own record steps, best of many, over the best plain run (as above).
    Σ11 is not whitened (bench.stepping.make_problem), so two layers take the "rows" route; (8, 16, 8) and
    (100, 100, 100) are shown beside it, and a three-layer (16, 16, 16, 16) on the "dense" route."""
    with threadpool_limits(limits=1, user_api="blas"):
        repeats = 5 if ctx.quick else 40
        sizes = [(32, 32, 32)] if ctx.quick else [(8, 16, 8), (32, 32, 32), (100, 100, 100)]
        rows = [_linearized_row(size, repeats) for size in sizes]
        if not ctx.quick:
            rows.append(_linearized_row((16, 16, 16, 16), repeats))
        return rows


def _linearized_row(size: tuple[int, ...], repeats: int) -> Row:
    method = GradientDescent(LEARNING_RATE, STEPS)
    problem, w0 = make_problem(size[0], size[1], size[-1])
    if len(size) == 4:   # one more hidden layer, O(1) like make_problem's
        rng = np.random.default_rng(1)
        w0 = [w0[0], rng.standard_normal((size[2], size[1])) / np.sqrt(size[1]),
              rng.standard_normal((size[3], size[2])) / np.sqrt(size[2])]
    run = _best(lambda: simulate(problem, w0, method, RecordSchedule(points=RECORDS)), max(3, repeats // 4))
    traj = simulate(problem, w0, method, RecordSchedule(points=RECORDS))
    lin = linearized_loss(problem, w0, method, traj.time, traj.step)
    cost = _best(lambda: linearized_loss(problem, w0, method, traj.time, traj.step), repeats) / run
    bar = size == (32, 32, 32)
    return Row("(II.5) linearized loss, 200 records", str(size), flops=None, value=f"{100 * cost:.2f} % of the run",
               bar="< 5 %" if bar else "", passed=(cost < 0.05) if bar else None,
               note=f"{STEPS:,} GD steps, simulate {1e3 * run:.2f} ms; route {lin.route}, {1e3 * cost * run:.2f} ms "
                    f"({len(traj.time)} records)")


def live_records_overhead(ctx: Context) -> list[Row]:
    """The live view (issue 17): a worker's record events cost < 2 % of a 10,000-step GD run at (32, 32, 32).

    Timed as the other rows are: exactly what the live view adds to a run, on that run's 201 recorded weight stacks,
    best of many, over the best plain ``simulate`` (with the progress and stop hooks every worker run has). What it
    adds: the records copied out of the kernel's buffer (``HookClock.so_far``), each summarised (loss, excess and
    test loss, the strengths of up to 64 modes: ``live.LiveRecords``) and put into messages (``worker.LiveReporter``;
    not sent: no Dask worker here, and a message leaves at most twice a second); what it saves: the final
    trajectory takes the products the summaries were computed from (``Hooks.computed``) instead of computing them
    again, timed as ``build_trajectory`` on the same records with and without them.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        repeats = 5 if ctx.quick else 40
        sizes = [(32, 32, 32)] if ctx.quick else [(8, 16, 8), (32, 32, 32), (100, 100, 100)]
        return [_live_row(size, repeats) for size in sizes]


def _live_row(size: tuple[int, int, int], repeats: int) -> Row:
    from service.dynamics.live import LiveRecords
    from service.dynamics.methods import Hooks, RunResult
    from service.dynamics.simulate import build_trajectory
    from service.jobs.worker import LiveReporter

    method = GradientDescent(LEARNING_RATE, STEPS)
    problem, w0 = make_problem(*size)
    record = RecordSchedule(points=RECORDS)
    hooks = Hooks(progress=lambda f: None, should_stop=lambda: False)
    run = _best(lambda: simulate(problem, w0, method, record, hooks=hooks), max(3, repeats // 4))
    traj = simulate(problem, w0, method, RecordSchedule(points=RECORDS, weights=True))
    stepped = RunResult(traj.time, traj.step, traj.weights, "completed")

    def events() -> LiveRecords:
        copied = RunResult(times=traj.time.copy(), steps=traj.step.copy(), weights=[w.copy() for w in traj.weights],
                           outcome="stopped")
        reporter = LiveReporter(None, "bench", "attempt")
        reporter.live = LiveRecords(problem, [size[1]])
        reporter.records(0, copied)
        reporter.flush()
        return reporter.live

    known = events().computed()
    sent = _best(events, repeats)
    reused = _best(lambda: build_trajectory(problem, w0, method, record, stepped, known=known), repeats)
    computed = _best(lambda: build_trajectory(problem, w0, method, record, stepped), repeats)
    cost = (sent + reused - computed) / run
    barred = size == (32, 32, 32)  # issue 17's bar; a small net's run is too short for the messages' fixed costs
    return Row("(i17) live record events, 200 records", str(size), flops=None,
               value=f"{100 * cost:.2f} % of the run", bar="< 2 %" if barred else "",
               passed=(cost < 0.02) if barred else None,
               note=f"{STEPS:,} GD steps, simulate {1e3 * run:.2f} ms with the worker's hooks; {len(traj.time)} "
                    f"records copied, summarised and put into messages {1e3 * sent:.2f} ms, the trajectory on their "
                    f"products {1e3 * reused:.2f} ms against {1e3 * computed:.2f} ms computing them")


HEADING = "## Recorded quantities (issues 12, 17, 20)"
RESULTS = Path(__file__).with_name("results.md")


def recording_costs(ctx: Context) -> list[Row]:
    """Every row of this module, as ``python -m bench`` runs them."""
    return (analysis_recording_overhead(ctx) + sharpness_recording_overhead(ctx) + linearized_overhead(ctx)
            + live_records_overhead(ctx) + sequence_overhead(ctx))


def section(rows: list[Row]) -> list[str]:
    from .common import table

    return [HEADING, "", *table(rows), ""]


def main(argv: list[str] | None = None) -> int:
    """These rows alone, their section of bench/results.md replaced (the workers' malloc thresholds)."""
    return run_standalone("bench.recording", __doc__.split("\n")[0], "fewer repeats", HEADING, RESULTS,
                          recording_costs, section, argv)


if __name__ == "__main__":
    raise SystemExit(main())
