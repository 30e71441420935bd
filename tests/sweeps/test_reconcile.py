"""The sweep engine's reconcile pass: a stored sweep that is not running (its submit failed, its chunk's
outcome could not be stored) is submitted by the next pass, and never twice.

Setup: one in-process LocalCluster (threads, started once for the module in ~0.1 s) whose async client
lives on an event loop in a background thread, as in tests/jobs/test_engine.py; each test has its own
store and SweepEngine on that client. Chunks run ``fake_chunk`` (no numerics: the engine's bookkeeping
is under test), which records every run in RUNS; being in-process, RUNS sees the workers' runs.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import types

import orjson
import pytest

from service.jobs import runner as runner_module
from service.jobs.database import Database
from service.jobs.store import JobStore
from service.jobs.sweep_engine import SweepEngine
from service.jobs.sweeps_store import SweepStore
from service.settings import Settings
from tests.support.loop_thread import LoopThread
from tests.support.waiting import wait_until as _wait_until

# Bound for things that take ~0.1 s (a task round trip, a store write): only reached when something is
# broken, so it costs nothing when the tests pass.
PATIENCE = 30.0
# A reconcile loop period short enough for a test to see several passes in well under a second.
FAST_RECONCILE = 0.05

RUNS: list[tuple[str, tuple[int, ...]]] = []   # (sweep id, points) of every chunk run, in order
GATES: dict[str, threading.Event] = {}         # a sweep's chunks wait for its gate, if it has one


def fake_chunk(sweep_id: str, chunk: str, base: bytes, items: list[tuple[int, bytes]], keep: str) -> list[dict]:
    """Stands in for run_sweep_chunk: every point succeeds with summary {"k": k}."""
    RUNS.append((sweep_id, tuple(k for k, _ in items)))
    gate = GATES.get(sweep_id)
    if gate is not None:
        gate.wait(PATIENCE)
    return [{"k": k, "status": "succeeded", "outcome": "completed", "summary": {"k": k}, "error": None,
             "trajectory": None} for k, _ in items]


class CountingClient:
    """The Dask client, counting the task keys submitted through it (a chunk's key is fixed by its points)."""

    def __init__(self, client) -> None:
        self._client = client
        self.keys: collections.Counter = collections.Counter()

    def submit(self, *args, key: str, **kwargs):
        self.keys[key] += 1
        return self._client.submit(*args, key=key, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    loop = LoopThread()

    async def open_():
        cl = await LocalCluster(n_workers=1, threads_per_worker=2, processes=False, asynchronous=True,
                                dashboard_address=None)
        return cl, await Client(cl, asynchronous=True, set_as_default=False)

    cl, client = loop.run(open_())
    yield types.SimpleNamespace(loop=loop, client=client)

    async def close_():
        await client.close()
        await cl.close()

    loop.run(close_())
    loop.stop()


@pytest.fixture
def env(cluster, tmp_path):
    jobs = JobStore(Database(tmp_path / "dlnsim.sqlite3"))
    store = SweepStore(jobs.db)
    # The engine stand-in: the SweepEngine only uses its Dask client. Chunks of 2 points: a 4-point sweep
    # is 2 chunks, one per worker thread.
    client = CountingClient(cluster.client)
    engine = SweepEngine(Settings(sweep_chunk_size=2), store, types.SimpleNamespace(client=client),
                         task=fake_chunk)
    yield types.SimpleNamespace(store=store, sweeps=engine, client=client, run=cluster.loop.run)
    cluster.loop.run(engine.close())
    jobs.db.close()


def make(env, n: int = 4) -> str:
    """A stored, queued sweep of n points (not submitted)."""
    return env.store.create(b'{"base":{}}', b"{}", "summary", [(orjson.dumps({"init.seed": k}), "g")
                                                                for k in range(n)]).id


def finished(env, sweep_id: str):
    return _wait_until(lambda: (row := env.store.get(sweep_id)).terminal and row, PATIENCE, 0.02)


def runs(sweep_id: str) -> collections.Counter:
    """How many times each point of the sweep was run."""
    return collections.Counter(k for s, ks in list(RUNS) if s == sweep_id for k in ks)


def assert_each_chunk_submitted_once(env, chunks: int = 2) -> None:
    assert list(env.client.keys.values()) == [1] * chunks, env.client.keys


def assert_every_point_succeeded(env, sweep_id: str, n: int = 4) -> None:
    row = finished(env, sweep_id)
    assert (row.status, row.counts["succeeded"]) == ("succeeded", n)
    points, _ = env.store.points(sweep_id)
    assert [(p.k, p.summary) for p in points] == [(k, {"k": k}) for k in range(n)]


def fail_first(calls: int, original):
    """``original`` that raises sqlite3.OperationalError on its first ``calls`` calls (a store briefly
    unreachable); the count of calls so far is in ``.calls``."""
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        if wrapper.calls <= calls:
            raise sqlite3.OperationalError("disk I/O error")
        return original(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def test_sweep_whose_submit_failed_runs_at_the_next_reconcile_pass(env, monkeypatch):
    sweep_id = make(env)
    monkeypatch.setattr(env.store, "pending_points", fail_first(1, env.store.pending_points))
    env.run(env.sweeps.submit(sweep_id))  # fails inside: logged, the API still answers 202
    assert env.store.get(sweep_id).status == "queued" and not runs(sweep_id)
    assert env.run(env.sweeps.reconcile()) == 1
    assert_every_point_succeeded(env, sweep_id)
    assert runs(sweep_id) == dict.fromkeys(range(4), 1)
    assert_each_chunk_submitted_once(env)


def test_reconcile_does_not_resubmit_a_running_sweep(env):
    sweep_id = make(env)
    GATES[sweep_id] = threading.Event()
    try:
        env.run(env.sweeps.submit(sweep_id))
        _wait_until(lambda: sum(runs(sweep_id).values()) == 4, PATIENCE, 0.02)  # both chunks running
        assert env.run(env.sweeps.reconcile()) == 0
    finally:
        GATES.pop(sweep_id).set()
    assert_every_point_succeeded(env, sweep_id)
    assert runs(sweep_id) == dict.fromkeys(range(4), 1)
    assert_each_chunk_submitted_once(env)


def test_concurrent_submit_and_reconcile_submit_the_sweep_once(env, monkeypatch):
    """The API's submit and a reconcile pass racing for one sweep: the first claims it, the other skips."""
    sweep_id = make(env)
    # Their store reads return together, so both resume with the sweep unclaimed.
    barrier = threading.Barrier(2, timeout=PATIENCE)

    def together(read):
        def first_call_waits(*args, **kwargs):
            value = read(*args, **kwargs)
            if not first_call_waits.waited:
                first_call_waits.waited = True
                barrier.wait()
            return value

        first_call_waits.waited = False
        return first_call_waits

    monkeypatch.setattr(env.store, "get", together(env.store.get))
    monkeypatch.setattr(env.store, "unfinished", together(env.store.unfinished))

    async def both():
        await asyncio.gather(env.sweeps.submit(sweep_id), env.sweeps.reconcile())

    env.run(both())
    assert_every_point_succeeded(env, sweep_id)
    # Counted at the client: Dask would merge a second submission of a key into the first run.
    assert_each_chunk_submitted_once(env)


def test_start_runs_the_unfinished_points_of_stored_sweeps(env):
    """The initial pass (a restart): points left queued or running run, a finished point does not."""
    sweep_id = make(env)
    env.store.mark_points_running(sweep_id, [0, 1])
    env.store.finish_points(sweep_id, [{"k": 3, "status": "succeeded", "outcome": "completed", "summary": {"k": 3}}])
    env.run(env.sweeps.start())
    assert_every_point_succeeded(env, sweep_id)
    assert runs(sweep_id) == dict.fromkeys(range(3), 1)


def test_reconcile_loop_submits_a_sweep_stored_after_start(env, monkeypatch):
    monkeypatch.setattr(runner_module, "RECONCILE_SECONDS", FAST_RECONCILE)
    env.run(env.sweeps.start())
    sweep_id = make(env)  # stored but never submitted, as when the submit after the 202 was lost
    assert_every_point_succeeded(env, sweep_id)
    assert runs(sweep_id) == dict.fromkeys(range(4), 1)
    assert_each_chunk_submitted_once(env)  # no pass submitted it twice


def test_reconcile_loop_keeps_going_after_a_failing_pass(env, monkeypatch):
    monkeypatch.setattr(runner_module, "RECONCILE_SECONDS", FAST_RECONCILE)
    env.run(env.sweeps.start())
    unfinished = fail_first(1, env.store.unfinished)
    monkeypatch.setattr(env.store, "unfinished", unfinished)
    sweep_id = make(env)
    assert_every_point_succeeded(env, sweep_id)
    assert unfinished.calls >= 2  # the failing pass, then the one that submitted the sweep


def test_chunk_whose_results_the_store_refuses_fails_its_points_with_the_reason(env, monkeypatch):
    """Not rerun at every reconcile pass: a write that fails the same way each time would loop."""
    sweep_id = make(env, n=2)  # one chunk
    monkeypatch.setattr(env.store, "finish_points", fail_first(1, env.store.finish_points))
    env.run(env.sweeps.submit(sweep_id))
    row = finished(env, sweep_id)
    assert (row.status, row.counts["failed"]) == ("failed", 2)
    points, _ = env.store.points(sweep_id)
    assert all("could not be stored: OperationalError: disk I/O error" in p.error["detail"] for p in points)
    assert env.run(env.sweeps.reconcile()) == 0
    assert runs(sweep_id) == {0: 1, 1: 1}


def test_chunk_whose_outcome_cannot_be_stored_at_all_runs_again_at_the_next_reconcile_pass(env, monkeypatch):
    """The results write and the fallback failing write both fail (store unreachable): the points stay
    unfinished, and once the chunk has ended the next reconcile pass submits the sweep again."""
    sweep_id = make(env, n=2)
    finish_points = fail_first(2, env.store.finish_points)
    monkeypatch.setattr(env.store, "finish_points", finish_points)
    env.run(env.sweeps.submit(sweep_id))
    # 0 while the chunk still runs or its writes are retried; 1 once it has ended with its points unstored.
    _wait_until(lambda: env.run(env.sweeps.reconcile()) == 1, PATIENCE, 0.02)
    assert finish_points.calls >= 2
    # Each point recorded once (the rerun may re-attach to the first run's result, so runs are not counted).
    assert_every_point_succeeded(env, sweep_id, n=2)
