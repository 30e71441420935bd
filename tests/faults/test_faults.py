"""Faults against a real ``python -m service`` (uvicorn + embedded Dask cluster) on loopback.

Each test breaks one thing the way it breaks in production — a worker process SIGKILLed (the OOM
killer), the API SIGKILLed mid-sweep, the data dir's disk full, a stored result's bytes flipped — and
checks that accepted work finishes (or fails with a reason), nothing runs twice or is lost, the service
keeps answering, and the SQLite store passes ``PRAGMA integrity_check`` afterwards.

Already covered elsewhere, not repeated here: kill -9 of the API mid-job (tests/e2e/test_service.py,
test_a_job_survives_kill_9_of_the_server_and_finishes_with_the_right_answer), and on an external
cluster kill -9 of the API mid-sweep and of a worker mid-sweep (tests/sweeps/test_cluster.py).
"""

from __future__ import annotations

import itertools
import signal

import httpx
import orjson
import pytest

from tests.faults.conftest import (
    TERMINAL,
    dask_workers,
    integrity,
    poll,
    query,
    wait_until,
)
from tests.support.live_service import (
    CORRELATIONS,
    assert_problem_type,
    core_document,
    post,
    run_request,
    short_request,
)
from tests.support.server import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    srv = Server(base / "data", base / "server.log", workers=1).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


# ------------------------------------------------------------------------------------------------
# a worker process dies mid-job


def test_worker_killed_mid_job_the_job_succeeds_once_with_the_right_answer(server, client):
    request = short_request()
    job_id = post(client, request).json()["id"]
    poll(client, job_id, lambda s: s["status"] == "running" and s["progress"] > 0)
    [worker] = dask_workers(server)
    worker.send_signal(signal.SIGKILL)  # what the OOM killer does

    sim = poll(client, job_id, lambda s: s["status"] in TERMINAL)
    assert sim["status"] == "succeeded", (sim, server.log())
    # the nanny started a new worker process, which ran the job again from the start
    wait_until(lambda: [w.pid for w in dask_workers(server)] not in ([], [worker.pid]))
    assert query(server.data_dir, "SELECT attempts FROM jobs WHERE id = ?", (job_id,)) == [(2,)]
    # not duplicated: one job, one result
    listed = [s["id"] for s in client.get("/v1/simulations", params={"page_size": 100}).json()["items"]]
    assert listed.count(job_id) == 1
    assert query(server.data_dir, "SELECT count(*) FROM results WHERE job_id = ?", (job_id,)) == [(1,)]
    assert client.get(f"/v1/simulations/{job_id}/trajectory").json() == core_document(sim["request"])
    assert integrity(server.data_dir) == "ok"


# ------------------------------------------------------------------------------------------------
# a stored result is corrupted on disk


def test_corrupt_result_is_a_clear_problem_and_the_job_reruns_to_the_same_trajectory(server, client):
    sim = post(client, run_request(CORRELATIONS, "gd"), Prefer="wait=60").json()
    assert sim["status"] == "succeeded", sim
    job_id = sim["id"]
    original = client.get(f"/v1/simulations/{job_id}/trajectory").content

    [(blob,)] = query(server.data_dir, "SELECT data FROM results WHERE job_id = ?", (job_id,))
    flipped = bytearray(blob)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 8):  # mid-frame: compressed data, not the header
        flipped[i] ^= 0xFF
    query(server.data_dir, "UPDATE results SET data = ? WHERE job_id = ?", (bytes(flipped), job_id))

    problem = assert_problem_type(client.get(f"/v1/simulations/{job_id}/trajectory"), 500, "corrupt-result")
    assert "corrupt" in problem["detail"] and "run again" in problem["detail"]
    assert client.get("/healthz").status_code == 200

    # runs are seeded, so the rerun stores the trajectory the job had before
    rerun = poll(client, job_id, lambda s: s["status"] in TERMINAL)
    assert rerun["status"] == "succeeded", rerun
    assert client.get(f"/v1/simulations/{job_id}/trajectory").content == original
    assert integrity(server.data_dir) == "ok"


# ------------------------------------------------------------------------------------------------
# the API dies mid-sweep, after several chunks finished

