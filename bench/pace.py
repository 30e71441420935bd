"""Speed as users get it (issue 21 items 1 and 2): a job through the service beside what a user would run by hand,
in the same rounds.

    python -m bench.pace            the issue's figures (~5 min on a quiet 2-core machine)
    python -m bench.pace --quick    smoke run: shorter jobs, two rounds

(``python -m bench`` runs this too.) Standalone, the "## Speed as users get it" section of bench/results.md is
replaced (or appended).

One ``python -m service`` (the README's ``make run``: uvicorn, the embedded Dask cluster, SQLite) on loopback,
started by this script, and in this process:

* **a lone large job** — (300,300,300) GD, 1,500 steps on the random_teacher preset. Every round runs, in ABBA
  order (the order reversed every other round, so the machine's drift falls on all of them):
  ``numpy by hand``, the user's loop in this process on every core
  (``g = S31 − W32 W21 S11; W32, W21 = W32 + η g W21ᵀ, W21 + η W32ᵀ g``);
  ``in process, worker's hooks``, the job as a worker runs it (``tasks.simulate_request`` with the hooks of
  ``tasks.run_simulation``: throttled progress and live records, a stop check, the core share) without Dask or
  HTTP; ``polled``, the job submitted and its status read every 0.2 s (``GET /v1/simulations/{id}``) until it
  ends; ``waiting``, the job submitted with ``Prefer: wait``. A service job's speed is its own time
  (``finished_at − started_at``: what the worker spent, from its start to its stored trajectory); the client's
  round trip is in the notes. Each is reported as its ratio to numpy by hand in the same round, median over the
  rounds. Bars: polled and waiting ≥ 0.9. Notes: the cores the service kept busy and the API process's share.
  A service not being timed is frozen meanwhile (SIGSTOP), so its idle wake-ups fall on no one's round. Beside them, in the same rounds, ``polled`` on a second service whose Dask processes keep Dask's own housekeeping
  intervals (``DASK_HOUSEKEEPING``; the embedded cluster's are quieter: docs/performance.md#housekeeping).
* **tiny nets** — (8,16,8) and (32,32,32) GD jobs of ≥ 3 s through the service (``Prefer: wait``) against the same
  request in this process (``tasks.simulate_request`` on one BLAS thread, as a worker runs a small net, no hooks),
  in ABBA rounds. Bar: the job's own time ≥ 0.8× the in-process speed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
from threadpoolctl import threadpool_limits

from .common import Context, Row, run_standalone, settle, table
from .service import Service, large_job, tiny_job

RESULTS = Path(__file__).with_name("results.md")
HEADING = "## Speed as users get it (issue 21)"
POLL_SECONDS = 0.2
LARGE = 300
LARGE_STEPS = 1500
# ≥ 3 s per job on this machine's kernel (bench/results.md: ~2.8e6 steps/s at (8,16,8), ~1.6e5 at (32,32,32))
TINY_STEPS = {(8, 16, 8): 9_000_000, (32, 32, 32): 600_000}
TINY_LEARNING_RATE = 1e-9  # every step runs: nothing converges early at this rate
FINAL = ("succeeded", "failed", "cancelled")


def _stamp(text: str) -> float:
    """Seconds since the epoch of a job's ``…_at`` field (service.jobs.database.utc_now's format)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def job_seconds(job: dict) -> float:
    """The job's own time: from the worker's start to its stored result (``finished_at − started_at``)."""
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    return _stamp(job["finished_at"]) - _stamp(job["started_at"])


def numpy_by_hand(steps: int, n: int = LARGE):
    """The user's own loop on the job's problem and initial weights, on this process's BLAS threads (every core):
    returns a function running it and returning its wall time."""
    from service.dynamics import presets
    from service.dynamics.init import initial_weights

    problem = presets.random_teacher(n_in=n, n_out=n, n_samples=2 * n, seed=0)
    w21, w32 = initial_weights(problem, [n], "gaussian", scale=0.05, seed=1)
    s11, s31, lr = problem.sigma11, problem.sigma31, float(orjson.loads(large_job(steps, n))["training"]
                                                           ["learning_rate"])

    def run() -> float:
        a, b = w21.copy(), w32.copy()
        t0 = time.perf_counter()
        for _ in range(steps):
            g = s31 - b @ (a @ s11)
            b, a = b + lr * g @ a.T, a + lr * b.T @ g
        return time.perf_counter() - t0

    return run


