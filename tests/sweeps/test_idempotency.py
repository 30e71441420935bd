"""Idempotency-Key on POST /v1/sweeps: replays, conflicts, per-owner scope, limits, races, and the schema
migration that stores keys with sweeps. In process, with the Engine test double (tests/api/conftest.py)."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest

from service.jobs.database import SCHEMA_VERSION, Database, QueueFullError
from service.jobs.store import JobStore
from service.jobs.sweeps_store import SweepStore
from tests.api.conftest import assert_problem, small_request
from tests.support.store_versions import write_store_at_version
from tests.support.sweeps import finish, store, sweep_body

pytestmark = pytest.mark.anyio

TOKEN_A = "alice-token-0123456789abcdef"
TOKEN_B = "bob-token-0123456789abcdef"
A = {"Authorization": f"Bearer {TOKEN_A}"}
B = {"Authorization": f"Bearer {TOKEN_B}"}
keys_on = pytest.mark.parametrize("settings_overrides", [{"api_keys": f"alice:{TOKEN_A}, bob:{TOKEN_B}"}])

GRID = {"init.seed": [0, 1, 2]}


async def post(service, body: dict | None = None, key: str | None = "k", **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return await service.client.post("/v1/sweeps", content=orjson.dumps(body or sweep_body(grid=GRID)),
                                     headers={"content-type": "application/json", **headers})


def counts(service) -> tuple[int, int]:
    """(sweeps, points) stored."""
    conn = store(service).db.connection()
    return (conn.execute("SELECT count(*) FROM sweeps").fetchone()[0],
            conn.execute("SELECT count(*) FROM sweep_points").fetchone()[0])


@pytest.fixture
def submitted(service, monkeypatch) -> list[str]:
    """Ids the API handed to the sweep engine."""
    ids: list[str] = []
    engine = service.app.state.sweep_engine

    async def submit(sweep_id: str) -> None:
        ids.append(sweep_id)

    monkeypatch.setattr(engine, "submit", submit)
    return ids


# ------------------------------------------------------------------------------------------------
# the contract


async def test_same_key_and_same_body_returns_the_same_sweep_without_new_points(service, submitted):
    first = await post(service)
    # The same sweep written differently (the base's key order, 2 vs 2.0, an explicit default) is the same body.
    base = small_request()
    base["data"]["sigma31"] = [[2, 0], [0, 0.5]]
    base = {"training": base["training"], **base, "dtype": "float64"}
    second = await post(service, {"grid": GRID, "keep": "summary", "base": base})
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == f"/v1/sweeps/{first.json()['id']}"
    assert second.headers["idempotent-replayed"] == "true"
    assert counts(service) == (1, 3)
    assert submitted == [first.json()["id"]]


async def test_first_post_with_a_key_is_not_marked_replayed(service):
    response = await post(service)
    assert response.status_code == 202 and "idempotent-replayed" not in response.headers


async def test_same_key_with_a_different_body_is_a_422_naming_the_header_and_the_sweep(service, submitted):
    first = (await post(service)).json()
    body = assert_problem(await post(service, sweep_body(grid={"init.seed": [0, 1, 2, 3]})), 422,
                          "idempotency-key-reused")
    assert body["errors"][0]["field"] == ["Idempotency-Key"] and body["errors"][0]["in"] == "header"
    assert f"sweep {first['id']}" in body["detail"]
    assert counts(service) == (1, 3) and submitted == [first["id"]]


async def test_reordered_grid_axes_are_a_different_sweep(service):
    # The axis order orders the points (first axis slowest), so it is part of the body's identity.
    await post(service, sweep_body(grid={"init.seed": [0, 1], "init.scale": [0.01, 0.1]}))
    assert_problem(await post(service, sweep_body(grid={"init.scale": [0.01, 0.1], "init.seed": [0, 1]})), 422,
                   "idempotency-key-reused")


async def test_different_keys_create_different_sweeps(service):
    a = (await post(service, key="a")).json()
    b = (await post(service, key="b")).json()
    assert a["id"] != b["id"] and counts(service) == (2, 6)


async def test_posts_without_a_key_are_never_replayed(service):
    a = (await post(service, key=None)).json()
    b = (await post(service, key=None)).json()
    assert a["id"] != b["id"]


async def test_replay_answers_the_sweep_as_it_is_now(service):
    sweep = (await post(service)).json()
    for k in range(3):
        finish(service, sweep["id"], k)
    replay = await post(service)
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["status"] == "succeeded" and replay.json()["counts"]["succeeded"] == 3
    assert "retry-after" not in replay.headers  # terminal: nothing to poll for


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_key_outside_1_to_255_characters_is_a_422_naming_the_header(service, key):
    body = assert_problem(await post(service, key=key), 422, "validation-error")
    assert body["errors"][0]["field"] == ["Idempotency-Key"] and body["errors"][0]["in"] == "header"
    assert counts(service) == (0, 0)


async def test_a_deleted_sweeps_key_is_spent_and_a_new_key_starts_a_new_sweep(service):
    # Keys outlive what they created (issue 19.10): a retry after a DELETE (or retention) must not run it again.
    first = (await post(service)).json()
    assert (await service.client.delete(f"/v1/sweeps/{first['id']}")).status_code == 204
    problem = assert_problem(await post(service), 410, "idempotency-key-spent")
    assert first["id"] in problem["detail"] and problem["errors"][0]["field"] == ["Idempotency-Key"]
    again = await post(service, key="k2")
    assert again.status_code == 202 and again.json()["id"] != first["id"]
    assert "idempotent-replayed" not in again.headers


@keys_on
async def test_equal_keys_of_different_api_keys_do_not_collide(service):
    mine = (await post(service, **A)).json()
    # B's equal key with another body is B's own first use, not a conflict with A's.
    theirs = await post(service, sweep_body(grid={"init.seed": [5]}), **B)
    assert theirs.status_code == 202 and theirs.json()["id"] != mine["id"]
    assert "idempotent-replayed" not in theirs.headers
    replay = await post(service, **A)
    assert replay.json()["id"] == mine["id"] and replay.headers["idempotent-replayed"] == "true"
    assert store(service).get(theirs.json()["id"]).owner == "bob"


# ------------------------------------------------------------------------------------------------
# limits: a replay names a sweep that exists, so no limit refuses it


async def test_replay_is_answered_when_the_sweep_queue_is_full(service):
    service.settings.max_active_sweeps = 1
    first = (await post(service)).json()
    replay = await post(service)
    assert replay.status_code == 202 and replay.json()["id"] == first["id"]
    assert_problem(await post(service, key="new"), 429, "queue-full")


async def test_replay_is_answered_when_the_per_key_limit_is_reached(service):
    service.settings.max_active_per_key = 1
    first = (await post(service)).json()
    replay = await post(service)
    assert replay.status_code == 202 and replay.json()["id"] == first["id"]
    assert_problem(await post(service, key="new"), 429, "too-many-active-jobs")


# ------------------------------------------------------------------------------------------------
# races: the unique (owner, key) index decides


async def test_concurrent_identical_posts_create_one_sweep(service, submitted):
    responses = await asyncio.gather(*(post(service) for _ in range(6)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 5
    assert counts(service) == (1, 3) and len(submitted) == 1


async def test_a_post_that_loses_the_race_to_insert_answers_the_winners_sweep(service, monkeypatch, submitted):
    first = (await post(service)).json()
    # As if this POST looked the key up just before the winner inserted: only the constraint can tell.
    monkeypatch.setattr(store(service), "by_idempotency_key", lambda key, owner=None: None)
    replay = await post(service)
    assert replay.status_code == 202 and replay.json()["id"] == first["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert counts(service) == (1, 3) and submitted == [first["id"]]


async def test_a_post_that_loses_the_race_with_another_body_is_a_conflict(service, monkeypatch):
    await post(service)
    monkeypatch.setattr(store(service), "by_idempotency_key", lambda key, owner=None: None)
    assert_problem(await post(service, sweep_body(grid={"init.seed": [7]})), 422, "idempotency-key-reused")
    assert counts(service) == (1, 3)


# ------------------------------------------------------------------------------------------------
# the store and its migration


def _points(n: int) -> list[tuple[bytes, str]]:
    return [(orjson.dumps({"init.seed": k}), "g") for k in range(n)]


@pytest.fixture
def sweeps(tmp_path):
    jobs = JobStore(Database(tmp_path / "dlnsim.sqlite3"))
    yield SweepStore(jobs.db)
    jobs.db.close()


def test_store_returns_the_keys_sweep_and_writes_no_points_for_a_used_key(sweeps):
    first, created = sweeps.create_or_get(b'{"a":1}', b"{}", "summary", _points(3), request_hash="h1",
                                          idempotency_key="k")
    again, created_again = sweeps.create_or_get(b'{"a":2}', b"{}", "summary", _points(5), request_hash="h2",
                                                idempotency_key="k")
    assert (created, created_again) == (True, False)
    assert again == first and again.request_hash == "h1"  # the caller compares hashes
    assert sweeps.db.connection().execute("SELECT count(*) FROM sweep_points").fetchone()[0] == 3


def test_same_key_from_many_threads_creates_one_sweep(sweeps):
    results, barrier = [], threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(sweeps.create_or_get(b"{}", b"{}", "summary", _points(2), request_hash="h",
                                            idempotency_key="k"))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({row.id for row, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert sweeps.db.connection().execute("SELECT count(*) FROM sweep_points").fetchone()[0] == 2


def test_full_store_still_answers_the_replay_of_a_key(sweeps):
    first, _ = sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), request_hash="h", idempotency_key="k",
                                    max_active=1)
    assert sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), request_hash="h", idempotency_key="k",
                                max_active=1) == (first, False)
    with pytest.raises(QueueFullError):
        sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), request_hash="h", idempotency_key="other",
                             max_active=1)


def test_key_lookup_uses_the_per_owner_unique_index(sweeps):
    plan = sweeps.db.connection().execute(
        "EXPLAIN QUERY PLAN SELECT id FROM sweeps WHERE coalesce(owner, '') = coalesce(?, '') "
        "AND idempotency_key = ?", (None, "k")).fetchall()
    assert any("sweeps_owner_idempotency" in row[-1] for row in plan), plan


def test_a_version_3_store_upgrades_keeping_its_sweeps_and_accepts_keys(tmp_path):
    path = tmp_path / "v3.sqlite3"
    write_store_at_version(  # what the previous release wrote: migrations 1 to 3
        path, 3, "INSERT INTO sweeps (id, status, created_at, request, base, keep, n_points, owner) "
                 "VALUES ('s', 'queued', '2026-01-01T00:00:00.000000Z', x'7b7d', x'7b7d', 'summary', 0, 'alice')")
    jobs = JobStore(Database(path))
    try:
        sweeps = SweepStore(jobs.db)
        assert jobs.db.connection().execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        old = sweeps.get("s")
        assert (old.status, old.owner, old.idempotency_key, old.request_hash) == ("queued", "alice", None, None)
        mine, created = sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), "alice", request_hash="h",
                                             idempotency_key="k")
        assert created and mine.idempotency_key == "k"
        assert sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), "alice", request_hash="h",
                                    idempotency_key="k") == (mine, False)
        # keys are per owner: keys-off (NULL) and another owner's equal key are unrelated
        assert sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), None, request_hash="h",
                                    idempotency_key="k")[1]
        assert sweeps.create_or_get(b"{}", b"{}", "summary", _points(1), "bob", request_hash="h",
                                    idempotency_key="k")[1]
    finally:
        jobs.db.close()


# ------------------------------------------------------------------------------------------------
# the schema


async def test_openapi_documents_the_header_like_the_simulations_one(service):
    paths = (await service.client.get("/openapi.json")).json()["paths"]

    def header(path: str) -> dict:
        return next(p for p in paths[path]["post"]["parameters"] if p["name"] == "Idempotency-Key")

    sweeps, simulations = header("/v1/sweeps"), header("/v1/simulations")
    assert sweeps["in"] == "header" and not sweeps.get("required", False)
    assert sweeps["schema"]["anyOf"] == simulations["schema"]["anyOf"]  # same bounds: 1..255 characters
    assert "Idempotent-Replayed" in paths["/v1/sweeps"]["post"]["responses"]["202"]["headers"]
