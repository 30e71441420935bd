"""The engine against a real embedded LocalCluster (2 worker processes, started once for the module).

Most jobs are stand-ins (tests/jobs/fake_tasks.py: they sleep, report progress and watch the cancel
flag through the real worker hooks) so that engine behaviour is tested without loading the CPUs;
the jobs that check numbers run the real core.

The engine lives on an event loop in a background thread for the whole module (one cluster start);
tests call into it with ``run(coro)``.
"""

from __future__ import annotations

import logging
import os
import signal
import types

import orjson
import pytest

from service import codec
from service.jobs.database import Database
from service.jobs.engine import Engine
from service.jobs.store import JobStore
from service.settings import Settings
from tests.jobs.fake_tasks import dispatch_task
from tests.support.loop_thread import PATIENCE, LoopThread
from tests.support.trajectories import stored_arrays, stored_blob
from tests.support.waiting import wait_until as _wait_until

# The contract: a cancelled job stops within a second or two (the core checks every 0.2 s, the
# stop flag is one scheduler round-trip).
CANCEL_WITHIN = 2.0


def settings(**overrides):
    """The engine's settings for these tests: two embedded workers at the service's own priority."""
    return Settings(**{"scheduler": None, "workers": 2, "blas_threads": "auto", "worker_nice": 0, **overrides})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    loop = LoopThread()
    store = JobStore(Database(tmp_path_factory.mktemp("engine") / "jobs.sqlite3"))
    engine = Engine(settings(), store, task=dispatch_task)
    loop.run(engine.start(), timeout=120)
    yield types.SimpleNamespace(loop=loop, store=store, engine=engine, run=loop.run, call=loop.call)
    loop.run(engine.close(), timeout=60)
    loop.stop()
    store.db.close()


def submit(env, request: dict) -> str:
    row, _ = env.store.create(orjson.dumps(request), "hash")
    env.run(env.engine.submit(row.id))
    return row.id


def fake(seconds: float = 0.0, **flags) -> dict:
    return {"fake": {"seconds": seconds, **flags}}


def wait_until(predicate, timeout: float = PATIENCE, interval: float = 0.02):
    return _wait_until(predicate, timeout, interval)


def finish(env, job_id: str):
    assert env.run(env.engine.wait(job_id, PATIENCE), timeout=PATIENCE + 5)
    return env.store.get(job_id)


def running(env, job_id: str):
    return wait_until(lambda: (r := env.store.get(job_id)).status == "running" and r)


def idle_workers(env) -> bool:
    processing = env.call(env.engine.client.processing)
    return not any(processing.values())


# -- results ---------------------------------------------------------------------------------------


def test_job_result_is_stored(env):
    job_id = submit(env, fake(0.05))
    row = finish(env, job_id)
    assert (row.status, row.outcome, row.attempts, row.progress) == ("succeeded", "completed", 1, 1.0)
    assert stored_arrays(env.store, job_id)["job"] == job_id


def test_small_simulation_matches_calling_the_core_directly(env):
    from threadpoolctl import threadpool_limits

    from service.build import build_run
    from service.dynamics.simulate import simulate
    from service.schemas import GD_HIERARCHY_EXAMPLE, SimulationRequest

    job_id = submit(env, GD_HIERARCHY_EXAMPLE)
    row = finish(env, job_id)
    assert row.status == "succeeded", row.error
    spec = build_run(SimulationRequest.model_validate(GD_HIERARCHY_EXAMPLE))
    with threadpool_limits(1):  # the workers run BLAS on one thread: same summation order, same bits
        traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    assert stored_blob(env.store, job_id) == codec.pack(codec.arrays_of(traj))  # the same bits
    assert row.outcome == traj.outcome


def test_request_the_core_rejects_fails_with_the_field_named(env):
    from service.schemas import CORRELATIONS_EXAMPLE

    request = orjson.loads(orjson.dumps(CORRELATIONS_EXAMPLE))
    request["data"]["sigma11"] = [[1.0, 0.5], [0.0, 1.0]]  # not symmetric: only build_simulation sees it
    row = finish(env, submit(env, request))
    assert row.status == "failed"
    assert row.error["status"] == 422
    assert row.error["errors"][0]["field"] == ["data", "sigma11"]


def test_task_failure_records_its_problem(env):
    row = finish(env, submit(env, fake(fail=True)))
    assert row.status == "failed"
    assert row.error["errors"] == [{"field": ["training", "steps"]}]


