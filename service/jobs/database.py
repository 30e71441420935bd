"""The database: one SQLite file under DLNSIM_DATA_DIR that is the source of truth for simulations and sweeps.

    db = Database(settings.data_dir / "dlnsim.sqlite3")
    jobs, sweeps = JobStore(db), SweepStore(db)          # the two stores are peers on one database
    with db.write() as conn: ...                          # one atomic write transaction

Durability: WAL journal with ``synchronous=FULL``, so a commit returns only once the WAL is fsynced and an accepted
job (a 202) survives a crash or power loss. The API is synchronous (the event loop calls it through a thread pool);
every thread gets its own connection, which WAL lets read while another writes. Writes use ``BEGIN IMMEDIATE`` so
that two writers queue on the busy timeout instead of failing on a read→write lock upgrade.

A store that cannot be written is an answer, not a crash: a lock held past the busy timeout raises
``StoreBusyError`` (the API answers 503 with Retry-After, the engines retry the write), a full disk
``StorageFullError`` (507), damaged pages ``StoreDamagedError`` (503, and at start an exit message naming the file
and the recovery: the file is checked with ``PRAGMA quick_check`` when it is opened). The WAL is truncated to
``wal_max_bytes`` when it is reset, and a new file is created with ``auto_vacuum = INCREMENTAL`` so that
``reclaim`` gives the pages of deleted results back to the disk.

One file for both stores: one thing to back up, mount and migrate, and a single schema version guards both (an
older service refuses a newer file as a whole). Stored trajectories are read through SQLite's incremental blob
I/O (``open_trajectory``), so a request for one array of a large trajectory reads only that array's bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.codec import (
    CorruptTrajectory,
    JSONTrajectory,
    StoredTrajectory,
    open_stored,
)
from service.status import ACTIVE, STATUSES, TERMINAL, sql_in

_STATUS_CHECK = f"CHECK (status IN {sql_in(STATUSES)})"

# Each entry upgrades the schema by one version; never edit a released entry, append a new one. (The status CHECK
# is written from service.status: the text is the released one, ('queued','running','succeeded','failed','cancelled').)
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        status          TEXT NOT NULL {_STATUS_CHECK},
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
    f"""
    CREATE TABLE sweeps (
        id          TEXT PRIMARY KEY,
        status      TEXT NOT NULL {_STATUS_CHECK},
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
        status      TEXT NOT NULL {_STATUS_CHECK},
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
    # 5: labels and provenance. name and tags (a JSON array) as given with the request, never part of it (its
    # hash); provenance (a JSON object): the run's precision at creation, then what the worker that started it
    # ran with. Rows stored before this have none (NULL).
    """
    ALTER TABLE jobs ADD COLUMN name TEXT;
    ALTER TABLE jobs ADD COLUMN tags TEXT;
    ALTER TABLE jobs ADD COLUMN provenance TEXT;
    CREATE INDEX jobs_name ON jobs (name) WHERE name IS NOT NULL;
    ALTER TABLE sweeps ADD COLUMN name TEXT;
    ALTER TABLE sweeps ADD COLUMN tags TEXT;
    ALTER TABLE sweeps ADD COLUMN provenance TEXT;
    CREATE INDEX sweeps_name ON sweeps (name) WHERE name IS NOT NULL;
    """,
    # 6: admission (service/jobs/admission.py): what a job or sweep was admitted with, from the cost model
    # (service/limits.py request_cost): the most bytes its results store (expected_bytes: the disk and a key's
    # storage quota reserve them while it runs) and its estimated FLOPs (cost_flops: a key's compute budget counts
    # its active work). Rows stored before have 0: nothing reserved. And the idempotency keys themselves, kept for
    # at least DLNSIM_IDEMPOTENCY_KEEP_HOURS whatever becomes of what they created (retention, DELETE): a retry
    # with a key whose simulation was deleted is answered as such instead of running it again. owner '' = keys off.
    """
    ALTER TABLE jobs ADD COLUMN expected_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN cost_flops REAL NOT NULL DEFAULT 0;
    ALTER TABLE sweeps ADD COLUMN expected_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sweeps ADD COLUMN cost_flops REAL NOT NULL DEFAULT 0;
    CREATE TABLE idempotency_keys (
        owner        TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('simulation', 'sweep')),
        key          TEXT NOT NULL,
        resource_id  TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        PRIMARY KEY (owner, kind, key)
    );
    CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
    INSERT OR IGNORE INTO idempotency_keys
        SELECT coalesce(owner, ''), 'simulation', idempotency_key, id, request_hash, created_at
        FROM jobs WHERE idempotency_key IS NOT NULL;
    INSERT OR IGNORE INTO idempotency_keys
        SELECT coalesce(owner, ''), 'sweep', idempotency_key, id, coalesce(request_hash, ''), created_at
        FROM sweeps WHERE idempotency_key IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# SQL lists of the status sets, for ``status IN …``.
ACTIVE_SQL, TERMINAL_SQL = sql_in(ACTIVE), sql_in(TERMINAL)
# Purges delete this many rows per transaction, so API writes interleave with a large purge.
PURGE_BATCH = 200
# Room kept for status changes on a full disk (Database.release_reserve): hundreds of small transactions.
RESERVE_BYTES = 1 << 20


class InvalidPageToken(ValueError):
    """A page_token that this store did not issue."""


class CorruptResultError(RuntimeError):
    """A stored result that does not decode (a frame failing its checksum, sizes that disagree)."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"stored result of job {job_id} is corrupt: {reason}")
        self.job_id = job_id
        self.reason = reason


class QueueFullError(RuntimeError):
    """``active`` jobs are queued or running, at or above the ``limit`` a create was given."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} jobs are queued or running, the limit is {limit}")
        self.active, self.limit = active, limit


class IdempotencyKeySpent(RuntimeError):
    """An Idempotency-Key this owner used for a simulation or sweep that has since been deleted (DELETE, retention):
    the request it made was answered, and must not run again (the key is kept DLNSIM_IDEMPOTENCY_KEEP_HOURS)."""

    def __init__(self, key: str, kind: str, resource_id: str, created_at: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} created {kind} {resource_id} at {created_at}, which has since been "
                         "deleted")
        self.key, self.kind, self.resource_id, self.created_at = key, kind, resource_id, created_at


def spent_key(conn: sqlite3.Connection, kind: str, key: str, owner: str | None) -> None:
    """Raise IdempotencyKeySpent if ``key`` is recorded for ``owner`` (its resource being gone: the caller looked)."""
    r = conn.execute("SELECT resource_id, created_at FROM idempotency_keys WHERE owner = ? AND kind = ? AND key = ?",
                     (owner or "", kind, key)).fetchone()
    if r is not None:
        raise IdempotencyKeySpent(key, kind, r[0], r[1])


def record_key(conn: sqlite3.Connection, kind: str, key: str | None, owner: str | None, resource_id: str,
               request_hash: str | None) -> None:
    """Keep ``key`` (in the creating transaction): it outlives what it created for DLNSIM_IDEMPOTENCY_KEEP_HOURS."""
    if key is not None:
        conn.execute("INSERT OR REPLACE INTO idempotency_keys (owner, kind, key, resource_id, request_hash, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (owner or "", kind, key, resource_id, request_hash or "", utc_now()))


def rename_owners(db: Database, renames: dict[str, str]) -> int:
    """Give the jobs, sweeps and idempotency keys of owner id ``old`` the id ``new``, for each pair (unnamed API keys'
    ids when their form changes); writes only if some row has an old id, so an up-to-date store is not written."""
    tables = ("jobs", "sweeps", "idempotency_keys")
    conn = db.connection()
    todo = {old: new for old, new in renames.items() if old != new and any(
        conn.execute(f"SELECT 1 FROM {t} WHERE owner = ? LIMIT 1", (old,)).fetchone() for t in tables)}
    if not todo:
        return 0
    changed = 0
    with db.write() as w:
        for old, new in todo.items():
            for table in tables:
                changed += w.execute(f"UPDATE {table} SET owner = ? WHERE owner = ?", (new, old)).rowcount
    return changed


def purge_spent_keys(conn: sqlite3.Connection, before: str) -> int:
    """Forget keys recorded before ``before`` whose simulation or sweep no longer exists."""
    return conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = resource_id) "
        "AND NOT EXISTS (SELECT 1 FROM sweeps WHERE id = resource_id)", (before,)).rowcount


class StorageFullError(sqlite3.OperationalError):
    """A write refused because the store's disk (or its DLNSIM_STORE_MAX_BYTES cap) is full; the
    transaction was rolled back, nothing was written. Retry once space is freed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the job store {path} is full: {reason}")
        self.path = path


class StoreBusyError(sqlite3.OperationalError):
    """The store stayed locked by another connection (another process's transaction, a backup) for longer than the
    busy timeout; nothing was written. Retry later: the API answers 503 with Retry-After."""

    def __init__(self, path: Path, reason: str, timeout: float) -> None:
        super().__init__(f"the job store {path} stayed locked by another connection for more than {timeout:g} s "
                         f"(DLNSIM_STORE_BUSY_TIMEOUT_SECONDS): {reason}")
        self.path = path


def recovery_advice(path: Path) -> str:
    return (f"Stop the service and keep a copy of {path}; then either restore it from a backup, or recover what can "
            f"be read with the sqlite3 command-line tool: sqlite3 {path} .recover | sqlite3 {path}.recovered, and "
            f"move {path}.recovered to {path} (remove {path}-wal and {path}-shm first); or move the file away to start "
            "with an empty store")


class StoreDamagedError(sqlite3.DatabaseError):
    """The store's file is damaged (a page that does not decode, a header that is not SQLite's). Nothing can be
    trusted until it is repaired: the message names the file and the recovery."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the job store {path} is damaged ({reason}). {recovery_advice(path)}.")
        self.path, self.reason = path, reason


def classify(exc: BaseException, path: Path, busy_timeout: float) -> sqlite3.Error | None:
    """The typed error for an SQLite error whose cause the caller can act on (a full disk, a lock held too long, a
    damaged file), or None."""
    if isinstance(exc, StorageFullError | StoreBusyError | StoreDamagedError):
        return exc
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return StorageFullError(path, str(exc))
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreBusyError(path, str(exc), busy_timeout)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreDamagedError(path, str(exc))
    return None


log = logging.getLogger("dlnsim.store")
# Paths checked with PRAGMA quick_check in this process (python -m service checks before uvicorn starts the app,
# whose lifespan opens the same file again).
_VERIFIED: set[Path] = set()


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


def encode_page_token(created_at: str, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at},{row_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created_at, row_id = text.split(",")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if len(created_at) != 27 or not created_at.endswith("Z") or not row_id:
        raise InvalidPageToken("page_token is not one this service issued")
    return created_at, row_id


@dataclass(frozen=True)
class ListFilter:
    """What a list keeps: a status, a name, a tag, a method (the request's training.method), created after a time
    (a ``utc_now()``-format string, or a prefix of one such as 2026-12-06); None: anything."""

    status: str | None = None
    name: str | None = None
    tag: str | None = None
    method: str | None = None
    created_after: str | None = None

    def sql(self, method_path: str) -> tuple[list[str], list[Any]]:
        """WHERE clauses and their arguments; ``method_path``: the JSON path of training.method in ``request``."""
        where, args = [], []
        for clause, value in (("status = ?", self.status), ("name = ?", self.name),
                              ("EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?)", self.tag),
                              (f"json_extract(request, '{method_path}') = ?", self.method),
                              ("created_at > ?", self.created_after)):
            if value is not None:
                where.append(clause)
                args.append(value)
        return where, args


def keyset_page(conn: sqlite3.Connection, table: str, columns: str, make_row: Callable[[tuple], Any],
                status: str | ListFilter | None, page_size: int, page_token: str | None, owner: str | None,
                method_path: str = "$.training.method") -> tuple[list, str | None]:
    """One page of ``table`` newest first, keyset-paged on (created_at, id); shared by jobs and sweeps. ``status``
    is a status or a whole ``ListFilter``."""
    filters = status if isinstance(status, ListFilter) else ListFilter(status=status)
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    if filters.status is not None and filters.status not in STATUSES:
        raise ValueError(f"unknown status {filters.status!r}")
    where, args = filters.sql(method_path)
    if owner is not None:
        where.append("owner = ?")
        args.append(owner)
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


class Database:
    """The SQLite file: per-thread connections, write transactions, migrations; thread-safe, blocking (call it
    from a worker thread, or on the event loop only inside ``nowait``)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000,
                 max_bytes: int | None = None, wal_max_bytes: int = 64 << 20, check: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._max_bytes = max_bytes  # cap on the database file (PRAGMA max_page_count); None = the disk's
        self._wal_max_bytes = int(wal_max_bytes)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        # A new file gets auto_vacuum before WAL mode writes its header (on an existing one the pragma takes a lock)
        self._new_file = not self.path.exists() or self.path.stat().st_size == 0
        # Room kept for status changes on a full disk (``release_reserve``): a file beside the store, and as many
        # pages above DLNSIM_STORE_MAX_BYTES.
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self._cap_raised = False
        self.full_since: float | None = None   # monotonic time of the last write refused for lack of space
        self.damaged: str | None = None        # why the store was found damaged while serving (readiness says so)
        try:
            if check and self.path.resolve() not in _VERIFIED:
                self.verify()
            self._migrate()
            self._enable_reclaim()
            self.restore_reserve()
        except sqlite3.DatabaseError as exc:
            self.close()
            typed = classify(exc, self.path, self.busy_timeout)
            if isinstance(typed, StoreDamagedError):
                raise typed from None
            raise

    @property
    def busy_timeout(self) -> float:
        return self._busy_timeout_ms / 1000

    def verify(self) -> None:
        """``PRAGMA quick_check`` of the whole file (every page read once: about a second per GB); StoreDamagedError
        naming what it found. A file that is not SQLite's (a damaged header) fails here too."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            _VERIFIED.add(self.path.resolve())
            return
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(self.path, str(exc)) from None
        finally:
            conn.close()
        if problems != ["ok"]:
            raise StoreDamagedError(self.path, "quick_check: " + "; ".join(problems))
        _VERIFIED.add(self.path.resolve())

    # -- connections ---------------------------------------------------------------------------

    def _cap_pages(self, conn: sqlite3.Connection) -> None:
        """DLNSIM_STORE_MAX_BYTES as ``max_page_count`` (plus the reserve once it is released) on ``conn``."""
        cap = None if self._max_bytes is None else int(self._max_bytes) + (RESERVE_BYTES if self._cap_raised else 0)
        if cap is not None and getattr(self._local, "cap", None) != cap:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(cap // page_size, 1)}")
            self._local.cap = cap

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (its query-only, never-waiting one inside ``nowait``)."""
        if self._closed:
            raise RuntimeError("job store is closed")
        if getattr(self._local, "nowait", False):
            return self._nowait_connection()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._cap_pages(conn)
        if conn is None:
            # isolation_level=None: no implicit transactions; write() opens BEGIN IMMEDIATE itself.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if self._new_file:  # before WAL mode writes the header: a new store gives deleted pages back (reclaim)
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            # The WAL is cut back to this size whenever it is reset, however large one transaction made it.
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_max_bytes}")
            self._local.cap = None
            self._cap_pages(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction. A full disk (SQLITE_FULL, in a statement or at COMMIT) rolls
        it back and raises StorageFullError; a lock held by another connection past the busy timeout raises
        StoreBusyError, a damaged page StoreDamagedError. The connection is always left outside a transaction."""
        try:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                # A COMMIT that fails (disk full while appending to the WAL) leaves the transaction
                # open; rolled back below, or the thread's next BEGIN would fail for ever.
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.DatabaseError as exc:
            typed = classify(exc, self.path, self.busy_timeout)
            if isinstance(typed, StorageFullError):
                self.full_since = time.monotonic()
            elif isinstance(typed, StoreDamagedError):
                self.damaged = typed.reason
            if typed is not None and typed is not exc:
                raise typed from exc
            raise
        self.full_since = None

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

    @contextmanager
    def nowait(self) -> Iterator[None]:
        """Reads in this block, on this thread, never wait for a lock: they run on the thread's own
        query-only connection whose busy timeout is 0, so a lock makes them raise sqlite3.OperationalError
        ("database is locked") at once; the caller then retries in a worker thread, where reads wait.

            with db.nowait():
                row = store.get(job_id)

        For the API's event loop, which must never block: in WAL mode readers do not wait for writers, so
        a lock only happens in rare moments (e.g. a connection rebuilding the WAL index after a crash).
        Why reads on the loop at all: a point read costs a tenth of a thread-pool hop (bench/load.py)."""
        previous = getattr(self._local, "nowait", False)
        self._local.nowait = True
        try:
            yield
        finally:
            self._local.nowait = previous

    def _nowait_connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "nowait_conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute("PRAGMA query_only = ON")  # a write in a nowait block is a bug: it fails
            self._local.nowait_conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

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

    def ping(self) -> bool:
        """The store answers: a row (the root page) of each table read (``SELECT 1`` touches no page)."""
        try:
            conn = self.connection()
            for table in ("schema_version", "jobs", "results", "sweeps", "sweep_points", "idempotency_keys"):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
            return True
        except sqlite3.DatabaseError as exc:
            typed = classify(exc, self.path, self.busy_timeout)
            if isinstance(typed, StoreDamagedError):
                self.damaged = typed.reason
            return False
        except (sqlite3.Error, RuntimeError):
            return False

    # -- space ---------------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes the store can still grow by: the data dir's free disk space plus the file's own free pages (SQLite
        reuses them first), within DLNSIM_STORE_MAX_BYTES when it is set."""
        conn = self.connection()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        free = shutil.disk_usage(self.path.parent).free + free_pages * page_size
        if self._max_bytes is not None:
            free = min(free, self._max_bytes - (pages - free_pages) * page_size)
        return max(int(free), 0)

    def file_bytes(self) -> tuple[int, int]:
        """(size of the database file, size of its WAL) on disk."""
        wal = self.path.with_name(self.path.name + "-wal")
        return (self.path.stat().st_size if self.path.exists() else 0,
                wal.stat().st_size if wal.exists() else 0)

    def release_reserve(self) -> bool:
        """Free the room kept for status changes (the reserve file, the pages above the cap), so that the failure of
        work whose results did not fit can still be recorded on a full disk; False if it was used already."""
        released = False
        with suppress(FileNotFoundError):
            self.reserve_path.unlink()
            released = True
        if self._max_bytes is not None and not self._cap_raised:
            self._cap_raised = released = True
        if released:
            log.warning("the job store %s is full: its reserve of %d bytes is used for status changes", self.path,
                        RESERVE_BYTES)
        return released

    def restore_reserve(self) -> None:
        """Keep the reserve again once there is room for it (at open, and whenever admission finds space)."""
        if self._max_bytes is not None and self._cap_raised:
            self._cap_raised = False
        if self.reserve_path.exists():
            return
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:  # no room for it now: tried again later
            with suppress(OSError):
                self.reserve_path.unlink()

    def _enable_reclaim(self) -> None:
        """A store made before auto_vacuum was set is rebuilt once with it (VACUUM: a copy of the file, so only when
        the disk has room for it), so that ``reclaim`` can give space back; else say how to do it by hand."""
        conn = self.connection()
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 0:
            return
        size = sum(self.file_bytes())
        if shutil.disk_usage(self.path.parent).free < 2 * size + (64 << 20):
            log.warning("%s cannot give the space of deleted results back to the disk (auto_vacuum is off) and the "
                        "disk has no room to rebuild it now: with the service stopped and space freed, run "
                        "sqlite3 %s 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'", self.path, self.path)
            return
        started = time.monotonic()
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        log.info("rebuilt %s (%d bytes) with auto_vacuum=INCREMENTAL in %.1f s: deleted results now give their space "
                 "back to the disk", self.path, size, time.monotonic() - started)

    def reclaim(self, max_pages: int = 2048) -> int:
        """Give up to ``max_pages`` free pages back to the disk (the file shrinks; one short write transaction);
        how many were freed. The retention purge calls it until none are left."""
        conn = self.connection()
        before = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if before == 0:
            return 0
        try:
            # executescript: the pragma frees one page per step, and only a script steps it to the end
            conn.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
        except sqlite3.DatabaseError as exc:
            typed = classify(exc, self.path, self.busy_timeout)
            if typed is not None and typed is not exc:
                raise typed from exc
            raise
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return before - conn.execute("PRAGMA freelist_count").fetchone()[0]

    def checkpoint(self) -> None:
        """Copy the WAL into the file now (PASSIVE: never waits for readers), so that the next writer resets it and
        ``journal_size_limit`` cuts it back: called after writing a large result."""
        with suppress(sqlite3.Error):
            self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _migrate(self) -> None:
        with self.write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this "
                                   f"service's {SCHEMA_VERSION}: upgrade the service")
            for script in MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                # Only when it changes: a start that writes nothing still works on a full disk.
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # -- stored trajectories -------------------------------------------------------------------------

    @contextmanager
    def open_trajectory(self, table: str, where: str, args: tuple, name: str
                        ) -> Iterator[StoredTrajectory | JSONTrajectory | None]:
        """The trajectory stored in ``table`` (a row with columns codec, size, data) at ``where``, opened for
        reading in this thread (its arrays are read from the blob as they are asked for, inside the block);
        None when there is none. CorruptResultError naming ``name`` when its bytes do not decode."""
        try:
            with _open_blob(self.connection(), table, where, args) as stored:
                yield stored
        except CorruptTrajectory as exc:
            raise CorruptResultError(name, str(exc)) from None

    def trajectory_reader(self, table: str, where: str, args: tuple, name: str) -> TrajectoryReader:
        """The trajectory at ``where`` on a read-only connection of its own (``TrajectoryReader``), for a response
        that is read from several threads while other requests use theirs; close it when done."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout_ms / 1000)
        conn.execute("PRAGMA query_only = ON")
        return TrajectoryReader(conn, _open_blob(conn, table, where, args), name)


@contextmanager
def _open_blob(conn: sqlite3.Connection, table: str, where: str, args: tuple
               ) -> Iterator[StoredTrajectory | JSONTrajectory | None]:
    """The stored trajectory of the row at ``where`` in ``table`` on ``conn``, read from its blob as asked for."""
    r = conn.execute(f"SELECT rowid, codec, size, length(data) FROM {table} WHERE {where}", args).fetchone()
    if r is None:
        yield None
        return
    rowid, codec, size, length = r
    with conn.blobopen(table, "data", rowid, readonly=True) as blob:
        def read(offset: int, count: int) -> bytes:
            blob.seek(offset)
            return blob.read(count)

        yield open_stored(read, length, codec, size)


class TrajectoryReader:
    """A stored trajectory open on its own connection: ``stored`` (None when there is none), ``close()``. Opening
    reads its header (CorruptResultError at once for a damaged one); a damaged array raises CorruptResultError when
    it is read."""

    def __init__(self, conn: sqlite3.Connection, opened: Any, name: str) -> None:
        self._conn, self._opened, self.name = conn, opened, name
        try:
            self.stored = opened.__enter__()
        except CorruptTrajectory as exc:
            conn.close()
            raise CorruptResultError(name, str(exc)) from None
        except BaseException:
            conn.close()
            raise

    def get(self, name: str) -> Any:
        try:
            return self.stored.get(name)
        except CorruptTrajectory as exc:
            raise CorruptResultError(self.name, str(exc)) from None

    def verify(self, names: list[str]) -> None:
        try:
            self.stored.verify(names)
        except CorruptTrajectory as exc:
            raise CorruptResultError(self.name, str(exc)) from None

    @property
    def names(self) -> list[str]:
        return self.stored.names

    def close(self) -> None:
        with suppress(Exception):
            self._opened.__exit__(None, None, None)
        self._conn.close()