def with_workers_hooks(body: bytes):
    """The job as ``tasks.run_simulation`` runs it in a worker, without Dask or HTTP: one BLAS thread outside the
    stepping, the stepping on its core share, live progress and records (put into messages, not sent: no Dask worker
    here), a stop check that never stops. Returns a function running it and returning its wall time."""
    from service.dynamics.methods import Hooks
    from service.jobs.tasks import simulate_request
    from service.jobs.worker import LiveReporter, shared_cores

    def run() -> float:
        with threadpool_limits(limits=1, user_api="blas"):
            t0 = time.perf_counter()
            reporter = LiveReporter(None, "bench", "attempt")
            with shared_cores() as blas_threads:
                simulate_request(body, Hooks(progress=reporter, should_stop=lambda: False, blas_threads=blas_threads,
                                             records=reporter.records, computed=reporter.computed), live=reporter)
            return time.perf_counter() - t0

    return run


def polled(service: Service, body: bytes) -> tuple[float, float, float]:
    """Submit without waiting and read the job every 0.2 s until it ends: (job seconds, round trip seconds, the API
    process's CPU seconds meanwhile)."""
    api0 = service.api_cpu_seconds()
    t0 = time.perf_counter()
    response = service.client.post("/v1/simulations", content=body, headers={"Content-Type": "application/json"})
    if response.status_code not in (201, 202):
        raise RuntimeError(f"submit failed: {response.status_code} {response.text[:300]}")
    job = response.json()
    while job["status"] not in FINAL:
        time.sleep(POLL_SECONDS)
        job = service.client.get(f"/v1/simulations/{job['id']}").json()
    trip = time.perf_counter() - t0
    return job_seconds(job), trip, service.api_cpu_seconds() - api0


def waiting(service: Service, body: bytes) -> tuple[float, float, float]:
    """Submit with ``Prefer: wait``: (job seconds, round trip seconds, the API process's CPU seconds meanwhile)."""
    api0 = service.api_cpu_seconds()
    t0 = time.perf_counter()
    response = service.client.post("/v1/simulations", content=body,
                                   headers={"Content-Type": "application/json", "Prefer": "wait=600"})
    trip = time.perf_counter() - t0
    return job_seconds(response.json()), trip, service.api_cpu_seconds() - api0


