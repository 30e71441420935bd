"""A short bounded load on loopback (bench/load.py at CI size): 20 closed-loop clients for 5 s of mixed
submits, status reads, lists and deletes while the one worker is saturated and DLNSIM_MAX_QUEUED is 4.

Only generous bounds are asserted (figures go to ``make load``): no 5xx and no transport error, status
reads under 1 s at p99 (a status read is one indexed SQLite row; 1 s is ~100× the idle figure, room for a
loaded 2-core CI machine), the queue bound answers 429 with Retry-After, and the busy worker runs at
DLNSIM_WORKER_NICE (default 10) below the API, every thread of it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

import httpx
import psutil
import pytest

from bench.load import run_load, worker_processes
from service.jobs.database import Database
from service.jobs.store import JobStore
from service.jobs.submission import read_nowait
from service.settings import Settings
from tests.support.server import Server

pytestmark = pytest.mark.e2e

MAX_QUEUED = 4
WORKER_NICE = Settings.model_fields["worker_nice"].default


def thread_nices(process: psutil.Process) -> set[int]:
    """The niceness of every thread of ``process`` (Linux: per thread)."""
    nices = set()
    for thread in process.threads():
        try:
            nices.add(os.getpriority(os.PRIO_PROCESS, thread.id))
        except OSError:  # the thread ended meanwhile
            pass
    return nices


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("load")
    server = Server(base / "data", base / "server.log", workers=1, DLNSIM_MAX_QUEUED=str(MAX_QUEUED)).start()
    try:
        result = asyncio.run(run_load(server.url, clients=20, seconds=5.0, saturating_jobs=2))
        print("\n".join(result.lines()))
        with httpx.Client(base_url=server.url, timeout=30) as c:
            active = [s for status in ("queued", "running")
                      for s in c.get("/v1/simulations", params={"status": status, "page_size": 100}).json()["items"]]
            healthy = c.get("/readyz").status_code
        api = psutil.Process(server.process.pid)
        nices = {"api": thread_nices(api), "workers": [thread_nices(w) for w in worker_processes(api)]}
        yield result, active, healthy, nices
    finally:
        server.stop()


def test_load_gets_no_server_error_and_no_transport_error(report):
    result, _, healthy, _ = report
    assert result.server_errors == 0 and not result.errors, result.lines()
    assert healthy == 200


def test_status_reads_stay_under_a_second_at_p99_while_workers_are_saturated(report):
    result, _, _, _ = report
    assert len(result.status_reads) >= 100, result.lines()  # enough reads for a p99 to mean something
    assert result.quantile(0.99) < 1.0, result.lines()


def test_the_queue_bound_answers_429_with_retry_after_and_holds(report):
    result, active, _, _ = report
    assert result.codes["POST 429"] > 0, result.lines()
    assert result.refusals_without_retry_after == 0, result.lines()
    assert len(active) <= MAX_QUEUED, [s["id"] for s in active]


def test_the_busy_worker_runs_every_thread_at_lower_priority_than_the_api(report):
    *_, nices = report
    base = os.nice(0)  # the server inherits this process's niceness (0 unless the tests run under nice)
    assert nices["api"] == {base}, nices
    # One worker process (workers=1), its simulation thread included (it is running the saturating job).
    assert nices["workers"] == [{min(base + WORKER_NICE, 19)}], nices


# Status reads run on the event loop (JobStore.nowait): they must never wait for a lock there.


@pytest.fixture
def locked_store(tmp_path):
    """A store with one job, and another connection holding the database in exclusive locking mode (in WAL
    mode, the only way a reader can be locked out) until the test ends. busy_timeout 60 s: a read that waited
    would hang the test instead of raising."""
    store = JobStore(Database(tmp_path / "jobs.sqlite3", busy_timeout_ms=60_000))
    row, _ = store.create(b"{}", "hash")
    # An exclusive lock needs every other connection closed (WAL connections hold a shared lock while open):
    # this thread's is closed; the store opens a new one when next asked.
    store.db._local.conn.close()
    store.db._local.conn = None
    locker = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    locker.execute("PRAGMA locking_mode = EXCLUSIVE")
    locker.execute("BEGIN IMMEDIATE")
    locker.execute("UPDATE jobs SET progress = 0.5")
    locker.execute("COMMIT")  # exclusive mode keeps the lock after the commit
    try:
        yield store, row.id, locker
    finally:
        locker.close()
        store.db.close()


@pytest.mark.timeout(30)
def test_a_nowait_read_raises_at_once_instead_of_waiting_for_a_lock(locked_store):
    store, job_id, _ = locked_store
    with pytest.raises(sqlite3.OperationalError, match="locked"), store.db.nowait():
        store.get(job_id)


@pytest.mark.timeout(30)
def test_a_locked_out_status_read_falls_back_to_a_waiting_read_in_a_thread(locked_store):
    store, job_id, locker = locked_store

    async def read_while_the_lock_is_released():
        read = asyncio.create_task(read_nowait(store.db, store.get, job_id))
        await asyncio.sleep(0.2)  # the nowait read has failed; the thread's read waits on the busy timeout
        locker.close()            # releases the lock
        return await read

    assert asyncio.run(read_while_the_lock_is_released()).progress == 0.5


def test_a_write_in_a_nowait_block_is_refused(tmp_path):
    store = JobStore(Database(tmp_path / "jobs.sqlite3"))
    row, _ = store.create(b"{}", "hash")
    with pytest.raises(sqlite3.OperationalError, match="readonly"), store.db.nowait():
        store.mark_cancelled(row.id)
    assert store.get(row.id).status == "queued"
    store.db.close()
