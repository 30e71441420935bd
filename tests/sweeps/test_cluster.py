"""Sweeps on a real cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1 started
here, and the service as a real uvicorn process (`python -m service`) pointed at them with
DLNSIM_SCHEDULER, as the compose `cluster` profile runs it.

The sweep: 12 GD points (init scale × seed) on the hierarchy task, 2 points per chunk, each point
~0.25 s of compute on the plateau-and-learning phase (it does not converge early), so a sweep takes a
few seconds and has several chunks in flight when a worker or the API is killed.

Every check against the expected rows compares numbers exactly: the workers and this process run the same
code with BLAS on one thread, and the expected values are each point's ``simulate_batch`` alone. These
two-layer nets step in SIMD lanes (service/dynamics/gd_lanes.py), whose results do not depend on the other
points of a batch or on the chunking, so a sweep point is bit for bit its batch of one; against a single
simulation of the same request (the one-by-one loop) it agrees to round-off
(tests/dynamics/test_lanes.py), which ``test_sweep_point_equals_the_same_request_run_as_a_simulation`` checks
to a tolerance.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from service.jobs.worker import SWEEP_PROGRESS_TOPIC
from tests.support.server import ROOT, Server, free_port
from tests.support.waiting import wait_until as _wait_until

DASK = Path(sys.executable).parent / "dask"
BLAS_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "NUMBA_NUM_THREADS": "1", "DLNSIM_BLAS_THREADS": "1"}
# Waits for things that take a few seconds when all is well; only reached when something is broken.
PATIENCE = 90.0

BASE = {
    "data": {"kind": "preset", "name": "hierarchy", "depth": 3},
    "network": {"hidden": [16]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
    "training": {"method": "gd", "learning_rate": 1e-4, "steps": 200_000},  # t = 20: modes being learned
    "record": {"points": 50},
}
GRID = {"init.scale": [0.01, 0.1, 1.0], "init.seed": [0, 1, 2, 3]}
N_POINTS = 12
SUMMARY_KEYS = ("final_time", "final_loss", "final_excess_loss", "optimum_loss", "final_distance_to_optimum",
                "final_strength", "learning_time", "learning_time_theory", "theory_model",
                "steps_to_convergence", "time_to_convergence", "diverged_at_step")


class Cluster:
    """A scheduler and named workers (`--no-nanny`: SIGKILL to a worker removes it, nothing restarts it)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, **BLAS_ONE_THREAD, "PYTHONPATH": str(ROOT)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen([str(DASK), *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes[name] = proc
        return proc

    def start(self, workers: int = 2) -> Cluster:
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                                  "--dashboard-address", "127.0.0.1:0"])
        for i in range(workers):
            self._spawn(f"w{i}", ["worker", self.address, "--nthreads", "1", "--no-nanny", "--name", f"w{i}",
                                  "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"])
        return self

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from distributed import Client

    tmp = tmp_path_factory.mktemp("cluster")
    cl = Cluster(tmp).start()
    try:
        # The test's own client: to watch the scheduler (workers, chunk events); it submits nothing.
        client = Client(cl.address, timeout=PATIENCE, set_as_default=False)
        client.wait_for_workers(2, timeout=PATIENCE)
        cl.client = client
        yield cl
        client.close()
    finally:
        cl.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps-store")


def start_server(cluster, data_dir: Path) -> Server:
    return Server(data_dir, data_dir.parent / "server.log", DLNSIM_SCHEDULER=cluster.address,
                  DLNSIM_SWEEP_CHUNK_SIZE="2", **BLAS_ONE_THREAD).start()


