"""Concurrent downloads of a large trajectory against a real ``python -m service``, the API's memory read from /proc
(issue 19.3: 4 concurrent .npz downloads of a 205 MB trajectory took the API from 1.1 to 3.7 GB and stalled /healthz
for 5 s). Every download reserves what it holds from DLNSIM_DOWNLOAD_MEMORY_BYTES (here 512 MiB) before its first
byte, and holds about one array: the API's memory stays within the budget, and probes answer meanwhile."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from service import codec
from service.jobs.database import Database
from service.jobs.store import JobStore
from service.main import STORE_FILE
from tests.support.server import Server

pytestmark = pytest.mark.e2e

MB = 1 << 20
BUDGET = 512 * MB
ARRAY_BYTES = 200 * MB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def store_large_result(data_dir) -> str:
    """A succeeded simulation whose stored trajectory is a 200 MB product array (random: it does not compress), put in
    the server's store as its worker would."""
    store = JobStore(Database(data_dir / STORE_FILE))
    try:
        row, _ = store.create(b'{"large": true}', "h")
        store.mark_running(row.id)
        records = 100
        product = np.random.default_rng(0).standard_normal((records, ARRAY_BYTES // (8 * records * 1000), 1000))
        store.finish(row.id, codec.pack({"time": np.arange(float(records)), "product": product,
                                         "loss": np.linspace(1.0, 0.0, records)}), "completed")
        return row.id
    finally:
        store.db.close()


def test_four_concurrent_downloads_of_a_large_trajectory_stay_within_the_memory_budget_and_probes_answer(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "server.log", DLNSIM_DOWNLOAD_MEMORY_BYTES=str(BUDGET)).start()
    try:
        job_id = store_large_result(server.data_dir)
        pid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=120) as c:
            assert c.get(f"/v1/simulations/{job_id}").json()["status"] == "succeeded"
        baseline = rss(pid)
        peak, probes, stop = [baseline], [], threading.Event()

        def sample() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss(pid))
                    started = time.monotonic()
                    assert c.get("/healthz").status_code == 200
                    probes.append(time.monotonic() - started)
                    time.sleep(0.05)

        sizes, errors = [], []

        def download(path: str) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=120) as c, c.stream("GET", path) as response:
                    assert response.status_code == 200, response.read()[:300]
                    sizes.append(sum(len(chunk) for chunk in response.iter_raw(1 << 20)))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        sampler = threading.Thread(target=sample)
        sampler.start()
        paths = [f"/v1/simulations/{job_id}/trajectory.npz"] * 3 + [f"/v1/simulations/{job_id}/trajectory"]
        threads = [threading.Thread(target=download, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stop.set()
        sampler.join(30)
        assert not errors, errors
        assert len(sizes) == 4 and min(sizes) > 0.95 * ARRAY_BYTES
        grown = (peak[0] - baseline) / MB
        print(f"API RSS {baseline / MB:.0f} MB before, peak {peak[0] / MB:.0f} MB (+{grown:.0f} MB) during 4 downloads; "
              f"/healthz max {max(probes) * 1000:.0f} ms over {len(probes)} probes")
        assert peak[0] - baseline < BUDGET + 128 * MB, grown  # before: ~3 × 200 MB per download, all at once
        assert max(probes) < 1.0, max(probes)
        with httpx.Client(base_url=server.url, timeout=30) as c:  # everything was released
            assert c.get("/readyz").status_code == 200
    finally:
        server.stop()
