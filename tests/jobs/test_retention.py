"""Retention: finished simulations and sweeps older than DLNSIM_RETENTION_DAYS are purged with their results,
points and trajectories; unfinished and newer ones stay; the background task runs and stops cleanly."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import orjson
import pytest

from service.jobs.database import Database
from service.jobs.retention import RetentionTask, cutoff, purge_expired
from service.jobs.store import JobStore
from service.jobs.sweeps_store import SweepStore
from service.main import create_app
from service.settings import Settings
from tests.api.conftest import FakeEngine
from tests.support.trajectories import packed, stored_arrays

OLD = "2020-01-01T00:00:00.000000Z"      # years before any cut-off of these tests
# A hang guard for awaits on the background task, not a speed assertion.
GUARD = 30.0


@pytest.fixture
def store(tmp_path):
    s = JobStore(Database(tmp_path / "dlnsim.sqlite3"))
    yield s
    s.db.close()


@pytest.fixture
def sweeps(store):
    return SweepStore(store.db)


def count(store: JobStore, table: str) -> int:
    return store.db.connection().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def age(store: JobStore, table: str, row_id: str, finished_at: str = OLD) -> None:
    """Pretend the row finished long ago (its other timestamps too)."""
    conn = store.db.connection()
    conn.execute(f"UPDATE {table} SET created_at = ? WHERE id = ?", (OLD, row_id))
    conn.execute(f"UPDATE {table} SET finished_at = ? WHERE id = ? AND finished_at IS NOT NULL",
                 (finished_at, row_id))


def job(store: JobStore, end: str | None, n: int = 0) -> str:
    """A job that ended as ``end`` (succeeded, failed, cancelled), or is running (end None)."""
    row, _ = store.create(orjson.dumps({"n": n}), f"h{n}")
    store.mark_running(row.id)
    if end == "succeeded":
        assert store.finish(row.id, packed({"time": [0.0]}), "converged")
    elif end == "failed":
        assert store.fail(row.id, {"title": "boom"})
    elif end == "cancelled":
        assert store.mark_cancelled(row.id)
    return row.id


def sweep(sweeps: SweepStore, finished: bool) -> str:
    row = sweeps.create(b'{"base":{}}', b"{}", "trajectories", [(orjson.dumps({"init.seed": k}), "g") for k in range(2)])
    if finished:
        blob = packed({"time": [0.0]})
        sweeps.finish_points(row.id, [{"k": k, "status": "succeeded", "outcome": "completed", "summary": {},
                                       "trajectory": blob} for k in range(2)])
        assert sweeps.get(row.id).status == "succeeded"
    return row.id


# ------------------------------------------------------------------------------------------------
# one pass


def test_cutoff_is_that_many_days_before_now_in_the_stores_format():
    assert cutoff(30, datetime(2026, 3, 31, 12, tzinfo=UTC)) == "2026-03-01T12:00:00.000000Z"
    assert cutoff(0.5, datetime(2026, 3, 31, 12, tzinfo=UTC)) == "2026-03-31T00:00:00.000000Z"


def test_finished_jobs_older_than_the_cutoff_go_with_their_results(store, sweeps):
    ids = [job(store, end, n) for n, end in enumerate(("succeeded", "failed", "cancelled"))]
    for job_id in ids:
        age(store, "jobs", job_id)
    assert count(store, "results") == 1
    assert purge_expired(store, sweeps, days=30) == (3, 0)
    assert [store.get(job_id) for job_id in ids] == [None, None, None]
    assert count(store, "results") == 0


def test_newer_finished_jobs_are_kept(store, sweeps):
    recent = job(store, "succeeded")
    assert purge_expired(store, sweeps, days=30) == (0, 0)
    assert store.get(recent).status == "succeeded" and stored_arrays(store, recent)["time"].tolist() == [0.0]


def test_the_cutoff_is_compared_with_finished_at_not_created_at(store, sweeps):
    # Created long ago but finished yesterday: the retention clock starts when a job ends.
    long_run = job(store, "succeeded")
    age(store, "jobs", long_run, finished_at=cutoff(1))
    assert purge_expired(store, sweeps, days=30) == (0, 0)
    assert purge_expired(store, sweeps, days=0.5) == (1, 0)


def test_unfinished_jobs_are_kept_whatever_their_age(store, sweeps):
    running = job(store, None, 0)
    queued, _ = store.create(b"{}", "q")
    for job_id in (running, queued.id):
        age(store, "jobs", job_id)
    assert purge_expired(store, sweeps, days=30) == (0, 0)
    assert (store.get(running).status, store.get(queued.id).status) == ("running", "queued")


def test_old_finished_sweeps_go_with_their_points_and_trajectories(store, sweeps):
    old, new, unfinished = sweep(sweeps, True), sweep(sweeps, True), sweep(sweeps, False)
    age(store, "sweeps", old)
    age(store, "sweeps", unfinished)
    assert count(store, "sweep_trajectories") == 4
    assert purge_expired(store, sweeps, days=30) == (0, 1)
    assert sweeps.get(old) is None
    assert store.db.connection().execute("SELECT count(*) FROM sweep_points WHERE sweep_id = ?", (old,)).fetchone()[0] == 0
    assert count(store, "sweep_trajectories") == 2
    with sweeps.open_trajectory(new, 0) as stored:
        assert stored.get("time").tolist() == [0.0]
    assert sweeps.get(unfinished).status == "queued" and sweeps.get(unfinished).counts["queued"] == 2


def test_purge_deletes_in_batches_until_none_is_left(store):
    for n in range(5):
        age(store, "jobs", job(store, "succeeded", n))
    before = cutoff(30)
    assert [store.purge_finished(before, limit=2) for _ in range(4)] == [2, 2, 1, 0]


def test_a_stop_request_ends_a_pass_between_batches(store, sweeps):
    age(store, "jobs", job(store, "succeeded"))
    stop = threading.Event()
    stop.set()
    assert purge_expired(store, sweeps, days=30, stop=stop) == (0, 0)
    assert count(store, "jobs") == 1


# ------------------------------------------------------------------------------------------------
# the background task


def test_background_task_purges_every_interval_and_stops_cleanly(store, sweeps):
    async def scenario():
        task = RetentionTask(store, sweeps, days=30, interval=0.01)
        task.start()
        await asyncio.wait_for(task.wait_for_pass(1), GUARD)
        # Expired after the first pass: a later pass removes it.
        late = job(store, "succeeded")
        age(store, "jobs", late)
        await asyncio.wait_for(task.wait_for_pass(task.passes + 2), GUARD)
        assert store.get(late) is None
        inner = task._task
        await asyncio.wait_for(task.stop(), GUARD)
        assert not task.running and inner.done() and not inner.cancelled() and inner.exception() is None

    asyncio.run(scenario())


def test_stop_wakes_a_task_sleeping_out_a_long_interval(store, sweeps):
    async def scenario():
        task = RetentionTask(store, sweeps, days=30, interval=3600)
        task.start()
        await asyncio.wait_for(task.wait_for_pass(1), GUARD)
        await asyncio.wait_for(task.stop(), GUARD)  # returns long before the hour is out
        assert not task.running and task.passes == 1

    asyncio.run(scenario())


def test_stop_waits_for_a_batch_in_progress_so_the_store_can_close(store, sweeps, monkeypatch):
    started, release = threading.Event(), threading.Event()
    finished = []

    def slow_batch(before, limit=200):
        started.set()
        release.wait(GUARD)
        finished.append(True)
        return 0

    monkeypatch.setattr(store, "purge_finished", slow_batch)

    async def scenario():
        task = RetentionTask(store, sweeps, days=30, interval=3600)
        task.start()
        await asyncio.to_thread(started.wait, GUARD)
        stopping = asyncio.create_task(task.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # still waiting for the thread's batch
        release.set()
        await asyncio.wait_for(stopping, GUARD)
        assert finished == [True]

    asyncio.run(scenario())


def test_a_failed_pass_is_logged_and_the_next_one_runs(store, sweeps, monkeypatch, caplog):
    real = store.purge_finished
    calls = []

    def flaky(before, limit=200):
        calls.append(before)
        if len(calls) == 1:
            raise OSError("disk I/O error")
        return real(before, limit)

    monkeypatch.setattr(store, "purge_finished", flaky)
    old = job(store, "failed")
    age(store, "jobs", old)

    async def scenario():
        task = RetentionTask(store, sweeps, days=30, interval=0.01)
        task.start()
        await asyncio.wait_for(task.wait_for_pass(2), GUARD)
        await task.stop()

    asyncio.run(scenario())
    assert "retention purge failed" in caplog.text
    assert store.get(old) is None


# ------------------------------------------------------------------------------------------------
# in the app


@pytest.mark.parametrize(("days", "runs"), [(30, True), (0, False)])
def test_the_app_lifespan_starts_the_task_unless_kept_forever_and_stops_it(tmp_path, days, runs):
    app = create_app(Settings(data_dir=tmp_path, retention_days=days), engine_factory=FakeEngine)

    async def scenario():
        async with app.router.lifespan_context(app):
            task = app.state.retention
            assert (task is not None and task.running) == runs
        assert app.state.retention is None
        if task is not None:
            assert not task.running

    asyncio.run(scenario())