def test_crashing_task_marks_the_job_failed_with_the_reason(env):
    row = finish(env, submit(env, fake(crash=True)))
    assert row.status == "failed"
    assert row.error["status"] == 500 and "ZeroDivisionError: asked to crash" in row.error["detail"]


def test_large_request_is_scattered_and_runs(env):
    request = fake(0.0)
    request["padding"] = "x" * (2 << 20)  # above SCATTER_BYTES
    assert finish(env, submit(env, request)).status == "succeeded"


# -- progress --------------------------------------------------------------------------------------


def test_progress_reaches_the_store(env):
    job_id = submit(env, fake(60.0))
    seen = wait_until(lambda: 0 < (p := env.store.get(job_id).progress) < 1 and p)
    assert env.store.get(job_id).status == "running"
    assert 0 < seen < 0.5  # a few seconds into a 60 s run
    env.run(env.engine.cancel(job_id))
    finish(env, job_id)


# -- cancel ----------------------------------------------------------------------------------------


def test_cancelled_running_job_stops_within_two_seconds(env):
    job_id = submit(env, fake(60.0))
    running(env, job_id)
    assert env.run(env.engine.cancel(job_id))
    assert env.store.get(job_id).status == "cancelled"
    # The worker really stopped: the scheduler sees no task processing any more.
    wait_until(lambda: idle_workers(env), timeout=CANCEL_WITHIN)
    assert finish(env, job_id).status == "cancelled"


def test_cancelled_queued_job_never_starts(env):
    blockers = [submit(env, fake(60.0)) for _ in range(2)]  # both workers busy
    for job_id in blockers:
        running(env, job_id)
    queued = submit(env, fake(0.0))
    assert env.run(env.engine.cancel(queued))
    for job_id in blockers:
        env.run(env.engine.cancel(job_id))
    for job_id in blockers:
        finish(env, job_id)
    row = finish(env, queued)
    assert (row.status, row.attempts) == ("cancelled", 0)
    wait_until(lambda: idle_workers(env))


def long_gd_request() -> dict:
    """A real GD run of 10⁷ steps (many seconds) that stays on the plateau (η = 10⁻⁷, t = 1), so it neither
    converges early nor finishes before the test cancels it."""
    from service.schemas import GD_HIERARCHY_EXAMPLE

    return {**GD_HIERARCHY_EXAMPLE, "training": {"method": "gd", "learning_rate": 1e-7, "steps": 10_000_000}}


def test_cancelled_real_simulation_stops_within_two_seconds(env):
    job_id = submit(env, long_gd_request())
    # progress > 0: the run is inside the core's stepping loop, where the hooks are called
    wait_until(lambda: env.store.get(job_id).progress > 0)
    assert env.run(env.engine.cancel(job_id))
    wait_until(lambda: idle_workers(env), timeout=CANCEL_WITHIN)
    assert finish(env, job_id).status == "cancelled"


def test_cancel_of_a_finished_or_unknown_job_returns_false(env):
    job_id = submit(env, fake(0.0))
    finish(env, job_id)
    assert not env.run(env.engine.cancel(job_id))
    assert not env.run(env.engine.cancel("0" * 32))
    assert env.store.get(job_id).status == "succeeded"


def test_wait_returns_false_when_the_job_is_still_running(env):
    job_id = submit(env, fake(60.0))
    assert not env.run(env.engine.wait(job_id, 0.2))
    env.run(env.engine.cancel(job_id))
    finish(env, job_id)


# -- failures of the machinery ---------------------------------------------------------------------------


def test_job_survives_its_worker_being_killed(env):
    job_id = submit(env, fake(1.0))
    running(env, job_id)
    client = env.engine.client
    processing = env.call(client.processing)
    (address,) = [a for a, keys in processing.items() if keys]
    pid = env.call(lambda: client.run(os.getpid, workers=[address]))[address]
    os.kill(pid, signal.SIGKILL)
    row = finish(env, job_id)
    assert (row.status, row.attempts) == ("succeeded", 2)
    # the nanny restarts the worker: the cluster is back to full size
    wait_until(lambda: len(env.call(client.scheduler.identity)["workers"]) == 2)


def workers_profiling(env) -> dict[str, bool]:
    """Per worker: is one of Dask's sampling-profiler callbacks present and running?"""
    def profiling(dask_worker) -> bool:
        return any(pc.is_running() for name, pc in dask_worker.periodic_callbacks.items()
                   if name in ("profile", "profile-cycle"))

    return env.call(lambda: env.engine.client.run(profiling))


