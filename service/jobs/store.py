"""The job store: one SQLite file that is the source of truth for every simulation job.

    store = JobStore(settings.data_dir / "dlnsim.sqlite3")
    row, created = store.create(request_json, request_hash, idempotency_key="abc")

Durability: WAL journal with ``synchronous=FULL``, so a commit returns only once the WAL is fsynced
and an accepted job (a 202) survives a crash or power loss. The API is synchronous (the event loop
calls it through a thread pool); every thread gets its own connection, which WAL lets read while
another writes. Writes use ``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead
of failing on a read→write lock upgrade.

Status transitions are guarded in SQL: only ``queued``/``running`` jobs move, so a job cancelled while
its worker finishes keeps ``cancelled`` and a finished job is never overwritten.

Results are stored compressed (zstd level 1 with a content checksum) in their own table: on a 16 MB
trajectory document level 1 compressed 2.3× at 350 MB/s and decompressed at 950 MB/s, against
zlib level 1's 2.0× at 80/130 MB/s (measured on this project's 2-core machine).
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import zstandard

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

RESULT_CODEC = "zstd"
# Level 1: the fastest level compressed best on trajectory JSON (float text), see the module docstring.
_ZSTD_LEVEL = 1

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        status          TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
        progress        REAL NOT NULL DEFAULT 0,
        created_at      TEXT NOT NULL,
        started_at      TEXT,
        finished_at     TEXT,
        request         BLOB NOT NULL,
        request_hash    TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        error           TEXT,
        outcome         TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);
    CREATE INDEX jobs_status_newest ON jobs (status, created_at DESC, id DESC);
    CREATE TABLE results (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        codec  TEXT NOT NULL,
        size   INTEGER NOT NULL,
        data   BLOB NOT NULL
    );
    """,
    # 2: sweeps (service/jobs/sweeps_store.py). A point stores only its parameter overrides; its
    # request is the sweep's base with them applied. Deleting a sweep cascades to its points and
    # their kept trajectories.
    """
    CREATE TABLE sweeps (
        id          TEXT PRIMARY KEY,
        status      TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
        created_at  TEXT NOT NULL,
        started_at  TEXT,
        finished_at TEXT,
        request     BLOB NOT NULL,
        base        BLOB NOT NULL,
        keep        TEXT NOT NULL CHECK (keep IN ('summary','trajectories')),
        n_points    INTEGER NOT NULL
    );
    CREATE INDEX sweeps_newest ON sweeps (created_at DESC, id DESC);
    CREATE INDEX sweeps_status_newest ON sweeps (status, created_at DESC, id DESC);
    CREATE TABLE sweep_points (
        sweep_id    TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
        k           INTEGER NOT NULL,
        params      BLOB NOT NULL,
        group_key   TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        finished_at TEXT,
        outcome     TEXT,
        summary     BLOB,
        error       TEXT,
        PRIMARY KEY (sweep_id, k)
    );
    CREATE INDEX sweep_points_status ON sweep_points (sweep_id, status, k);
    CREATE TABLE sweep_trajectories (
        sweep_id TEXT NOT NULL,
        k        INTEGER NOT NULL,
        codec    TEXT NOT NULL,
        size     INTEGER NOT NULL,
        data     BLOB NOT NULL,
        PRIMARY KEY (sweep_id, k),
        FOREIGN KEY (sweep_id, k) REFERENCES sweep_points (sweep_id, k) ON DELETE CASCADE
    );
    """,
    # 3: the owner of each job and sweep (the API key's id, never the token; NULL while keys are off),
    # idempotency keys scoped per owner, and finished_at indexes for the retention purge. The old
    # idempotency_key column has a table-wide UNIQUE that SQLite cannot drop without rebuilding the
    # table (whose DROP TABLE would cascade-delete every result), so it is renamed, emptied and left
    # unused; the key moves to a new column under a per-owner unique index.
    """
    ALTER TABLE jobs RENAME COLUMN idempotency_key TO unscoped_idempotency_key;
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    UPDATE jobs SET idempotency_key = unscoped_idempotency_key, unscoped_idempotency_key = NULL
        WHERE unscoped_idempotency_key IS NOT NULL;
    CREATE UNIQUE INDEX jobs_owner_idempotency ON jobs (coalesce(owner, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_owner_newest ON jobs (owner, created_at DESC, id DESC);
    CREATE INDEX jobs_owner_status_newest ON jobs (owner, status, created_at DESC, id DESC);
    CREATE INDEX jobs_finished ON jobs (finished_at);
    ALTER TABLE sweeps ADD COLUMN owner TEXT;
    CREATE INDEX sweeps_owner_newest ON sweeps (owner, created_at DESC, id DESC);
    CREATE INDEX sweeps_owner_status_newest ON sweeps (owner, status, created_at DESC, id DESC);
    CREATE INDEX sweeps_finished ON sweeps (finished_at);
    """,
    # 4: Idempotency-Key on POST /v1/sweeps (service/jobs/sweeps_store.py create_or_get), scoped per owner
    # like the jobs' keys; request_hash is the sha256 of the canonical SweepRequest. Sweeps stored before
    # this have neither (NULL): they were created without a key, so nothing looks them up by one.
    """
    ALTER TABLE sweeps ADD COLUMN idempotency_key TEXT;
    ALTER TABLE sweeps ADD COLUMN request_hash TEXT;
    CREATE UNIQUE INDEX sweeps_owner_idempotency ON sweeps (coalesce(owner, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = ("id, status, progress, created_at, started_at, finished_at, request, error, outcome, "
            "idempotency_key, request_hash, attempts, owner")
# Purges delete this many rows per transaction, so API writes interleave with a large purge.
PURGE_BATCH = 200


class InvalidPageToken(ValueError):
    """A page_token that this store did not issue."""


class CorruptResultError(RuntimeError):
    """A stored result that fails to decompress or to match its recorded size."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"stored result of job {job_id} is corrupt: {reason}")
        self.job_id = job_id
        self.reason = reason


