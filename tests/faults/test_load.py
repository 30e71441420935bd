"""A short bounded load on loopback (bench/load.py at CI size): 20 closed-loop clients for 5 s of mixed
submits, status reads, lists and deletes while the one worker is saturated and DLNSIM_MAX_QUEUED is 4.

Only generous bounds are asserted (figures go to ``make load``): no 5xx and no transport error, status
reads under 1 s at p99 (a status read is one indexed SQLite row; 1 s is ~100× the idle figure, room for a
loaded 2-core CI machine), and the queue bound answers 429 with Retry-After.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.load import run_load
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

MAX_QUEUED = 4


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
        yield result, active, healthy
    finally:
        server.stop()


def test_load_gets_no_server_error_and_no_transport_error(report):
    result, _, healthy = report
    assert result.server_errors == 0 and not result.errors, result.lines()
    assert healthy == 200


def test_status_reads_stay_under_a_second_at_p99_while_workers_are_saturated(report):
    result, _, _ = report
    assert len(result.status_reads) >= 100, result.lines()  # enough reads for a p99 to mean something
    assert result.quantile(0.99) < 1.0, result.lines()


def test_the_queue_bound_answers_429_with_retry_after_and_holds(report):
    result, active, _ = report
    assert result.codes["POST 429"] > 0, result.lines()
    assert result.refusals_without_retry_after == 0, result.lines()
    assert len(active) <= MAX_QUEUED, [s["id"] for s in active]
