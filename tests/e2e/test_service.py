"""End to end: a real server process (uvicorn, embedded Dask cluster with one worker) on loopback.

Results through HTTP are compared with calling the core directly, bit for bit: orjson writes the
shortest repr that round-trips a float64, so equal JSON numbers mean equal bits.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.support.live_service import (
    CORRELATIONS,
    DATASET,
    PRESET,
    TERMINAL,
    assert_problem,
    core_document,
    long_request,
    medium_request,
    poll,
    post,
    run_request,
)
from tests.support.server import Server

pytestmark = pytest.mark.e2e

def cancel_and_free_the_worker(client: httpx.Client, job_id: str) -> None:
    """Cancel a job, then prove the single worker is free again: a small job finishes within a wait
    far shorter than what the cancelled job would still have needed."""
    assert client.post(f"/v1/simulations/{job_id}/cancel").json()["status"] == "cancelled"
    quick = post(client, run_request(CORRELATIONS, "exact"), Prefer="wait=30")
    assert quick.status_code == 201, quick.text
    assert quick.json()["status"] == "succeeded"


# ------------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("method", ["gd", "flow", "exact"])
@pytest.mark.parametrize("data", [DATASET, CORRELATIONS, PRESET], ids=["dataset", "correlations", "preset"])
def test_each_data_kind_and_method_matches_the_core_bit_for_bit(client, data, method):
    request = run_request(data, method)
    response = post(client, request, Prefer="wait=60")
    assert response.status_code == 201, response.text
    sim = response.json()
    assert sim["status"] == "succeeded", sim["error"]
    assert response.headers["preference-applied"] == "wait=60"
    trajectory = client.get(f"/v1/simulations/{sim['id']}/trajectory")
    assert trajectory.status_code == 200
    document = trajectory.json()
    assert document["outcome"] == sim["outcome"]
    assert document == core_document(sim["request"])
    assert len(document["time"]) == len(document["product"]) == len(document["weights"])


def test_a_diverged_run_is_a_succeeded_result_without_nan(client):
    request = run_request(CORRELATIONS, "gd")
    request["training"] = {"method": "gd", "learning_rate": 2.0, "steps": 400, "allow_unstable": True}
    sim = post(client, request, Prefer="wait=60").json()
    assert (sim["status"], sim["outcome"]) == ("succeeded", "diverged")
    raw = client.get(f"/v1/simulations/{sim['id']}/trajectory").content
    assert b"NaN" not in raw and b"Infinity" not in raw
    document = orjson.loads(raw)
    assert isinstance(document["diverged_at_step"], int)
    assert document == core_document(sim["request"])


# ------------------------------------------------------------------------------------------------
# protocol


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    # the e2e server has one worker, warmed up before /readyz said ready
    assert client.get("/readyz").json() == {"status": "ready", "store": True, "worker": True, "workers": 1,
                                            "workers_warm": 1}


def test_prefer_wait_answers_202_when_the_job_outlasts_it_and_cancel_stops_the_run(client):
    response = post(client, long_request(), Prefer="wait=1")
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["location"] == f"/v1/simulations/{response.json()['id']}"
    job_id = response.json()["id"]
    running = poll(client, job_id, lambda s: s["status"] == "running", timeout=30)
    assert running["status"] == "running"
    assert "retry-after" in client.get(f"/v1/simulations/{job_id}").headers
    cancel_and_free_the_worker(client, job_id)
    assert client.get(f"/v1/simulations/{job_id}").json()["status"] == "cancelled"


def test_progress_is_reported_while_running(client):
    job_id = post(client, long_request()).json()["id"]
    sim = poll(client, job_id, lambda s: s["progress"] > 0, timeout=30)
    assert 0 < sim["progress"] < 1 and sim["status"] == "running"
    cancel_and_free_the_worker(client, job_id)


def test_idempotency_key_replays_and_conflicts(client):
    request = run_request(CORRELATIONS, "exact")
    first = post(client, request, **{"Idempotency-Key": "e2e-key"})
    second = post(client, request, **{"Idempotency-Key": "e2e-key"})
    assert first.status_code in (201, 202) and second.status_code in (201, 202)
    assert second.json()["id"] == first.json()["id"]
    other = run_request(CORRELATIONS, "flow")
    body = assert_problem(post(client, other, **{"Idempotency-Key": "e2e-key"}), 422)
    assert body["errors"][0]["field"] == ["Idempotency-Key"]


def test_list_pages_cover_every_simulation_once(client):
    created = [post(client, run_request(PRESET, "exact")).json()["id"] for _ in range(3)]
    seen, token = [], None
    while True:
        params = {"page_size": 2, **({"page_token": token} if token else {})}
        page = client.get("/v1/simulations", params=params).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert len(seen) == len(set(seen))
    assert seen[:3] == created[::-1]  # newest first


def test_delete_removes_a_finished_simulation(client):
    sim = post(client, run_request(CORRELATIONS, "exact"), Prefer="wait=30").json()
    assert client.delete(f"/v1/simulations/{sim['id']}").status_code == 204
    assert_problem(client.get(f"/v1/simulations/{sim['id']}"), 404)
    assert_problem(client.get(f"/v1/simulations/{sim['id']}/trajectory"), 404)


def test_delete_of_a_running_simulation_cancels_it(client):
    job_id = post(client, long_request()).json()["id"]
    poll(client, job_id, lambda s: s["status"] == "running", timeout=30)
    assert client.delete(f"/v1/simulations/{job_id}").status_code == 204
    assert_problem(client.get(f"/v1/simulations/{job_id}"), 404)
    quick = post(client, run_request(CORRELATIONS, "exact"), Prefer="wait=30")
    assert quick.status_code == 201  # the worker is free again


# ------------------------------------------------------------------------------------------------
# bad input


def _job_ids(client) -> set[str]:
    return {item["id"] for item in client.get("/v1/simulations", params={"page_size": 100}).json()["items"]}


@pytest.mark.parametrize(("body", "status", "field"), [
    (b'{"data": ', 400, None),
    (orjson.dumps(run_request(CORRELATIONS, "gd")).replace(b"[[1.0,0.0],[0.0,1.0]]", b"[[1.0,NaN],[0.0,1.0]]", 1),
     422, ["data", "sigma11", 0, 1]),
    (orjson.dumps(run_request({**CORRELATIONS, "sigma11": [[1.0, 0.0], [0.0]]}, "gd")), 422, ["data", "sigma11", 1]),
    (orjson.dumps(run_request({**CORRELATIONS, "sigma11": [[1.0, 0.5], [0.0, 1.0]]}, "gd")), 422, ["data", "sigma11"]),
    (orjson.dumps({**run_request(CORRELATIONS, "gd"), "training": {"method": "gd", "learning_rate": True,
                                                                   "steps": 3}}),
     422, ["training", "learning_rate"]),
    (orjson.dumps({**run_request(CORRELATIONS, "gd"), "training": {"method": "gd", "learning_rate": 5.0,
                                                                   "steps": 3}}),
     422, ["training", "learning_rate"]),
    (b'{"pad": "' + b"x" * (2 << 20) + b'"}', 413, None),
])
def test_bad_input_is_a_problem_and_creates_no_job(client, body, status, field):
    before = _job_ids(client)
    response = client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, status)
    if field is not None:
        assert problem["errors"][0]["field"] == field
        assert problem["errors"][0]["fix"]
    assert _job_ids(client) == before


def test_unknown_simulation_is_404(client):
    assert_problem(client.get("/v1/simulations/does-not-exist"), 404)
    assert_problem(client.post("/v1/simulations/does-not-exist/cancel"), 404)


# ------------------------------------------------------------------------------------------------
# crash and restart


def test_a_job_survives_kill_9_of_the_server_and_finishes_with_the_right_answer(tmp_path):
    data_dir = tmp_path / "data"
    request = medium_request()
    first = Server(data_dir, tmp_path / "first.log").start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            job_id = post(c, request).json()["id"]
            assert poll(c, job_id, lambda s: s["status"] == "running", timeout=60)["status"] == "running"
    finally:
        first.kill()
    second = Server(data_dir, tmp_path / "second.log").start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            sim = poll(c, job_id, lambda s: s["status"] in TERMINAL, timeout=120)
            assert sim["status"] == "succeeded", (sim, second.log())
            document = c.get(f"/v1/simulations/{job_id}/trajectory").json()
    finally:
        second.stop()
    assert document == core_document(sim["request"])


def test_a_run_records_what_it_ran_with(client):
    import importlib.metadata

    sim = post(client, run_request(CORRELATIONS, "gd"), Prefer="wait=60").json()
    assert sim["status"] == "succeeded", sim
    provenance = sim["provenance"]
    assert provenance["dtype"] == "float64"
    assert provenance["numpy"] == importlib.metadata.version("numpy")
    assert provenance["dlnsim"] == importlib.metadata.version("dlnsim")
    assert provenance["host_cores"] >= 1 and provenance["blas"]["library"] in ("openblas", "mkl", "blis")
    assert provenance["blas"]["gd_loop"] in ("numpy", "scipy")
