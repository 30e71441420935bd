"""The live view of running simulations, in the API process: each job's events as its worker sends them, for
``GET /v1/simulations/{id}/events`` (Server-Sent Events) and the partial trajectory of a running simulation.

    feeds.start(job_id, attempt)               a worker started (another attempt of) the job: a new, empty feed
    feeds.update(job_id, attempt, message)     a worker message: progress, and records (``worker.LiveReporter``)
    feeds.since(job_id, cursor)                the events after ``cursor`` (an event id, or None: from the start)
    await feeds.wait(job_id, timeout)          until something new arrives (or the timeout)

Event ids are ``<attempt>.<seq>``: an attempt is one worker's run of the job (a random token), seq counts its
events. A cursor of another attempt (the job ran again after a worker died, or the API restarted) replays the
current attempt from its start, whose records are the new run's. Only the latest progress event is kept; records
are kept while the job runs and for RETENTION_SECONDS after it ends (at most max_record_points per job, each with
the strengths of ``worker.LIVE_MODES`` modes at most). Everything runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Seconds a finished job's feed is kept: a client that lost its connection just before the end resumes from it.
RETENTION_SECONDS = 120.0


@dataclass(frozen=True)
class LiveEvent:
    """One event of the stream: ``kind`` is progress or record (end is made by the route from the stored job)."""

    id: str
    kind: str
    data: dict[str, Any]


@dataclass
class Feed:
    attempt: str
    records: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    progress_seq: int = -1
    singular_values: list[float] | None = None  # of Σ31, the first LIVE_MODES (for the partial trajectory)
    seq: int = 0                       # the next event's number
    record_seqs: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def parse_cursor(last_event_id: str | None) -> tuple[str, int] | None:
    """(attempt, seq) of an event id; None for none or one this service did not make (then: from the start)."""
    if not last_event_id:
        return None
    attempt, _, seq = last_event_id.strip().rpartition(".")
    return (attempt, int(seq)) if attempt and seq.isdigit() else None


class LiveFeeds:
    """The feeds of the jobs this API process follows (``engine.Engine`` feeds them from worker events)."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._feeds: dict[str, Feed] = {}

    def start(self, job_id: str, attempt: str) -> None:
        old = self._feeds.get(job_id)
        self._feeds[job_id] = Feed(attempt)
        if old is not None:
            old.notify()
        self._expire()

    def update(self, job_id: str, attempt: str | None, message: dict[str, Any]) -> None:
        """Take a worker message: its records and its progress (``worker.LiveReporter``)."""
        feed = self._feeds.get(job_id)
        if feed is None or (attempt is not None and attempt != feed.attempt):
            if attempt is None:
                return
            feed = self._feeds[job_id] = Feed(attempt)  # an attempt this process did not see start (restart)
        if isinstance(message.get("singular_values"), list):
            feed.singular_values = message["singular_values"]
        for row in message.get("records") or ():
            if len(feed.records) >= self.max_records or not isinstance(row, dict):
                break
            feed.records.append(row)
            feed.record_seqs.append(feed.seq)
            feed.seq += 1
        if isinstance(message.get("progress"), int | float):
            feed.progress = {key: message.get(key) for key in
                             ("step", "time", "progress", "loss", "test_loss", "eta_seconds")}
            feed.progress_seq = feed.seq
            feed.seq += 1
        feed.notify()

    def end(self, job_id: str) -> None:
        """The job finished: wake its followers; the feed goes RETENTION_SECONDS later."""
        feed = self._feeds.get(job_id)
        if feed is not None:
            feed.ended_at = time.monotonic()
            feed.notify()
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, f in self._feeds.items() if f.ended_at is not None
                       and now - f.ended_at > RETENTION_SECONDS]:
            del self._feeds[job_id]

    def attempt(self, job_id: str) -> str | None:
        feed = self._feeds.get(job_id)
        return feed.attempt if feed else None

    def since(self, job_id: str, cursor: tuple[str, int] | None) -> Iterator[LiveEvent]:
        """The events after ``cursor`` in order: the records, then the latest progress if newer than the cursor."""
        feed = self._feeds.get(job_id)
        if feed is None:
            return
        after = cursor[1] if cursor is not None and cursor[0] == feed.attempt else -1
        first = int(np.searchsorted(feed.record_seqs, after, side="right"))
        for seq, row in zip(feed.record_seqs[first:], feed.records[first:], strict=True):
            yield LiveEvent(f"{feed.attempt}.{seq}", "record", row)
        if feed.progress is not None and feed.progress_seq > after:
            yield LiveEvent(f"{feed.attempt}.{feed.progress_seq}", "progress", feed.progress)

    async def wait(self, job_id: str, timeout: float) -> None:
        """Until the job's feed changes (or starts), at most ``timeout`` seconds."""
        feed = self._feeds.get(job_id)
        if feed is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(feed.changed.wait(), timeout)
        except TimeoutError:
            pass

    def records(self, job_id: str) -> list[dict[str, Any]]:
        """The records of the job's current attempt so far (for its partial trajectory)."""
        feed = self._feeds.get(job_id)
        return list(feed.records) if feed is not None else []

    def singular_values(self, job_id: str) -> list[float] | None:
        feed = self._feeds.get(job_id)
        return feed.singular_values if feed is not None else None


def partial_arrays(records: list[dict[str, Any]], method: str | None,
                   singular_values: list[float] | None = None) -> dict[str, Any]:
    """A running simulation's records so far as trajectory arrays (``service.codec`` names): time, step (GD and SGD),
    loss (when known), excess_loss, test_loss (with test data), modes_strength, modes_singular_values (when the worker
    sent them), and outcome "running", partial True, method."""
    def column(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=np.float64)

    k = max((len(r.get("strength") or ()) for r in records), default=0)
    strength = np.full((len(records), k), np.nan)
    for i, r in enumerate(records):
        s = [np.nan if v is None else v for v in r.get("strength") or ()]
        strength[i, :len(s)] = s
    arrays: dict[str, Any] = {"time": column("time"), "excess_loss": column("excess_loss"),
                              "modes_strength": strength, "outcome": "running", "partial": True,
                              "method": method or ""}
    if singular_values is not None:
        arrays["modes_singular_values"] = np.asarray(singular_values, dtype=np.float64)[:k]
    if records and all(r.get("step") is not None for r in records):
        arrays["step"] = np.array([r["step"] for r in records], dtype=np.int64)
    if records and all(r.get("loss") is not None for r in records):
        arrays["loss"] = column("loss")
    if records and all(r.get("test_loss") is not None for r in records):
        arrays["test_loss"] = column("test_loss")
    return arrays
