"""HTTP behaviour of the simulation routes, in process, with the Engine test double (no numerics here)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service import codec
from service.api.prefer import parse_prefer, wait_seconds
from tests.api.conftest import assert_problem, small_request
from tests.support.trajectories import stored_arrays

pytestmark = pytest.mark.anyio


async def _create(service, request=None, **headers):
    content = orjson.dumps(request or small_request())
    return await service.client.post("/v1/simulations", content=content,
                                     headers={"content-type": "application/json", **headers})


# ------------------------------------------------------------------------------------------------
# create and read


async def test_create_answers_202_with_location_and_the_simulation(service):
    response = await _create(service)
    assert response.status_code == 202
    sim = response.json()
    assert response.headers["location"] == f"/v1/simulations/{sim['id']}"
    assert response.headers["retry-after"] == "1"
    assert sim["status"] == "queued" and sim["progress"] == 0.0
    assert sim["links"] == {"self": f"/v1/simulations/{sim['id']}",
                            "trajectory": f"/v1/simulations/{sim['id']}/trajectory"}
    assert sim["error"] is None and sim["outcome"] is None and sim["finished_at"] is None
    assert sim["created_at"].endswith("Z")
    assert service.engine.submitted == [sim["id"]]


async def test_stored_request_is_the_validated_request_with_defaults(service):
    sim = (await _create(service)).json()
    request = sim["request"]
    assert request["record"] == {"points": 200, "spacing": "linear", "times": None, "weights": False,
                                 "similarity": False, "kernel": False, "sharpness": False, "sharpness_k": 1,
                                 "linearized": False}
    assert request["dtype"] == "float64"
    assert request["training"]["weight_decay"] == 0.0 and request["training"]["allow_unstable"] is False
    assert request["training"]["momentum"] == 0.0 and request["training"]["nesterov"] is False
    assert request["data"] == {**small_request()["data"], "sigma33": None}


async def test_default_init_is_a_small_gaussian(service):
    request = small_request()
    del request["init"]
    sim = (await _create(service, request)).json()
    assert sim["request"]["init"] == {"scheme": "gaussian", "scale": 0.01, "seed": 0}


async def test_lambda_round_trips_under_its_json_name(service):
    request = small_request(init={"scheme": "lambda_balanced", "lambda": 0.5}, network={"hidden": [2]})
    sim = (await _create(service, request)).json()
    assert sim["request"]["init"]["lambda"] == 0.5


async def test_get_returns_the_simulation_with_retry_after_while_not_terminal(service):
    created = (await _create(service)).json()
    response = await service.client.get(f"/v1/simulations/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["retry-after"] == "1"


async def test_terminal_simulation_has_no_retry_after(service):
    sim = (await _create(service)).json()
    service.finish(sim["id"], {"outcome": "converged"})
    response = await service.client.get(f"/v1/simulations/{sim['id']}")
    assert response.json()["status"] == "succeeded"
    assert response.json()["outcome"] == "converged"
    assert response.json()["progress"] == 1.0
    assert "retry-after" not in response.headers


async def test_unknown_id_is_a_404_problem(service):
    body = assert_problem(await service.client.get("/v1/simulations/nope"), 404, "not-found")
    assert "nope" in body["detail"]
    assert body["instance"] == "/v1/simulations/nope"


async def test_failed_simulation_carries_its_problem_in_the_schema_shape(service):
    sim = (await _create(service)).json()
    # What a worker may store: a problem without instance, and field errors without pointers.
    service.store.fail(sim["id"], {"type": "/problems/invalid-simulation", "title": "t", "status": 422,
                                   "detail": "d", "errors": [{"field": ["data", "sigma11"], "message": "m",
                                                              "code": "not_psd"}]})
    error = (await service.client.get(f"/v1/simulations/{sim['id']}")).json()["error"]
    assert error["instance"] == f"/v1/simulations/{sim['id']}"
    assert error["errors"][0]["pointer"] == "/data/sigma11"
    assert error["errors"][0]["fix"]


# ------------------------------------------------------------------------------------------------
# trajectory


async def test_trajectory_is_409_while_queued(service):
    sim = (await _create(service)).json()
    response = await service.client.get(f"/v1/simulations/{sim['id']}/trajectory")
    body = assert_problem(response, 409, "not-finished")
    assert "queued" in body["detail"]
    assert response.headers["retry-after"] == "1"


async def test_trajectory_is_409_after_failure_with_the_reason(service):
    sim = (await _create(service)).json()
    service.store.fail(sim["id"], {"type": "/problems/internal", "title": "t", "status": 500, "detail": "worker died"})
    body = assert_problem(await service.client.get(f"/v1/simulations/{sim['id']}/trajectory"), 409)
    assert "worker died" in body["detail"]


async def test_trajectory_json_is_printed_from_the_stored_arrays(service):
    sim = (await _create(service)).json()
    # Arrays as the worker stores them (no JSON text is stored): the document is printed from them, members
    # that were not stored are null, names outside the trajectory's table are not served.
    stored = codec.pack({"time": np.array([0.0, 0.1]), "outcome": "completed", "z": 1})
    service.finish(sim["id"], stored, "completed")
    response = await service.client.get(f"/v1/simulations/{sim['id']}/trajectory")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["time"] == [0.0, 0.1] and body["outcome"] == "completed" and body["loss"] is None
    assert list(body) == list(codec.MEMBERS)


async def test_trajectory_of_unknown_id_is_404(service):
    assert_problem(await service.client.get("/v1/simulations/nope/trajectory"), 404)


# ------------------------------------------------------------------------------------------------
# Prefer: wait


async def test_prefer_wait_answers_201_when_the_job_finishes_in_time(service):
    service.engine.on_wait = lambda job_id: service.finish(job_id, {"x": 1})
    response = await _create(service, Prefer="wait=5")
    assert response.status_code == 201
    assert response.json()["status"] == "succeeded"
    assert response.headers["preference-applied"] == "wait=5"
    assert "retry-after" not in response.headers
    assert response.headers["location"] == f"/v1/simulations/{response.json()['id']}"


async def test_prefer_wait_answers_202_when_the_job_is_not_done(service):
    response = await _create(service, Prefer="wait=2")
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=2"
    assert service.engine.waits == [(response.json()["id"], 2)]


async def test_prefer_wait_is_clamped_to_the_configured_maximum(service):
    response = await _create(service, Prefer="respond-async, wait=1000")
    assert service.engine.waits[0][1] == 60
    assert response.headers["preference-applied"] == "wait=60, respond-async"


async def test_without_prefer_there_is_no_wait_and_no_preference_applied(service):
    response = await _create(service, Prefer="handling=lenient")
    assert response.status_code == 202
    assert service.engine.waits == []
    assert "preference-applied" not in response.headers


def test_prefer_parsing_follows_rfc_7240():
    prefs = parse_prefer(['respond-async, WAIT="7"; foo=bar', 'wait=3, return=minimal, x="a,b"'])
    assert prefs == {"respond-async": None, "wait": "7", "return": "minimal", "x": "a,b"}
    assert wait_seconds(prefs, 60) == 7  # the first occurrence counts
    assert wait_seconds(parse_prefer(["wait=abc"]), 60) is None
    assert wait_seconds(parse_prefer(["wait=-1"]), 60) is None
    assert wait_seconds(parse_prefer(["wait=90"]), 60) == 60
    assert parse_prefer([" , ;x"]) == {}


# ------------------------------------------------------------------------------------------------
# Idempotency-Key


async def test_same_key_and_same_body_returns_the_same_simulation_without_a_second_run(service):
    first = await _create(service, **{"Idempotency-Key": "k1"})
    # The same request written differently (key order, 2 vs 2.0, explicit defaults) is the same body.
    request = small_request()
    request["data"]["sigma31"] = [[2, 0], [0, 0.5]]
    request = {"training": request["training"], **request, "dtype": "float64"}
    second = await _create(service, request, **{"Idempotency-Key": "k1"})
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert service.engine.submitted == [first.json()["id"]]
    assert service.job_count() == 1


async def test_same_key_with_a_different_body_is_a_422_naming_the_header(service):
    first = (await _create(service, **{"Idempotency-Key": "k2"})).json()
    other = small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 101})
    body = assert_problem(await _create(service, other, **{"Idempotency-Key": "k2"}), 422, "idempotency-key-reused")
    assert body["errors"][0]["field"] == ["Idempotency-Key"]
    assert body["errors"][0]["in"] == "header"
    assert first["id"] in body["detail"]
    assert service.job_count() == 1


async def test_different_keys_create_different_simulations(service):
    a = (await _create(service, **{"Idempotency-Key": "a"})).json()
    b = (await _create(service, **{"Idempotency-Key": "b"})).json()
    assert a["id"] != b["id"]


async def test_replay_of_a_finished_simulation_answers_201(service):
    sim = (await _create(service, **{"Idempotency-Key": "k3"})).json()
    service.finish(sim["id"], {"x": 1})
    response = await _create(service, **{"Idempotency-Key": "k3"})
    assert response.status_code == 201
    assert response.json()["status"] == "succeeded"


# ------------------------------------------------------------------------------------------------
# list


async def test_list_pages_through_every_simulation_newest_first(service):
    ids = [(await _create(service)).json()["id"] for _ in range(5)]
    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 2, **({"page_token": token} if token else {})}
        page = (await service.client.get("/v1/simulations", params=params)).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert pages == 3
    assert seen == ids[::-1]


async def test_list_items_are_full_simulations(service):
    created = (await _create(service)).json()
    page = (await service.client.get("/v1/simulations")).json()
    assert page == {"items": [created], "next_page_token": None}


async def test_list_filters_by_status(service):
    a = (await _create(service)).json()["id"]
    b = (await _create(service)).json()["id"]
    service.finish(a, {"x": 1})
    succeeded = (await service.client.get("/v1/simulations", params={"status": "succeeded"})).json()
    queued = (await service.client.get("/v1/simulations", params={"status": "queued"})).json()
    assert [i["id"] for i in succeeded["items"]] == [a]
    assert [i["id"] for i in queued["items"]] == [b]


@pytest.mark.parametrize(("params", "field"), [
    ({"page_size": 0}, "page_size"), ({"page_size": 101}, "page_size"), ({"page_size": "x"}, "page_size"),
    ({"status": "done"}, "status"),
])
async def test_list_parameters_out_of_range_are_422_naming_the_parameter(service, params, field):
    body = assert_problem(await service.client.get("/v1/simulations", params=params), 422, "validation-error")
    assert body["errors"][0]["field"] == [field]
    assert body["errors"][0]["in"] == "query"


async def test_list_with_a_foreign_page_token_is_422(service):
    body = assert_problem(await service.client.get("/v1/simulations", params={"page_token": "garbage!"}),
                          422, "invalid-page-token")
    assert body["errors"][0]["field"] == ["page_token"]


# ------------------------------------------------------------------------------------------------
# cancel, delete


async def test_cancel_of_a_queued_simulation_cancels_it(service):
    sim = (await _create(service)).json()
    response = await service.client.post(f"/v1/simulations/{sim['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert service.engine.cancelled == [sim["id"]]
    assert_problem(await service.client.get(f"/v1/simulations/{sim['id']}/trajectory"), 409)


async def test_cancel_of_a_finished_simulation_changes_nothing(service):
    sim = (await _create(service)).json()
    service.finish(sim["id"], {"x": 1})
    response = await service.client.post(f"/v1/simulations/{sim['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert service.engine.cancelled == []


async def test_cancel_of_unknown_id_is_404(service):
    assert_problem(await service.client.post("/v1/simulations/nope/cancel"), 404)


async def test_delete_removes_the_simulation_and_cancels_it_first(service):
    sim = (await _create(service)).json()
    response = await service.client.delete(f"/v1/simulations/{sim['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert service.engine.cancelled == [sim["id"]]
    assert_problem(await service.client.get(f"/v1/simulations/{sim['id']}"), 404)
    assert_problem(await service.client.delete(f"/v1/simulations/{sim['id']}"), 404)


async def test_delete_of_a_finished_simulation_does_not_cancel(service):
    sim = (await _create(service)).json()
    service.finish(sim["id"], {"x": 1})
    assert (await service.client.delete(f"/v1/simulations/{sim['id']}")).status_code == 204
    assert service.engine.cancelled == []
    assert stored_arrays(service.store, sim["id"]) is None


# ------------------------------------------------------------------------------------------------
# health, unknown routes, unexpected errors


async def test_healthz_is_ok(service):
    response = await service.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_store_and_worker_answer(service):
    response = await service.client.get("/readyz")
    assert response.json() == {"status": "ready", "store": True, "worker": True, "workers": 2, "workers_warm": 2}


async def test_readyz_is_a_503_naming_the_wait_while_a_worker_compiles_its_kernels(service):
    service.engine.workers = (2, 1)
    body = assert_problem(await service.client.get("/readyz"), 503, "unavailable")
    assert "1 of 2 workers still compiling the GD kernels" in body["detail"]


async def test_readyz_is_a_503_when_the_cluster_has_no_worker(service):
    service.engine.workers = (0, 0)
    body = assert_problem(await service.client.get("/readyz"), 503, "unavailable")
    assert "no worker connected" in body["detail"]


async def test_readyz_is_a_503_problem_when_the_worker_is_unreachable(service):
    service.engine.is_ready = False
    response = await service.client.get("/readyz")
    body = assert_problem(response, 503, "unavailable")
    assert "worker cluster" in body["detail"]
    assert "retry-after" in response.headers


async def test_readyz_is_a_503_problem_when_the_store_is_unreachable(service, monkeypatch):
    monkeypatch.setattr(service.store.db, "ping", lambda: False)
    body = assert_problem(await service.client.get("/readyz"), 503, "unavailable")
    assert "job store" in body["detail"]


async def test_unknown_route_is_a_404_problem(service):
    assert_problem(await service.client.get("/v2/whatever"), 404, "not-found")


async def test_wrong_method_is_a_405_problem(service):
    assert_problem(await service.client.put("/v1/simulations"), 405, "method-not-allowed")


async def test_unexpected_error_is_a_500_problem_without_internals(service, monkeypatch, caplog):
    def broken(job_id):
        raise RuntimeError("secret internal state /etc/passwd")

    monkeypatch.setattr(service.store, "get", broken)
    response = await service.client.get("/v1/simulations/x")
    assert_problem(response, 500, "internal")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret internal state" in caplog.text  # logged for the operator


async def test_problem_type_uris_resolve_to_a_description(service):
    body = assert_problem(await service.client.get("/v1/simulations/nope"), 404)
    page = await service.client.get(body["type"])
    assert page.status_code == 200
    assert page.json()["title"] == body["title"]


async def test_unavailable_before_the_lifespan_started(tmp_path):
    import httpx

    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/v1/simulations/x")
    assert_problem(response, 503, "unavailable")


async def test_corrupt_stored_trajectory_is_a_500_problem_and_the_simulation_runs_again(service, monkeypatch):
    from service.jobs.store import CorruptResultError

    sim = (await _create(service)).json()
    service.finish(sim["id"], {"x": 1})

    def corrupt(job_id):
        raise CorruptResultError(job_id, "checksum mismatch")

    monkeypatch.setattr(service.store, "result_reader", corrupt)
    response = await service.client.get(f"/v1/simulations/{sim['id']}/trajectory")
    body = assert_problem(response, 500, "corrupt-result")
    assert "checksum mismatch" in body["detail"] and "queued to run again" in body["detail"]
    assert "retry-after" in response.headers
    # back in the queue and submitted (tests/faults/test_faults.py checks the rerun's trajectory)
    assert (await service.client.get(f"/v1/simulations/{sim['id']}")).json()["status"] == "queued"
    assert service.engine.submitted.count(sim["id"]) == 2


async def test_the_http_tests_engine_double_has_the_engines_interface(service):
    from service.jobs.engine import Engine, EngineProtocol

    assert isinstance(service.engine, EngineProtocol)
    assert issubclass(Engine, EngineProtocol)
