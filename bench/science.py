"""Through the service, what issue 20 added: the first job of each new kind after start, and what each new recorded
quantity costs a 10,000-step (32,32,32) GD job's round trip.

    python -m bench.science            (~3 min on a quiet 2-core machine, most of it the kernels' compilation)
    python -m bench.science --quick    smoke run: fewer steps and rounds

(``python -m bench`` runs this too.) Standalone, the "## issue 20 through the service" section of bench/results.md
is replaced (or appended); the rest of the file is left as it is.

Real ``python -m service`` processes on loopback (bench/service.py's ``Service``):

* **first jobs** — a service started on an empty numba cache; once /readyz answers 200 and the service has said
  "every kernel compiled" (the workers compile these kinds' kernels in the background after /readyz, issue 21), the
  first job of each new kind (mini-batch SGD with Nesterov momentum recording the sharpness, GD recording the
  linearised loss, a two-phase task sequence, float64 and float32): the slowest round trip. Bar ≤ 3 s: the worker
  warm-up (service/jobs/warmup.py) compiled their kernels.
* **costs** — the round trip (POST with ``Prefer: wait``: validation, stepping, every derived quantity, storing) of a
  10,000-step GD job on an (32,32,32) random teacher (Σ11 from 64 samples: not whitened) with 200 records, plain and
  with each new record setting; best of the rounds, which alternate. No bars: a few per cent is within the noise of
  a round trip on a shared machine (Dask's two workers, the API's validation, storing), so the costs themselves are
  timed in process with their bars (bench/recording.py: the linearised loss, a sequence's task losses, the
  sharpness); these rows show that nothing else is added on the way. The sharpness costs more than the run (about 50
  Hessian-vector products per record, each about two GD steps: docs/performance.md#sharpness). SGD (batch 8 of 64,
  momentum 0.9) is shown beside it for scale.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import orjson

from .common import Context, Row, run_standalone, settle, table
from .service import Service

RESULTS = Path(__file__).with_name("results.md")
HEADING = "## issue 20 through the service"
N = 32
RECORDS = 200


def _teacher(seed: int = 0) -> dict:
    return {"kind": "preset", "name": "random_teacher", "n_in": N, "n_out": N, "n_samples": 2 * N, "seed": seed}


def _job(steps: int, **record) -> dict:
    # η far below the stability bound and no convergence stop: every one of the steps runs
    return {"data": _teacher(), "network": {"hidden": [N]}, "init": {"scheme": "gaussian", "scale": 0.05, "seed": 1},
            "training": {"method": "gd", "learning_rate": 1e-3, "steps": steps, "stop_at_convergence": False},
            "record": {"points": RECORDS, **record}}


def jobs(steps: int) -> dict[str, bytes]:
    plain = _job(steps)
    sequence = {**plain, "data": {"kind": "sequence", "phases": [{"data": _teacher(0), "until": 1e-3 * steps / 2},
                                                                 {"data": _teacher(1)}]}}
    sgd = {**plain, "training": {"method": "sgd", "learning_rate": 1e-3, "batch_size": 8, "steps": steps,
                                 "momentum": 0.9}}
    return {name: orjson.dumps(body) for name, body in {
        "plain": plain, "linearized": _job(steps, linearized=True), "sequence": sequence,
        "sharpness": _job(steps, sharpness=True), "sgd": sgd}.items()}


def first_jobs(ctx: Context, workdir: Path) -> list[Row]:
    """The first job of each new kind on a service started on an empty kernel cache."""
    small = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 6, "n_out": 5, "n_samples": 20},
             "network": {"hidden": [7]}, "record": {"points": 20}}
    kinds = {
        "sgd + nesterov + sharpness": {**small, "training": {"method": "sgd", "learning_rate": 0.01, "batch_size": 4,
                                                             "epochs": 20, "momentum": 0.9, "nesterov": True},
                                       "record": {"points": 20, "sharpness": True}},
        "gd + linearized": {**small, "training": {"method": "gd", "learning_rate": 0.01, "steps": 500},
                            "record": {"points": 20, "linearized": True}},
        "sequence": {**small, "data": {"kind": "sequence", "phases": [{"data": small["data"], "until": 2.0},
                                                                      {"data": {**small["data"], "seed": 1}}]},
                     "training": {"method": "gd", "learning_rate": 0.01, "steps": 500}},
    }
    service = Service(workdir, NUMBA_CACHE_DIR=str(workdir / "empty-numba-cache-science"))
    trips: dict[str, float] = {}
    try:
        rest = service.wait_for_line("every kernel compiled")
        for dtype in ("float64", "float32"):
            for name, body in kinds.items():
                trips[f"{name}, {dtype}"] = service.run(orjson.dumps({**body, "dtype": dtype}))
    finally:
        service.stop()
    slowest = max(trips, key=trips.get)
    return [Row("first job of each new kind after every kernel compiled, empty kernel cache", "(6, 7, 5)",
                value=f"{trips[slowest] * 1e3:,.0f} ms", bar="≤ 3 s", passed=trips[slowest] <= 3.0,
                note=f"slowest: {slowest}; " + ", ".join(f"{k} {v * 1e3:,.0f} ms" for k, v in trips.items())
                     + f"; /readyz answered 200 after {service.ready_after:.1f} s, every kernel compiled "
                       f"{rest:.1f} s later")]


def costs(ctx: Context, workdir: Path) -> list[Row]:
    """Round trips of the plain job and of each new record setting, alternating, best of the rounds."""
    steps = 2000 if ctx.quick else 10_000
    rounds = 2 if ctx.quick else 6
    bodies = jobs(steps)
    # one worker: with two, jobs sent one after another alternate between the workers, and a worker on a busier core
    # would bias the settings that happen to land on it
    service = Service(workdir, DLNSIM_WORKERS="1")
    times: dict[str, list[float]] = {name: [] for name in bodies}
    try:
        for body in bodies.values():
            service.run(body)  # warm: the worker's buffers, the preset's problem
        for r in range(rounds):
            settle()
            ctx.sample_gemm("float64")  # the machine's speed over the rounds, for the section's header
            for name in (list(bodies) if r % 2 == 0 else list(reversed(bodies))):
                settle()
                times[name].append(service.run(bodies[name]))
    finally:
        service.stop()
    best = {name: min(t) for name, t in times.items()}
    plain = best["plain"]
    case = f"({N}, {N}, {N})"
    head = f"{steps:,} GD steps, {RECORDS} records, round trip best of {rounds} (plain {plain * 1e3:.0f} ms"

    def extra(name: str, what: str, core_row: str) -> Row:
        cost = best[name] / plain - 1.0
        return Row(f"{what} through the service", case, value=f"{100 * cost:+.1f} % of the run",
                   note=f"{head}, with it {best[name] * 1e3:.0f} ms; medians "
                        f"{statistics.median(times['plain']) * 1e3:.0f} and {statistics.median(times[name]) * 1e3:.0f} "
                        "ms). A difference of round trips, within "
                        f"their noise on a shared machine: row {core_row} above times the cost itself")

    return [extra("linearized", "record.linearized", "(II.5)"),
            extra("sequence", "task sequence of 2 phases (task_loss, phase)", "(i20)"),
            Row("record.sharpness through the service", case, value=f"×{best['sharpness'] / plain:.2f} the run",
                note=f"{head}, with it {best['sharpness'] * 1e3:.0f} ms): more than the run, as planned "
                     "(docs/performance.md#sharpness)"),
            Row("sgd (batch 8 of 64, momentum 0.9) through the service", case,
                value=f"×{best['sgd'] / plain:.2f} the gd run",
                note=f"{steps:,} SGD steps against {head}): for scale (docs/performance.md#sgd)")]


def science_speed(ctx: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="dlnsim-bench-science-") as tmp:
        workdir = Path(tmp)
        return first_jobs(ctx, workdir) + costs(ctx, workdir)


def section(rows: list[Row]) -> list[str]:
    return [HEADING, "",
            ("Real `python -m service` processes on loopback (bench/science.py). Round trips are client-side wall "
             "times of POST /v1/simulations with `Prefer: wait` (the job runs and its trajectory is stored in that "
             "time); a cost is the round trip with the setting over the plain job's, best of alternating rounds."),
            "", *table(rows)]


def main(argv: list[str] | None = None) -> int:
    return run_standalone("bench.science", __doc__.split("\n")[0], "smoke run: fewer steps and rounds", HEADING,
                          RESULTS, science_speed, section, argv)


if __name__ == "__main__":
    sys.exit(main())
