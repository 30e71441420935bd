"""Sweeps in the job store's SQLite file: the sweep, one row per point, and kept trajectories.

    sweeps = SweepStore(db)                   # the JobStore's peer on the same database
    row = sweeps.create(request_json, base_json, "summary", [(params_json, group_key), ...])
    row, created = sweeps.create_or_get(request_json, base_json, "summary", points, owner,
                                        request_hash=digest, idempotency_key="abc")

The sweep tables live in the service's one database file (``database.Database``, migration 2), beside the
jobs.

Durability is the JobStore's (WAL, synchronous=FULL): a created sweep (a 202) survives a crash, and
each chunk's points are written in one transaction as the chunk finishes, so after a restart only
the points still queued or running are run again. Transitions are guarded in SQL like the jobs':
only queued/running points and sweeps move, so a point finished twice (a chunk rerun after a worker
death whose first run's result arrived too) is recorded once, and a cancelled sweep stays cancelled.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from service.codec import ARRAYS, JSONTrajectory, StoredTrajectory
from service.status import ACTIVE, FAILED, POINT_FINISHED, STATUSES, SUCCEEDED

from .database import (
    ACTIVE_SQL,
    PURGE_BATCH,
    TERMINAL_SQL,
    Database,
    InvalidPageToken,
    ListFilter,
    QueueFullError,
    TrajectoryReader,
    keyset_page,
    new_job_id,
    record_key,
    spent_key,
    utc_now,
)

_SWEEP_COLUMNS = ("id, status, created_at, started_at, finished_at, request, base, keep, n_points, owner, "
                  "idempotency_key, request_hash, name, tags, provenance")
# The same expression as the unique index sweeps_owner_idempotency (migration 4), so lookups use it.
_BY_KEY = "coalesce(owner, '') = coalesce(?, '') AND idempotency_key = ?"
_POINT_COLUMNS = ("sweep_id, k, params, group_key, status, attempts, finished_at, outcome, summary, error, "
                  "EXISTS (SELECT 1 FROM sweep_trajectories t WHERE t.sweep_id = p.sweep_id AND t.k = p.k)")


@dataclass(frozen=True)
class SweepRow:
    id: str
    status: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: bytes          # the canonical SweepRequest JSON (base with defaults filled in)
    base: bytes             # the canonical base SimulationRequest JSON the points' overrides apply to
    keep: str               # summary | trajectories
    n_points: int
    counts: dict[str, int]  # points per status
    owner: str | None = None  # id of the API key that created it (None: created with keys off)
    idempotency_key: str | None = None  # the Idempotency-Key it was created with, scoped per owner
    request_hash: str | None = None     # sha256 of ``request`` (None for sweeps stored before migration 4)
    name: str | None = None             # the labels given with the request (not part of it)
    tags: tuple[str, ...] = ()
    provenance: dict[str, Any] | None = None  # what its first chunk ran with

    @property
    def terminal(self) -> bool:
        return self.status not in ACTIVE


@dataclass(frozen=True)
class PointRow:
    sweep_id: str
    k: int
    params: bytes                   # {"init.scale": 0.1, ...} as JSON
    group_key: str                  # points with equal keys can run as one batch
    status: str
    attempts: int                   # chunk runs that included this point
    finished_at: str | None
    outcome: str | None
    summary: dict[str, Any] | None  # final loss, learning times, ... (see service.jobs.sweeps)
    error: dict[str, Any] | None    # an RFC 9457 problem for failed points
    has_trajectory: bool


def encode_point_token(k: int) -> str:
    return base64.urlsafe_b64encode(f"k{k}".encode()).decode().rstrip("=")


def decode_point_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not text.startswith("k"):
            raise ValueError
        return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPageToken("page_token is not one this service issued") from None


class SweepStore:
    """Sweeps and their points; thread-safe and blocking, like its peer the JobStore."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------------------------

    def _counts(self, sweep_id: str) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.db.connection().execute(
                "SELECT status, count(*) FROM sweep_points WHERE sweep_id = ? GROUP BY status", (sweep_id,)):
            counts[status] = n
        return counts

    def _sweep(self, r: tuple) -> SweepRow:
        return SweepRow(id=r[0], status=r[1], created_at=r[2], started_at=r[3], finished_at=r[4],
                        request=bytes(r[5]), base=bytes(r[6]), keep=r[7], n_points=r[8], counts=self._counts(r[0]),
                        owner=r[9], idempotency_key=r[10], request_hash=r[11], name=r[12],
                        tags=tuple(orjson.loads(r[13])) if r[13] else (),
                        provenance=orjson.loads(r[14]) if r[14] else None)

    @staticmethod
    def _point(r: tuple) -> PointRow:
        return PointRow(sweep_id=r[0], k=r[1], params=bytes(r[2]), group_key=r[3], status=r[4], attempts=r[5],
                        finished_at=r[6], outcome=r[7], summary=orjson.loads(r[8]) if r[8] is not None else None,
                        error=orjson.loads(r[9]) if r[9] is not None else None, has_trajectory=bool(r[10]))

    def get(self, sweep_id: str) -> SweepRow | None:
        r = self.db.connection().execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        return self._sweep(r) if r else None

    def list_filtered(self, filters: ListFilter, page_size: int = 50, page_token: str | None = None,
                      owner: str | None = None) -> tuple[list[SweepRow], str | None]:
        """``list`` with a ``ListFilter`` (status, name, tag, the base's method, created after)."""
        return keyset_page(self.db.connection(), "sweeps", _SWEEP_COLUMNS, self._sweep, filters, page_size,
                           page_token, owner, method_path="$.base.training.method")

    def list(self, status: str | None = None, page_size: int = 50,
             page_token: str | None = None, owner: str | None = None) -> tuple[list[SweepRow], str | None]:
        """Newest first, keyset paging on (created_at, id) like JobStore.list; with ``owner``, only its sweeps."""
        return keyset_page(self.db.connection(), "sweeps", _SWEEP_COLUMNS, self._sweep, status, page_size, page_token, owner)

    def active_cost(self, owner: str | None = None) -> tuple[float, int]:
        """(estimated FLOPs, most bytes their results store) of the queued and running sweeps (of ``owner``)."""
        where, args = (f"status IN {ACTIVE_SQL}", ()) if owner is None else (
            f"owner = ? AND status IN {ACTIVE_SQL}", (owner,))
        flops, expected = self.db.connection().execute(
            f"SELECT coalesce(sum(cost_flops), 0), coalesce(sum(expected_bytes), 0) FROM sweeps WHERE {where}",
            args).fetchone()
        return float(flops), int(expected)

    def stored_bytes(self, owner: str | None = None) -> int:
        """Bytes of kept point trajectories (of ``owner``'s sweeps)."""
        if owner is None:
            return int(self.db.connection().execute(
                "SELECT coalesce(sum(size), 0) FROM sweep_trajectories").fetchone()[0])
        return int(self.db.connection().execute(
            "SELECT coalesce(sum(t.size), 0) FROM sweep_trajectories t JOIN sweeps s ON s.id = t.sweep_id "
            "WHERE s.owner = ?", (owner,)).fetchone()[0])

    def by_idempotency_key(self, idempotency_key: str, owner: str | None = None) -> SweepRow | None:
        """The sweep this owner created with this Idempotency-Key, if any (keys are per owner); IdempotencyKeySpent
        when it created one that has since been deleted."""
        row = self._by_key(idempotency_key, owner)
        if row is None:
            spent_key(self.db.connection(), "sweep", idempotency_key, owner)
        return row

    def _by_key(self, idempotency_key: str, owner: str | None) -> SweepRow | None:
        r = self.db.connection().execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE {_BY_KEY}",
                                 (owner, idempotency_key)).fetchone()
        return self._sweep(r) if r else None

    def unfinished(self) -> list[SweepRow]:
        """Sweeps left queued or running (a crash, a restart), oldest first."""
        cur = self.db.connection().execute(
            f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE status IN {ACTIVE_SQL} ORDER BY created_at, id")
        return [self._sweep(r) for r in cur.fetchall()]

    def count_active(self, owner: str | None = None) -> int:
        """Sweeps queued or running (with ``owner``, only that owner's)."""
        if owner is None:
            return self.db.connection().execute(
                f"SELECT count(*) FROM sweeps WHERE status IN {ACTIVE_SQL}").fetchone()[0]
        return self.db.connection().execute(
            f"SELECT count(*) FROM sweeps WHERE owner = ? AND status IN {ACTIVE_SQL}", (owner,)).fetchone()[0]

    def pending_points(self, sweep_id: str) -> list[tuple[int, bytes, str]]:
        """(k, params, group_key) of the points still to run (queued, or running when the API died)."""
        cur = self.db.connection().execute(
            f"SELECT k, params, group_key FROM sweep_points WHERE sweep_id = ? AND status IN {ACTIVE_SQL} "
            "ORDER BY k", (sweep_id,))
        return [(k, bytes(p), g) for k, p, g in cur.fetchall()]

    def points(self, sweep_id: str, status: str | None = None, page_size: int = 100,
               page_token: str | None = None) -> tuple[list[PointRow], str | None]:
        """Points in index order, keyset paging on k."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        where, args = ["sweep_id = ?"], [sweep_id]
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if page_token is not None:
            where.append("k > ?")
            args.append(decode_point_token(page_token))
        sql = f"SELECT {_POINT_COLUMNS} FROM sweep_points p WHERE {' AND '.join(where)} ORDER BY k LIMIT ?"
        rows = [self._point(r) for r in self.db.connection().execute(sql, (*args, page_size + 1)).fetchall()]
        if len(rows) > page_size:
            rows = rows[:page_size]
            return rows, encode_point_token(rows[-1].k)
        return rows, None

    def point(self, sweep_id: str, k: int) -> PointRow | None:
        r = self.db.connection().execute(f"SELECT {_POINT_COLUMNS} FROM sweep_points p WHERE sweep_id = ? AND k = ?",
                                 (sweep_id, k)).fetchone()
        return self._point(r) if r else None

    @contextmanager
    def open_trajectory(self, sweep_id: str, k: int) -> Iterator[StoredTrajectory | JSONTrajectory | None]:
        """A kept point trajectory, opened in this thread for the block's length; None if none was kept.
        CorruptResultError when its bytes do not decode."""
        with self.db.open_trajectory("sweep_trajectories", "sweep_id = ? AND k = ?", (sweep_id, k),
                                     f"{sweep_id}/points/{k}") as stored:
            yield stored

    def trajectory_reader(self, sweep_id: str, k: int) -> TrajectoryReader:
        """A kept point trajectory on a connection of its own, for a streamed response (close it when done)."""
        return self.db.trajectory_reader("sweep_trajectories", "sweep_id = ? AND k = ?", (sweep_id, k),
                                         f"{sweep_id}/points/{k}")

    # -- writing ---------------------------------------------------------------------------------

    def create(self, request_json: bytes, base_json: bytes, keep: str,
               points: Sequence[tuple[bytes, str]], owner: str | None = None) -> SweepRow:
        """Insert a queued sweep and its points (k = position in ``points``) in one transaction."""
        return self.create_or_get(request_json, base_json, keep, points, owner)[0]

    def create_or_get(self, request_json: bytes, base_json: bytes, keep: str,
                      points: Sequence[tuple[bytes, str]], owner: str | None = None, *,
                      request_hash: str | None = None, idempotency_key: str | None = None,
                      max_active: int | None = None, name: str | None = None, tags: Sequence[str] = (),
                      provenance: Mapping[str, Any] | None = None, expected_bytes: int = 0, cost_flops: float = 0.0,
                      _retry: bool = True) -> tuple[SweepRow, bool]:
        """``create`` with an Idempotency-Key: if this owner already used the key, that sweep and False
        (nothing is inserted), else the new sweep and True.

        As for jobs (JobStore.create): the caller compares ``row.request_hash`` with its own to tell a
        replay from a conflict; the unique index on (owner, key) makes concurrent creates with one key
        yield exactly one sweep; with ``max_active``, QueueFullError when that many sweeps are queued or
        running, checked in the write transaction, except for a replay of a used key.
        """
        if keep not in ("summary", "trajectories"):
            raise ValueError(f"unknown keep {keep!r}")
        sweep_id = new_job_id()
        try:
            with self.db.write() as conn:
                if max_active is not None:
                    active = conn.execute(
                        f"SELECT count(*) FROM sweeps WHERE status IN {ACTIVE_SQL}").fetchone()[0]
                    if active >= max_active and (idempotency_key is None or conn.execute(
                            f"SELECT 1 FROM sweeps WHERE {_BY_KEY}", (owner, idempotency_key)).fetchone() is None):
                        raise QueueFullError(active, max_active)
                # The sweep row first: a used key fails here, before any point is written.
                conn.execute(
                    f"INSERT INTO sweeps ({_SWEEP_COLUMNS}) "
                    "VALUES (?, 'queued', ?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sweep_id, utc_now(), bytes(request_json), bytes(base_json), keep, len(points), owner,
                     idempotency_key, request_hash, name, orjson.dumps(list(tags)).decode() if tags else None,
                     orjson.dumps(dict(provenance)).decode() if provenance else None))
                conn.execute("UPDATE sweeps SET expected_bytes = ?, cost_flops = ? WHERE id = ?",
                             (int(expected_bytes), float(cost_flops), sweep_id))
                if idempotency_key is not None:
                    spent_key(conn, "sweep", idempotency_key, owner)  # deleted meanwhile: not run again
                    record_key(conn, "sweep", idempotency_key, owner, sweep_id, request_hash)
                conn.executemany(
                    "INSERT INTO sweep_points (sweep_id, k, params, group_key, status) VALUES (?, ?, ?, ?, 'queued')",
                    ((sweep_id, k, bytes(params), group) for k, (params, group) in enumerate(points)))
        except sqlite3.IntegrityError:
            if idempotency_key is None:
                raise
            existing = self._by_key(idempotency_key, owner)
            if existing is None and _retry:  # the other sweep was deleted in between: once more as a fresh one
                spent_key(self.db.connection(), "sweep", idempotency_key, owner)
                return self.create_or_get(request_json, base_json, keep, points, owner, request_hash=request_hash,
                                          idempotency_key=idempotency_key, max_active=max_active, name=name,
                                          tags=tags, provenance=provenance, expected_bytes=expected_bytes,
                                          cost_flops=cost_flops, _retry=False)
            if existing is None:
                raise
            return existing, False
        row = self.get(sweep_id)
        assert row is not None
        return row, True

    def mark_points_running(self, sweep_id: str, ks: Iterable[int], provenance: Mapping[str, Any] | None = None
                            ) -> int:
        """A worker started a chunk: its unfinished points run (one more attempt), the sweep runs; the first chunk's
        worker's ``provenance`` is merged into the sweep's."""
        ks = list(ks)
        with self.db.write() as conn:
            changed = sum(conn.execute(
                "UPDATE sweep_points SET status = 'running', attempts = attempts + 1 "
                f"WHERE sweep_id = ? AND k = ? AND status IN {ACTIVE_SQL}", (sweep_id, k)).rowcount
                for k in ks)
            if changed:
                conn.execute("UPDATE sweeps SET status = 'running', started_at = coalesce(started_at, ?) "
                             f"WHERE id = ? AND status IN {ACTIVE_SQL}", (utc_now(), sweep_id))
            if provenance:
                conn.execute("UPDATE sweeps SET provenance = json_patch(coalesce(provenance, '{}'), ?) WHERE id = ? "
                             "AND coalesce(json_extract(provenance, '$.dlnsim'), '') = ''",
                             (orjson.dumps(dict(provenance)).decode(), sweep_id))
        return changed

    def finish_points(self, sweep_id: str, results: Sequence[Mapping[str, Any]]) -> int:
        """Record a chunk's points in one transaction; returns how many were recorded.

        Each result: {"k", "status": "succeeded"|"failed", "outcome", "summary" (dict), "error" (problem
        dict), "trajectory" (the packed trajectory, ``service.codec.pack``, or None)}. Only points still queued or running change;
        the sweep ends (succeeded, or failed if any point failed) once no point is left to run.
        """
        now = utc_now()
        changed = 0
        with self.db.write() as conn:
            for res in results:
                k = int(res["k"])
                status = res["status"]
                if status not in POINT_FINISHED:
                    raise ValueError(f"a finished point is succeeded or failed, not {status!r}")
                summary = res.get("summary")
                error = res.get("error")
                cur = conn.execute(
                    "UPDATE sweep_points SET status = ?, outcome = ?, summary = ?, error = ?, finished_at = ? "
                    f"WHERE sweep_id = ? AND k = ? AND status IN {ACTIVE_SQL}",
                    (status, res.get("outcome"), orjson.dumps(summary) if summary is not None else None,
                     orjson.dumps(error).decode() if error is not None else None, now, sweep_id, k))
                if cur.rowcount != 1:
                    continue
                changed += 1
                blob = res.get("trajectory")
                if blob is not None:
                    conn.execute("INSERT OR REPLACE INTO sweep_trajectories (sweep_id, k, codec, size, data) "
                                 "VALUES (?, ?, ?, ?, ?)", (sweep_id, k, ARRAYS, len(blob), bytes(blob)))
            self._finalize(conn, sweep_id, now)
        return changed

    def fail_points(self, sweep_id: str, ks: Iterable[int], problem: Mapping[str, Any]) -> int:
        """Mark unfinished points failed with one problem (their chunk crashed or could not run)."""
        return self.finish_points(sweep_id, [{"k": k, "status": "failed", "error": dict(problem)} for k in ks])

    @staticmethod
    def _finalize(conn, sweep_id: str, now: str) -> None:
        left = conn.execute(f"SELECT count(*) FROM sweep_points WHERE sweep_id = ? AND status IN {ACTIVE_SQL}",
                            (sweep_id,)).fetchone()[0]
        if left:
            return
        failed = conn.execute("SELECT count(*) FROM sweep_points WHERE sweep_id = ? AND status = 'failed'",
                              (sweep_id,)).fetchone()[0]
        conn.execute("UPDATE sweeps SET status = ?, finished_at = ?, started_at = coalesce(started_at, ?) "
                     f"WHERE id = ? AND status IN {ACTIVE_SQL}",
                     (FAILED if failed else SUCCEEDED, now, now, sweep_id))

    def cancel(self, sweep_id: str) -> str | None:
        """Cancel a queued or running sweep and its unfinished points (finished points keep their
        results). Returns the status it had, or None if unknown or already finished."""
        now = utc_now()
        with self.db.write() as conn:
            r = conn.execute("SELECT status FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if r is None or r[0] not in ACTIVE:
                return None
            conn.execute("UPDATE sweeps SET status = 'cancelled', finished_at = ? WHERE id = ?", (now, sweep_id))
            conn.execute("UPDATE sweep_points SET status = 'cancelled', finished_at = ? "
                         f"WHERE sweep_id = ? AND status IN {ACTIVE_SQL}", (now, sweep_id))
        return r[0]

    def delete(self, sweep_id: str) -> bool:
        """Remove the sweep, its points and kept trajectories; the caller cancels it first."""
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))
        return cur.rowcount == 1

    def purge_finished(self, before: str, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` finished sweeps (succeeded, failed, cancelled) whose finished_at is
        earlier than ``before``, with their points and kept trajectories (ON DELETE CASCADE); returns
        how many sweeps. Queued and running sweeps are never touched."""
        with self.db.write() as conn:
            cur = conn.execute(
                "DELETE FROM sweeps WHERE id IN (SELECT id FROM sweeps WHERE finished_at < ? "
                f"AND status IN {TERMINAL_SQL} ORDER BY finished_at LIMIT ?)",
                (before, int(limit)))
        return cur.rowcount
