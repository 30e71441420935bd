"""The database: one SQLite file under DLNSIM_DATA_DIR that is the source of truth for simulations and sweeps.

    db = Database(settings.data_dir / "dlnsim.sqlite3")
    jobs, sweeps = JobStore(db), SweepStore(db)          # the two stores are peers on one database
    with db.write() as conn: ...                          # one atomic write transaction

Durability: WAL journal with ``synchronous=FULL``, so a commit returns only once the WAL is fsynced and an accepted
job (a 202) survives a crash or power loss. The API is synchronous (the event loop calls it through a thread pool);
every thread gets its own connection, which WAL lets read while another writes. Writes use ``BEGIN IMMEDIATE`` so
that two writers queue on the busy timeout instead of failing on a read→write lock upgrade.

One file for both stores: one thing to back up, mount and migrate, and a single schema version guards both (an
older service refuses a newer file as a whole). Stored trajectories are read through SQLite's incremental blob
I/O (``open_trajectory``), so a request for one array of a large trajectory reads only that array's bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
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
)
SCHEMA_VERSION = len(MIGRATIONS)

# SQL lists of the status sets, for ``status IN …``.
ACTIVE_SQL, TERMINAL_SQL = sql_in(ACTIVE), sql_in(TERMINAL)
# Purges delete this many rows per transaction, so API writes interleave with a large purge.
PURGE_BATCH = 200


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


class StorageFullError(sqlite3.OperationalError):
    """A write refused because the store's disk (or its DLNSIM_STORE_MAX_BYTES cap) is full; the
    transaction was rolled back, nothing was written. Retry once space is freed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the job store {path} is full: {reason}")
        self.path = path


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

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (its query-only, never-waiting one inside ``nowait``)."""
        if self._closed:
            raise RuntimeError("job store is closed")
        if getattr(self._local, "nowait", False):
            return self._nowait_connection()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; write() opens BEGIN IMMEDIATE itself.
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
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction. A full disk (SQLITE_FULL, in a statement or at COMMIT) rolls
        it back and raises StorageFullError; the connection is always left outside a transaction."""
        conn = self.connection()
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
        try:
            return self.connection().execute("SELECT 1").fetchone() == (1,)
        except (sqlite3.Error, RuntimeError):
            return False

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
