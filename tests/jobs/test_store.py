"""The SQLite job store: creation, idempotency, paging, guarded transitions, durability, corruption."""

from __future__ import annotations

import re
import sqlite3
import threading

import orjson
import pytest

from service.jobs.database import (
    SCHEMA_VERSION,
    CorruptResultError,
    Database,
    InvalidPageToken,
    encode_page_token,
)
from service.jobs.store import JobStore
from tests.support.store_versions import write_store_at_version
from tests.support.trajectories import packed, stored_arrays

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def store(tmp_path):
    s = JobStore(Database(tmp_path / "jobs.sqlite3"))
    yield s
    s.db.close()


def make(store, n=1, **kwargs):
    return [store.create(orjson.dumps({"n": i}), f"hash{i}", **kwargs)[0] for i in range(n)]


def test_create_stores_a_queued_job_with_its_request(store):
    row, created = store.create(b'{"a":1}', "abc")
    assert created
    assert (row.status, row.progress, row.request, row.request_hash) == ("queued", 0.0, b'{"a":1}', "abc")
    assert ISO_Z.match(row.created_at) and row.started_at is None and row.finished_at is None
    assert re.fullmatch(r"[0-9a-f]{32}", row.id)
    assert store.get(row.id) == row


def test_get_unknown_id_returns_none(store):
    assert store.get("0" * 32) is None


def test_job_ids_sort_in_creation_order(store):
    rows = make(store, 20)
    assert sorted(r.id for r in rows) == [r.id for r in rows]


def test_list_pages_newest_first_without_gaps_or_repeats(store):
    rows = make(store, 7)
    seen, token, pages = [], None, 0
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [r.id for r in page]
        pages += 1
        if token is None:
            break
    assert pages == 3
    assert seen == [r.id for r in reversed(rows)]


def test_list_page_is_stable_when_jobs_are_added_meanwhile(store):
    rows = make(store, 4)
    first, token = store.list(page_size=2)
    make(store, 3)  # newer jobs land before the first page, not in the next one
    second, _ = store.list(page_size=2, page_token=token)
    assert [r.id for r in first + second] == [r.id for r in reversed(rows)]


def test_list_filters_by_status(store):
    a, b, c = make(store, 3)
    store.mark_cancelled(b.id)
    page, token = store.list(status="cancelled")
    assert [r.id for r in page] == [b.id] and token is None
    assert [r.id for r in store.list(status="queued")[0]] == [c.id, a.id]


@pytest.mark.parametrize("token", ["not-base64!", "", encode_page_token("yesterday", "x"), "YWJj"])
def test_list_rejects_a_page_token_it_did_not_issue(store, token):
    with pytest.raises(InvalidPageToken):
        store.list(page_token=token)


