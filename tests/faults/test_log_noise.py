"""What an ordinary client action writes to the server's log (issue 19.9, 19.10): a client that disconnects
mid-upload, a user who cancels a running job, a token in a query string. The server runs at DLNSIM_LOG_LEVEL=info,
as by default."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.conftest import poll, wait_until
from tests.support.live_service import post, short_request
from tests.support.server import Server

pytestmark = pytest.mark.e2e

ABORTS = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("noise")
    srv = Server(base / "data", base / "server.log", workers=1, DLNSIM_LOG_LEVEL="info").start()
    try:
        yield srv
    finally:
        srv.stop()


def log_size(server: Server) -> int:
    return server.log_path.stat().st_size


def test_clients_that_disconnect_mid_upload_write_no_traceback(server):
    before = log_size(server)
    for _ in range(ABORTS):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v1/simulations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"data\": ")
        time.sleep(0.01)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
    time.sleep(0.5)
    written = server.log_path.read_bytes()[before:].decode(errors="replace")
    assert "Traceback" not in written and "ClientDisconnect" not in written, written[:3000]
    assert len(written) < ABORTS * 200, f"{len(written)} bytes of log for {ABORTS} aborted uploads"


def test_a_cancelled_job_is_not_logged_as_an_error(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        job_id = post(c, short_request(2_000_000)).json()["id"]
        poll(c, job_id, lambda s: s["status"] == "running" and s["progress"] > 0)
        before = log_size(server)
        assert c.post(f"/v1/simulations/{job_id}/cancel").json()["status"] == "cancelled"
        # the worker saw the flag and stopped: it takes the next job at once
        follow = post(c, short_request(100), Prefer="wait=60").json()
        assert follow["status"] == "succeeded", follow
    written = server.log_path.read_bytes()[before:].decode(errors="replace")
    assert "Compute Failed" not in written and "JobCancelled" not in written, written[:3000]
    assert "Traceback" not in written


def test_query_string_values_never_reach_the_access_log(server):
    secret = "s3cr3t-token-value-0123456789"
    with httpx.Client(base_url=server.url, timeout=10) as c:
        c.get("/v1/simulations", params={"access_token": secret, "page_size": 5})
    text = wait_until(lambda: (t := server.log()) and "GET /v1/simulations?" in t and t, timeout=10)
    assert secret not in server.log_path.read_text(errors="replace")
    assert "/v1/simulations?access_token=…&page_size=…" in text