def abba(rounds: int, kinds: list[str]):
    """(round, kind) in ABBA order: the kinds in order, then reversed, round after round."""
    for r in range(rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            yield r, kind


# Dask's own housekeeping intervals (its distributed.yaml), for a service beside the default one: what the embedded
# cluster's quieter ones (service/jobs/cluster.py QUIET_HOUSEKEEPING) change for a job, in the same rounds
DASK_HOUSEKEEPING = {"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "20ms",
                     "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "500ms",
                     "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__DISK": "True",
                     "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "100ms"}


def lone_large_job(ctx: Context, service: Service, dask_defaults: Service | None = None) -> list[Row]:
    """Item 1: a lone (300,300,300) job, polled and waited for, beside numpy by hand and the worker's code in this
    process, in the same rounds; with ``dask_defaults``, also polled on a service with Dask's own housekeeping."""
    from service.dynamics.gd import step_flops
    from service.jobs.cores import host_cores

    steps = 200 if ctx.quick else LARGE_STEPS
    rounds = 2 if ctx.quick else 6
    body = large_job(steps, LARGE)
    runs = {"numpy": numpy_by_hand(steps), "in process": with_workers_hooks(body)}
    # kind → (service, client)
    clients = {"polled": (service, polled), "waiting": (service, waiting)}
    if dask_defaults is not None:
        clients["polled, Dask's housekeeping"] = (dask_defaults, polled)
    speed: dict[str, list[float]] = {k: [] for k in (*runs, *clients)}
    trips: dict[str, list[float]] = {k: [] for k in clients}
    busy: dict[str, list[float]] = {k: [] for k in clients}
    api: dict[str, list[float]] = {k: [] for k in clients}
    servers = list({id(s): s for s, _ in clients.values()}.values())
    for server in servers:
        server.run(large_job(10, LARGE))  # the worker's buffers, the preset's cache
    runs["in process"]()
    for _, kind in abba(rounds, list(speed)):
        for server in servers:  # only the service timed runs; the others are frozen (no idle wake-ups)
            server.resume() if kind in clients and clients[kind][0] is server else server.pause()
        settle()
        if kind in runs:
            speed[kind].append(steps / runs[kind]())
            continue
        server, client = clients[kind]
        cpu0 = server.cpu_seconds()
        seconds, trip, api_cpu = client(server, body)
        speed[kind].append(steps / seconds)
        trips[kind].append(steps / trip)
        busy[kind].append((server.cpu_seconds() - cpu0) / trip)
        api[kind].append(api_cpu / trip)
    for server in servers:
        server.resume()
    flops = step_flops([LARGE] * 3)
    case = f"({LARGE}, {LARGE}, {LARGE})"

    def ratios(kind: str, of: dict[str, list[float]] = speed) -> list[float]:
        return [a / b for a, b in zip(of[kind], speed["numpy"], strict=True)]

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    rows = [Row("lone large job: numpy by hand, this process", case, flops=flops, measured=max(speed["numpy"]),
                median=statistics.median(speed["numpy"]),
                note=f"{steps:,} GD steps, the user's loop on {ctx.threads} BLAS threads; {rounds} ABBA rounds "
                     f"(steps/s per round {listed(speed['numpy'])})")]
    for kind, label, bar in (("in process", "in process with the worker's hooks (no Dask, no HTTP)", None),
                             ("polled", "through the service, client polls every 0.2 s", 0.9),
                             ("waiting", "through the service, client waits (Prefer: wait)", 0.9),
                             ("polled, Dask's housekeeping", "the same polled, Dask's default housekeeping", None)):
        if kind not in speed:
            continue
        r = ratios(kind)
        median = statistics.median(r)
        note = f"per round ×{listed(r)}; {statistics.median(speed[kind]):,.0f} steps/s median"
        if kind in trips:
            note = (f"the job's own time (finished_at − started_at); per round ×{listed(r)}; the client's round "
                    f"trip ×{statistics.median(ratios(kind, trips)):.2f} numpy (median); the service's processes "
                    f"kept {statistics.median(busy[kind]):.2f} of {host_cores()} cores busy, its API process "
                    f"{statistics.median(api[kind]):.3f}")
        rows.append(Row(f"lone large job: {label}", case, value=f"×{median:.3f} numpy by hand",
                        bar="" if bar is None else f"≥ {bar}", passed=None if bar is None else median >= bar,
                        note=note))
    return rows


def in_process(body: bytes):
    """The request in this process as a worker runs a small net (one BLAS thread, no hooks): its wall time."""
    from service.jobs.tasks import simulate_request

    def run() -> float:
        with threadpool_limits(limits=1, user_api="blas"):
            t0 = time.perf_counter()
            outcome, _ = simulate_request(body)
            if outcome != "completed":
                raise RuntimeError(f"the in-process run ended {outcome}")
            return time.perf_counter() - t0

    return run


def tiny_nets(ctx: Context, service: Service) -> list[Row]:
    """Item 2: ≥ 3-s jobs of small nets, the job's own time against the same request in this process."""
    rounds = 2 if ctx.quick else 4
    rows = []
    for size, full in TINY_STEPS.items():
        steps = full // 10 if ctx.quick else full
        body = tiny_job(size, steps, TINY_LEARNING_RATE, points=200)
        local = in_process(body)
        local()  # compiled and warm
        service.run(tiny_job(size, 1000, TINY_LEARNING_RATE, points=200))
        speed: dict[str, list[float]] = {"service": [], "in process": []}
        for _, kind in abba(rounds, list(speed)):
            service.resume() if kind == "service" else service.pause()
            settle()
            if kind == "service":
                seconds, _, _ = waiting(service, body)
                speed[kind].append(steps / seconds)
            else:
                speed[kind].append(steps / local())
        service.resume()
        r = [a / b for a, b in zip(speed["service"], speed["in process"], strict=True)]
        median = statistics.median(r)
        rows.append(Row("tiny net through the service vs in process", str(size),
                        value=f"×{median:.3f} in process", bar="≥ 0.8", passed=median >= 0.8,
                        note=f"{steps:,} GD steps, 200 records; the job's own time (finished_at − started_at), "
                             f"{statistics.median(speed['service']):,.0f} steps/s median "
                             f"({steps / statistics.median(speed['service']):.1f} s), in process "
                             f"{statistics.median(speed['in process']):,.0f}; per round "
                             f"×{', '.join(f'{v:.3f}' for v in r)}"))
    return rows


def pace(ctx: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="dlnsim-bench-pace-") as tmp:
        service = Service(Path(tmp))
        dask_defaults = None
        try:
            dask_defaults = Service(Path(tmp), **DASK_HOUSEKEEPING)
            rows = lone_large_job(ctx, service, dask_defaults)
            dask_defaults.stop()
            dask_defaults = None
            return rows + tiny_nets(ctx, service)
        finally:
            service.stop()
            if dask_defaults is not None:
                dask_defaults.stop()


def section(rows: list[Row]) -> list[str]:
    return [HEADING, "",
            ("One `python -m service` on loopback (embedded cluster, defaults), started by the bench "
             "(bench/pace.py), beside the same work in the bench process, in ABBA rounds; ratios are per round, "
             "median over the rounds."),
            "", *table(rows)]


def main(argv: list[str] | None = None) -> int:
    return run_standalone("bench.pace", __doc__.split("\n")[0], "smoke run: shorter jobs, two rounds", HEADING,
                          RESULTS, pace, section, argv)


if __name__ == "__main__":
    sys.exit(main())