class QueueFullError(RuntimeError):
    """``active`` jobs are queued or running, at or above the ``limit`` a create was given."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} jobs are queued or running, the limit is {limit}")
        self.active, self.limit = active, limit


class StorageFullError(sqlite3.OperationalError):
    """A write refused because the store's disk (or its DLNSIM_STORE_MAX_BYTES cap) is full; the
    transaction was rolled back, nothing was written. Retry once space is freed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the job store {path} is full: {reason}")
        self.path = path


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

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def utc_now() -> str:
    """Now as fixed-width UTC ISO 8601 with microseconds and Z (text order = time order)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_id_lock = threading.Lock()
_last_id = 0


def new_job_id() -> str:
    """32 hex digits like a uuid4's, but time-ordered (a ULID's layout): 48-bit milliseconds then
    80 random bits; within one millisecond the previous id + 1, so ids from one process increase."""
    global _last_id
    with _id_lock:
        value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    return f"{value:032x}"


def compress_result(data: bytes) -> bytes:
    """zstd frame with the content size and a checksum (corruption is detected on read)."""
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compress(data)


def decompress_result(blob: bytes, codec: str = RESULT_CODEC) -> bytes:
    if codec != RESULT_CODEC:
        raise ValueError(f"unknown result codec {codec!r}")
    return zstandard.ZstdDecompressor().decompress(blob)


def encode_page_token(created_at: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at},{job_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created_at, job_id = text.split(",")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if len(created_at) != 27 or not created_at.endswith("Z") or not job_id:
        raise InvalidPageToken("page_token is not one this service issued")
    return created_at, job_id


def keyset_page(conn, table: str, columns: str, make_row, status: str | None, page_size: int,
                page_token: str | None, owner: str | None) -> tuple[list, str | None]:
    """One page of ``table`` newest first, keyset-paged on (created_at, id); shared by jobs and sweeps."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    where, args = [], []
    if owner is not None:
        where.append("owner = ?")
        args.append(owner)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if page_token is not None:
        where.append("(created_at, id) < (?, ?)")
        args.extend(decode_page_token(page_token))
    sql = f"SELECT {columns} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    rows = [make_row(r) for r in conn.execute(sql, (*args, page_size + 1)).fetchall()]
    if len(rows) > page_size:
        rows = rows[:page_size]
        return rows, encode_page_token(rows[-1].created_at, rows[-1].id)
    return rows, None


