"""Retention: finished simulations and sweeps are deleted ``DLNSIM_RETENTION_DAYS`` after they finished.

    purge_expired(store, sweep_store, days=30)          # one pass, blocking: (jobs, sweeps) deleted
    task = RetentionTask(store, sweep_store, days=30, interval=3600)
    task.start()                                        # in the app's lifespan, after the engines
    await task.stop()                                   # on shutdown, before the store closes

Only terminal rows (succeeded, failed, cancelled) whose ``finished_at`` is older than the cut-off go,
each with its result (a simulation) or its points and kept trajectories (a sweep), by the schema's
ON DELETE CASCADE. Queued and running work is never touched, whatever its age. Deletion runs in
batches of ``PURGE_BATCH`` rows, one transaction each, so API writes interleave with a large purge
and a shutdown waits for at most one batch. Each pass then forgets the Idempotency-Keys recorded more than
``keys_hours`` ago whose simulation or sweep is gone (they outlive it so that a late retry is not run again), and
gives the freed pages back to the disk (``Database.reclaim``, RECLAIM_PAGES pages per transaction): the file shrinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from .database import purge_spent_keys
from .store import JobStore

log = logging.getLogger("dlnsim.retention")

# utc_now()'s format, so that cut-off and stored timestamps compare as text.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# How long stop() waits for a batch in progress before cancelling the task anyway.
STOP_TIMEOUT_SECONDS = 30.0
# Pages given back to the disk per transaction (8 MiB at 4 KiB pages).
RECLAIM_PAGES = 2048


def cutoff(days: float, now: datetime | None = None) -> str:
    """The finished_at before which a row is expired: now − days, in the store's timestamp format."""
    now = now or datetime.now(UTC)
    return (now - timedelta(days=days)).strftime(_TIME_FORMAT)


def purge_expired(store: JobStore, sweep_store: Any, days: float, *, now: datetime | None = None,
                  stop: threading.Event | None = None, keys_hours: float = 24.0) -> tuple[int, int]:
    """Delete every finished job and sweep older than ``days``, forget spent Idempotency-Keys older than
    ``keys_hours``, give the freed pages back to the disk; returns (jobs, sweeps) deleted.

    Blocking (call it in a thread). ``stop`` set ends the pass between two batches.
    """
    before = cutoff(days, now)
    counts = []
    for purge in (store.purge_finished, sweep_store.purge_finished if sweep_store is not None else None):
        total = 0
        while purge is not None and not (stop is not None and stop.is_set()):
            deleted = purge(before)
            total += deleted
            if deleted == 0:
                break
        counts.append(total)
    with store.db.write() as conn:
        purge_spent_keys(conn, cutoff(keys_hours / 24.0, now))
    while not (stop is not None and stop.is_set()) and store.db.reclaim(RECLAIM_PAGES):
        pass
    return counts[0], counts[1]


class RetentionTask:
    """The background purge: one pass at start, then one every ``interval`` seconds, each in a thread."""

    def __init__(self, store: JobStore, sweep_store: Any, *, days: float, interval: float,
                 keys_hours: float = 24.0) -> None:
        if days <= 0:
            raise ValueError("retention days must be positive (0 means keep forever: start no task)")
        self.store = store
        self.sweep_store = sweep_store
        self.days = days
        self.interval = interval
        self.keys_hours = keys_hours
        self.passes = 0                       # completed passes (tests wait on it through passed)
        self.deleted = (0, 0)                 # (jobs, sweeps) of the last pass
        self._task: asyncio.Task | None = None
        self._stop = threading.Event()        # seen by the purging thread between batches
        self._wake: asyncio.Event | None = None
        self._passed: asyncio.Condition | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._passed = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name="dlnsim-retention")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_for_pass(self, count: int) -> None:
        """Until ``count`` passes have completed (for tests and diagnostics)."""
        assert self._passed is not None, "start() first"
        async with self._passed:
            await self._passed.wait_for(lambda: self.passes >= count)

    async def _run(self) -> None:
        assert self._wake is not None and self._passed is not None
        while not self._stop.is_set():
            try:
                self.deleted = await asyncio.to_thread(purge_expired, self.store, self.sweep_store, self.days,
                                                       stop=self._stop, keys_hours=self.keys_hours)
            except Exception:
                log.exception("retention purge failed; retrying in %s s", self.interval)
            else:
                if any(self.deleted):
                    log.info("retention: deleted %d simulations and %d sweeps finished over %s days ago",
                             *self.deleted, self.days)
            async with self._passed:
                self.passes += 1
                self._passed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def stop(self) -> None:
        """End the loop: a sleeping task wakes and returns; a pass in progress ends after its current
        batch (the thread is waited for, so the store can close safely after this returns)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        if self._wake is not None:
            self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.error("retention purge did not stop within %s s; cancelling it", STOP_TIMEOUT_SECONDS)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
