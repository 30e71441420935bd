"""The engine: runs stored jobs on Dask and writes what becomes of them back to the store.

    engine = Engine(settings, store)
    await engine.start()          # embedded LocalCluster, or Client(settings.scheduler)
    await engine.submit(job_id)   # the job is already in the store (queued)
    finished = await engine.wait(job_id, timeout=10)
    await engine.close()

Everything here runs on the app's event loop; the store is blocking SQLite, so every store call goes
through ``asyncio.to_thread``. Workers compress results, so the loop only moves bytes.

What never loses a job:
* the store is written before ``submit`` is called, and on ``start`` every job left queued or running
  (a crash, a restart) is submitted again; runs are seeded, so a rerun gives the same answer;
* a worker process that dies mid-job (OOM, SIGKILL) makes the scheduler reschedule the task on
  another (or the restarted) worker, up to ``distributed.scheduler.allowed-failures`` (3) deaths;
  then the job fails with a reason (KilledWorker);
* any other exception while running or recording a job marks it failed with the reason;
* a future cancelled by Dask rather than by us (lost scheduler connection) is resubmitted.

Cancel: the store says ``cancelled`` at once (the guarded transition keeps it so if the worker
finishes anyway), the job's cancel Event is set so the running task stops at its next check (~0.2 s),
and a job still queued has its future cancelled so it never starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from .database import StorageFullError
from .store import JobStore
from .task import (
    PROGRESS_TOPIC,
    JobCancelled,
    JobFailed,
    cancel_event_name,
    internal_problem,
    run_simulation,
    task_key,
)

log = logging.getLogger("dlnsim.jobs")

# Requests larger than this are scattered to the workers instead of riding in the task graph
# through the scheduler (Dask warns about graphs over ~10 MB).
SCATTER_BYTES = 1 << 20
# How often buffered progress is written to the store (one transaction for all running jobs).
PROGRESS_FLUSH_SECONDS = 1.0
# How long the cancel flag of a job whose future was cancelled while queued stays set, for the
# race where the task had just started; a started task sees the flag within ~0.2 s.
CANCEL_FLAG_GRACE_SECONDS = 10.0
# Futures cancelled by Dask itself (not by us) are resubmitted this many times before failing.
MAX_RESUBMITS = 5
# How often the engine looks for stored jobs that are queued or running but not submitted (a submit that
# failed after the job was stored, a lost scheduler connection): they are submitted again, so no job
# waits for a restart.
RECONCILE_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 2.0
# Tasks the embedded scheduler hands a worker thread at a time (Dask's default is 1.1, i.e. 2 per thread).
# With one, a worker that finishes early takes the next chunk instead of the slower one holding two: on a
# 1,024-point (8,16,8) sweep in 32 chunks the idle tail of one of the two workers went from up to 0.27 s
# (two chunks) to at most one chunk; and a simulation submitted during a sweep waits for one running chunk,
# not also for a queued one. It costs a scheduler round trip (~3 ms on loopback) per task.
WORKER_SATURATION = 1.0
# While the store's disk is full, a finished job's outcome waits in memory and its write is retried this
# often (the job stays running in the store meanwhile; a restart would resubmit it, so nothing is lost).
STORAGE_FULL_RETRY_SECONDS = 2.0


async def write_when_space(write: Callable[..., Any], *args: Any, closing: Callable[[], bool], what: str,
                           **kwargs: Any) -> bool:
    """Run a blocking store write in a thread, retrying while the store is full (StorageFullError) until
    it succeeds (True) or ``closing()`` (False). Any other exception propagates."""
    warned = False
    while True:
        try:
            await asyncio.to_thread(write, *args, **kwargs)
            return True
        except StorageFullError as exc:
            if closing():
                return False
            if not warned:
                log.warning("storage is full: %s is kept in memory and stored once space is freed (%s)", what, exc)
                warned = True
            await asyncio.sleep(STORAGE_FULL_RETRY_SECONDS)


def worker_environment(blas_threads: int | str) -> dict[str, str | None]:
    """Environment of the embedded workers, set before they spawn (BLAS reads it when it loads).

    BLAS pools start with one thread ("auto": a job's stepping then takes its share of the cores, see
    service/jobs/cores.py; a number: that many threads, fixed).
    None unsets a variable of Dask's default ``distributed.nanny.pre-spawn-environ``: its
    MALLOC_TRIM_THRESHOLD_=65536 switches off glibc's adaptive mmap threshold, so every array over 128 KiB
    (a trajectory's record arrays) is a fresh mmap with page faults on first touch. Measured on a 256-point
    (8,16,8) sweep chunk: 1.68M vs 1.97M simulation-steps/s in one process (−15 %), the gap between a Dask
    worker and the same work in-process. Our workers hold no long-lived data that trimming would return.
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
    for a dashboard the embedded cluster does not serve (dashboard_address=None). Measured on a 2-worker
    sweep of (8,16,8) nets: the worker processes used 1.82 CPUs, their task threads 1.73; without it the
    sweep ran 2-3 % faster (bench/sweeps.py).
    """
    for name in ("profile", "profile-cycle"):
        callback = worker.periodic_callbacks.pop(name, None)
        if callback is not None:
            callback.stop()


def embedded_worker_plugin(nice: int):
    """A Dask WorkerPlugin set up on each embedded worker, also one restarted after a crash: lowers its
    threads to niceness ``nice`` (``renice_threads``) and stops its sampling profiler (``stop_sampling_profiler``).

    Why renice: on a machine the API shares with its embedded workers (by default one per core), a busy
    worker otherwise takes an equal share of a core from the API, and status reads queue behind numerics
    (bench/load.py, 50 polling clients, both cores' workers busy: status-read p99 33.6 ms at nice 0, 15.2 ms
    at nice 10, for 8 % less worker CPU). At nice 10 a worker still gets every core the API leaves idle.
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
            renice_threads(self.nice)
            stop_sampling_profiler(worker)

    return EmbeddedWorker(nice)


# A worker's warm-up state, kept as an attribute of the Dask Worker object: False while it runs, True after.
WARM_ATTRIBUTE = "dlnsim_warm"


def warm_up_plugin():
    """A Dask WorkerPlugin that warms each worker up (``service.jobs.warmup.warm_up``: compiles or loads
    every GD kernel, imports what a job imports) as it joins, restarted workers included.

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
            if getattr(worker, WARM_ATTRIBUTE, False):
                return
            setattr(worker, WARM_ATTRIBUTE, False)
            from service.jobs.warmup import warm_up

            try:
                seconds = await asyncio.to_thread(warm_up)
                log.info("worker %s warmed up in %.1f s", worker.address, seconds)
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("warming up worker %s failed", worker.address)
            setattr(worker, WARM_ATTRIBUTE, True)

    return WarmUp()


def worker_is_warm(dask_worker) -> bool:
    """Run on a worker (``Client.run``): has it finished its warm-up?"""
    return bool(getattr(dask_worker, WARM_ATTRIBUTE, False))


class Engine:
    """Submits stored jobs to Dask and records their progress, results, failures and cancels."""

    def __init__(self, settings: Any, store: JobStore, *,
                 task: Callable[[str, bytes], tuple[str, bytes]] = run_simulation) -> None:
        self.settings = settings
        self.store = store
        self._task = task
        self._cluster = None
        self._client = None
        self._futures: dict[str, Any] = {}
        self._submitting: set[str] = set()
        self._watchers: dict[str, asyncio.Task] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._flagged: set[str] = set()          # jobs whose cancel Event we set
        self._pending_clear: set[str] = set()    # ... and will clear after a grace period
        self._cancelled_by_us: set[str] = set()
        self._resubmits: dict[str, int] = {}
        self._progress: dict[str, float] = {}    # buffered until the next flush
        self._background: set[asyncio.Task] = set()
        self._flusher: asyncio.Task | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def client(self):
        return self._client

    @property
    def cluster(self):
        return self._cluster

    async def start(self) -> None:
        """Connect (or start the embedded cluster), subscribe to progress, resubmit unfinished jobs."""
        from distributed import Client

        scheduler = getattr(self.settings, "scheduler", None)
        if scheduler:
            self._client = await Client(scheduler, asynchronous=True, set_as_default=False)
        else:
            self._cluster = await self._start_local_cluster()
            self._client = await Client(self._cluster, asynchronous=True, set_as_default=False)
            # Embedded workers share this machine with the API: they run at lower CPU priority, without
            # the sampling profiler (an external cluster's workers are its operator's business).
            nice = int(getattr(self.settings, "worker_nice", 0) or 0)
            await self._client.register_plugin(
                embedded_worker_plugin(min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19)))
        # In the background: registering waits for every worker's warm-up, and /readyz must answer meanwhile.
        self._spawn(self._register_warm_up())
        self._client.subscribe_topic(PROGRESS_TOPIC, self._on_event)
        self._flusher = asyncio.create_task(self._flush_progress_forever())
        await self.reconcile()
        self._spawn(self._reconcile_forever())

    async def _register_warm_up(self) -> None:
        try:
            await self._client.register_plugin(warm_up_plugin())
        except Exception:  # noqa: BLE001 - jobs still run, cold: they compile their kernels themselves
            log.exception("registering the worker warm-up failed")

    async def reconcile(self) -> int:
        """Submit every stored job that is queued or running but has no task on the cluster (after a
        restart, a failed submit, a lost connection); returns how many."""
        count = 0
        for row in await asyncio.to_thread(self.store.unfinished):
            if row.id in self._futures or self._closing:
                continue
            log.info("resubmitting unfinished job %s (%s)", row.id, row.status)
            await self._submit_row(row)
            count += 1
        return count

    async def _reconcile_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - e.g. the store briefly unreadable: try again next round
                log.exception("looking for unsubmitted jobs failed")

    async def _start_local_cluster(self):
        import dask
        from distributed import LocalCluster

        workers = getattr(self.settings, "workers", None) or os.cpu_count() or 1
        pre_spawn = pre_spawn_environ(getattr(self.settings, "blas_threads", "auto"))
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn,
                              "distributed.scheduler.worker-saturation": WORKER_SATURATION}):
            return await LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, asynchronous=True,
                host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                # The scheduler always serves HTTP (health, metrics); a free port instead of 8787
                # keeps it from colliding with the user's own Dask dashboard.
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.WARNING)

    async def close(self) -> None:
        """Stop watching and disconnect. Jobs still queued or running stay so in the store and are
        resubmitted by the next start."""
        self._closing = True
        tasks = [*self._watchers.values(), *self._background]
        if self._flusher is not None:
            tasks.append(self._flusher)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._flush_progress()
        self._futures.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.close()
        self._client = self._cluster = None

    async def ready(self) -> bool:
        """The scheduler answers and has at least one worker."""
        client = self._client
        if client is None or self._closing or client.status != "running":
            return False
        try:
            info = await asyncio.wait_for(client.scheduler.identity(n_workers=0), READY_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - any failure to answer means not ready
            return False
        return int(info.get("n_workers", 0)) >= 1

    async def warm_workers(self) -> tuple[int, int]:
        """(workers connected, workers that finished their warm-up); (0, 0) when the cluster does not answer."""
        client = self._client
        if client is None or self._closing or client.status != "running":
            return 0, 0
        try:
            warm = await asyncio.wait_for(client.run(worker_is_warm, on_error="return"), READY_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - any failure to answer means no worker known warm
            return 0, 0
        return len(warm), sum(value is True for value in warm.values())

    # -- jobs --------------------------------------------------------------------------------------

    async def submit(self, job_id: str) -> None:
        """Run a stored, queued job (no-op if it is already submitted or finished)."""
        if job_id in self._futures:
            return
        row = await asyncio.to_thread(self.store.get, job_id)
        if row is None or row.terminal:
            return
        await self._submit_row(row)

    async def _submit_row(self, row) -> None:
        job_id = row.id
        # _submitting: a submit awaiting its scatter must not be doubled by a concurrent one (the API's and
        # a reconcile pass's), which would start a second watcher
        if job_id in self._futures or job_id in self._submitting or self._client is None:
            return
        self._submitting.add(job_id)
        try:
            await self._submit_new(job_id, row)
        finally:
            self._submitting.discard(job_id)

    async def _submit_new(self, job_id: str, row) -> None:
        self._done.setdefault(job_id, asyncio.Event())
        try:
            request: Any = row.request
            if len(request) > SCATTER_BYTES:
                request = await self._client.scatter(request, hash=False)
            # A fixed key: a new client of a still-running external scheduler re-attaches to the
            # task instead of running it twice. retries=0: failures are deterministic (seeded);
            # worker deaths are retried by the scheduler (allowed-failures), not by this.
            future = self._client.submit(self._task, job_id, request, key=task_key(job_id),
                                         retries=0, pure=False)
        except Exception as exc:  # noqa: BLE001 - never lose a job silently
            log.exception("submitting job %s failed", job_id)
            await self._record(self.store.fail, job_id,
                               internal_problem(f"The job could not be submitted: {_describe(exc)}"))
            self._done.pop(job_id).set()
            return
        self._futures[job_id] = future
        self._watchers[job_id] = asyncio.create_task(self._watch(job_id, future), name=f"watch-{job_id}")

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it is unknown or already finished."""
        previous = await asyncio.to_thread(self.store.mark_cancelled, job_id)
        if not previous:
            return False
        self._cancelled_by_us.add(job_id)
        await self._set_cancel_flag(job_id)
        future = self._futures.get(job_id)
        if future is not None and previous == "queued":
            # Not started: drop it from the queue. The flag stays set for a grace period in case
            # it started just now (then it stops at its first check).
            with contextlib.suppress(Exception):
                await self._client.cancel([future], reason="cancelled by the user")
            self._spawn(self._clear_cancel_flag_later(job_id))
        return True

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the job to finish; True if it is finished (in the store)."""
        event = self._done.get(job_id)
        if event is not None and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        row = await asyncio.to_thread(self.store.get, job_id)
        return row is not None and row.terminal

    # -- completion ----------------------------------------------------------------------------------

    async def _watch(self, job_id: str, future) -> None:
        resubmit = False
        try:
            try:
                outcome, blob = await future
            except asyncio.CancelledError:
                raise  # the engine is closing
            except concurrent.futures.CancelledError:
                # Dask's FutureCancelledError: by cancel() (a queued job), or by Dask itself (e.g.
                # the connection to the scheduler was lost), in which case the job must run again.
                resubmit = job_id not in self._cancelled_by_us
                if resubmit:
                    log.warning("Dask cancelled job %s's future: resubmitting", job_id)
            except JobCancelled:
                await self._record(self.store.mark_cancelled, job_id)
            except JobFailed as exc:
                await self._record(self.store.fail, job_id, exc.problem)
            except Exception as exc:  # noqa: BLE001 - never lose a job: record why it ended
                await self._record(self.store.fail, job_id, _failure_problem(exc))
            else:
                await self._record(self.store.finish, job_id, blob, outcome)
        finally:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]
            self._watchers.pop(job_id, None)
        if resubmit:
            self._spawn(self._resubmit(job_id))  # tracked, so close() cancels its back-off sleep
            return
        if job_id in self._flagged and job_id not in self._pending_clear:
            await self._clear_cancel_flag(job_id)
        self._cancelled_by_us.discard(job_id)
        self._resubmits.pop(job_id, None)
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()

    async def _resubmit(self, job_id: str) -> None:
        count = self._resubmits.get(job_id, 0) + 1
        self._resubmits[job_id] = count
        if count > MAX_RESUBMITS:
            await self._record(self.store.fail, job_id, internal_problem(
                f"The cluster dropped the job's task {count} times (lost scheduler connection?)"))
            event = self._done.pop(job_id, None)
            if event is not None:
                event.set()
            return
        await asyncio.sleep(min(2.0 ** (count - 1), 10.0))
        if not self._closing:
            await self.submit(job_id)

    async def _record(self, write: Callable[..., Any], job_id: str, *args: Any, **kwargs: Any) -> None:
        """Run a store write in a thread (waiting for space if the disk is full); if it raises, try to
        record that as the job's failure."""
        try:
            await write_when_space(write, job_id, *args, closing=lambda: self._closing,
                                   what=f"the outcome of job {job_id}", **kwargs)
        except Exception as exc:  # noqa: BLE001
            log.exception("recording the end of job %s failed", job_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.fail, job_id, internal_problem(
                    f"The job's result could not be stored: {_describe(exc)}"))

    # -- cancel flags ---------------------------------------------------------------------------------

    def _event(self, job_id: str):
        from distributed import Event

        return Event(cancel_event_name(job_id), client=self._client)

    async def _set_cancel_flag(self, job_id: str) -> None:
        if self._client is None:
            return
        self._flagged.add(job_id)
        try:
            await self._event(job_id).set()
        except Exception:  # noqa: BLE001 - the store already says cancelled; the run is wasted work
            log.exception("setting the cancel flag of job %s failed", job_id)

    async def _clear_cancel_flag(self, job_id: str) -> None:
        # A set Event lives on the scheduler until cleared; clearing frees it.
        self._flagged.discard(job_id)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._event(job_id).clear()

    async def _clear_cancel_flag_later(self, job_id: str) -> None:
        self._pending_clear.add(job_id)
        try:
            await asyncio.sleep(CANCEL_FLAG_GRACE_SECONDS)
            await self._clear_cancel_flag(job_id)
        finally:
            self._pending_clear.discard(job_id)

    # -- progress -----------------------------------------------------------------------------------

    def _on_event(self, event: tuple[float, Any]) -> None:
        """Handler of PROGRESS_TOPIC, called on the event loop by the client: only buffers."""
        _, msg = event
        if not isinstance(msg, dict) or not isinstance(msg.get("job"), str):
            return
        job_id = msg["job"]
        if msg.get("started"):
            self._progress.pop(job_id, None)
            self._spawn(self._record_started(job_id))
        elif isinstance(msg.get("progress"), int | float):
            self._progress[job_id] = float(msg["progress"])

    async def _record_started(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.mark_running, job_id)

    async def _flush_progress(self) -> None:
        pending, self._progress = self._progress, {}
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.set_progress_many, pending)

    async def _flush_progress_forever(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_FLUSH_SECONDS)
            await self._flush_progress()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure_problem(exc: BaseException) -> dict[str, Any]:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return internal_problem(
            "The worker process running this simulation died on every retry (out of memory?): "
            "ask for fewer record points or smaller matrices, or give the workers more memory.")
    return internal_problem(f"The simulation crashed: {_describe(exc)}")