def test_embedded_workers_run_without_dasks_sampling_profiler_also_after_a_restart(env):
    client = env.engine.client
    assert set(workers_profiling(env).values()) == {False}
    address = next(iter(env.call(client.scheduler.identity)["workers"]))
    pid = env.call(lambda: client.run(os.getpid, workers=[address]))[address]
    os.kill(pid, signal.SIGKILL)
    # the nanny starts a fresh worker process (new address); the plugin is set up on it as it joins
    wait_until(lambda: address not in (ws := env.call(client.scheduler.identity)["workers"]) and len(ws) == 2)
    profiling = wait_until(lambda: (p := workers_profiling(env)) and len(p) == 2 and p)
    assert set(profiling.values()) == {False}, profiling


def test_embedded_scheduler_hands_each_worker_thread_one_task_at_a_time(env):
    from service.jobs.cluster import WORKER_SATURATION

    assert WORKER_SATURATION == 1.0
    assert env.engine.cluster.scheduler.WORKER_SATURATION == WORKER_SATURATION


def housekeeping_intervals(server) -> dict[str, float]:
    """Seconds between a Dask server's periodic wake-ups: loop-health tick, psutil monitor, memory check."""
    return {name: pc.callback_time / 1000 for name, pc in server.periodic_callbacks.items()
            if name in ("tick", "monitor", "memory_monitor")}


def test_embedded_cluster_wakes_its_processes_at_most_twice_a_second(env):
    workers = env.call(lambda: env.engine.client.run(lambda dask_worker: housekeeping_intervals(dask_worker)))
    servers = {"scheduler": housekeeping_intervals(env.engine.cluster.scheduler), **workers,
               **{f"nanny {k}": housekeeping_intervals(n) for k, n in env.engine.cluster.workers.items()}}
    assert len(workers) == 2 and all(servers.values())
    assert all(seconds >= 0.5 for intervals in servers.values() for seconds in intervals.values()), servers


