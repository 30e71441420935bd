"""Secrets stay with the API process (issue 19.10): the embedded Dask workers, which run whatever a request asks and
are restarted by their nanny, inherited DLNSIM_API_KEYS (the tokens) in their environment."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.faults.conftest import dask_workers, wait_until
from tests.support.server import Server

pytestmark = pytest.mark.e2e

TOKEN = "tok-0123456789abcdef-secret"
SECRET = "owner-secret-0123456789abcdef"


def environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def test_workers_and_restarted_workers_never_see_the_api_keys_or_the_owner_secret(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "server.log", DLNSIM_API_KEYS=f"alice:{TOKEN}",
                    DLNSIM_OWNER_SECRET=SECRET).start()
    try:
        [worker] = dask_workers(server)
        for pid in (worker.pid,):
            env = environ(pid)
            assert b"DLNSIM_API_KEYS" not in env and TOKEN.encode() not in env and SECRET.encode() not in env
        worker.send_signal(signal.SIGKILL)  # the nanny starts a new one, from the API's environment of now
        restarted = wait_until(lambda: [w for w in dask_workers(server) if w.pid != worker.pid], timeout=60)
        env = environ(restarted[0].pid)
        assert b"DLNSIM_API_KEYS" not in env and TOKEN.encode() not in env and SECRET.encode() not in env
        with httpx.Client(base_url=server.url, timeout=30) as c:  # the keys still work in the API
            assert c.get("/v1/simulations", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert c.get("/v1/simulations").status_code == 401
    finally:
        server.stop()
