"""Bar (e): the cost of ``exact`` does not grow with t_max (closed forms, no stepping).

Each case is ``simulate(…, Exact(t_max), RecordSchedule())`` (200 records, trajectory built) at t_max = 1e2,
1e4 and 1e6, timed interleaved, best of the rounds; the figure is the slowest over the fastest. A method that
stepped in time would cost 10⁴× more at 1e6 than at 1e2; timing noise on this machine is tens of per cent.
"""

from __future__ import annotations

import time

from service.dynamics import init, presets
from service.dynamics.methods import Exact
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

from .common import Context, Row, settle

T_MAX = (1e2, 1e4, 1e6)
MAX_RATIO = 1.5  # "independent of t_max", allowing for timing noise


def _cases():
    """(name, problem, initial weights) for each closed form, whitened inputs (Σ11 = I), 40 → 30 → 40."""
    problem = presets.whitened([4.0, 3.0, 2.0, 1.5, 1.0, 0.5], 40, 40, seed=1)
    return [
        ("Riccati, λ-balanced init (λ = 0.5, not aligned)", problem,
         init.initial_weights(problem, [30], "lambda_balanced", lam=0.5, scale=0.1, seed=2)),
        ("Saxe modes, aligned init", problem, init.initial_weights(problem, [30], "aligned", strength=1e-3)),
        ("deep balanced modes, aligned init, 3 layers", problem,
         init.initial_weights(problem, [30, 30], "aligned", strength=1e-2)),
    ]


def exact_cost(ctx: Context) -> list[Row]:
    rows = []
    rounds = 3 if ctx.quick else 6  # a multiple of 3: each t_max as often in each position
    for name, problem, w0 in _cases():
        best = {t: float("inf") for t in T_MAX}
        for t in T_MAX:  # warm-up (first calls load caches)
            simulate(problem, w0, Exact(t), RecordSchedule())
        for r in range(rounds):
            for t in T_MAX[r % 3:] + T_MAX[:r % 3]:  # each t_max in every position of the round in turn
                settle()
                t0 = time.perf_counter()
                simulate(problem, w0, Exact(t), RecordSchedule())
                best[t] = min(best[t], time.perf_counter() - t0)
        ratio = max(best.values()) / min(best.values())
        rows.append(Row("(e) exact cost vs t_max", "(40, 30, 40)" if len(w0) == 2 else "(40, 30, 30, 40)",
                        value=f"×{ratio:.2f} slowest / fastest", bar=f"< {MAX_RATIO}×", passed=ratio < MAX_RATIO,
                        note=f"{name}, 200 records: " + ", ".join(f"t_max {t:.0e}: {1e3 * s:.1f} ms"
                                                                  for t, s in best.items())))
    return rows