@pytest.fixture(scope="module")
def server(cluster, data_dir):
    srv = start_server(cluster, data_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected() -> dict[int, dict]:
    """Each grid point run alone with ``simulate_batch`` in this process: its results row values."""
    import itertools

    from threadpoolctl import threadpool_limits

    from service.build import build_run
    from service.dynamics.batch import SweepPoint, simulate_batch
    from service.grid import point_summary
    from service.schemas import SimulationRequest
    from tests.support.trajectories import trajectory_document

    out = {}
    with threadpool_limits(1):  # as on the workers: same summation order, same bits
        for k, values in enumerate(itertools.product(*GRID.values())):
            request = point_request(dict(zip(GRID, values, strict=True)))
            spec = build_run(SimulationRequest.model_validate(request))
            traj = simulate_batch([SweepPoint(spec.problem, spec.weights0, spec.method, spec.record, spec.dtype)])[0]
            # through JSON, as the service reports them
            out[k] = {"outcome": traj.outcome, **orjson.loads(orjson.dumps(point_summary(traj))),
                      "document": orjson.dumps(trajectory_document(traj), option=orjson.OPT_SERIALIZE_NUMPY)}
    return out


def point_request(params: dict) -> dict:
    request = orjson.loads(orjson.dumps(BASE))
    request["init"].update({path.split(".")[1]: value for path, value in params.items()})
    return request


def create_sweep(client: httpx.Client, keep: str = "summary") -> str:
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": GRID, "keep": keep})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until(predicate, timeout: float = PATIENCE, interval: float = 0.05):
    return _wait_until(predicate, timeout, interval)


def finished(client: httpx.Client, sweep_id: str) -> dict:
    return wait_until(lambda: (s := client.get(f"/v1/sweeps/{sweep_id}").json())["status"]
                      in ("succeeded", "failed", "cancelled") and s)


def rows(client: httpx.Client, sweep_id: str) -> list[dict]:
    return client.get(f"/v1/sweeps/{sweep_id}/results", params={"page_size": 1000}).json()["items"]


def starts(cluster, sweep_id: str) -> list[dict]:
    """The sweep's chunk-start events, as the workers sent them (points, pid)."""
    return [msg for _, msg in cluster.client.get_events(SWEEP_PROGRESS_TOPIC)
            if msg.get("sweep") == sweep_id and msg.get("started")]


def assert_every_point_correct(client, sweep_id: str, expected: dict) -> None:
    got = rows(client, sweep_id)
    assert [r["index"] for r in got] == list(range(N_POINTS))  # each point once
    for row in got:
        want = expected[row["index"]]
        assert (row["status"], row["outcome"]) == ("succeeded", want["outcome"]), row
        assert {key: row[key] for key in SUMMARY_KEYS} == {key: want[key] for key in SUMMARY_KEYS}


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_sweep_runs_on_both_workers_and_equals_single_simulations(cluster, client, expected):
    sweep_id = create_sweep(client, keep="trajectories")
    sweep = finished(client, sweep_id)
    assert (sweep["status"], sweep["counts"]["succeeded"], sweep["progress"]) == ("succeeded", N_POINTS, 1.0)
    assert_every_point_correct(client, sweep_id, expected)
    # chunks of 2 points, spread over the two workers
    events = starts(cluster, sweep_id)
    assert sorted(k for e in events for k in e["points"]) == list(range(N_POINTS))
    assert {len(e["points"]) for e in events} == {2}
    assert len({e["pid"] for e in events}) == 2
    # kept trajectories are the documents of the points run alone, bit for bit
    for k in (0, 7):
        response = client.get(f"/v1/sweeps/{sweep_id}/points/{k}/trajectory")
        assert response.status_code == 200 and response.content == expected[k]["document"]


def test_sweep_point_equals_the_same_request_run_as_a_simulation(client):
    sweep_id = create_sweep(client, keep="trajectories")
    finished(client, sweep_id)
    row = rows(client, sweep_id)[5]
    response = client.post("/v1/simulations", json=point_request(row["parameters"]), headers={"Prefer": "wait=60"})
    assert response.status_code == 201 and response.json()["status"] == "succeeded", response.text
    single = orjson.loads(client.get(f"/v1/simulations/{response.json()['id']}/trajectory").content)
    point = orjson.loads(client.get(row["links"]["trajectory"]).content)
    # the simulation steps with BLAS, the sweep in SIMD lanes: equal to round-off (200,000 steps here)
    assert_documents_close(point, single, rtol=1e-9)


def assert_documents_close(got, want, rtol: float, path: str = "trajectory") -> None:
    """Same structure, strings, booleans and integers; floats equal to ``rtol`` relative (of the larger)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_documents_close(got[key], want[key], rtol, f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_documents_close(g, w, rtol, f"{path}[{j}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert abs(got - want) <= rtol * max(abs(got), abs(want)) or got == want, (path, got, want)
    else:
        assert got == want, path


def test_sweep_with_a_large_base_runs(client):
    """A base above SCATTER_BYTES (a 1.6 MB dataset) is scattered to the workers once, not sent
    through the scheduler with every chunk."""
    import numpy as np

    from service.jobs.runner import SCATTER_BYTES

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 4)).round(6)
    base = {"data": {"kind": "dataset", "x": x.tolist(), "y": (x[:, :2] @ [[1.0, 0.0], [0.0, 0.5]]).tolist()},
            "network": {"hidden": [3]}, "training": {"method": "gd", "learning_rate": 0.05, "steps": 100}}
    assert len(orjson.dumps(base)) > SCATTER_BYTES
    response = client.post("/v1/sweeps", json={"base": base, "grid": {"init.seed": [0, 1, 2]}})
    assert response.status_code == 202, response.text
    sweep = finished(client, response.json()["id"])
    assert (sweep["status"], sweep["counts"]["succeeded"]) == ("succeeded", 3)


def test_cancelled_sweep_stops_its_running_chunks(cluster, client):
    # Points of ~10 s each (10⁷ steps on the plateau, η = 10⁻⁷): without the cooperative stop the
    # workers would stay busy long after the 2 s allowed below.
    base = {**BASE, "training": {"method": "gd", "learning_rate": 1e-7, "steps": 10_000_000}}
    response = client.post("/v1/sweeps", json={"base": base, "grid": {"init.seed": [0, 1, 2, 3, 4, 5]}})
    sweep_id = response.json()["id"]
    wait_until(lambda: len(starts(cluster, sweep_id)) == 2)  # a chunk running on each worker
    response = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert response.json()["status"] == "cancelled"

    def busy_threads():
        return sum(cluster.client.run(lambda dask_worker: len(dask_worker.active_threads)).values())

    # The contract: running work stops within a second or two (cancel flag checked every 0.2 s).
    wait_until(lambda: busy_threads() == 0, timeout=2.0)
    counts = client.get(f"/v1/sweeps/{sweep_id}").json()["counts"]
    assert counts["cancelled"] > 0 and counts["queued"] == counts["running"] == 0


def test_api_restarted_mid_sweep_resumes_without_rerunning_finished_points(cluster, server, data_dir, expected):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sweep_id = create_sweep(c)
        done_before = wait_until(lambda: (d := {r["index"] for r in rows(c, sweep_id) if r["status"] == "succeeded"})
                                 and len(d) < N_POINTS - 2 and d, interval=0.02)
    server.kill()  # kill -9: no shutdown, chunks in flight are lost with the client
    restarted = start_server(cluster, data_dir)
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as c:
            sweep = finished(c, sweep_id)
            assert sweep["status"] == "succeeded"
            assert_every_point_correct(c, sweep_id, expected)
        runs = collections.Counter(k for e in starts(cluster, sweep_id) for k in e["points"])
        assert all(runs[k] == 1 for k in done_before), runs  # finished points were not run again
        assert set(runs) == set(range(N_POINTS))
    finally:
        restarted.stop()
    server.process = None  # the module fixture's server is gone; its stop() has nothing left to do


def test_worker_killed_mid_sweep_the_sweep_finishes_with_every_point_once(cluster, data_dir, expected):
    srv = start_server(cluster, data_dir)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            sweep_id = create_sweep(c)
            pids = {name: proc.pid for name, proc in cluster.processes.items() if name.startswith("w")}
            first = wait_until(lambda: next((e for e in starts(cluster, sweep_id) if e["pid"] in pids.values()),
                                            None))
            victim = next(name for name, pid in pids.items() if pid == first["pid"])
            cluster.processes[victim].kill()  # SIGKILL, mid-chunk
            sweep = finished(c, sweep_id)
            assert sweep["status"] == "succeeded"
            assert_every_point_correct(c, sweep_id, expected)
        # the killed chunk ran again on the surviving worker; the store recorded each point once
        reruns = [e for e in starts(cluster, sweep_id) if e["points"] == first["points"]]
        assert [e["pid"] == first["pid"] for e in reruns] == [True, False]
    finally:
        srv.stop()
