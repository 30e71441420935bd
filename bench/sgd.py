"""SGD and momentum against GD: a 10,000-step run at (32,32,32) (and (8,16,8)), side by side in one process.

    python -m bench.sgd       # these rows alone (make bench runs them too)

A run is ``simulate`` end to end with 200 records (the steps and every derived quantity), on one BLAS thread as a
worker runs. The dataset has N = 1024 samples (Gaussian inputs, a linear teacher plus noise), so that a batch of
B rows is a fraction of it; the learning rate is tiny (the weights barely move: steady work per step, no early
stop). Rows: plain GD (the compiled GD loop), GD with heavy-ball momentum (``sgd_loop``, full batch), and SGD at
several batch sizes through the gradient source ``sgd.plan_source`` picks, with the other source beside it.
Informational: no bar.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from service.dynamics import sgd_loop
from service.dynamics.methods import GradientDescent, StochasticGradientDescent
from service.dynamics.problem import problem_from_data
from service.dynamics.record import RecordSchedule
from service.dynamics.sgd import plan_source, run_sgd
from service.dynamics.simulate import simulate

from .common import Context, Row, best_time, use_service_malloc_settings

STEPS = 10_000
SAMPLES = 1024
LEARNING_RATE = 1e-9
NAMES = {sgd_loop.BATCH_CORRELATIONS: "batch correlations", sgd_loop.BATCH_SAMPLES: "backprop"}


def _case(i: int, h: int, o: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SAMPLES, i))
    y = x @ rng.standard_normal((i, o)) / np.sqrt(i) + 0.1 * rng.standard_normal((SAMPLES, o))
    return problem_from_data(x, y), [rng.standard_normal((h, i)) / np.sqrt(i), rng.standard_normal((o, h)) / np.sqrt(h)]


def sgd_speed(ctx: Context) -> list[Row]:
    with threadpool_limits(limits=1, user_api="blas"):
        return [row for size in ([(8, 16, 8)] if ctx.quick else [(8, 16, 8), (32, 32, 32)])
                for row in _rows(size, 2 if ctx.quick else 5)]


def _rows(size: tuple[int, int, int], repeats: int) -> list[Row]:
    problem, w0 = _case(*size)
    rec = RecordSchedule(points=200)

    def timed(method):
        simulate(problem, w0, method, rec)  # warm-up
        return best_time(lambda: simulate(problem, w0, method, rec), repeats)

    gd = timed(GradientDescent(LEARNING_RATE, STEPS))
    rows = [Row("(sgd) 10,000 steps, 200 records", str(size), value=f"{1e3 * gd:.1f} ms",
                note="GD (compiled GD loop)")]
    mom = timed(GradientDescent(LEARNING_RATE, STEPS, momentum=0.9))
    rows.append(Row("(sgd) 10,000 steps, 200 records", str(size), value=f"{1e3 * mom:.1f} ms",
                    note=f"GD + heavy-ball momentum 0.9: ×{mom / gd:.2f} GD"))
    steps_rec = rec.gd_steps(LEARNING_RATE, STEPS)
    for batch in (1, 8, 32, 128):
        method = StochasticGradientDescent(LEARNING_RATE, batch, steps=STEPS, momentum=0.9)
        planned = plan_source(list(size), batch)
        run = timed(method)
        steps_only = {}
        for source in NAMES:
            run_sgd(problem, w0, method, steps_rec, source=source)  # warm-up
            steps_only[source] = best_time(lambda s=source, m=method: run_sgd(problem, w0, m, steps_rec, source=s),
                                           repeats)
        other = 3 - planned  # the other of BATCH_CORRELATIONS (1) and BATCH_SAMPLES (2)
        rows.append(Row("(sgd) 10,000 steps, 200 records", str(size), value=f"{1e3 * run:.1f} ms",
                        note=f"SGD batch {batch} of {SAMPLES}, momentum 0.9: ×{run / gd:.2f} GD; the steps alone "
                             f"{1e3 * steps_only[planned]:.1f} ms through {NAMES[planned]} (planned), "
                             f"{1e3 * steps_only[other]:.1f} ms through {NAMES[other]}"))
    return rows


def main() -> None:
    use_service_malloc_settings()
    for row in sgd_speed(Context(quick=False, threads=1)):
        print(f"| {row.benchmark} | {row.case} | {row.value} | {row.note} |")


if __name__ == "__main__":
    main()