class JobStore:
    """Jobs and their results in SQLite; thread-safe, blocking (call it from a worker thread)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._max_bytes = max_bytes  # cap on the database file (PRAGMA max_page_count); None = the disk's
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._migrate()

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("job store is closed")
        if getattr(self._local, "nowait", False):
            return self._nowait_conn()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; _write opens BEGIN IMMEDIATE itself.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if self._max_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(int(self._max_bytes) // page_size, 1)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction. A full disk (SQLITE_FULL, in a statement or at COMMIT) rolls
        it back and raises StorageFullError; the connection is always left outside a transaction."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                # A COMMIT that fails (disk full while appending to the WAL) leaves the transaction
                # open; rolled back below, or the thread's next BEGIN would fail for ever.
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
                raise StorageFullError(self.path, str(exc)) from exc
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back by itself (it does on some SQLITE_FULL/IOERR errors).
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if conn.in_transaction:  # cannot happen short of a broken file: never reuse such a connection
            self._local.conn = None
            with suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Close every thread's connection (the WAL is checkpointed by the last one)."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # closed from another thread already
                pass

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this "
                                   f"service's {SCHEMA_VERSION}: upgrade the service")
            for script in _MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                # Only when it changes: a start that writes nothing still works on a full disk.
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _row(r: tuple) -> JobRow:
        return JobRow(id=r[0], status=r[1], progress=r[2], created_at=r[3], started_at=r[4],
                      finished_at=r[5], request=bytes(r[6]),
                      error=orjson.loads(r[7]) if r[7] is not None else None, outcome=r[8],
                      idempotency_key=r[9], request_hash=r[10], attempts=r[11], owner=r[12])

    def get(self, job_id: str) -> JobRow | None:
        r = self._conn().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(r) if r else None

    def by_idempotency_key(self, idempotency_key: str, owner: str | None = None) -> JobRow | None:
        """The job this owner created with this Idempotency-Key, if any (keys are per owner)."""
        r = self._conn().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE coalesce(owner, '') = coalesce(?, '') AND idempotency_key = ?",
            (owner, idempotency_key)).fetchone()
        return self._row(r) if r else None

    @contextmanager
    def nowait(self) -> Iterator[None]:
        """Reads in this block, on this thread, never wait for a lock: they run on the thread's own
        query-only connection whose busy timeout is 0, so a lock makes them raise sqlite3.OperationalError
        ("database is locked") at once; the caller then retries in a worker thread, where reads wait.

            with store.nowait():
                row = store.get(job_id)

        For the API's event loop, which must never block: in WAL mode readers do not wait for writers, so
        a lock only happens in rare moments (e.g. a connection rebuilding the WAL index after a crash).
        Why reads on the loop at all: a point read takes ~11 µs, a thread-pool hop ~0.1 ms of CPU and two
        context switches, most of a status read's cost (bench/load.py)."""
        previous = getattr(self._local, "nowait", False)
        self._local.nowait = True
        try:
            yield
        finally:
            self._local.nowait = previous

    def _nowait_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "nowait_conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute("PRAGMA query_only = ON")  # a write in a nowait block is a bug: it fails
            self._local.nowait_conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def list(self, status: str | None = None, page_size: int = 50,
             page_token: str | None = None, owner: str | None = None) -> tuple[list[JobRow], str | None]:
        """Newest first; ``next_token`` is None on the last page. Keyset paging on (created_at, id),
        so pages stay consistent while jobs are added (new jobs land before the first page).
        With ``owner``, only that owner's jobs."""
        return keyset_page(self._conn(), "jobs", _COLUMNS, self._row, status, page_size, page_token, owner)

    def unfinished(self) -> list[JobRow]:
        """Jobs left queued or running (e.g. by a crash), oldest first: the ones to resubmit."""
        cur = self._conn().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id")
        return [self._row(r) for r in cur]

    def count_active(self, owner: str | None = None) -> int:
        """Jobs queued or running (with ``owner``, only that owner's)."""
        if owner is None:
            return self._conn().execute(
                "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        return self._conn().execute(
            "SELECT count(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')", (owner,)).fetchone()[0]

    def result(self, job_id: str) -> bytes | None:
        """The trajectory document as JSON bytes; None when the job has no result (not succeeded).

        Raises CorruptResultError when the stored bytes do not decompress to their recorded size.
        """
        r = self._conn().execute("SELECT codec, size, data FROM results WHERE job_id = ?",
                                 (job_id,)).fetchone()
        if r is None:
            return None
        codec, size, blob = r
        try:
            data = decompress_result(bytes(blob), codec)
        except (zstandard.ZstdError, ValueError) as exc:
            raise CorruptResultError(job_id, str(exc)) from None
        if len(data) != size:
            raise CorruptResultError(job_id, f"{len(data)} bytes instead of {size}")
        return data

    def ping(self) -> bool:
        try:
            return self._conn().execute("SELECT 1").fetchone() == (1,)
        except (sqlite3.Error, RuntimeError):
            return False

    # -- writing ---------------------------------------------------------------------------------

    def create(self, request_json: bytes, request_hash: str,
               idempotency_key: str | None = None, owner: str | None = None, *,
               max_active: int | None = None) -> tuple[JobRow, bool]:
        """Insert a queued job; with an idempotency key this owner already used, return that job and False.

        The caller compares ``row.request_hash`` with its own to tell a replay from a conflict.
        The unique index on (owner, key) makes concurrent creates with one key yield exactly one row;
        two owners' equal keys are unrelated. With ``max_active``, QueueFullError when that many jobs are
        already queued or running (checked in the write transaction, so concurrent creates cannot
        overshoot it; a replay of a used idempotency key is still answered).
        """
        job_id = new_job_id()
        try:
            with self._write() as conn:
                if max_active is not None:
                    active = conn.execute(
                        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
                    if active >= max_active and (idempotency_key is None or conn.execute(
                            "SELECT 1 FROM jobs WHERE coalesce(owner, '') = coalesce(?, '') AND idempotency_key = ?",
                            (owner, idempotency_key)).fetchone() is None):
                        raise QueueFullError(active, max_active)
                conn.execute(
                    "INSERT INTO jobs (id, status, progress, created_at, request, request_hash, "
                    "idempotency_key, owner) VALUES (?, 'queued', 0, ?, ?, ?, ?, ?)",
                    (job_id, utc_now(), bytes(request_json), request_hash, idempotency_key, owner))
        except sqlite3.IntegrityError:
            if idempotency_key is None:
                raise
            # The same expression as the unique index, so the lookup uses it.
            r = self._conn().execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE coalesce(owner, '') = coalesce(?, '') AND idempotency_key = ?",
                (owner, idempotency_key)).fetchone()
            if r is None:  # the other row was deleted in between: try once more as a fresh job
                return self.create(request_json, request_hash, idempotency_key, owner, max_active=max_active)
            return self._row(r), False
        row = self.get(job_id)
        assert row is not None
        return row, True

    def mark_running(self, job_id: str) -> bool:
        """A worker started the job (again, after a worker death): count the attempt, reset progress."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'running', progress = 0, attempts = attempts + 1, "
                "started_at = coalesce(started_at, ?) WHERE id = ? AND status IN ('queued', 'running')",
                (utc_now(), job_id))
        return cur.rowcount == 1

    def set_progress(self, job_id: str, progress: float) -> bool:
        return self.set_progress_many({job_id: progress}) == 1

    def set_progress_many(self, progress: Mapping[str, float]) -> int:
        """Progress of running jobs in one transaction (clamped to [0, 1]); returns rows changed."""
        if not progress:
            return 0
        changed = 0
        with self._write() as conn:
            for job_id, p in progress.items():
                p = min(max(float(p), 0.0), 1.0)
                changed += conn.execute("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                                        (p, job_id)).rowcount
        return changed

    def finish(self, job_id: str, result: bytes, outcome: str, *, compressed: bool = False,
               size: int | None = None) -> bool:
        """Store the result and mark the job succeeded, if it is still queued or running.

        ``result`` is the trajectory JSON, or with ``compressed=True`` the output of
        ``compress_result`` (the worker compresses, so the API process does not), whose
        uncompressed ``size`` is then read from the zstd frame header unless given.
        """
        if compressed:
            blob = bytes(result)
            if size is None:
                size = zstandard.frame_content_size(blob)
                if size < 0:
                    raise ValueError("compressed result has no content size in its frame header")
        else:
            size, blob = len(result), compress_result(bytes(result))
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'succeeded', progress = 1, outcome = ?, error = NULL, "
                "finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (outcome, utc_now(), job_id))
            if cur.rowcount != 1:
                return False
            conn.execute("INSERT OR REPLACE INTO results (job_id, codec, size, data) VALUES (?, ?, ?, ?)",
                         (job_id, RESULT_CODEC, size, blob))
        return True

    def fail(self, job_id: str, problem: Mapping[str, Any]) -> bool:
        """Mark the job failed with an RFC 9457 problem, if it is still queued or running."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (orjson.dumps(dict(problem)).decode(), utc_now(), job_id))
        return cur.rowcount == 1

    def recover_corrupt_result(self, job_id: str, problem: Mapping[str, Any], max_attempts: int) -> str | None:
        """A succeeded job whose stored result is unreadable: drop the result and queue the job again
        (runs are seeded, so the rerun stores the same trajectory), or, once it has been started
        ``max_attempts`` times, mark it failed with ``problem``. Returns the new status, or None if the
        job is not succeeded (any more: another request recovered it first)."""
        with self._write() as conn:
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
        with self._write() as conn:
            r = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None or r[0] not in ACTIVE:
                return None
            conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                         (utc_now(), job_id))
        return r[0]

    def delete(self, job_id: str) -> bool:
        """Remove the job and its result; the caller cancels a running job first."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return cur.rowcount == 1

    def purge_finished(self, before: str, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` finished jobs (succeeded, failed, cancelled) whose finished_at is
        earlier than ``before`` (a ``utc_now()``-format timestamp), with their results (ON DELETE
        CASCADE); returns how many. Queued and running jobs are never touched."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < ? "
                "AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?)",
                (before, int(limit)))
        return cur.rowcount
