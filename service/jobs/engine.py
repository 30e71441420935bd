"""The engine: runs stored simulation jobs on Dask and writes what becomes of them back to the store.

    engine = Engine(settings, store)
    await engine.start()          # embedded LocalCluster, or Client(settings.scheduler) (``cluster``)
    await engine.submit(job_id)   # the job is already in the store (queued)
    finished = await engine.wait(job_id, timeout=10)
    await engine.close()

Everything here runs on the app's event loop; the store is blocking SQLite, so every store call goes through
``asyncio.to_thread``. Workers pack results, so the loop only moves bytes.

What never loses a job (beside what ``runner`` says for both engines):
* the store is written before ``submit`` is called, and on ``start`` (and every RECONCILE_SECONDS) every job left
  queued or running and not submitted by this process is submitted again; runs are seeded, so a rerun gives the
  same answer;
* any exception while running or recording a job marks it failed with the reason.

Cancel: the store says ``cancelled`` at once (the guarded transition keeps it so if the worker finishes anyway),
the job's cancel flag is set so the running task stops at its next check (~0.2 s), and a job still queued has its
future cancelled so it never starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from service.settings import Settings

from . import cluster
from .database import StorageFullError, StoreDamagedError
from .live import LiveFeeds
from .runner import SCATTER_BYTES, Runner, describe, failure_problem, insufficient_storage_problem, settle
from .store import JobRow, JobStore
from .tasks import run_simulation
from .worker import PROGRESS_TOPIC, STOPPED, internal_problem, task_key

log = logging.getLogger("dlnsim.jobs")

# How often buffered progress is written to the store (one transaction for all running jobs).
PROGRESS_FLUSH_SECONDS = 1.0
READY_TIMEOUT_SECONDS = 2.0


@runtime_checkable
class EngineProtocol(Protocol):
    """What the app needs of an engine: this module's Engine, or a stand-in (the HTTP tests' FakeEngine)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def submit(self, job_id: str) -> None: ...
    async def cancel(self, job_id: str) -> bool: ...
    async def wait(self, job_id: str, timeout: float) -> bool: ...
    async def ready(self) -> bool: ...
    async def warm_workers(self) -> tuple[int, int]: ...

    def live_feeds(self) -> LiveFeeds: ...


