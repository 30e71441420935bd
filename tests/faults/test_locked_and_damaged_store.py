"""A store locked by another connection, and a damaged store, against a real ``python -m service`` (issue 19.6, 19.8).

Locked: a ``BEGIN IMMEDIATE`` held by another process's connection for longer than the busy timeout. The README
promises 503 with Retry-After when the store is unreachable, and a job that finishes meanwhile must keep its result:
the final write is retried, not the computation (attempts stays 1).

Damaged: pages of the file overwritten with garbage (a table's root page, an index page, the header). At start the
service exits with a message naming the file and the recovery, not a traceback; damage found while serving is a
503 naming them, and /readyz says so.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.main import STORE_FILE
from tests.faults.conftest import TERMINAL, poll, query
from tests.support.live_service import CORRELATIONS, assert_problem_type, post, run_request, short_request
from tests.support.server import ROOT, Server, free_port

pytestmark = pytest.mark.e2e

BUSY_TIMEOUT = 1.0


class HeldLock:
    """``BEGIN IMMEDIATE`` on the store from another connection (as another process, a backup, an operator's sqlite3
    shell would), held until ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.conn = sqlite3.connect(data_dir / STORE_FILE, isolation_level=None, timeout=30, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_store_locked_past_the_busy_timeout_answers_503_and_a_finishing_job_keeps_its_result(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "server.log",
                    DLNSIM_STORE_BUSY_TIMEOUT_SECONDS=str(BUSY_TIMEOUT)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            running = post(c, short_request(30_000)).json()["id"]   # a few seconds on the one worker
            waiting = post(c, short_request(1_000)).json()["id"]    # queued behind it
            poll(c, running, lambda s: s["status"] == "running" and s["progress"] > 0.1)
            lock = HeldLock(server.data_dir)
            try:
                started = time.monotonic()
                refused = post(c, run_request(CORRELATIONS, "exact"))
                assert time.monotonic() - started < BUSY_TIMEOUT + 3
                assert_problem_type(refused, 503, "unavailable")
                assert int(refused.headers["retry-after"]) >= 1
                assert_problem_type(c.post(f"/v1/simulations/{waiting}/cancel"), 503, "unavailable")
                # reads go on (WAL): the service is up, only writes wait
                assert c.get(f"/v1/simulations/{running}").status_code == 200
                time.sleep(6)  # the running job finishes while the lock is held: its result must wait, not be lost
            finally:
                lock.release()
            sim = poll(c, running, lambda s: s["status"] in TERMINAL)
            assert sim["status"] == "succeeded", (sim, server.log())
            assert query(server.data_dir, "SELECT attempts FROM jobs WHERE id = ?", (running,)) == [(1,)]
            assert poll(c, waiting, lambda s: s["status"] in TERMINAL)["status"] == "succeeded"
            assert post(c, run_request(CORRELATIONS, "exact")).status_code == 202
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------
# damage


def make_store(data_dir: Path) -> None:
    """A store with a few finished jobs, made by a real server, then stopped and checkpointed."""
    server = Server(data_dir, data_dir.parent / "make.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(30):
                assert post(c, run_request(CORRELATIONS, "exact")).status_code == 202
    finally:
        server.stop()
    conn = sqlite3.connect(data_dir / STORE_FILE)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def page_of(data_dir: Path, name: str) -> tuple[int, int]:
    """(page number, page size) of the root page of table or index ``name``."""
    conn = sqlite3.connect(data_dir / STORE_FILE)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return root, page_size
    finally:
        conn.close()


def damage(path: Path, offset: int, length: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes((i * 37 + 11) % 256 for i in range(length)))
        f.flush()
        os.fsync(f.fileno())


def start(data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DLNSIM_DATA_DIR": str(data_dir), "DLNSIM_PORT": str(free_port()), "DLNSIM_WORKERS": "1",
           "DLNSIM_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("where", ["jobs table root page", "index page", "header"])
def test_a_damaged_store_stops_the_service_with_a_message_naming_the_file_and_the_recovery(tmp_path, where):
    data_dir = tmp_path / "data"
    make_store(data_dir)
    path = data_dir / STORE_FILE
    if where == "header":
        damage(path, 0, 100)
    else:
        page, size = page_of(data_dir, "jobs" if where.startswith("jobs") else "jobs_newest")
        damage(path, (page - 1) * size + 8, size - 16)
    ended = start(data_dir)
    assert ended.returncode == 2, (ended.returncode, ended.stderr[-3000:])
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    assert str(path) in ended.stderr and "damaged" in ended.stderr and ".recover" in ended.stderr, ended.stderr


def test_damage_found_while_serving_is_a_503_naming_the_file_and_readiness_says_so(tmp_path):
    data_dir = tmp_path / "data"
    make_store(data_dir)
    server = Server(data_dir, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/v1/simulations").status_code == 200
            conn = sqlite3.connect(data_dir / STORE_FILE, isolation_level=None)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page, size = page_of(data_dir, "jobs")
            damage(data_dir / STORE_FILE, (page - 1) * size + 8, size - 16)
            conn.execute("CREATE TABLE poke (x)")  # a commit: the server's connections drop their cached pages
            conn.close()
            problem = assert_problem_type(c.get("/v1/simulations"), 503, "store-damaged")
            assert str(data_dir / STORE_FILE) in problem["detail"] and ".recover" in problem["detail"]
            assert_problem_type(post(c, run_request(CORRELATIONS, "exact")), 503, "store-damaged")
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "damaged" in ready.json()["detail"], ready.text
            assert c.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_another_connection_holding_the_lock_briefly_costs_nothing(tmp_path):
    # The busy timeout still absorbs short locks: a write waits for them instead of failing.
    server = Server(tmp_path / "data", tmp_path / "server.log").start()
    try:
        lock = HeldLock(server.data_dir)
        threading.Timer(1.0, lock.release).start()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert post(c, run_request(CORRELATIONS, "exact")).status_code == 202
    finally:
        server.stop()
