"""What the two engines share (``engine.Engine`` runs simulations, ``sweep_engine.SweepEngine`` sweeps' chunks):
background tasks, the reconcile loop, the cancel flags on the scheduler, stored writes that wait for disk space,
what became of a task's future, and the back-off before a resubmit.

Never lose work, never hold it: a write that finds the store locked by another connection is retried until it goes
through (the computation is never run again for it); a write the store refuses for lack of space is retried only
when it is small (a status change), while one that carries results is not held in memory waiting for space: it
raises StorageFullError and the engine fails the work with a 507 problem instead (``write_when_space``);
a future that Dask itself cancelled (a lost scheduler connection, not the user) is resubmitted with back-off, up to
MAX_RESUBMITS times; a worker death is the scheduler's to retry (``distributed.scheduler.allowed-failures``), after
which the task's future raises KilledWorker and the work fails with a reason (``failure_problem``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from service.settings import Settings

from .database import StorageFullError, StoreBusyError
from .worker import JobCancelled, JobFailed, cancel_event_name, internal_problem

log = logging.getLogger("dlnsim.jobs")

# Requests (or sweep bases) larger than this are scattered to the workers instead of riding in the task graph
# through the scheduler (Dask warns about graphs over ~10 MB).
SCATTER_BYTES = 1 << 20
# How long the cancel flag of work whose future was cancelled while queued stays set, for the race where the task
# had just started; a started task sees the flag within ~0.2 s.
CANCEL_FLAG_GRACE_SECONDS = 10.0
# Futures cancelled by Dask itself (not by us) are resubmitted this many times before the work fails.
MAX_RESUBMITS = 5
# How often an engine looks for stored work that is queued or running but not submitted (a submit that failed after
# the work was stored, a lost scheduler connection): it is submitted again, so nothing waits for a restart.
RECONCILE_SECONDS = 30.0
# While the store's disk is full, a small write (a status change) is retried this often (the work stays running in the
# store meanwhile; a restart would resubmit it, so nothing is lost).
STORAGE_FULL_RETRY_SECONDS = 2.0
# While the store is locked by another connection (past its busy timeout), a write is retried this often.
STORE_BUSY_RETRY_SECONDS = 1.0


async def write_when_space(write: Callable[..., Any], *args: Any, closing: Callable[[], bool], what: str,
                           hold: bool = True, reserve: Callable[[], bool] | None = None, **kwargs: Any) -> bool:
    """Run a blocking store write in a thread until it succeeds (True) or ``closing()`` (False): retried while the
    store is locked by another connection (StoreBusyError), and while it is full (StorageFullError) if ``hold`` —
    first at once with the store's reserve (``reserve()``, Database.release_reserve: status changes fit on a full
    disk); a write that must not wait in memory (``hold=False``: it carries results) raises StorageFullError at once.
    Any other exception propagates."""
    warned: set[type] = set()
    while True:
        try:
            await asyncio.to_thread(write, *args, **kwargs)
            if warned:
                log.info("stored %s", what)
            return True
        except StoreBusyError as exc:
            if closing():
                return False
            if StoreBusyError not in warned:
                log.warning("the store is locked: %s is written once it is free (%s)", what, exc)
                warned.add(StoreBusyError)
            await asyncio.sleep(STORE_BUSY_RETRY_SECONDS)
        except StorageFullError as exc:
            if not hold:
                raise
            if closing():
                return False
            if reserve is not None and await asyncio.to_thread(reserve):
                continue
            if StorageFullError not in warned:
                log.warning("storage is full: %s is written once space is freed (%s)", what, exc)
                warned.add(StorageFullError)
            await asyncio.sleep(STORAGE_FULL_RETRY_SECONDS)


def insufficient_storage_problem(what: str) -> dict[str, Any]:
    """The problem of work whose results did not fit in the store (not kept in memory waiting for space)."""
    from service.problems import problem_body

    return problem_body(507, "insufficient-storage", f"{what} finished, but its results could not be stored: the job "
                        "store's disk is full (DLNSIM_DATA_DIR, or its DLNSIM_STORE_MAX_BYTES cap). Nothing was kept: "
                        "submit the request again once the operator has freed space (runs are seeded: the same "
                        "request gives the same results)")


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failure_problem(exc: BaseException, running: str, fix: str) -> dict[str, Any]:
    """The problem of work whose task raised ``exc``: a worker that died on every retry (``running`` names the work,
    ``fix`` what to ask for instead), or a crash."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return internal_problem(f"The worker process running {running} died on every retry (out of memory?): "
                                f"{fix}, or give the workers more memory.")
    return internal_problem(f"The task running {running} crashed: {describe(exc)}")


