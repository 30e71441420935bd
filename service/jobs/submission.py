"""The job services the routes delegate to: simulations and sweeps created, read, listed, cancelled, deleted, and
their stored trajectories read. Framework-free; every refusal is a ``service.problems.ProblemError``.

    simulations = Simulations(job_store, sweep_store, engine, settings)
    created = await simulations.create(body, owner=owner, idempotency_key=key, wait=30)
    row = await simulations.get(job_id, viewer=owner)

Creating is one flow for both kinds (``_Jobs.create``):
1. without an Idempotency-Key, a full queue is refused first: one COUNT, where parsing and validating cost far
   more, which a saturated service must not spend on requests it refuses;
2. the body is parsed into its canonical form (defaults filled in; its sha256 is what a key is checked against);
3. with a key this owner already used, the stored job answers (the same digest: a replay, whatever the limits) or
   it is a 422 (another body); else the queue bound is checked;
4. its cost is estimated from the request alone (``service.limits.request_cost``) and checked against the validation
   and job budgets (422 limit-exceeded) before anything is built;
5. the request is validated completely (every point of a sweep), in a worker thread — a large body or a costly
   validation holding one of a few validation slots (``admission.Admission``), from before its parse;
6. the caller's per-key limit (DLNSIM_MAX_ACTIVE_PER_KEY), compute budget and storage quota, and the disk's room for
   its results, are checked (429, 507);
7. the store inserts it with its cost, checking the queue bound again in its write transaction (concurrent creates
   cannot overshoot it; concurrent creates with one key store one job), and the engine is handed its id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson

from service.build import admit_simulation
from service.codec import Stored, selected_names
from service.dynamics.errors import DynamicsError
from service.limits import ZERO_COST, Cost, Limits, check_cost, check_request_limits, request_cost
from service.problems import (
    ProblemError,
    dynamics_problem,
    idempotency_key_reused,
    page_token_problem,
    problem_body,
)
from service.schemas import SimulationRequest
from service.schemas.common import LABELS
from service.schemas.validation import parse_body
from service.settings import Settings
from service.status import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

from .admission import Admission
from .continuation import resolve_init, visible
from .database import (
    CorruptResultError,
    Database,
    InvalidPageToken,
    ListFilter,
    QueueFullError,
    TrajectoryReader,
)
from .downloads import DownloadBudget, download_bytes
from .live import parse_cursor, partial_arrays
from .store import JobRow, JobStore
from .sweep_plan import ValidatedSweep, canonical_sweep, sweep_cost_estimate, validate_parsed
from .sweeps_store import PointRow, SweepRow, SweepStore

log = logging.getLogger("dlnsim.jobs")

# A follower of a simulation's events reads the job again at least this often (the store says when it ended).
FOLLOW_POLL_SECONDS = 1.0
# The reconnection delay an event stream asks of its clients (the SSE retry field, milliseconds).
EVENT_RETRY_MS = 1000

# A corrupt stored result is recomputed until the job has been started this many times; corruption that
# comes back run after run is not the disk's doing, and the job is then marked failed instead.
MAX_RESULT_ATTEMPTS = 5

T = TypeVar("T")
Row = TypeVar("Row", JobRow, SweepRow)


class Engine(Protocol):
    """What the services need of an engine (``engine.Engine`` for simulations, ``sweeps.SweepEngine`` for sweeps;
    the HTTP tests' stand-in too)."""

    async def submit(self, job_id: str) -> None: ...
    async def cancel(self, job_id: str) -> bool: ...
    async def wait(self, job_id: str, timeout: float) -> bool: ...


@dataclass(frozen=True)
class Created(Generic[Row]):
    """A create's answer: the row, and whether it is the one an earlier request with this Idempotency-Key made."""

    row: Row
    replayed: bool


async def read_nowait(db: Database, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)``, a small indexed read, on the event loop on a connection that never waits for a lock
    (``Database.nowait``): a thread-pool hop costs ten times such a read in CPU (bench/load.py). Only if SQLite is
    busy, the waiting read in a thread."""
    try:
        with db.nowait():
            return read(*args)
    except sqlite3.OperationalError:
        return await asyncio.to_thread(read, *args)


def _streamed(reader: TrajectoryReader, encode: Callable[[Any], Iterator[bytes]],
              on_corrupt: Callable[[CorruptResultError], None], release: Callable[[], None] = lambda: None
              ) -> Iterator[bytes]:
    """The pieces of ``encode(reader)``, the reader closed and its memory reservation released after the last (or
    when the response is dropped). A damaged array found mid-stream cuts the response (its status is sent already):
    logged, ``on_corrupt`` told."""
    try:
        yield from encode(reader)
    except CorruptResultError as exc:
        log.error("%s (found while sending it: the response was cut)", exc)
        on_corrupt(exc)
        raise
    finally:
        reader.close()
        release()


def _held(pieces: list[bytes], release: Callable[[], None]) -> Iterator[bytes]:
    """``pieces``, their download reservation given back once they are sent (or the response is dropped)."""
    try:
        yield from pieces
    finally:
        release()


async def _reserve_download(budget: DownloadBudget, reader: TrajectoryReader, fields: list[str] | None,
                            encode: Any, what: str) -> Callable[[], None]:
    """Reserve from the download budget what sending the arrays ``fields`` of ``reader`` will hold (the reader is
    closed if it cannot be had: 503 after the wait, 422 if it never could)."""
    need = download_bytes(reader.stored, selected_names(reader.stored, fields), whole=getattr(encode, "whole", False),
                          thinned=getattr(encode, "thinned", False))
    try:
        return (await budget.reserve(need, what=what)).release
    except BaseException:
        await asyncio.to_thread(reader.close)
        raise


def retry_after(settings: Settings, at_least: int = 0) -> dict[str, str]:
    return {"Retry-After": str(max(settings.retry_after_seconds, at_least))}


class _Jobs(ABC, Generic[Row]):
    """What simulations and sweeps share: the create flow, visibility, cancel, delete, lists."""

    what = "job"        # "simulation" / "sweep", in problem details
    limit_name = ""     # the setting that bounds how many may be queued or running

    def __init__(self, store: Any, engine: Engine, settings: Settings, counted: Sequence[Any],
                 admission: Admission | None = None, downloads: DownloadBudget | None = None) -> None:
        """``counted``: the stores whose active rows count against a key's DLNSIM_MAX_ACTIVE_PER_KEY (both kinds)."""
        self.store, self.engine, self.settings = store, engine, settings
        self._counted = [s for s in counted if s is not None]
        self.admission = admission or Admission(settings, store.db, *self._counted)
        self.downloads = downloads or DownloadBudget(settings.download_memory_bytes, settings.download_wait_seconds)

    # -- what each kind supplies -------------------------------------------------------------------

    @abstractmethod
    def _canonical(self, body: bytes) -> tuple[Any, bytes, str]:
        """(parsed, canonical JSON, its sha256) of a body; ProblemError 400/422 for a bad one."""

    @abstractmethod
    def _validate(self, parsed: Any, canonical: bytes, digest: str, owner: str | None) -> Any:
        """Everything checked before anything is stored (as the caller ``owner`` sees the store); what ``_insert``
        stores. ProblemError 422 (409 for a simulation to continue from that has not succeeded)."""

    @abstractmethod
    def _insert(self, parsed: Any, validated: Any, digest: str, key: str | None, owner: str | None, cost: Cost
                ) -> tuple[Row, bool]:
        """Store it queued with its labels and its cost (row, True), or the row this owner's key already made (row,
        False)."""

    @abstractmethod
    def _cost(self, parsed: Any) -> Cost:
        """Its cost from the request alone (``service.limits.request_cost``), checked against the validation and job
        budgets: ProblemError 422 limit-exceeded, before anything is built."""

    _cost_field: tuple[str, ...] = ("data",)  # what a request over the validation budget is told to shrink

    def _validated_cost(self, validated: Any, estimate: Cost) -> Cost:
        """The cost to store with it: what validation found when it knows better (a sweep's points), else ``estimate``."""
        return estimate

    @abstractmethod
    def _max_active(self) -> int:
        """How many of this kind may be queued or running."""

    # -- create ----------------------------------------------------------------------------------------

    async def create(self, body: bytes, *, owner: str | None, idempotency_key: str | None) -> Created[Row]:
        """Validate and queue a new job (module docstring), or answer the one this key already made."""
        if idempotency_key is None:
            await self._check_queue()
        async with self.admission.validating(len(body)) as ticket:  # a large body waits for a validation slot
            parsed, canonical, digest = await asyncio.to_thread(self._canonical, body)
            if idempotency_key is not None:
                existing = await asyncio.to_thread(self.store.by_idempotency_key, idempotency_key, owner)
                if existing is not None:
                    return self._replay(existing, digest, idempotency_key)
                await self._check_queue()
            cost = self._cost(parsed)
            await ticket.admit(cost, list(self._cost_field))  # parse and validation within budget; a costly one waits
            validated = await asyncio.to_thread(self._validate, parsed, canonical, digest, owner)
        cost = self._validated_cost(validated, cost)
        await self._check_active_limit(owner)
        await self.admission.check_budgets(owner, cost)
        try:
            row, created = await asyncio.to_thread(self._insert, parsed, validated, digest, idempotency_key, owner,
                                                   cost)
        except QueueFullError as exc:
            raise self._queue_full(exc.active) from None
        if not created:  # a concurrent create with this key stored its job first
            return self._replay(row, digest, idempotency_key)
        try:
            await self.engine.submit(row.id)
        except Exception:
            log.exception("submitting %s %s failed", self.what, row.id)
        return Created(await self.get(row.id, owner), replayed=False)

    def _replay(self, row: Row, digest: str, key: str | None) -> Created[Row]:
        if row.request_hash != digest:
            raise idempotency_key_reused(str(key), f"{self.what} {row.id}")
        return Created(row, replayed=True)

    async def _check_queue(self) -> None:
        active = await read_nowait(self.store.db, self.store.count_active)
        if active >= self._max_active():
            raise self._queue_full(active)

    def _queue_full(self, active: int) -> ProblemError:
        return ProblemError(429, "queue-full", f"{active} {self.what}s are queued or running, the limit is "
                            f"{self._max_active()}{self.limit_name}", headers=retry_after(self.settings, 5))

    async def _check_active_limit(self, owner: str | None) -> None:
        """429 when the caller's key already has DLNSIM_MAX_ACTIVE_PER_KEY simulations and sweeps queued or running
        (all callers together when keys are off). A soft limit: two creates racing may both pass."""
        limit, source = self.admission.per_key_limit()
        if limit is None:
            return
        active = sum(await asyncio.gather(*(asyncio.to_thread(s.count_active, owner) for s in self._counted)))
        if active >= limit:
            who = "this API key has" if owner is not None else "callers have"
            raise ProblemError(429, "too-many-active-jobs",
                               f"{who} {active} simulations and sweeps queued or running, the limit is {limit} "
                               f"({source})", headers=retry_after(self.settings, 5))

    # -- read, list, cancel, delete ----------------------------------------------------------------------

    async def get(self, row_id: str, viewer: str | None) -> Row:
        """The row, 404 when unknown or another API key's (its existence is not revealed)."""
        row = await read_nowait(self.store.db, self.store.get, row_id)
        if row is None or not visible(viewer, row.owner):
            raise ProblemError(404, "not-found", f"no {self.what} with id {row_id!r}")
        return row

    async def list(self, filters: ListFilter, page_size: int, page_token: str | None,
                   viewer: str | None) -> tuple[list[Row], str | None]:
        """One page, newest first, of what ``filters`` keeps (and the caller may see)."""
        try:
            return await asyncio.to_thread(self.store.list_filtered, filters, page_size, page_token, viewer)
        except InvalidPageToken as exc:
            raise page_token_problem(exc) from None

    async def cancel(self, row_id: str, viewer: str | None) -> Row:
        """Cancel it if it is queued or running; the row as it is then."""
        row = await self.get(row_id, viewer)
        if not row.terminal:
            await self.engine.cancel(row_id)
            row = await self.get(row_id, viewer)
        return row

    async def delete(self, row_id: str, viewer: str | None) -> None:
        """Delete it (and what it stored), cancelling it first if it runs."""
        row = await self.get(row_id, viewer)
        if not row.terminal:
            await self.engine.cancel(row_id)
        if not await asyncio.to_thread(self.store.delete, row_id):
            raise ProblemError(404, "not-found", f"no {self.what} with id {row_id!r}")

    async def _read(self, open_stored: Callable[[], Any], use: Callable[[Stored], T], missing: str) -> T:
        """``use(stored)`` on a stored trajectory opened by ``open_stored``, in a worker thread (decoding is CPU
        work the event loop must not do); 500 invalid-simulation-result when none is stored."""
        def run() -> tuple[bool, T | None]:
            with open_stored() as stored:
                return (False, None) if stored is None else (True, use(stored))

        found, value = await asyncio.to_thread(run)
        if not found:
            raise ProblemError(500, "invalid-simulation-result", missing)
        return value  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# simulations


class Simulations(_Jobs[JobRow]):
    """Simulation jobs (``JobStore``, run by ``engine.Engine``)."""

    what = "simulation"

    def __init__(self, store: JobStore, sweep_store: SweepStore | None, engine: Engine, settings: Settings,
                 admission: Admission | None = None, downloads: DownloadBudget | None = None) -> None:
        super().__init__(store, engine, settings, counted=(store, sweep_store), admission=admission,
                         downloads=downloads)

    def _max_active(self) -> int:
        return self.settings.max_queued

    def _canonical(self, body: bytes) -> tuple[SimulationRequest, bytes, str]:
        """The validated request with defaults filled in (what the worker runs and GET returns): equal requests
        written differently (spacing, key order, 1 vs 1.0) hash the same."""
        request = parse_body(body, SimulationRequest)
        canonical = request.__pydantic_serializer__.to_json(request, by_alias=True, exclude=LABELS)
        return request, canonical, hashlib.sha256(canonical).hexdigest()

    def _validate(self, request: SimulationRequest, canonical: bytes, digest: str, owner: str | None) -> bytes:
        """Every check the core can make, before queueing (the limits first); the stored request: ``canonical``, or
        for an init from_simulation the request with the source's final weights copied in (``continuation``)."""
        resolved = resolve_init(request, self.store, owner)
        try:
            admit_simulation(resolved, Limits.from_settings(self.settings))
        except DynamicsError as exc:
            raise dynamics_problem(exc) from None
        if resolved is request:
            return canonical
        return resolved.__pydantic_serializer__.to_json(resolved, by_alias=True, exclude=LABELS)

    def _cost(self, request: SimulationRequest) -> Cost:
        limits = Limits.from_settings(self.settings)
        try:
            check_request_limits(request, limits)  # the per-field limits first: they name the field to change
            cost = request_cost(request, limits)
            check_cost(cost, request, limits)
        except DynamicsError as exc:
            raise dynamics_problem(exc) from None
        except (IndexError, TypeError, ValueError):  # shapes the model cannot read: validation says what is wrong
            return ZERO_COST
        return cost

    def _insert(self, request: SimulationRequest, canonical: bytes, digest: str, key: str | None, owner: str | None,
                cost: Cost) -> tuple[JobRow, bool]:
        return self.store.create(canonical, digest, key, owner, max_active=self.settings.max_queued,
                                 name=request.name, tags=request.tags, provenance={"dtype": request.dtype},
                                 expected_bytes=cost.result_bytes, cost_flops=cost.run_flops)

    async def create(self, body: bytes, *, owner: str | None, idempotency_key: str | None,
                     wait: float | None = None) -> Created[JobRow]:
        """As ``_Jobs.create``; with ``wait`` seconds, the simulation as it is once finished or after the wait."""
        created = await super().create(body, owner=owner, idempotency_key=idempotency_key)
        if wait and not created.row.terminal:
            await self.engine.wait(created.row.id, wait)
            return Created(await self.get(created.row.id, owner), created.replayed)
        return created

    def _has_trajectory(self, row: JobRow) -> bool:
        """Succeeded, or cancelled while it ran (the records up to there were kept: outcome "stopped")."""
        return row.status == SUCCEEDED or (row.status == CANCELLED and row.outcome == "stopped")

    def _running_trajectory(self, row: JobRow) -> dict[str, Any]:
        """The records so far of a running simulation, as trajectory arrays (``live.partial_arrays``); 409 while it
        has none."""
        records = self.engine.live_feeds().records(row.id) if row.status == RUNNING else []
        if not records:
            raise self._not_finished(row)
        method = ((orjson.loads(row.request).get("training") or {}).get("method"))
        return partial_arrays(records, method, self.engine.live_feeds().singular_values(row.id))

    async def follow(self, job_id: str, viewer: str | None, last_event_id: str | None
                     ) -> AsyncIterator[tuple[str, str | None, Any, int | None]]:
        """A simulation's live events as (event, id, data, retry): the records and progress its worker sends
        (``live.LiveFeeds``) after ``last_event_id``, then ``end`` with its status, outcome and error once it has
        finished (only ``end`` for a client that comes after the end without a ``last_event_id``). A simulation deleted meanwhile ends the stream with status
        "deleted"."""
        cursor = parse_cursor(last_event_id)
        live = self.engine.live_feeds()
        retry: int | None = EVENT_RETRY_MS
        while True:
            try:
                row = await self.get(job_id, viewer)
            except ProblemError:
                yield "end", None, {"status": "deleted", "outcome": None, "error": None}, None
                return
            # a client resuming gets what it missed; one that comes after the end, only the end
            resuming = cursor is not None or not row.terminal
            for event in live.since(job_id, cursor) if resuming else ():
                cursor = parse_cursor(event.id)
                yield event.kind, event.id, event.data, retry
                retry = None
            if row.terminal:
                yield "end", f"{live.attempt(job_id) or 'job'}.end", {
                    "status": row.status, "outcome": row.outcome, "error": row.error}, retry
                return
            await live.wait(job_id, FOLLOW_POLL_SECONDS)

    async def read_trajectory(self, job_id: str, viewer: str | None, use: Callable[[Stored], T]) -> T:
        """``use(stored)`` on the stored trajectory of a succeeded simulation (or the records kept by a cancelled one,
        or the records so far of a running one): 404 unknown, 409 none yet, 500 unreadable (a corrupt result also
        queues the simulation to run again)."""
        row = await self.get(job_id, viewer)
        if row.status == RUNNING:
            arrays = self._running_trajectory(row)
            return await asyncio.to_thread(use, arrays)  # type: ignore[arg-type]
        if not self._has_trajectory(row):
            raise self._not_finished(row)
        try:
            return await self._read(lambda: self.store.open_result(job_id), use,
                                    f"simulation {job_id} succeeded but has no stored result")
        except CorruptResultError as exc:
            raise await self._recover_corrupt_result(job_id, exc) from None

    async def stream_trajectory(self, job_id: str, viewer: str | None, fields: list[str] | None,
                                encode: Callable[[Any], Iterator[bytes]]) -> Iterator[bytes]:
        """The pieces ``encode(stored)`` yields from the members ``fields`` of the stored trajectory of a succeeded
        simulation, read from a connection of its own as they are sent (one array at a time). 404, 409 and damaged
        stored bytes (500, the simulation queued again) are found before the first piece: the arrays to send are
        checked against their CRC-32 first. A damage that slips past it (bytes that change meanwhile) cuts the
        response (its status is sent already), and queues the simulation again for the next request."""
        row = await self.get(job_id, viewer)
        if row.status == RUNNING:
            arrays = self._running_trajectory(row)
            # encoded whole (the records so far): reserved from the download budget like a netCDF, until sent
            need = download_bytes(arrays, list(arrays), whole=True)
            release = (await self.downloads.reserve(need, what=f"simulation {job_id}'s records so far")).release
            try:
                pieces = await asyncio.to_thread(lambda: list(encode(arrays)))
            except BaseException:
                release()
                raise
            return _held(pieces, release)
        if not self._has_trajectory(row):
            raise self._not_finished(row)
        try:
            reader = await asyncio.to_thread(self.store.result_reader, job_id)
        except CorruptResultError as exc:
            raise await self._recover_corrupt_result(job_id, exc) from None
        if reader.stored is None:
            await asyncio.to_thread(reader.close)
            raise ProblemError(500, "invalid-simulation-result", f"simulation {job_id} succeeded but has no stored "
                               "result")
        try:
            await asyncio.to_thread(reader.verify, selected_names(reader.stored, fields))
        except CorruptResultError as exc:
            await asyncio.to_thread(reader.close)
            raise await self._recover_corrupt_result(job_id, exc) from None
        release = await _reserve_download(self.downloads, reader, fields, encode, f"simulation {job_id}'s trajectory")
        return _streamed(reader, encode, lambda exc: self._requeue_corrupt(job_id, exc), release)

    def _requeue_corrupt(self, job_id: str, exc: CorruptResultError) -> None:
        """A stored result found damaged mid-stream: queued again (the engine's reconcile pass submits it), so the
        next request gets the 500 that says so."""
        failed = problem_body(500, "corrupt-result", f"the stored trajectory was corrupt ({exc.reason}) after "
                              f"each of {MAX_RESULT_ATTEMPTS} runs; check the data dir's disk, then submit the "
                              "request again", instance=f"/v1/simulations/{job_id}")
        self.store.recover_corrupt_result(job_id, failed, MAX_RESULT_ATTEMPTS)

    def _not_finished(self, row: JobRow) -> ProblemError:
        if row.status == FAILED:
            reason = (row.error or {}).get("detail") or "see its error"
            return ProblemError(409, "not-finished", f"simulation {row.id} failed, so it has no trajectory: {reason}")
        if row.status == CANCELLED:
            return ProblemError(409, "not-finished", f"simulation {row.id} was cancelled before its first record, so "
                                "it has no trajectory")
        return ProblemError(409, "not-finished", f"simulation {row.id} is {row.status} and has no record yet; its "
                            "records appear as it runs (partial), the whole trajectory once it has succeeded",
                            headers=retry_after(self.settings))

    async def _recover_corrupt_result(self, job_id: str, exc: CorruptResultError) -> ProblemError:
        """Queue the simulation again (seeded: the rerun stores the same trajectory), or fail it after
        MAX_RESULT_ATTEMPTS starts; the 500 problem that says which."""
        log.error("%s", exc)
        failed = problem_body(500, "corrupt-result", f"the stored trajectory was corrupt ({exc.reason}) after each of "
                              f"{MAX_RESULT_ATTEMPTS} runs; check the data dir's disk, then submit the request again",
                              instance=f"/v1/simulations/{job_id}")
        status = await asyncio.to_thread(self.store.recover_corrupt_result, job_id, failed, MAX_RESULT_ATTEMPTS)
        if status == FAILED:
            return ProblemError(500, "corrupt-result", f"the stored trajectory of simulation {job_id} is corrupt "
                                f"({exc.reason}), as after each earlier run: the simulation is now failed; check the "
                                "data dir's disk, then submit the request again")
        if status == QUEUED:
            await self.engine.submit(job_id)
        return ProblemError(500, "corrupt-result", f"the stored trajectory of simulation {job_id} is corrupt "
                            f"({exc.reason}); the simulation was queued to run again (runs are seeded, so it gives the "
                            "same trajectory): poll it until it has succeeded", headers=retry_after(self.settings))


# ------------------------------------------------------------------------------------------------
# sweeps


class Sweeps(_Jobs[SweepRow]):
    """Parameter sweeps (``SweepStore``, run by ``sweeps.SweepEngine``)."""

    what = "sweep"
    limit_name = " (DLNSIM_MAX_ACTIVE_SWEEPS)"
    _cost_field = ("grid",)

    def __init__(self, store: SweepStore, jobs: JobStore | None, engine: Engine, settings: Settings,
                 admission: Admission | None = None, downloads: DownloadBudget | None = None) -> None:
        super().__init__(store, engine, settings, counted=(jobs, store), admission=admission, downloads=downloads)
        self.jobs = jobs  # where a base's init from_simulation finds its simulation

    def _max_active(self) -> int:
        return self.settings.max_active_sweeps

    def _canonical(self, body: bytes) -> tuple[Any, bytes, str]:
        return canonical_sweep(body)

    def _validate(self, sweep: Any, canonical: bytes, digest: str, owner: str | None) -> ValidatedSweep:
        def resolve(base: SimulationRequest) -> SimulationRequest:
            if self.jobs is None:
                return base
            return resolve_init(base, self.jobs, owner, prefix=("base",))

        return validate_parsed(sweep, canonical, digest, Limits.from_settings(self.settings),
                               self.settings.max_sweep_points, resolve=resolve)

    def _cost(self, sweep: Any) -> Cost:
        return sweep_cost_estimate(sweep, Limits.from_settings(self.settings), self.settings.max_sweep_points)

    def _validated_cost(self, validated: ValidatedSweep, estimate: Cost) -> Cost:
        return validated.cost

    def _insert(self, sweep: Any, v: ValidatedSweep, digest: str, key: str | None, owner: str | None, cost: Cost
                ) -> tuple[SweepRow, bool]:
        return self.store.create_or_get(v.request_json, v.base_json, v.keep, v.points, owner, request_hash=digest,
                                        idempotency_key=key, max_active=self.settings.max_active_sweeps,
                                        name=sweep.name, tags=sweep.tags, provenance={"dtype": sweep.base.dtype},
                                        expected_bytes=cost.result_bytes, cost_flops=cost.run_flops)

    async def get(self, row_id: str, viewer: str | None) -> SweepRow:
        row = await asyncio.to_thread(self.store.get, row_id)  # counts per status: more than a point read
        if row is None or not visible(viewer, row.owner):
            raise ProblemError(404, "not-found", f"no sweep with id {row_id!r}")
        return row

    def running_progress(self, row: SweepRow) -> float:
        """Points-equivalent of the work done in the sweep's running chunks, not yet in the store."""
        running = getattr(self.engine, "running_progress", None)
        return running(row.id) if running is not None and not row.terminal else 0.0

    async def first_failed(self, row: SweepRow) -> PointRow | None:
        """The first failed point of a failed sweep (its error explains the sweep's), else None."""
        if row.status != FAILED:
            return None
        failed, _ = await asyncio.to_thread(self.store.points, row.id, FAILED, 1)
        return failed[0] if failed else None

    async def points(self, sweep_id: str, viewer: str | None, status: str | None, page_size: int,
                     page_token: str | None) -> tuple[SweepRow, list[PointRow], str | None]:
        row = await self.get(sweep_id, viewer)
        try:
            points, token = await asyncio.to_thread(self.store.points, sweep_id, status, page_size, page_token)
        except InvalidPageToken as exc:
            raise page_token_problem(exc) from None
        return row, points, token

    async def all_points(self, row: SweepRow) -> list[PointRow]:
        """Every point of the sweep, in index order (paged through the store like GET results)."""
        def read() -> list[PointRow]:
            out, token = [], None
            while True:
                points, token = self.store.points(row.id, None, 1000, token)
                out += points
                if token is None:
                    return out

        return await asyncio.to_thread(read)

    async def stream_point_trajectory(self, sweep_id: str, k: int, viewer: str | None,
                                      encode: Callable[[Any], Iterator[bytes]]) -> Iterator[bytes]:
        """The pieces ``encode(stored)`` yields from point k's kept trajectory (as ``Simulations.stream_trajectory``):
        404 no such point, 409 not-recorded (a summary sweep) or not-finished, 500 unreadable."""
        row = await self.get(sweep_id, viewer)
        if k >= row.n_points:
            raise ProblemError(404, "not-found", f"sweep {sweep_id} has no point {k}: its points are "
                               f"0..{row.n_points - 1}")
        if row.keep != "trajectories":
            raise ProblemError(
                409, "not-recorded",
                f'the trajectory of point {k} was not kept: sweep {sweep_id} has keep: "summary" (one results row per '
                'point). To get it, submit the sweep again with keep: "trajectories", or run the point as a simulation '
                f"(POST /v1/simulations with the sweep's request.base and the point's parameters from "
                f"GET /v1/sweeps/{sweep_id}/results applied)")
        point = await asyncio.to_thread(self.store.point, sweep_id, k)
        if point is None or point.status != SUCCEEDED:
            state = point.status if point is not None else "unknown"
            headers = retry_after(self.settings) if state in ("queued", "running") else {}
            raise ProblemError(409, "not-finished", f"point {k} of sweep {sweep_id} is {state}; its trajectory exists "
                               "once it has succeeded", headers=headers)
        try:
            reader = await asyncio.to_thread(self.store.trajectory_reader, sweep_id, k)
            if reader.stored is not None:
                try:
                    await asyncio.to_thread(reader.verify, selected_names(reader.stored, None))
                except CorruptResultError:
                    await asyncio.to_thread(reader.close)
                    raise
        except CorruptResultError as exc:
            log.error("%s", exc)
            # Not rerun in place (the sweep has finished): the point's run is seeded, so the same request run
            # as a simulation gives the same trajectory.
            raise ProblemError(500, "corrupt-result", f"the stored trajectory of point {k} of sweep {sweep_id} is "
                               f"corrupt ({exc.reason}); check the data dir's disk. The run is seeded: POST the sweep's "
                               f"base with this point's parameters (GET /v1/sweeps/{sweep_id}/results) to "
                               "/v1/simulations for the same trajectory") from None
        if reader.stored is None:
            await asyncio.to_thread(reader.close)
            raise ProblemError(500, "invalid-simulation-result", f"point {k} of sweep {sweep_id} succeeded but has no "
                               "stored trajectory")
        release = await _reserve_download(self.downloads, reader, getattr(encode, "fields", None), encode,
                                          f"point {k}'s trajectory")
        return _streamed(reader, encode, lambda exc: None, release)

    # -- issue 18: plots of a kept point trajectory (additive: GET /v1/sweeps/{id}/points/{k}/plot.*) ----------------

    async def read_point_trajectory(self, sweep_id: str, k: int, viewer: str | None,
                                    use: Callable[[Stored], T]) -> tuple[SweepRow, PointRow, T]:
        """(sweep, point, ``use(stored)``) on point k's kept trajectory, in a worker thread: 404 no such point, 409
        not-recorded (a keep: summary sweep) or not-finished, 500 unreadable (as ``stream_point_trajectory``)."""
        row = await self.get(sweep_id, viewer)
        if k >= row.n_points:
            raise ProblemError(404, "not-found", f"sweep {sweep_id} has no point {k}: its points are "
                               f"0..{row.n_points - 1}")
        if row.keep != "trajectories":
            raise ProblemError(409, "not-recorded", f'point {k}\'s trajectory was not kept: sweep {sweep_id} has keep: '
                               '"summary". Submit the sweep again with keep: "trajectories", or run the point as a '
                               "simulation (the sweep's request.base with the point's parameters applied)")
        point = await asyncio.to_thread(self.store.point, sweep_id, k)
        if point is None or point.status != SUCCEEDED:
            state = point.status if point is not None else "unknown"
            raise ProblemError(409, "not-finished", f"point {k} of sweep {sweep_id} is {state}; its trajectory exists "
                               "once it has succeeded",
                               headers=retry_after(self.settings) if state in ("queued", "running") else {})
        try:
            value = await self._read(lambda: self.store.open_trajectory(sweep_id, k), use,
                                     f"point {k} of sweep {sweep_id} succeeded but has no stored trajectory")
        except CorruptResultError as exc:
            log.error("%s", exc)
            raise ProblemError(500, "corrupt-result", f"the stored trajectory of point {k} of sweep {sweep_id} is "
                               f"corrupt ({exc.reason}); check the data dir's disk") from None
        return row, point, value
