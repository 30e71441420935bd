"""The Dask cluster the engines run on: the embedded LocalCluster (its workers' environment, priority, profiler)
or a client of an external scheduler, and the worker plugins both get.

    cluster, client = await connect(settings)     # cluster None for an external scheduler
    await register_plugins(client, embedded=cluster is not None, nice=settings.worker_nice)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any

from service.settings import Settings

log = logging.getLogger("dlnsim.jobs")

# Tasks the embedded scheduler hands a worker thread at a time (Dask's default is 1.1, i.e. 2 per thread). With
# one, a worker that finishes early takes the next chunk instead of the slower one holding two, so a sweep's idle
# tail is at most one chunk and a simulation submitted during a sweep waits for one running chunk only
# (bench/results.md). It costs a scheduler round trip per task.
WORKER_SATURATION = 1.0

# Dask's housekeeping in the embedded cluster's processes (the API's scheduler and nannies, each worker), woken less
# often: every wake-up of an event loop takes a core from a job whose BLAS threads use them all (a 2-thread GEMM
# then waits at its barrier). Dask's defaults, a loop-health tick every 20 ms per server, psutil samples every
# 500 ms, a nanny reading its worker's memory every 100 ms, kept an idle service at 0.08 of a core; these at 0.015
# (docs/performance.md#housekeeping). The memory check stays well under a second: the nanny's kill at 95 %. An
# operator's DASK_* variable for one of these keys wins (``quiet_housekeeping``).
QUIET_HOUSEKEEPING = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.worker.memory.monitor-interval": "500ms",
}


def quiet_housekeeping() -> dict[str, object]:
    """``QUIET_HOUSEKEEPING`` less the keys the operator set through ``DASK_*`` variables (read as Dask reads them)."""
    import dask

    chosen = dask.config.collect_env()
    return {key: value for key, value in QUIET_HOUSEKEEPING.items()
            if dask.config.get(key, default=None, config=chosen) is None}


def worker_environment(blas_threads: int | str) -> dict[str, str | None]:
    """Environment of the embedded workers, set before they spawn (BLAS reads it when it loads).

    BLAS pools start with one thread ("auto": a job's stepping then takes its share of the cores, see
    service/jobs/cores.py; a number: that many threads, fixed).
    None unsets a variable of Dask's default ``distributed.nanny.pre-spawn-environ``: its
    MALLOC_TRIM_THRESHOLD_=65536 switches off glibc's adaptive mmap threshold, so every array over 128 KiB
    (a trajectory's record arrays) is a fresh mmap with page faults on first touch. On a sweep of small nets
    that was most of the gap between a Dask worker and the same work in-process
    (docs/performance.md#processes). Our workers hold no long-lived data that trimming would return.
    """
    n = "1" if blas_threads == "auto" else str(int(blas_threads))
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "NUMBA_NUM_THREADS": n, "DLNSIM_BLAS_THREADS": str(blas_threads), "MALLOC_TRIM_THRESHOLD_": None}


def pre_spawn_environ(blas_threads: int | str) -> dict[str, str | None]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` with ``worker_environment`` laid over it (the value to
    set while a LocalCluster starts: the nanny reads it when it is created and keeps it for restarts)."""
    import dask

    return {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **worker_environment(blas_threads)}


def renice_threads(nice: int) -> int:
    """Lower every thread of this process to niceness ``nice`` (never raising a priority); returns how
    many threads changed. Linux niceness is per thread and a new thread inherits its creator's, so the
    threads a worker starts later (its task thread) run at ``nice`` too. Elsewhere, the process's."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    changed = 0
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
    return changed


def stop_sampling_profiler(worker) -> None:
    """Stop a Dask worker's statistical profiler (its "profile" and "profile-cycle" periodic callbacks).

    Why: every 10 ms it takes the GIL on the worker's event-loop thread and walks the task thread's stack,
    for a dashboard the embedded cluster does not serve (dashboard_address=None). Without it a sweep of small
    nets runs a few per cent faster (bench/sweeps.py; docs/performance.md#processes).
    """
    for name in ("profile", "profile-cycle"):
        callback = worker.periodic_callbacks.pop(name, None)
        if callback is not None:
            callback.stop()


def embedded_worker_plugin(nice: int):
    """A Dask WorkerPlugin set up on each embedded worker, also one restarted after a crash: lowers its
    threads to niceness ``nice`` (``renice_threads``) and stops its sampling profiler (``stop_sampling_profiler``).

    Why renice: on a machine the API shares with its embedded workers (by default one per core), a busy
    worker otherwise takes an equal share of a core from the API, and status reads queue behind numerics: at
    nice 10 their p99 under load is about half that at nice 0, for a little less worker CPU (bench/load.py;
    docs/performance.md#load). At nice 10 a worker still gets every core the API leaves idle.
    A plugin rather than configuration: the nanny hands its worker a snapshot of Dask's configuration, so a
    setting would have to be in place when each nanny is created; a plugin registered with the scheduler is
    set up on every worker that joins, restarted ones included.
    Defined here (not at module level) so importing the engine does not import distributed; cloudpickle
    ships the class by value and the functions it calls by reference.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class EmbeddedWorker(WorkerPlugin):
        idempotent = True
        name = "dlnsim-embedded-worker"

        def __init__(self, nice: int) -> None:
            self.nice = nice

        def setup(self, worker) -> None:
            from service.jobs.quiet_logs import install_worker_log_filter

            renice_threads(self.nice)
            stop_sampling_profiler(worker)
            install_worker_log_filter()

    return EmbeddedWorker(nice)


# A worker's warm-up state, kept as attributes of the Dask Worker object: False while it runs, True after; the first
# for the default jobs' kernels (what /readyz waits for), the second for every kernel (service/jobs/warmup.py).
WARM_ATTRIBUTE = "dlnsim_warm"
ALL_WARM_ATTRIBUTE = "dlnsim_all_warm"


def warm_up_plugin():
    """A Dask WorkerPlugin that warms each worker up as it joins, restarted workers included: the default jobs'
    kernels (``service.jobs.warmup.warm_up_eager``: compiles or loads them, imports what a job imports) before the
    worker counts as warm, then the others in the background (``warm_up_rest``: one worker process of the host at a
    time compiles, the others load from the cache).

    Why a plugin: a joining worker sets up the scheduler's plugins before it handles its first task, so
    a worker never starts a job cold. The warm-up runs in a thread: the worker's event loop keeps
    answering the scheduler (heartbeats) and ``warm_workers``, which /readyz asks. Registered on the
    embedded cluster and on an external one alike. A warm-up that fails is logged and the worker marked
    warm anyway: its jobs then report the error themselves.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        idempotent = True
        name = "dlnsim-warm-up"

        async def setup(self, worker) -> None:
            from service.jobs.quiet_logs import install_worker_log_filter

            install_worker_log_filter()  # a cancelled job is not a "Compute Failed" error (external workers too)
            if getattr(worker, WARM_ATTRIBUTE, False):
                return
            setattr(worker, WARM_ATTRIBUTE, False)
            setattr(worker, ALL_WARM_ATTRIBUTE, False)
            from service.jobs.warmup import warm_up_eager

            try:
                seconds = await asyncio.to_thread(warm_up_eager)
                log.info("worker %s warmed up in %.1f s", worker.address, seconds)
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("warming up worker %s failed", worker.address)
            setattr(worker, WARM_ATTRIBUTE, True)
            # a daemon thread, not the loop's executor: a worker closing meanwhile does not wait for the compile
            threading.Thread(target=self.rest, args=(worker,), name="dlnsim-warm-up-rest", daemon=True).start()

        @staticmethod
        def rest(worker) -> None:
            from service.jobs.warmup import warm_up_rest

            try:
                seconds = warm_up_rest()
                log.info("worker %s warmed up every other kernel in %.1f s", worker.address, seconds)
            except Exception:  # noqa: BLE001 - jobs that need them compile them themselves
                log.exception("warming up the other kernels of worker %s failed", worker.address)
            setattr(worker, ALL_WARM_ATTRIBUTE, True)

    return WarmUp()


def worker_is_warm(dask_worker) -> bool:
    """Run on a worker (``Client.run``): has it finished its warm-up of the default jobs' kernels?"""
    return bool(getattr(dask_worker, WARM_ATTRIBUTE, False))


def worker_is_all_warm(dask_worker) -> bool:
    """Run on a worker (``Client.run``): has it finished its warm-up of every kernel?"""
    return bool(getattr(dask_worker, ALL_WARM_ATTRIBUTE, False))


async def start_local_cluster(settings: Settings):
    """The embedded cluster: one single-threaded worker process per core (DLNSIM_WORKERS), on loopback."""
    import dask
    from distributed import LocalCluster

    workers = settings.workers or os.cpu_count() or 1
    # for the whole process, not for the block below: a nanny hands its worker processes the configuration it holds,
    # whose nested sections are Dask's own, so a worker it restarts after a block's end would get the defaults back
    dask.config.set(quiet_housekeeping())
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn_environ(settings.blas_threads),
                          "distributed.scheduler.worker-saturation": WORKER_SATURATION}):
        return await LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, asynchronous=True,
            host="127.0.0.1", scheduler_port=0, dashboard_address=None,
            # The scheduler always serves HTTP (health, metrics); a free port instead of 8787
            # keeps it from colliding with the user's own Dask dashboard.
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.WARNING)


async def connect(settings: Settings) -> tuple[Any, Any]:
    """(cluster, client): a client of DLNSIM_SCHEDULER (cluster None), or of a new embedded cluster whose workers
    run at lower CPU priority and without the sampling profiler (an external cluster's workers are its
    operator's business)."""
    from distributed import Client

    if settings.scheduler:
        return None, await Client(settings.scheduler, asynchronous=True, set_as_default=False)
    cluster = await start_local_cluster(settings)
    client = await Client(cluster, asynchronous=True, set_as_default=False)
    nice = int(settings.worker_nice or 0)
    await client.register_plugin(embedded_worker_plugin(min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19)))
    return cluster, client


async def register_warm_up(client) -> None:
    """Register the warm-up plugin: it waits for every worker's warm-up, so run it in the background."""
    try:
        await client.register_plugin(warm_up_plugin())
    except Exception:  # noqa: BLE001 - jobs still run, cold: they compile their kernels themselves
        log.exception("registering the worker warm-up failed")


async def disconnect(cluster, client) -> None:
    for thing in (client, cluster):
        if thing is not None:
            with contextlib.suppress(Exception):
                await thing.close()