def test_same_idempotency_key_from_many_threads_creates_one_job(store):
    n = 8
    barrier, results = threading.Barrier(n), []

    def create():
        barrier.wait()
        results.append(store.create(b"{}", "h", idempotency_key="key-1"))

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({row.id for row, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list()[0]) == 1


def test_reused_idempotency_key_returns_the_first_job_and_its_hash(store):
    first, _ = store.create(b'{"a":1}', "hash-a", idempotency_key="k")
    again, created = store.create(b'{"a":2}', "hash-b", idempotency_key="k")
    assert not created
    assert (again.id, again.request_hash, again.request) == (first.id, "hash-a", b'{"a":1}')


def test_finish_stores_the_result_and_marks_succeeded(store):
    (row,) = make(store)
    assert store.mark_running(row.id)
    assert store.finish(row.id, packed({"time": [0.0, 1.0]}), "converged")
    done = store.get(row.id)
    assert (done.status, done.progress, done.outcome) == ("succeeded", 1.0, "converged")
    assert ISO_Z.match(done.finished_at)
    assert stored_arrays(store, row.id)["time"].tolist() == [0.0, 1.0]


def test_finish_stores_the_workers_packed_trajectory_as_it_came(store):
    (row,) = make(store)
    data = packed({"loss": list(range(1000)), "outcome": "completed"})
    assert store.finish(row.id, data, "completed")
    assert store.db.connection().execute("SELECT data FROM results").fetchone()[0] == data
    assert stored_arrays(store, row.id)["loss"].tolist() == list(range(1000))


def test_result_of_an_unfinished_job_is_none(store):
    (row,) = make(store)
    assert stored_arrays(store, row.id) is None


def test_finished_job_is_terminal(store):
    (row,) = make(store)
    store.finish(row.id, packed({}), "completed")
    assert not store.fail(row.id, {"title": "late"})
    assert store.mark_cancelled(row.id) is None
    assert not store.mark_running(row.id)
    assert not store.finish(row.id, packed({"outcome": "diverged"}), "diverged")
    after = store.get(row.id)
    assert (after.status, after.outcome, after.error) == ("succeeded", "completed", None)
    assert stored_arrays(store, row.id) == {}


def test_cancelled_job_ignores_a_late_result(store):
    (row,) = make(store)
    store.mark_running(row.id)
    assert store.mark_cancelled(row.id) == "running"
    assert not store.finish(row.id, packed({}), "completed")
    assert store.get(row.id).status == "cancelled"
    assert stored_arrays(store, row.id) is None


def test_fail_records_the_problem(store):
    (row,) = make(store)
    problem = {"title": "bad", "status": 422, "errors": [{"field": ["init", "lambda"]}]}
    assert store.fail(row.id, problem)
    failed = store.get(row.id)
    assert failed.status == "failed" and failed.error == problem and failed.finished_at


def test_mark_running_counts_attempts_and_keeps_the_first_start_time(store):
    (row,) = make(store)
    store.mark_running(row.id)
    first = store.get(row.id)
    store.set_progress(row.id, 0.5)
    store.mark_running(row.id)  # a rerun after a worker died: progress starts over
    second = store.get(row.id)
    assert (first.attempts, second.attempts) == (1, 2)
    assert second.started_at == first.started_at and second.progress == 0.0


def test_progress_moves_only_running_jobs_and_is_clamped(store):
    queued, running = make(store, 2)
    store.mark_running(running.id)
    assert store.set_progress_many({queued.id: 0.3, running.id: 1.7}) == 1
    assert store.get(queued.id).progress == 0.0
    assert store.get(running.id).progress == 1.0


def test_unfinished_lists_queued_and_running_jobs_oldest_first(store):
    a, b, c, d = make(store, 4)
    store.mark_running(b.id)
    store.finish(c.id, packed({}), "completed")
    assert [r.id for r in store.unfinished()] == [a.id, b.id, d.id]
    assert store.count_active() == 3


def test_delete_removes_the_job_and_its_result(store):
    (row,) = make(store)
    store.finish(row.id, packed({}), "completed")
    assert store.delete(row.id)
    assert store.get(row.id) is None and stored_arrays(store, row.id) is None
    assert not store.delete(row.id)


def test_late_result_of_a_deleted_job_is_dropped(store):
    (row,) = make(store)
    store.delete(row.id)
    assert not store.finish(row.id, packed({}), "completed")
    assert stored_arrays(store, row.id) is None


def test_jobs_and_results_survive_reopening(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = JobStore(Database(path))
    a, b = make(first, 2, )
    first.finish(a.id, packed({"time": [1.0]}), "completed")
    first.db.close()
    second = JobStore(Database(path))
    assert second.get(a.id).status == "succeeded" and stored_arrays(second, a.id)["time"].tolist() == [1.0]
    assert [r.id for r in second.unfinished()] == [b.id]
    second.db.close()


def test_database_uses_wal_with_full_sync(store):
    conn = store.db.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a commit is fsynced


def test_schema_version_is_recorded(store):
    assert store.db.connection().execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_refuses_to_open(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    JobStore(Database(path)).db.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        JobStore(Database(path))


def test_corrupt_result_raises_corrupt_result_error(store):
    (row,) = make(store)
    store.finish(row.id, packed({"loss": list(range(100))}), "completed")
    conn = store.db.connection()
    blob = bytearray(conn.execute("SELECT data FROM results").fetchone()[0])
    blob[-10] ^= 0xFF  # flip one byte of the array's frame: zstd's content checksum catches it
    conn.execute("UPDATE results SET data = ?", (bytes(blob),))
    with pytest.raises(CorruptResultError) as info:
        stored_arrays(store, row.id)
    assert info.value.job_id == row.id
    assert store.get(row.id).status == "succeeded"  # the row itself still reads


def test_ping_is_true_when_open_and_false_when_closed(tmp_path):
    s = JobStore(Database(tmp_path / "jobs.sqlite3"))
    assert s.db.ping()
    s.db.close()
    assert not s.db.ping()


def test_a_version_2_store_keeps_its_idempotency_keys_which_become_per_owner(tmp_path):
    path = tmp_path / "v2.sqlite3"
    write_store_at_version(  # what the previous release wrote: migrations 1 and 2
        path, 2, "INSERT INTO jobs (id, status, created_at, request, request_hash, idempotency_key) "
                 "VALUES ('j', 'queued', '2026-01-01T00:00:00.000000Z', x'7b7d', 'h', 'k')")
    store = JobStore(Database(path))
    try:
        assert store.get("j").idempotency_key == "k" and store.get("j").owner is None
        replay, created = store.create(b"{}", "h", "k")
        assert (replay.id, created) == ("j", False)
        mine, created = store.create(b"{}", "h", "k", owner="alice")  # another owner's equal key is unrelated
        assert created and mine.owner == "alice" and mine.id != "j"
        assert store.create(b"{}", "h", "k", owner="alice") == (mine, False)
    finally:
        store.db.close()