@dataclass(frozen=True)
class Settled:
    """What became of a task's future: its ``result``; ``cancelled`` (it saw its cancel flag); ``failed`` with the
    problem it reported; ``crashed`` with the exception; or ``dropped`` (Dask cancelled the future itself)."""

    kind: Literal["result", "cancelled", "failed", "crashed", "dropped"]
    value: Any = None


async def settle(future: Awaitable[Any]) -> Settled:
    """Await a task's future; asyncio's CancelledError (the engine closing) propagates."""
    try:
        return Settled("result", await future)
    except asyncio.CancelledError:
        raise
    except concurrent.futures.CancelledError:  # Dask's FutureCancelledError
        return Settled("dropped")
    except JobCancelled:
        return Settled("cancelled")
    except JobFailed as exc:
        return Settled("failed", exc.problem)
    except Exception as exc:  # noqa: BLE001 - never lose work: the caller records why it ended
        return Settled("crashed", exc)


class Runner(ABC):
    """The base of both engines: each has a Dask ``client`` and a ``reconcile()``."""

    what = "work"  # in log lines

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._background: set[asyncio.Task] = set()
        self._closing = False

    @property
    @abstractmethod
    def client(self) -> Any:
        """The Dask client (None before start, or for an engine without one)."""

    @abstractmethod
    async def reconcile(self) -> int:
        """Submit every stored, unfinished piece of work this process is not running; how many."""

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, tracked so that ``_stop_background`` cancels it."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_background(self, *more: asyncio.Task) -> None:
        self._closing = True
        tasks = [*more, *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reconcile_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(RECONCILE_SECONDS)  # read each round: tests shorten it
            try:
                await self.reconcile()
            except Exception:
                log.exception("looking for unsubmitted %s failed", self.what)

    async def _write(self, write: Callable[..., Any], *args: Any, what: str, hold: bool = True, **kwargs: Any
                     ) -> None:
        """A store write retried while the store is locked, and while it is full if ``hold`` (``write_when_space``);
        raises anything else."""
        store = getattr(self, "store", None)
        reserve = getattr(getattr(store, "db", None), "release_reserve", None)
        await write_when_space(write, *args, closing=lambda: self._closing, what=what, hold=hold, reserve=reserve,
                               **kwargs)

    async def _backoff(self, count: int) -> bool:
        """Before the ``count``-th resubmit: False when past MAX_RESUBMITS (give up), else wait and True."""
        if count > MAX_RESUBMITS:
            return False
        await asyncio.sleep(min(2.0 ** (count - 1), 10.0))
        return not self._closing

    # -- cancel flags: a distributed.Event per job or sweep on the scheduler, which running tasks poll --------------

    def _flag(self, job_id: str):
        from distributed import Event

        return Event(cancel_event_name(job_id), client=self.client)

    async def _set_flag(self, job_id: str) -> None:
        if self.client is None:
            return
        try:
            await self._flag(job_id).set()
        except Exception:
            log.exception("setting the cancel flag of %s failed", job_id)

    async def _clear_flag(self, job_id: str) -> None:
        # A set Event lives on the scheduler until cleared; clearing frees it.
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self._flag(job_id).clear()

    async def _clear_flag_later(self, job_id: str) -> None:
        """Clear the flag once a task that had just started when it was set has surely seen it."""
        await asyncio.sleep(CANCEL_FLAG_GRACE_SECONDS)
        await self._clear_flag(job_id)