def test_an_operators_dask_variable_wins_over_the_quiet_housekeeping(monkeypatch):
    from service.jobs.cluster import QUIET_HOUSEKEEPING, quiet_housekeeping

    monkeypatch.setenv("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "20ms")
    chosen = quiet_housekeeping()
    assert "distributed.admin.tick.interval" not in chosen
    assert chosen == {k: v for k, v in QUIET_HOUSEKEEPING.items() if k != "distributed.admin.tick.interval"}


def test_workers_run_blas_on_one_thread(env):
    from threadpoolctl import threadpool_info

    finish(env, submit(env, fake(0.0)))  # the task pins the pools on its first run in a worker

    def blas_threads():
        return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

    per_worker = env.call(lambda: env.engine.client.run(blas_threads))
    assert per_worker and all(threads == [1] for threads in per_worker.values())


def test_reconcile_submits_a_stored_job_that_was_never_submitted(env):
    """A job stored but not handed to the cluster (its submit failed) runs at the next reconcile pass
    (every RECONCILE_SECONDS), not only after a restart."""
    row, _ = env.store.create(orjson.dumps(fake(0.0)), "hash")
    assert env.run(env.engine.reconcile()) >= 1
    assert finish(env, row.id).status == "succeeded"
    assert env.run(env.engine.reconcile()) == 0  # nothing left to submit


def test_workers_keep_glibc_adaptive_malloc_thresholds(env):
    """Dask's default MALLOC_TRIM_THRESHOLD_ (pinning glibc's mmap threshold costs sweep throughput,
    docs/performance.md#processes) is not in the embedded workers' environment."""
    per_worker = env.call(lambda: env.engine.client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_"))
    assert per_worker and all(value is None for value in per_worker.values())


def test_start_resubmits_unfinished_jobs_to_an_external_scheduler(env, tmp_path):
    """A restarted API (here: a second engine on another store, pointed at the running cluster as
    DLNSIM_SCHEDULER) runs the jobs a crash left queued or running."""
    store = JobStore(Database(tmp_path / "jobs.sqlite3"))
    queued, _ = store.create(orjson.dumps(fake(0.0)), "h")
    was_running, _ = store.create(orjson.dumps(fake(0.1)), "h")
    store.mark_running(was_running.id)
    engine = Engine(settings(scheduler=env.engine.cluster.scheduler_address), store, task=dispatch_task)
    try:
        env.run(engine.start())
        assert env.run(engine.ready())
        for job_id in (queued.id, was_running.id):
            assert env.run(engine.wait(job_id, PATIENCE), timeout=PATIENCE + 5)
        assert store.get(queued.id).status == "succeeded"
        assert (store.get(was_running.id).status, store.get(was_running.id).attempts) == ("succeeded", 2)
    finally:
        env.run(engine.close())
        store.db.close()
    assert not env.run(engine.ready())


def test_ready_when_the_cluster_has_workers(env):
    assert env.run(env.engine.ready())


def test_future_cancelled_by_dask_itself_is_resubmitted(env, caplog):
    """Dask cancels futures on its own, e.g. when the client loses the scheduler: not a user cancel."""
    job_id = submit(env, fake(0.5))
    running(env, job_id)
    future = env.engine._futures[job_id]
    with caplog.at_level(logging.WARNING, logger="dlnsim.jobs"):
        env.call(lambda: env.engine.client.cancel([future], reason="scheduler-connection-lost"))
        row = finish(env, job_id)
    assert row.status == "succeeded"
    assert f"Dask cancelled job {job_id}'s future: resubmitting" in caplog.messages


# -- warm-up -----------------------------------------------------------------------------------------


def compiled_signatures() -> dict[str, list[str]]:
    """Run on a worker: every numba kernel of the service loaded in it, with its compiled signatures."""
    import sys

    import numba

    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("service.") and module is not None:
            for value in vars(module).values():
                if isinstance(value, numba.core.registry.CPUDispatcher):
                    found[f"{value.__module__}.{value.__name__}"] = sorted(map(str, value.signatures))
    return found


def warm(env, every_kernel: bool = False) -> tuple[int, int]:
    """(warm workers, workers) once both workers have warmed up (``every_kernel``: their background tier too)."""
    return wait_until(lambda: (w := env.run(env.engine.warm_workers(every_kernel))) and w[0] == w[1] == 2 and w,
                      timeout=240)


def test_every_worker_warms_up_and_then_runs_a_gd_job_without_compiling(env):
    from service.jobs.tasks import simulate_request

    # every kernel: a background warm-up still compiling would change the signatures the test compares
    assert warm(env, every_kernel=True) == (2, 2)
    client = env.engine.client
    before = env.call(lambda: client.run(compiled_signatures))
    assert all(len(kernels) >= 5 for kernels in before.values()), before  # the kernels are loaded
    request = orjson.dumps({"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                            "training": {"method": "gd", "learning_rate": 0.05, "steps": 200}})
    for address in before:
        outcome, _ = env.call(lambda a=address: client.submit(simulate_request, request, workers=[a], pure=False))
        assert outcome == "completed"
    assert env.call(lambda: client.run(compiled_signatures)) == before


def test_a_restarted_worker_warms_up_again(env):
    client = env.engine.client
    warm(env)
    address = next(iter(env.call(client.scheduler.identity)["workers"]))
    pid = env.call(lambda: client.run(os.getpid, workers=[address]))[address]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: address not in (ws := env.call(client.scheduler.identity)["workers"]) and len(ws) == 2)
    assert warm(env) == (2, 2)
    assert all(len(k) >= 5 for k in env.call(lambda: client.run(compiled_signatures)).values())


# -- sharing cores -------------------------------------------------------------------------------------


def share_while_holding(seconds: float) -> tuple[int, int, float | None]:
    """Run on a worker as a task would: hold a slot of the host's ledger for ``seconds``; (the share half-way,
    the host's cores, the cores other processes kept busy meanwhile)."""
    import time

    from service.jobs.cores import host_cores
    from service.jobs.worker import shared_cores

    with shared_cores() as blas_threads:
        time.sleep(seconds / 2)
        share = blas_threads()
        time.sleep(seconds / 2)
    return share, host_cores(), blas_threads.__self__.load.estimate


def test_a_lone_job_gets_every_idle_core_of_the_host_and_two_jobs_share_them(env):
    client = env.engine.client
    workers = sorted(env.call(client.scheduler.identity)["workers"])
    wait_until(lambda: idle_workers(env))
    share, cores, others = env.call(lambda: client.submit(share_while_holding, 0.2, workers=workers[:1], pure=False))
    # every core, less those the rest of the machine (this test process, the scheduler) kept busy, rounded
    assert share == max(1, min(cores, round(cores - others)))
    both = [client.submit(share_while_holding, 3.0, workers=[w], pure=False) for w in workers]
    shares = [env.call(lambda f=f: f)[0] for f in both]
    # both held their slots at the half-way point: the cores split between them
    assert sorted(shares) == sorted(max(1, n) for n in (cores // 2, cores - cores // 2))
