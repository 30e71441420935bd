"""The sweep engine: runs a stored sweep's points on Dask in chunks and records them as chunks finish.

    sweeps = SweepEngine(settings, SweepStore(db), engine)   # shares the Engine's Dask client
    await sweeps.start()            # after engine.start(): resubmits the points of unfinished sweeps,
                                    # then every RECONCILE_SECONDS any unfinished sweep not submitted
    await sweeps.submit(sweep_id)   # the sweep and its points are already in the store (queued)
    await sweeps.cancel(sweep_id)
    await sweeps.close()            # before engine.close()

Chunks: the points still to run are grouped by ``group_key`` (same layer shapes, method, record
schedule and dtype) and each group is cut into chunks of at most ``sweep_chunk_size`` points, and
into at least as many chunks as there are workers when the group is large enough, so that every
worker gets work. One chunk is one Dask task (``run_sweep_chunk``) that calls ``simulate_batch``.
Chunks run at priority -1: a single simulation submitted during a long sweep goes ahead of the chunks
still waiting (Dask orders ready tasks by priority, then by submission).

What is never lost or repeated (beside what ``runner`` says for both engines):
* a chunk's points are written to the store in one transaction when the chunk finishes; on start,
  only points still queued or running are submitted again (finished points are never rerun);
* every RECONCILE_SECONDS (the Engine's), a reconcile pass submits every unfinished sweep this process
  is not running: one whose submit failed after the POST answered 202 (store or scheduler briefly
  unreachable), or one whose chunk results could not be stored at all;
* a chunk whose results the store refuses has its points failed with the reason (not rerun forever);
* the store's guarded transitions record every point once even if two runs of a chunk report back (a chunk
  rerun after a worker death whose first run's result arrived too).

Cancel: the store marks the sweep and its unfinished points cancelled at once, the sweep's cancel
Event (the same per-job flag as simulations: ``cancel_event_name(sweep_id)``) is set so that running
chunks stop at their next check, and every chunk future is cancelled so that queued chunks never start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.settings import Settings

from .database import StorageFullError
from .runner import (
    MAX_RESUBMITS,
    SCATTER_BYTES,
    Runner,
    describe,
    failure_problem,
    insufficient_storage_problem,
    settle,
)
from .sweeps_store import SweepRow, SweepStore
from .tasks import run_sweep_chunk
from .worker import SWEEP_PROGRESS_TOPIC, internal_problem, sweep_chunk_key

log = logging.getLogger("dlnsim.sweeps")

# Below the simulations' default priority 0: a sweep's many chunks do not hold up single simulations.
SWEEP_PRIORITY = -1


def chunk_sizes(n: int, workers: int, max_chunk: int) -> list[int]:
    """Split n points into chunks of at most ``max_chunk``, and into at least ``workers`` chunks when
    n allows, with sizes differing by at most one (balanced work per task)."""
    count = max(math.ceil(n / max(max_chunk, 1)), min(max(workers, 1), n), 1)
    base, extra = divmod(n, count)
    return [base + (i < extra) for i in range(count)]


@dataclass
class _Chunk:
    sweep_id: str
    ks: list[int]
    items: list[tuple[int, bytes]]
    future: Any = None
    resubmits: int = 0


@dataclass
class _Sweep:
    keep: str
    base: Any                                   # bytes, or the Future of the scattered bytes
    chunks: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SweepEngine(Runner):
    """Submits stored sweeps as chunk tasks on the Engine's Dask client and records what they return."""

    what = "sweeps"

    def __init__(self, settings: Settings, store: SweepStore, engine: Any, *,
                 task: Callable[..., list[dict[str, Any]]] = run_sweep_chunk) -> None:
        super().__init__(settings)
        self.store = store
        self.engine = engine
        self._task = task
        self._sweeps: dict[str, _Sweep] = {}
        self._chunks: dict[str, _Chunk] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._progress: dict[str, float] = {}       # chunk key -> fraction done (running chunks)
        self._cancelled: set[str] = set()
        self._subscribed = False

    @property
    def client(self):
        """The Engine's Dask client (None for an engine without one, e.g. an HTTP-test double)."""
        return getattr(self.engine, "client", None)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to chunk events, resubmit every sweep a crash or restart left unfinished, and start
        the reconcile loop."""
        if self.client is None:
            log.warning("the engine has no Dask client: sweeps are stored but not run")
            return
        self.client.subscribe_topic(SWEEP_PROGRESS_TOPIC, self._on_event)
        self._subscribed = True
        await self.reconcile()
        self._spawn(self._reconcile_forever())

    async def reconcile(self) -> int:
        """Submit every stored sweep that is queued or running but not being run by this process (after a
        restart, a failed submit, a chunk whose outcome could not be stored); returns how many."""
        if self.client is None:
            return 0
        count = 0
        for row in await asyncio.to_thread(self.store.unfinished):
            if row.id in self._sweeps or self._closing:
                continue
            log.info("resuming sweep %s (%s, %d of %d points finished)", row.id, row.status,
                     row.n_points - row.counts["queued"] - row.counts["running"], row.n_points)
            count += await self._submit_row(row)
        return count

    async def close(self) -> None:
        """Stop watching. Unfinished points stay queued or running in the store and are submitted
        again by the next start; the Dask client belongs to the Engine, which closes it."""
        await self._stop_background(*self._watchers.values())
        if self._subscribed and self.client is not None:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(SWEEP_PROGRESS_TOPIC)
        self._chunks.clear()
        self._sweeps.clear()

    async def ready(self) -> bool:
        return bool(await self.engine.ready())

    # -- sweeps ------------------------------------------------------------------------------------

    async def submit(self, sweep_id: str) -> None:
        """Run a stored sweep's unfinished points (no-op if already submitted or finished)."""
        if sweep_id in self._sweeps or self.client is None:
            return
        row = await asyncio.to_thread(self.store.get, sweep_id)
        if row is None or row.terminal:
            return
        await self._submit_row(row)

    async def _workers(self) -> int:
        try:
            info = await asyncio.wait_for(self.client.scheduler.identity(n_workers=0), 5.0)
            return max(int(info.get("n_workers", 1)), 1)
        except Exception:  # noqa: BLE001 - only sizes the chunks
            return 1

    async def _submit_row(self, row: SweepRow) -> bool:
        """Submit the sweep's unfinished points as chunks; True if any chunk was handed to the cluster.
        Never raises (but on cancel): a failure before the chunks exist is logged and drops the claim,
        so that the next reconcile pass tries again."""
        client = self.client
        if row.id in self._sweeps or client is None:
            return False
        # Claimed before any await: the API's submit and a reconcile pass never both submit a sweep.
        sweep = self._sweeps[row.id] = _Sweep(keep=row.keep, base=row.base)
        chunks: list[_Chunk] = []
        try:
            chunks = await self._plan(row, sweep)
            if self._closing or row.id in self._cancelled or self._sweeps.get(row.id) is not sweep:
                chunks = []  # closed or cancelled meanwhile: nothing to run
        except Exception:  # noqa: BLE001 - the store or scheduler briefly unreachable: the next pass retries
            log.exception("submitting sweep %s failed: the next reconcile pass tries again", row.id)
        finally:
            if not chunks:  # nothing to watch (also when cancelled by close): release the claim
                if self._sweeps.get(row.id) is sweep:
                    del self._sweeps[row.id]
                if hasattr(sweep.base, "release"):
                    with contextlib.suppress(Exception):
                        sweep.base.release()
        if not chunks:
            return False
        # From here on nothing awaits, so every chunk gets its watcher (or its points failed) at once.
        for chunk in chunks:
            key = sweep_chunk_key(row.id, chunk.ks)
            sweep.chunks.add(key)
            self._chunks[key] = chunk
            self._submit_chunk(key, chunk)
        return True

    async def _plan(self, row: SweepRow, sweep: _Sweep) -> list[_Chunk]:
        """The chunks of the sweep's points still to run (none if every point has finished)."""
        pending = await asyncio.to_thread(self.store.pending_points, row.id)
        if not pending:  # every point finished but the sweep was not closed (a lost race with its last chunk)
            await asyncio.to_thread(self.store.finish_points, row.id, [])
            return []
        if len(row.base) > SCATTER_BYTES:
            # One copy of a large base per worker instead of one per chunk through the scheduler.
            sweep.base = await self.client.scatter(row.base, hash=False, broadcast=False)
        groups: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for k, params, group in pending:
            groups[group].append((k, params))
        workers = await self._workers()
        chunks = []
        for items in groups.values():
            start = 0
            for size in chunk_sizes(len(items), workers, self.settings.sweep_chunk_size):
                part = items[start:start + size]
                start += size
                chunks.append(_Chunk(row.id, [k for k, _ in part], part))
        return chunks

    def _submit_chunk(self, key: str, chunk: _Chunk) -> None:
        sweep = self._sweeps[chunk.sweep_id]
        try:
            # A fixed key: a rerun of the same points re-attaches to a task still known to the
            # scheduler. retries=0: failures are deterministic; worker deaths are the scheduler's.
            chunk.future = self.client.submit(self._task, chunk.sweep_id, key, sweep.base, chunk.items, sweep.keep,
                                              key=key, retries=0, pure=False, priority=SWEEP_PRIORITY)
        except Exception as exc:  # noqa: BLE001 - never lose points silently
            log.exception("submitting chunk %s failed", key)
            self._spawn(self._chunk_failed(key, chunk, internal_problem(
                f"The sweep's points could not be submitted: {describe(exc)}")))
            return
        self._watchers[key] = asyncio.create_task(self._watch(key, chunk, chunk.future), name=f"watch-{key}")

    async def cancel(self, sweep_id: str) -> bool:
        """Cancel a queued or running sweep; False if it is unknown or already finished."""
        previous = await asyncio.to_thread(self.store.cancel, sweep_id)
        if not previous:
            return False
        self._cancelled.add(sweep_id)
        sweep = self._sweeps.get(sweep_id)
        if self.client is not None:
            await self._set_flag(sweep_id)
            if sweep is not None:
                futures = [self._chunks[k].future for k in sweep.chunks if self._chunks[k].future is not None]
                with contextlib.suppress(Exception):
                    await self.client.cancel(futures, reason="sweep cancelled by the user")
            # Running chunks see the flag within ~0.2 s; it is cleared once they surely have.
            self._spawn(self._clear_cancel_flag_later(sweep_id))
        return True

    async def wait(self, sweep_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the sweep to finish; True if it is finished (in the store)."""
        sweep = self._sweeps.get(sweep_id)
        if sweep is not None and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sweep.done.wait(), timeout)
        row = await asyncio.to_thread(self.store.get, sweep_id)
        return row is not None and row.terminal

    def running_progress(self, sweep_id: str) -> float:
        """Points-equivalent of the work done in the sweep's running chunks (not yet in the store)."""
        sweep = self._sweeps.get(sweep_id)
        if sweep is None:
            return 0.0
        return sum(self._progress.get(key, 0.0) * len(self._chunks[key].ks)
                   for key in sweep.chunks if key in self._chunks)

    # -- completion ----------------------------------------------------------------------------------

    async def _watch(self, key: str, chunk: _Chunk, future) -> None:
        try:
            settled = await settle(future)
            # Dropped by Dask itself (e.g. the connection to the scheduler was lost): the points must run again.
            resubmit = settled.kind == "dropped" and chunk.sweep_id not in self._cancelled
            if resubmit:
                log.warning("Dask cancelled sweep chunk %s: resubmitting", key)
            elif settled.kind in ("failed", "crashed"):  # a chunk's own points fail inside its results
                problem = settled.value if settled.kind == "failed" else failure_problem(
                    settled.value, "these sweep points", "use keep: summary, fewer record points or smaller networks")
                await self._record_chunk(chunk, self.store.fail_points, chunk.ks, problem)
            elif settled.kind == "result":
                # hold=False: results that do not fit are not kept in memory waiting for space (a 507 failure)
                await self._record_chunk(chunk, self.store.finish_points, settled.value, hold=False)
            # "cancelled": the store already has the sweep's unfinished points cancelled
        finally:
            self._watchers.pop(key, None)
            self._progress.pop(key, None)
        if resubmit:
            self._spawn(self._resubmit(key, chunk))
            return
        self._chunk_done(key, chunk)

    def _chunk_done(self, key: str, chunk: _Chunk) -> None:
        self._chunks.pop(key, None)
        sweep = self._sweeps.get(chunk.sweep_id)
        if sweep is None:
            return
        sweep.chunks.discard(key)
        if not sweep.chunks:
            del self._sweeps[chunk.sweep_id]
            if hasattr(sweep.base, "release"):
                with contextlib.suppress(Exception):
                    sweep.base.release()
            sweep.done.set()

    async def _resubmit(self, key: str, chunk: _Chunk) -> None:
        chunk.resubmits += 1
        if chunk.resubmits > MAX_RESUBMITS:
            await self._chunk_failed(key, chunk, internal_problem(
                f"The cluster dropped this sweep chunk's task {chunk.resubmits} times (lost scheduler connection?)"))
            return
        if not await self._backoff(chunk.resubmits) or chunk.sweep_id in self._cancelled:
            self._chunk_done(key, chunk)
            return
        self._submit_chunk(key, chunk)

    async def _chunk_failed(self, key: str, chunk: _Chunk, problem: dict[str, Any]) -> None:
        await self._record_chunk(chunk, self.store.fail_points, chunk.ks, problem)
        self._chunk_done(key, chunk)

    async def _record_chunk(self, chunk: _Chunk, write: Callable[..., Any], *args: Any, hold: bool = True) -> None:
        """Store a chunk's outcome (``write(sweep_id, *args)``). Results (``hold=False``) that do not fit in a full
        store fail the chunk's points with a 507 problem (nothing is kept in memory waiting for space); a small write
        waits for space. If the store refuses it with an error, fail the chunk's points with that reason, as the
        Engine does for a job:
        a write that fails the same way every time must not have the chunk rerun at every reconcile pass.
        If that fails too (the store unreachable), the points stay unfinished and the first reconcile pass
        after the sweep's other chunks end runs them again."""
        try:
            await self._write(write, chunk.sweep_id, *args, what=f"sweep {chunk.sweep_id}'s points", hold=hold)
        except StorageFullError as exc:
            log.warning("sweep %s: %d points failed, their results did not fit in the store (%s)", chunk.sweep_id,
                        len(chunk.ks), exc)
            await self._record_chunk(chunk, self.store.fail_points, chunk.ks,
                                     insufficient_storage_problem(f"this point of sweep {chunk.sweep_id}"))
        except Exception as exc:  # noqa: BLE001
            log.exception("recording sweep %s's points failed", chunk.sweep_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.fail_points, chunk.sweep_id, chunk.ks, internal_problem(
                    f"The sweep points' results could not be stored: {describe(exc)}"))

    async def _record(self, write: Callable[..., Any], *args: Any) -> None:
        try:
            # A full disk or a locked store: this small write waits until it can be stored.
            await self._write(write, *args, what=f"sweep {args[0]}'s points")
        except Exception:  # noqa: BLE001 - a lost "running" mark: the chunk's outcome is recorded anyway
            log.exception("recording sweep points failed")

    # -- cancel flags and events -----------------------------------------------------------------------

    async def _clear_cancel_flag_later(self, sweep_id: str) -> None:
        await self._clear_flag_later(sweep_id)
        self._cancelled.discard(sweep_id)

    def _on_event(self, event: tuple[float, Any]) -> None:
        """Handler of SWEEP_PROGRESS_TOPIC (on the event loop): mark a started chunk's points running,
        buffer a running chunk's progress."""
        _, msg = event
        if not isinstance(msg, dict):
            return
        chunk = self._chunks.get(msg.get("chunk"))
        if chunk is None or chunk.sweep_id != msg.get("sweep"):
            return  # a chunk of an earlier API process, or already finished
        if msg.get("started"):
            self._progress[msg["chunk"]] = 0.0
            provenance = msg.get("provenance") if isinstance(msg.get("provenance"), dict) else None
            self._spawn(self._record(self.store.mark_points_running, chunk.sweep_id, chunk.ks, provenance))
        elif isinstance(msg.get("progress"), int | float) and msg["chunk"] in self._watchers:
            self._progress[msg["chunk"]] = min(max(float(msg["progress"]), 0.0), 1.0)
