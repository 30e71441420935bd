"""The store and engine pieces behind the fault tests, in-process: a full store refuses writes cleanly and
takes them again once space is freed, a failed COMMIT never leaves a transaction open, reopening writes
nothing (so a restart works on a full disk), a corrupt result is requeued then failed, and a finished
job's outcome waits in memory while the store is full."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from service.jobs import runner as engine_module
from service.jobs.database import CorruptResultError, Database, StorageFullError
from service.jobs.store import JobStore
from tests.faults.conftest import PageCapDisk, integrity
from tests.support.trajectories import packed, stored_arrays


@pytest.fixture
def store(tmp_path):
    s = JobStore(Database(tmp_path / "dlnsim.sqlite3", max_bytes=PageCapDisk.MAX_BYTES))
    yield s
    s.db.close()


def test_a_full_store_refuses_a_write_with_storage_full_and_takes_it_once_space_is_freed(store, tmp_path):
    kept, _ = store.create(b'{"a": 1}', "h1")
    disk = PageCapDisk(tmp_path)
    disk.fill()
    with pytest.raises(StorageFullError, match="is full"):
        store.create(b'{"big": "' + b"x" * 100_000 + b'"}', "h2")
    assert not store.db.connection().in_transaction  # rolled back: the thread's next write can start
    assert store.get(kept.id) == kept        # reads still work
    disk.free()
    row, created = store.create(b'{"big": "' + b"x" * 100_000 + b'"}', "h2")
    assert created and store.get(row.id) is not None
    assert integrity(tmp_path) == "ok"


def test_a_failed_commit_is_rolled_back_and_the_next_write_works(store):
    # A deferred foreign key fails at COMMIT, like a full disk can: SQLite then keeps the transaction open.
    with pytest.raises(sqlite3.IntegrityError), store.db.write() as conn:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("INSERT INTO results (job_id, codec, size, data) VALUES ('no-such-job', 'zstd', 0, x'')")
    assert not store.db.connection().in_transaction
    row, created = store.create(b"{}", "h")
    assert created and stored_arrays(store, row.id) is None


def test_reopening_an_up_to_date_store_writes_nothing(tmp_path):
    # A write at start-up would make a restart on a full disk fail.
    JobStore(Database(tmp_path / "s.sqlite3")).db.close()
    again = JobStore(Database(tmp_path / "s.sqlite3"))
    try:
        assert again.db.connection().total_changes == 0
    finally:
        again.db.close()


def finished_job(store: JobStore) -> str:
    row, _ = store.create(b"{}", "h")
    store.mark_running(row.id)
    store.finish(row.id, packed({"time": [0.0]}), "completed")
    return row.id


def corrupt(store: JobStore, job_id: str) -> None:
    with store.db.write() as conn:
        conn.execute("UPDATE results SET data = zeroblob(length(data)) WHERE job_id = ?", (job_id,))


def test_a_corrupt_result_is_dropped_and_its_job_queued_again(store):
    job_id = finished_job(store)
    corrupt(store, job_id)
    with pytest.raises(CorruptResultError):
        stored_arrays(store, job_id)
    assert store.recover_corrupt_result(job_id, {"detail": "corrupt"}, max_attempts=5) == "queued"
    row = store.get(job_id)
    assert (row.status, row.outcome, row.finished_at, row.error) == ("queued", None, None, None)
    assert stored_arrays(store, job_id) is None
    assert [r.id for r in store.unfinished()] == [job_id]  # a restart would resubmit it too
    assert store.recover_corrupt_result(job_id, {}, max_attempts=5) is None  # not succeeded: nothing to do


def test_a_result_corrupt_after_max_attempts_fails_the_job_with_the_reason(store):
    job_id = finished_job(store)  # started once
    corrupt(store, job_id)
    assert store.recover_corrupt_result(job_id, {"detail": "corrupt every time"}, max_attempts=1) == "failed"
    row = store.get(job_id)
    assert (row.status, row.error) == ("failed", {"detail": "corrupt every time"})
    assert row.finished_at is not None and stored_arrays(store, job_id) is None


def test_a_write_refused_for_lack_of_space_is_retried_until_it_is_stored(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_module, "STORAGE_FULL_RETRY_SECONDS", 0.0)
    calls = []

    def write(job_id: str) -> None:
        calls.append(job_id)
        if len(calls) < 3:
            raise StorageFullError(tmp_path, "database or disk is full")

    stored = asyncio.run(engine_module.write_when_space(write, "j", closing=lambda: False, what="job j"))
    assert stored and calls == ["j", "j", "j"]


def test_a_write_refused_for_lack_of_space_is_given_up_when_the_engine_closes(tmp_path):
    def write() -> None:
        raise StorageFullError(tmp_path, "database or disk is full")

    # The job stays queued or running in the store; the next start resubmits it.
    assert asyncio.run(engine_module.write_when_space(write, closing=lambda: True, what="x")) is False


def test_concurrent_creates_never_overshoot_the_queue_bound(store):
    # The bound is checked inside the write transaction: 16 threads racing for 3 slots get exactly 3.
    from concurrent.futures import ThreadPoolExecutor

    from service.jobs.store import QueueFullError

    def create(i: int) -> bool:
        try:
            store.create(b"{}", f"h{i}", max_active=3)
            return True
        except QueueFullError:
            return False

    with ThreadPoolExecutor(16) as pool:
        accepted = list(pool.map(create, range(16)))
    assert accepted.count(True) == 3 and store.count_active() == 3


def test_a_full_queue_still_answers_the_replay_of_an_idempotency_key(store):
    from service.jobs.store import QueueFullError

    first, _ = store.create(b"{}", "h", idempotency_key="k", max_active=1)
    assert store.create(b"{}", "h", idempotency_key="k", max_active=1) == (first, False)
    with pytest.raises(QueueFullError):
        store.create(b"{}", "h", idempotency_key="other", max_active=1)


# ------------------------------------------------------------------------------------------------
# the file gives space back; the WAL stays bounded (issue 19.4)


def big_result(size: int = 4 << 20) -> bytes:
    return os.urandom(size)  # incompressible: what reaches the store is what the disk holds


def test_space_freed_by_retention_goes_back_to_the_disk(tmp_path):
    from service.jobs.retention import purge_expired
    from service.jobs.sweeps_store import SweepStore

    store = JobStore(Database(tmp_path / "dlnsim.sqlite3"))
    try:
        for _ in range(10):
            row, _ = store.create(b"{}", "h")
            store.mark_running(row.id)
            store.finish(row.id, big_result(), "completed")
        store.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        grown = store.db.file_bytes()[0]
        assert grown > 40 << 20
        with store.db.write() as conn:  # every job finished long ago
            conn.execute("UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000000Z'")
        assert purge_expired(store, SweepStore(store.db), days=1) == (10, 0)
        store.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size, wal = store.db.file_bytes()
        assert size < 1 << 20 and wal < 1 << 20, (grown, size, wal)
    finally:
        store.db.close()
    assert integrity(tmp_path) == "ok"


def test_a_store_made_before_auto_vacuum_is_rebuilt_with_it_once(tmp_path):
    import sqlite3 as sq

    path = tmp_path / "dlnsim.sqlite3"
    old = sq.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.close()
    db = Database(path)
    try:
        assert db.connection().execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        db.close()


def test_the_wal_is_cut_back_once_a_long_reader_lets_go(tmp_path):
    # A streamed download holds a read snapshot for as long as it sends: meanwhile no checkpoint can reset the WAL,
    # and every result written goes on growing it. Once the reader is gone, the next write cuts it back.
    store = JobStore(Database(tmp_path / "dlnsim.sqlite3", wal_max_bytes=1 << 20))
    try:
        first, _ = store.create(b"{}", "h")
        store.mark_running(first.id)
        store.finish(first.id, big_result(1 << 20), "completed")
        import sqlite3 as sq

        reader = sq.connect(tmp_path / "dlnsim.sqlite3", isolation_level=None)  # a download's own connection
        reader.execute("BEGIN")
        reader.execute("SELECT length(data) FROM results").fetchall()  # its snapshot is open
        for _ in range(8):
            row, _ = store.create(b"{}", "h")
            store.mark_running(row.id)
            store.finish(row.id, big_result(), "completed")
        assert store.db.file_bytes()[1] > 30 << 20  # the WAL grew while the reader held its snapshot
        reader.execute("COMMIT")
        reader.close()
        store.db.checkpoint()
        store.create(b"{}", "h")  # the next write resets the WAL, and journal_size_limit truncates it
        assert store.db.file_bytes()[1] <= 1 << 20 + 65536, store.db.file_bytes()
    finally:
        store.db.close()
    assert integrity(tmp_path) == "ok"