SWEEP_BASE = {
    "data": {"kind": "preset", "name": "hierarchy", "depth": 3},
    "network": {"hidden": [16]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
    "training": {"method": "gd", "learning_rate": 1e-4, "steps": 100_000},  # t = 10: still learning
    "record": {"points": 20},
}
SWEEP_GRID = {"init.scale": [0.01, 0.1, 1.0], "init.seed": [0, 1, 2, 3]}
SWEEP_POINTS = 12


def expected_summaries() -> dict[int, dict]:
    """Each grid point run alone with ``simulate_batch`` in this process: bit for bit what a sweep reports, whichever
    points share its chunk (its two-layer net steps in SIMD lanes, which never mix: tests/dynamics/test_lanes.py)."""
    from service.build import build_run
    from service.dynamics.batch import SweepPoint, simulate_batch
    from service.grid import point_summary
    from service.schemas import SimulationRequest

    out = {}
    for k, (scale, seed) in enumerate(itertools.product(*SWEEP_GRID.values())):
        request = orjson.loads(orjson.dumps(SWEEP_BASE))
        request["init"].update(scale=scale, seed=seed)
        spec = build_run(SimulationRequest.model_validate(request))
        traj = simulate_batch([SweepPoint(spec.problem, spec.weights0, spec.method, spec.record, spec.dtype)])[0]
        out[k] = orjson.loads(orjson.dumps(point_summary(traj)))
    return out


def sweep_points(client: httpx.Client, sweep_id: str) -> list[dict]:
    return client.get(f"/v1/sweeps/{sweep_id}/results", params={"page_size": 1000}).json()["items"]


def test_api_killed_mid_sweep_after_several_chunks_reruns_only_unfinished_points(tmp_path):
    data_dir = tmp_path / "data"
    env = {"DLNSIM_SWEEP_CHUNK_SIZE": "2"}  # 6 chunks of 2 points on the one worker
    first = Server(data_dir, tmp_path / "first.log", **env).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            response = c.post("/v1/sweeps", json={"base": SWEEP_BASE, "grid": SWEEP_GRID})
            assert response.status_code == 202, response.text
            sweep_id = response.json()["id"]
            done = wait_until(lambda: (d := {p["index"]: p for p in sweep_points(c, sweep_id)
                                             if p["status"] == "succeeded"}) and len(d) >= 4 and d, interval=0.02)
    finally:
        first.kill()  # kill -9 of the API and its workers: the running chunk is lost with them
    assert 4 <= len(done) < SWEEP_POINTS, "the sweep finished before the kill: make its points longer"
    assert integrity(data_dir) == "ok"

    second = Server(data_dir, tmp_path / "second.log", **env).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            sweep = wait_until(lambda: (s := c.get(f"/v1/sweeps/{sweep_id}").json())["status"] in TERMINAL and s)
            assert sweep["status"] == "succeeded", (sweep, second.log())
            points = sweep_points(c, sweep_id)
    finally:
        second.stop()
    assert [p["index"] for p in points] == list(range(SWEEP_POINTS))  # each point once
    # the points finished before the kill were kept as they were, not run again
    attempts = dict(query(data_dir, "SELECT k, attempts FROM sweep_points WHERE sweep_id = ?", (sweep_id,)))
    assert {k: attempts[k] for k in done} == dict.fromkeys(done, 1)
    assert all(points[k] == p for k, p in done.items())
    expected = expected_summaries()
    for p in points:
        assert p["status"] == "succeeded"
        assert {key: p[key] for key in expected[p["index"]]} == expected[p["index"]], p["index"]
    assert integrity(data_dir) == "ok"


# ------------------------------------------------------------------------------------------------
# the data dir's disk fills up


def submit_until_refused(client: httpx.Client, disk) -> httpx.Response:
    """POST small simulations until one is refused. SQLite may still fit a few rows into pages it already
    has (free space in a page, WAL reuse), so the first few may be accepted; they are real jobs."""
    for accepted in range(200):
        response = post(client, run_request(CORRELATIONS, "exact"))
        if response.status_code != 202:
            print(f"{accepted} submissions accepted on the full disk ({disk.mode}) before the refusal")
            return response
    raise AssertionError("200 submissions accepted on a full disk")


def assert_insufficient_storage(response: httpx.Response) -> None:
    problem = assert_problem_type(response, 507, "insufficient-storage")
    assert int(response.headers["retry-after"]) >= 1
    assert "DLNSIM_DATA_DIR" in problem["detail"]


def weights_request(seed: int, points: int = 20) -> dict:
    """A short GD run whose stored result is ~3 MB (every layer recorded at 20 points): real results to fill a disk."""
    request = short_request(2_000)
    request["init"]["seed"] = seed
    request["record"] = {"points": points, "weights": True}
    return request


def api_rss(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_a_disk_filled_by_real_results_refuses_new_work_with_507_before_results_have_nowhere_to_go(small_disk,
                                                                                                 tmp_path):
    # Issue 19.5: 50 POSTs on a small disk. Each result is reserved at admission (twice: the WAL's copy and the
    # file's), so the service answers 507 while it can still refuse, instead of accepting work whose results then
    # have nowhere to go (before: 202s, jobs stuck running with their results in the API's memory, then 429 queue-full
    # and /readyz 200).
    server = Server(small_disk.path, tmp_path / "server.log", **small_disk.server_env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            answers = []
            for i in range(50):
                response = post(c, weights_request(i), Prefer="wait=60")
                answers.append(response.status_code)
                if response.status_code == 507:
                    assert_insufficient_storage(response)
            print(f"{small_disk.mode}: answers {answers}")
            assert 507 in answers and 201 in answers, answers
            assert 429 not in answers and 500 not in answers, answers
            jobs = c.get("/v1/simulations", params={"page_size": 100}).json()["items"]
            # every job accepted finished and stored its result: none failed for space, none left running
            assert {s["status"] for s in jobs} == {"succeeded"}, [(s["id"], s["status"], s["error"]) for s in jobs]
            for sim in jobs[:3]:
                assert c.get(f"/v1/simulations/{sim['id']}/trajectory").status_code == 200
            assert c.get("/healthz").status_code == 200
            # deleting results gives the room back: the file's free pages count as free space
            for sim in jobs:
                assert c.delete(f"/v1/simulations/{sim['id']}").status_code == 204
            assert post(c, weights_request(99), Prefer="wait=60").status_code == 201
    finally:
        server.stop()
    assert integrity(small_disk.path) == "ok", small_disk.mode


def test_a_result_that_no_longer_fits_fails_its_job_with_507_and_is_not_held_in_memory(small_disk, tmp_path):
    first = Server(small_disk.path, tmp_path / "first.log", **small_disk.server_env).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            job_id = post(c, weights_request(1) | {"training": short_request(20_000)["training"]}).json()["id"]
            poll(c, job_id, lambda s: s["status"] == "running")
            small_disk.fill()  # something else takes the disk while the job runs
            assert_insufficient_storage(submit_until_refused(c, small_disk))
            # still up: probes and reads answer; readiness says the store is full
            assert c.get("/healthz").status_code == 200
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "full" in ready.json()["detail"], ready.text
            # the running job's result cannot be stored: the job fails with 507, nothing waits in memory
            sim = poll(c, job_id, lambda s: s["status"] in TERMINAL)
            assert sim["status"] == "failed", sim
            assert sim["error"]["type"] == "/problems/insufficient-storage" and "submit" in sim["error"]["detail"]
            assert "kept in memory" not in first.log()
    finally:
        first.stop()
    assert integrity(small_disk.path) == "ok", small_disk.mode

    # a restart on the still-full disk works (it writes nothing; not ready: the store is full), and once space is
    # freed new work runs
    second = Server(small_disk.path, tmp_path / "second.log", **small_disk.server_env).start(wait=False)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            ready = wait_until(lambda: _get(c, "/readyz"), timeout=120)
            assert ready.status_code == 503 and "full" in ready.json()["detail"], ready.text
            assert_insufficient_storage(submit_until_refused(c, small_disk))
            small_disk.free()
            wait_until(lambda: (r := _get(c, "/readyz")) is not None and r.status_code == 200, timeout=120)
            after = post(c, run_request(CORRELATIONS, "exact"), Prefer="wait=60")
            assert after.status_code == 201 and after.json()["status"] == "succeeded", after.text
            assert c.get(f"/v1/simulations/{job_id}").json()["status"] == "failed"
    finally:
        second.stop()
    assert integrity(small_disk.path) == "ok", small_disk.mode


def _get(client: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return client.get(path)
    except httpx.HTTPError:
        return None
