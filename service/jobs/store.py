"""The job store: simulation jobs and their results, in the service's database (``database.Database``).

    store = JobStore(db)
    row, created = store.create(request_json, request_hash, idempotency_key="abc")
    store.finish(row.id, packed_trajectory, "converged")          # service.codec.pack of the run's arrays
    with store.open_result(row.id) as stored: loss = stored.get("loss")

Status transitions are guarded in SQL: only ``queued``/``running`` jobs move, so a job cancelled while
its worker finishes keeps ``cancelled`` and a finished job is never overwritten. A result is the packed
trajectory the worker made (``service.codec``: compressed binary arrays), stored as it came.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from service.codec import ARRAYS, JSONTrajectory, StoredTrajectory
from service.status import ACTIVE, FAILED, QUEUED, SUCCEEDED, TERMINAL

from .database import (
    ACTIVE_SQL,
    PURGE_BATCH,
    TERMINAL_SQL,
    CorruptResultError,
    Database,
    ListFilter,
    QueueFullError,
    TrajectoryReader,
    keyset_page,
    new_job_id,
    record_key,
    spent_key,
    utc_now,
)

_COLUMNS = ("id, status, progress, created_at, started_at, finished_at, request, error, outcome, "
            "idempotency_key, request_hash, attempts, owner, name, tags, provenance")
# A result larger than this is followed by a WAL checkpoint (Database.checkpoint).
LARGE_WRITE_BYTES = 1 << 20
# The same expression as the unique index jobs_owner_idempotency, so lookups use it.
_BY_KEY = "coalesce(owner, '') = coalesce(?, '') AND idempotency_key = ?"

__all__ = ["CorruptResultError", "JobRow", "JobStore", "QueueFullError"]


def _json_or_null(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    progress: float
    created_at: str                 # UTC ISO 8601 with Z, microseconds: sortable as text
    started_at: str | None
    finished_at: str | None
    request: bytes                  # the request body as JSON bytes, as accepted
    error: dict[str, Any] | None    # an RFC 9457 problem for failed jobs
    outcome: str | None             # converged | completed | diverged for succeeded jobs
    idempotency_key: str | None
    request_hash: str
    attempts: int                   # how many times a worker started the job
    owner: str | None = None        # id of the API key that created it (None: created with keys off)
    name: str | None = None         # the labels given with the request (not part of it)
    tags: tuple[str, ...] = ()
    provenance: dict[str, Any] | None = None  # what it ran with (the worker's, once one started it)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobStore:
    """Jobs and their results; thread-safe, blocking (call it from a worker thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _row(r: tuple) -> JobRow:
        return JobRow(id=r[0], status=r[1], progress=r[2], created_at=r[3], started_at=r[4],
                      finished_at=r[5], request=bytes(r[6]),
                      error=orjson.loads(r[7]) if r[7] is not None else None, outcome=r[8],
                      idempotency_key=r[9], request_hash=r[10], attempts=r[11], owner=r[12], name=r[13],
                      tags=tuple(orjson.loads(r[14])) if r[14] else (),
                      provenance=orjson.loads(r[15]) if r[15] else None)

    def get(self, job_id: str) -> JobRow | None:
        r = self.db.connection().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(r) if r else None

    def by_idempotency_key(self, idempotency_key: str, owner: str | None = None) -> JobRow | None:
        """The job this owner created with this Idempotency-Key, if any (keys are per owner). IdempotencyKeySpent
        when the key created a job that has since been deleted (keys outlive their jobs: DLNSIM_IDEMPOTENCY_KEEP_HOURS)."""
        conn = self.db.connection()
        r = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {_BY_KEY}", (owner, idempotency_key)).fetchone()
        if r is None:
            spent_key(conn, "simulation", idempotency_key, owner)
        return self._row(r) if r else None

    def active_cost(self, owner: str | None = None) -> tuple[float, int]:
        """(estimated FLOPs, most bytes their results store) of the queued and running jobs (of ``owner``)."""
        where, args = (f"status IN {ACTIVE_SQL}", ()) if owner is None else (
            f"owner = ? AND status IN {ACTIVE_SQL}", (owner,))
        flops, expected = self.db.connection().execute(
            f"SELECT coalesce(sum(cost_flops), 0), coalesce(sum(expected_bytes), 0) FROM jobs WHERE {where}",
            args).fetchone()
        return float(flops), int(expected)

    def stored_bytes(self, owner: str | None = None) -> int:
        """Bytes of stored results (of ``owner``'s jobs)."""
        if owner is None:
            return int(self.db.connection().execute("SELECT coalesce(sum(size), 0) FROM results").fetchone()[0])
        return int(self.db.connection().execute(
            "SELECT coalesce(sum(r.size), 0) FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.owner = ?",
            (owner,)).fetchone()[0])

    def list(self, status: str | None = None, page_size: int = 50,
             page_token: str | None = None, owner: str | None = None) -> tuple[list[JobRow], str | None]:
        """Newest first; ``next_token`` is None on the last page. Keyset paging on (created_at, id),
        so pages stay consistent while jobs are added (new jobs land before the first page).
        With ``owner``, only that owner's jobs."""
        return keyset_page(self.db.connection(), "jobs", _COLUMNS, self._row, status, page_size, page_token, owner)

    def unfinished(self) -> list[JobRow]:
        """Jobs left queued or running (e.g. by a crash), oldest first: the ones to resubmit."""
        cur = self.db.connection().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN {ACTIVE_SQL} ORDER BY created_at, id")
        return [self._row(r) for r in cur]

    def count_active(self, owner: str | None = None) -> int:
        """Jobs queued or running (with ``owner``, only that owner's)."""
        if owner is None:
            return self.db.connection().execute(
                f"SELECT count(*) FROM jobs WHERE status IN {ACTIVE_SQL}").fetchone()[0]
        return self.db.connection().execute(
            f"SELECT count(*) FROM jobs WHERE owner = ? AND status IN {ACTIVE_SQL}", (owner,)).fetchone()[0]

    @contextmanager
    def open_result(self, job_id: str) -> Iterator[StoredTrajectory | JSONTrajectory | None]:
        """The job's stored trajectory, opened in this thread for the block's length (None: no result, the job
        has not succeeded). CorruptResultError when its bytes do not decode."""
        with self.db.open_trajectory("results", "job_id = ?", (job_id,), job_id) as stored:
            yield stored

    def result_reader(self, job_id: str) -> TrajectoryReader:
        """The job's stored trajectory on a connection of its own, for a streamed response (close it when done)."""
        return self.db.trajectory_reader("results", "job_id = ?", (job_id,), job_id)

    # -- writing ---------------------------------------------------------------------------------

    def create(self, request_json: bytes, request_hash: str,
               idempotency_key: str | None = None, owner: str | None = None, *,
               max_active: int | None = None, name: str | None = None, tags: Sequence[str] = (),
               provenance: Mapping[str, Any] | None = None, expected_bytes: int = 0, cost_flops: float = 0.0
               ) -> tuple[JobRow, bool]:
        """Insert a queued job; with an idempotency key this owner already used, return that job and False.

        The caller compares ``row.request_hash`` with its own to tell a replay from a conflict.
        The unique index on (owner, key) makes concurrent creates with one key yield exactly one row;
        two owners' equal keys are unrelated. With ``max_active``, QueueFullError when that many jobs are
        already queued or running (checked in the write transaction, so concurrent creates cannot
        overshoot it; a replay of a used idempotency key is still answered). ``name`` and ``tags`` are stored
        beside the request; ``provenance`` is what is known of the run before a worker starts it (its precision).
        ``expected_bytes`` and ``cost_flops`` are what admission estimated (service/jobs/admission.py): its results'
        most bytes and its run's FLOPs.
        """
        job_id = new_job_id()
        try:
            with self.db.write() as conn:
                if max_active is not None:
                    active = conn.execute(
                        f"SELECT count(*) FROM jobs WHERE status IN {ACTIVE_SQL}").fetchone()[0]
                    if active >= max_active and (idempotency_key is None or conn.execute(
                            f"SELECT 1 FROM jobs WHERE {_BY_KEY}",
                            (owner, idempotency_key)).fetchone() is None):
                        raise QueueFullError(active, max_active)
                conn.execute(
                    "INSERT INTO jobs (id, status, progress, created_at, request, request_hash, "
                    "idempotency_key, owner, name, tags, provenance, expected_bytes, cost_flops) "
                    "VALUES (?, 'queued', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, utc_now(), bytes(request_json), request_hash, idempotency_key, owner, name,
                     _json_or_null(list(tags) or None), _json_or_null(provenance), int(expected_bytes),
                     float(cost_flops)))
                if idempotency_key is not None:
                    spent_key(conn, "simulation", idempotency_key, owner)  # deleted meanwhile: not run again
                    record_key(conn, "simulation", idempotency_key, owner, job_id, request_hash)
        except sqlite3.IntegrityError:
            if idempotency_key is None:
                raise
            # The same expression as the unique index, so the lookup uses it.
            r = self.db.connection().execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE {_BY_KEY}",
                (owner, idempotency_key)).fetchone()
            if r is None:  # the other row was deleted in between: its key says so
                spent_key(self.db.connection(), "simulation", idempotency_key, owner)
                return self.create(request_json, request_hash, idempotency_key, owner, max_active=max_active,
                                   name=name, tags=tags, provenance=provenance, expected_bytes=expected_bytes,
                                   cost_flops=cost_flops)
            return self._row(r), False
        row = self.get(job_id)
        assert row is not None
        return row, True

    def mark_running(self, job_id: str, provenance: Mapping[str, Any] | None = None) -> bool:
        """A worker started the job (again, after a worker death): count the attempt, reset progress, and merge
        what that worker runs it with into its provenance."""
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'running', progress = 0, attempts = attempts + 1, "
                "started_at = coalesce(started_at, ?), provenance = json_patch(coalesce(provenance, '{}'), ?) "
                f"WHERE id = ? AND status IN {ACTIVE_SQL}",
                (utc_now(), orjson.dumps(dict(provenance or {})).decode(), job_id))
        return cur.rowcount == 1

    def list_filtered(self, filters: ListFilter, page_size: int = 50, page_token: str | None = None,
                      owner: str | None = None) -> tuple[list[JobRow], str | None]:
        """``list`` with a ``ListFilter`` (status, name, tag, method, created after)."""
        return keyset_page(self.db.connection(), "jobs", _COLUMNS, self._row, filters, page_size, page_token, owner)

    def set_progress(self, job_id: str, progress: float) -> bool:
        return self.set_progress_many({job_id: progress}) == 1

    def set_progress_many(self, progress: Mapping[str, float]) -> int:
        """Progress of running jobs in one transaction (clamped to [0, 1]); returns rows changed."""
        if not progress:
            return 0
        changed = 0
        with self.db.write() as conn:
            for job_id, p in progress.items():
                p = min(max(float(p), 0.0), 1.0)
                changed += conn.execute("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                                        (p, job_id)).rowcount
        return changed

    def finish(self, job_id: str, result: bytes, outcome: str, *, codec: str = ARRAYS) -> bool:
        """Store the result (the worker's packed trajectory, ``service.codec.pack``) and mark the job succeeded,
        if it is still queued or running."""
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'succeeded', progress = 1, outcome = ?, error = NULL, "
                f"finished_at = ? WHERE id = ? AND status IN {ACTIVE_SQL}",
                (outcome, utc_now(), job_id))
            if cur.rowcount != 1:
                return False
            conn.execute("INSERT OR REPLACE INTO results (job_id, codec, size, data) VALUES (?, ?, ?, ?)",
                         (job_id, codec, len(result), bytes(result)))
        if len(result) > LARGE_WRITE_BYTES:
            self.db.checkpoint()  # so that the next writer resets the WAL this result went through
        return True

    def keep_stopped(self, job_id: str, result: bytes, *, codec: str = ARRAYS) -> bool:
        """Store the records a cancelled job had made when it stopped (a packed trajectory, outcome "stopped"), if the
        job is cancelled and has no result yet."""
        with self.db.write() as conn:
            cur = conn.execute("UPDATE jobs SET outcome = 'stopped' WHERE id = ? AND status = 'cancelled' AND NOT "
                               "EXISTS (SELECT 1 FROM results WHERE job_id = ?)", (job_id, job_id))
            if cur.rowcount != 1:
                return False
            conn.execute("INSERT INTO results (job_id, codec, size, data) VALUES (?, ?, ?, ?)",
                         (job_id, codec, len(result), bytes(result)))
        return True

    def fail(self, job_id: str, problem: Mapping[str, Any]) -> bool:
        """Mark the job failed with an RFC 9457 problem, if it is still queued or running."""
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? "
                f"WHERE id = ? AND status IN {ACTIVE_SQL}",
                (orjson.dumps(dict(problem)).decode(), utc_now(), job_id))
        return cur.rowcount == 1

    def recover_corrupt_result(self, job_id: str, problem: Mapping[str, Any], max_attempts: int) -> str | None:
        """A succeeded job whose stored result is unreadable: drop the result and queue the job again
        (runs are seeded, so the rerun stores the same trajectory), or, once it has been started
        ``max_attempts`` times, mark it failed with ``problem``. Returns the new status, or None if the
        job is not succeeded (any more: another request recovered it first)."""
        with self.db.write() as conn:
            r = conn.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None or r[0] != SUCCEEDED:
                return None
            status = QUEUED if r[1] < max_attempts else FAILED
            conn.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
            conn.execute("UPDATE jobs SET status = ?, progress = 0, outcome = NULL, error = ?, finished_at = ? "
                         "WHERE id = ?", (status, orjson.dumps(dict(problem)).decode() if status == FAILED else None,
                                          utc_now() if status == FAILED else None, job_id))
        return status

    def mark_cancelled(self, job_id: str) -> str | None:
        """Cancel a queued or running job. Returns the status it had (truthy) or None if it was
        unknown or already finished (then nothing changes)."""
        with self.db.write() as conn:
            r = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None or r[0] not in ACTIVE:
                return None
            conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                         (utc_now(), job_id))
        return r[0]

    def delete(self, job_id: str) -> bool:
        """Remove the job and its result; the caller cancels a running job first."""
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return cur.rowcount == 1

    def purge_finished(self, before: str, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` finished jobs (succeeded, failed, cancelled) whose finished_at is
        earlier than ``before`` (a ``utc_now()``-format timestamp), with their results (ON DELETE
        CASCADE); returns how many. Queued and running jobs are never touched."""
        with self.db.write() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < ? "
                f"AND status IN {TERMINAL_SQL} ORDER BY finished_at LIMIT ?)",
                (before, int(limit)))
        return cur.rowcount