class Engine(Runner):
    """Submits stored jobs to Dask and records their progress, results, failures and cancels."""

    what = "simulations"

    def __init__(self, settings: Settings, store: JobStore, *,
                 task: Callable[[str, bytes], tuple[str, bytes]] = run_simulation) -> None:
        super().__init__(settings)
        self.store = store
        self._task = task
        self._cluster = None
        self._client = None
        self._futures: dict[str, Any] = {}
        self._submitting: set[str] = set()
        self._watchers: dict[str, asyncio.Task] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._flagged: set[str] = set()          # jobs whose cancel flag we set ...
        self._pending_clear: set[str] = set()    # ... and will clear after a grace period
        self._cancelled_by_us: set[str] = set()
        self._resubmits: dict[str, int] = {}
        self._progress: dict[str, float] = {}    # buffered until the next flush
        self._flusher: asyncio.Task | None = None
        self._live = LiveFeeds(settings.max_record_points)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def client(self):
        return self._client

    @property
    def cluster(self):
        return self._cluster

    def live_feeds(self) -> LiveFeeds:
        """The running jobs' live events (``live``), fed by the workers' progress messages."""
        return self._live

    async def start(self) -> None:
        """Connect (or start the embedded cluster), subscribe to progress, resubmit unfinished jobs."""
        self._cluster, self._client = await cluster.connect(self.settings)
        # In the background: registering waits for every worker's warm-up, and /readyz must answer meanwhile.
        self._spawn(cluster.register_warm_up(self._client))
        self._client.subscribe_topic(PROGRESS_TOPIC, self._on_event)
        self._flusher = asyncio.create_task(self._flush_progress_forever())
        await self.reconcile()
        self._spawn(self._reconcile_forever())

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

    async def close(self) -> None:
        """Stop watching and disconnect. Jobs still queued or running stay so in the store and are
        resubmitted by the next start."""
        await self._stop_background(*self._watchers.values(), *([self._flusher] if self._flusher else []))
        await self._flush_progress()
        self._futures.clear()
        await cluster.disconnect(self._cluster, self._client)
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

    async def warm_workers(self, every_kernel: bool = False) -> tuple[int, int]:
        """(workers connected, workers that finished their warm-up: of the default jobs' kernels, or of
        ``every_kernel``); (0, 0) when the cluster does not answer."""
        client = self._client
        if client is None or self._closing or client.status != "running":
            return 0, 0
        probe = cluster.worker_is_all_warm if every_kernel else cluster.worker_is_warm
        try:
            warm = await asyncio.wait_for(client.run(probe, on_error="return"), READY_TIMEOUT_SECONDS)
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

    async def _submit_row(self, row: JobRow) -> None:
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

    async def _submit_new(self, job_id: str, row: JobRow) -> None:
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
                               internal_problem(f"The job could not be submitted: {describe(exc)}"))
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
        self._flagged.add(job_id)
        await self._set_flag(job_id)
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
        try:
            settled = await settle(future)
            # Dropped by Dask itself (e.g. the connection to the scheduler was lost): the job must run again.
            resubmit = settled.kind == "dropped" and job_id not in self._cancelled_by_us
            if resubmit:
                log.warning("Dask cancelled job %s's future: resubmitting", job_id)
            elif settled.kind == "cancelled":
                await self._record(self.store.mark_cancelled, job_id)
            elif settled.kind == "failed":
                await self._record(self.store.fail, job_id, settled.value)
            elif settled.kind == "crashed":
                await self._record(self.store.fail, job_id, failure_problem(
                    settled.value, "this simulation", "ask for fewer record points or smaller matrices"))
            elif settled.kind == "result" and settled.value[0] == STOPPED:
                # cancelled while it ran: the records it made until then are kept with the cancelled job
                await self._record(self.store.mark_cancelled, job_id)
                await self._record(self.store.keep_stopped, job_id, settled.value[1], hold=False)  # records: not held
            elif settled.kind == "result":
                outcome, blob = settled.value
                # hold=False: a result that does not fit is not kept in memory waiting for space (a 507 failure)
                await self._record(self.store.finish, job_id, blob, outcome, hold=False)
        finally:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]
            self._watchers.pop(job_id, None)
        if resubmit:
            self._spawn(self._resubmit(job_id))  # tracked, so close() cancels its back-off sleep
            return
        if job_id in self._flagged and job_id not in self._pending_clear:
            self._flagged.discard(job_id)
            await self._clear_flag(job_id)
        self._cancelled_by_us.discard(job_id)
        self._resubmits.pop(job_id, None)
        self._finished(job_id)

    def _finished(self, job_id: str) -> None:
        self._live.end(job_id)
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()

    async def _resubmit(self, job_id: str) -> None:
        count = self._resubmits[job_id] = self._resubmits.get(job_id, 0) + 1
        if not await self._backoff(count):
            if not self._closing:
                await self._record(self.store.fail, job_id, internal_problem(
                    f"The cluster dropped the job's task {count} times (lost scheduler connection?)"))
                self._finished(job_id)
            return
        await self.submit(job_id)

    async def _record(self, write: Callable[..., Any], job_id: str, *args: Any, **kwargs: Any) -> None:
        """Run a store write in a thread (waiting for space if the disk is full); if it raises, try to
        record that as the job's failure."""
        try:
            await self._write(write, job_id, *args, what=f"the outcome of job {job_id}", **kwargs)
        except StorageFullError as exc:  # a result (hold=False) that did not fit: the job fails with a 507
            log.warning("job %s failed: its result did not fit in the store (%s)", job_id, exc)
            await self._record(self.store.fail, job_id, insufficient_storage_problem(f"simulation {job_id}"))
        except StoreDamagedError as exc:  # said in one line (the message names the file and the recovery); the job
            # stays queued or running in the store, so it runs again once the store is recovered
            log.error("the end of job %s was not recorded: %s", job_id, exc)
        except Exception as exc:  # noqa: BLE001
            log.exception("recording the end of job %s failed", job_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.fail, job_id, internal_problem(
                    f"The job's result could not be stored: {describe(exc)}"))

    async def _clear_cancel_flag_later(self, job_id: str) -> None:
        self._pending_clear.add(job_id)
        try:
            await self._clear_flag_later(job_id)
            self._flagged.discard(job_id)
        finally:
            self._pending_clear.discard(job_id)

    # -- progress -----------------------------------------------------------------------------------

    def _on_event(self, event: tuple[float, Any]) -> None:
        """Handler of PROGRESS_TOPIC, called on the event loop by the client: only buffers."""
        _, msg = event
        if not isinstance(msg, dict) or not isinstance(msg.get("job"), str):
            return
        job_id = msg["job"]
        attempt = msg.get("attempt") if isinstance(msg.get("attempt"), str) else None
        if msg.get("started"):
            self._progress.pop(job_id, None)
            if attempt is not None:
                self._live.start(job_id, attempt)
            self._spawn(self._record_started(job_id, msg.get("provenance")))
            return
        if isinstance(msg.get("progress"), int | float):
            self._progress[job_id] = float(msg["progress"])
        self._live.update(job_id, attempt, msg)

    async def _record_started(self, job_id: str, provenance: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.mark_running, job_id,
                                    provenance if isinstance(provenance, dict) else None)

    async def _flush_progress(self) -> None:
        pending, self._progress = self._progress, {}
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.set_progress_many, pending)

    async def _flush_progress_forever(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_FLUSH_SECONDS)
            await self._flush_progress()
