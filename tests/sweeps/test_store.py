"""The sweep tables of the job store: migration, per-point recording, guarded transitions, persistence."""

from __future__ import annotations

import orjson
import pytest

from service.jobs.database import SCHEMA_VERSION, Database
from service.jobs.store import JobStore
from service.jobs.sweeps_store import SweepStore
from tests.support.store_versions import write_store_at_version
from tests.support.trajectories import packed


@pytest.fixture
def jobs(tmp_path):
    store = JobStore(Database(tmp_path / "dlnsim.sqlite3"))
    yield store
    store.db.close()


@pytest.fixture
def sweeps(jobs):
    return SweepStore(jobs.db)


def make(sweeps: SweepStore, n: int = 3, keep: str = "summary"):
    points = [(orjson.dumps({"init.seed": k}), "g") for k in range(n)]
    return sweeps.create(b'{"base":{}}', b"{}", keep, points)


def done(k: int, **extra) -> dict:
    return {"k": k, "status": "succeeded", "outcome": "completed", "summary": {"final_loss": float(k)}, **extra}


def test_version_1_store_is_migrated_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "old.sqlite3"
    write_store_at_version(  # what the first release wrote: migration 1 only
        path, 1, "INSERT INTO jobs (id, status, created_at, request, request_hash) "
                 "VALUES ('j', 'queued', '2026-01-01T00:00:00.000000Z', x'7b7d', 'h')")
    jobs = JobStore(Database(path))
    try:
        assert jobs.db.connection().execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert jobs.get("j").status == "queued"
        assert make(SweepStore(jobs.db)).n_points == 3
    finally:
        jobs.db.close()


def test_created_sweep_and_its_points_are_queued(sweeps):
    row = make(sweeps)
    assert (row.status, row.n_points, row.keep) == ("queued", 3, "summary")
    assert row.counts == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert [(k, orjson.loads(p)) for k, p, _ in sweeps.pending_points(row.id)] == \
        [(k, {"init.seed": k}) for k in range(3)]


def test_started_chunk_counts_an_attempt_and_runs_the_sweep(sweeps):
    row = make(sweeps)
    assert sweeps.mark_points_running(row.id, [0, 1]) == 2
    assert sweeps.mark_points_running(row.id, [0]) == 1  # a rerun after a worker death
    got = sweeps.get(row.id)
    assert got.status == "running" and got.started_at is not None
    assert [p.attempts for p in sweeps.points(row.id)[0]] == [2, 1, 0]


def test_a_point_reported_twice_is_recorded_once(sweeps):
    row = make(sweeps)
    assert sweeps.finish_points(row.id, [done(0)]) == 1
    assert sweeps.finish_points(row.id, [done(0, summary={"final_loss": 99.0})]) == 0
    assert sweeps.point(row.id, 0).summary == {"final_loss": 0.0}


def test_sweep_succeeds_when_its_last_point_finishes(sweeps):
    row = make(sweeps, 2)
    sweeps.finish_points(row.id, [done(0)])
    assert sweeps.get(row.id).status == "queued"
    sweeps.finish_points(row.id, [done(1)])
    got = sweeps.get(row.id)
    assert (got.status, got.counts["succeeded"]) == ("succeeded", 2) and got.finished_at is not None


def test_sweep_with_a_failed_point_fails_when_the_rest_finish(sweeps):
    row = make(sweeps, 2)
    sweeps.fail_points(row.id, [1], {"status": 500, "detail": "crashed"})
    sweeps.finish_points(row.id, [done(0)])
    assert sweeps.get(row.id).status == "failed"
    assert sweeps.point(row.id, 1).error == {"status": 500, "detail": "crashed"}


def test_finished_points_are_not_pending_after_reopening(tmp_path):
    path = tmp_path / "dlnsim.sqlite3"
    jobs = JobStore(Database(path))
    sweeps = SweepStore(jobs.db)
    row = make(sweeps, 4)
    sweeps.mark_points_running(row.id, [0, 1, 2])
    sweeps.finish_points(row.id, [done(0), done(2)])
    jobs.db.close()
    jobs = JobStore(Database(path))  # a restart
    try:
        reopened = SweepStore(jobs.db)
        assert [r.id for r in reopened.unfinished()] == [row.id]
        assert [k for k, _, _ in reopened.pending_points(row.id)] == [1, 3]  # running or queued
    finally:
        jobs.db.close()


def test_cancel_keeps_finished_points_and_is_final(sweeps):
    row = make(sweeps)
    sweeps.finish_points(row.id, [done(0)])
    assert sweeps.cancel(row.id) == "queued"
    assert sweeps.cancel(row.id) is None
    assert [p.status for p in sweeps.points(row.id)[0]] == ["succeeded", "cancelled", "cancelled"]
    # a chunk that finishes after the cancel changes nothing
    assert sweeps.finish_points(row.id, [done(1)]) == 0
    assert sweeps.mark_points_running(row.id, [2]) == 0
    assert sweeps.get(row.id).status == "cancelled"


def test_kept_trajectory_round_trips(sweeps):
    row = make(sweeps, 1, keep="trajectories")
    sweeps.finish_points(row.id, [done(0, trajectory=packed({"time": [0.0, 1.0]}))])
    assert sweeps.point(row.id, 0).has_trajectory
    with sweeps.open_trajectory(row.id, 0) as stored:
        assert stored.get("time").tolist() == [0.0, 1.0]


def test_delete_removes_points_and_trajectories(sweeps, jobs):
    row = make(sweeps, 2, keep="trajectories")
    sweeps.finish_points(row.id, [done(0, trajectory=packed({}))])
    assert sweeps.delete(row.id)
    conn = jobs.db.connection()
    assert conn.execute("SELECT count(*) FROM sweep_points").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM sweep_trajectories").fetchone()[0] == 0
    assert not sweeps.delete(row.id)
