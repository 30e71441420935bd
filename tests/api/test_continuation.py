"""init scheme from_simulation over HTTP: a run continued from a finished simulation's final weights equals one longer
run (gd bit for bit, flow to its tolerance, exact to round-off); the service copies the weights into the stored request
at admission (service/jobs/continuation.py says why); what cannot be continued is problem+json naming init.id."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tests.api.conftest import assert_problem, small_request
from tests.support.keys import KEYS_ON, A, B
from tests.support.real_runs import run_as_worker, submit, submit_and_run

pytestmark = pytest.mark.anyio

SIGMA33 = [[4.5, 0.0], [0.0, 0.5]]  # Σ31 = diag(2, 0.5) with a residual of 0.25 per output


def base(training: dict, **changes) -> dict:
    return small_request(data={**small_request()["data"], "sigma33": SIGMA33}, training=training,
                         record={"points": 11}, **changes)


def continued(job_id: str, training: dict, **changes) -> dict:
    return base(training, init={"scheme": "from_simulation", "id": job_id}, **changes)


async def test_gd_continued_from_a_simulation_equals_one_longer_run_bit_for_bit(service):
    gd = {"method": "gd", "learning_rate": 0.05, "stop_at_convergence": False}
    first, _ = await submit_and_run(service, base({**gd, "steps": 30}))
    _, rest = await submit_and_run(service, continued(first, {**gd, "steps": 50}))
    _, whole = await submit_and_run(service, base({**gd, "steps": 80}))
    # GD keeps no state but the weights, stored as float64 and sent through JSON, which round-trips a float64: the
    # continuation takes the same 50 steps from the same bits
    assert rest["product"][-1] == whole["product"][-1]
    assert rest["final_weights"] == whole["final_weights"]
    assert rest["loss"][-1] == whole["loss"][-1]


async def test_flow_continued_from_a_simulation_equals_one_longer_run_to_its_tolerance(service):
    flow = {"method": "flow", "rtol": 1e-11, "atol": 1e-13, "stop_at_convergence": False}
    first, _ = await submit_and_run(service, base({**flow, "t_max": 2.0}))
    _, rest = await submit_and_run(service, continued(first, {**flow, "t_max": 3.0}))
    _, whole = await submit_and_run(service, base({**flow, "t_max": 5.0}))
    # two DOP853 runs against one, each step's local error below rtol·|y| + atol: the global error is those carried
    # along (measured 2e-11 of max |W| here; bound 100× rtol, far below the O(1) of a wrong start)
    want = np.array(whole["product"][-1])
    np.testing.assert_allclose(rest["product"][-1], want, rtol=0, atol=1e-9 * np.max(np.abs(want)))


async def test_exact_riccati_run_continues_from_its_factorised_final_state(service):
    # λ-balanced, whitened: the first run's final weights are a factorisation of its Riccati state; the continuation
    # (again λ-balanced: the flow conserves it) is the closed form from there, equal to one exact run of 5.0
    init = {"scheme": "lambda_balanced", "lambda": 0.5, "scale": 0.1, "seed": 0}
    first, _ = await submit_and_run(service, base({"method": "exact", "t_max": 2.0}, network={"hidden": [2]},
                                                  init=init))
    _, rest = await submit_and_run(service, continued(first, {"method": "exact", "t_max": 3.0},
                                                      network={"hidden": [2]}))
    _, whole = await submit_and_run(service, base({"method": "exact", "t_max": 5.0}, network={"hidden": [2]},
                                                  init=init))
    # both closed forms evaluated to round-off (the factorisation's ~1e-15, tests/dynamics/test_sequence.py)
    want = np.array(whole["product"][-1])
    np.testing.assert_allclose(rest["product"][-1], want, rtol=0, atol=1e-12 * np.max(np.abs(want)))
    assert rest["modes"]["theory_model"] is not None


async def test_the_stored_request_carries_the_final_weights_it_started_from(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first, first_doc = await submit_and_run(service, base(gd))
    second = (await submit(service, continued(first, gd))).json()
    init = second["request"]["init"]
    assert init == {"scheme": "from_simulation", "id": first, "weights": first_doc["final_weights"]}
    assert (await service.client.get(f"/v1/simulations/{second['id']}")).json()["request"]["init"] == init


async def test_a_stored_request_sent_again_is_admitted_and_altered_weights_are_refused(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first, _ = await submit_and_run(service, base(gd))
    stored = (await submit(service, continued(first, gd))).json()["request"]
    assert (await submit(service, stored)).status_code == 202
    stored["init"]["weights"][0][0][0] += 1e-9
    body = assert_problem(await submit(service, stored), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["init", "weights"] and "leave init.weights out" in body["errors"][0]["fix"]


async def test_an_idempotent_retry_of_a_continuation_is_recognised(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first, _ = await submit_and_run(service, base(gd))
    key = {"idempotency-key": "continue-1"}
    created = await submit(service, continued(first, gd), key)
    replay = await submit(service, continued(first, gd), key)
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == created.json()["id"]


async def test_an_unknown_simulation_is_refused_naming_init_id(service):
    body = assert_problem(await submit(service, continued("0" * 32, {"method": "gd", "learning_rate": 0.05,
                                                                     "steps": 10})), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["init", "id"] and "GET /v1/simulations" in body["errors"][0]["fix"]


async def test_an_id_that_is_no_job_id_is_a_validation_error(service):
    body = assert_problem(await submit(service, continued("latest", {"method": "gd", "learning_rate": 0.05,
                                                                     "steps": 10})), 422, "validation-error")
    assert body["errors"][0]["field"] == ["init", "id"]


@pytest.mark.parametrize("settings_overrides", [KEYS_ON])
async def test_another_api_keys_simulation_is_refused_as_unknown(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    alices, _ = await submit_and_run(service, base(gd), headers=A)
    body = assert_problem(await submit(service, continued(alices, gd), B), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["init", "id"] and alices in body["errors"][0]["message"]
    assert (await submit(service, continued(alices, gd), A)).status_code == 202


async def test_a_simulation_still_queued_is_409_not_finished_with_retry_after(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    queued = (await submit(service, base(gd))).json()["id"]
    response = await submit(service, continued(queued, gd))
    body = assert_problem(response, 409, "not-finished")
    assert body["errors"][0]["field"] == ["init", "id"] and response.headers["retry-after"] == "1"


async def test_a_failed_simulation_is_409_without_retry_after(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    failed = (await submit(service, base(gd))).json()["id"]
    service.store.mark_running(failed)
    service.store.fail(failed, {"type": "/problems/internal", "title": "Internal", "status": 500, "detail": "x"})
    response = await submit(service, continued(failed, gd))
    body = assert_problem(response, 409, "not-finished")
    assert "failed" in body["errors"][0]["message"] and "retry-after" not in response.headers


async def test_a_network_of_other_widths_is_refused_naming_init_id_and_the_widths_to_use(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first, _ = await submit_and_run(service, base(gd))                 # hidden [3]
    body = assert_problem(await submit(service, continued(first, gd, network={"hidden": [4]})), 422,
                          "invalid-simulation")
    error = body["errors"][0]
    assert error["field"] == ["init", "id"] and "network.hidden = [3]" in error["fix"]
    assert "3×2, 2×3" in error["message"] and "4×2, 2×4" in error["message"]


async def test_a_simulation_stored_without_final_weights_is_refused_saying_to_run_it_again(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    old = (await submit(service, base(gd))).json()["id"]
    document = run_as_worker(service, old)
    service.store.delete(old)  # stored again as an earlier version stored it: without final_weights
    again = (await submit(service, base(gd))).json()["id"]
    service.finish(again, {k: v for k, v in document.items() if k != "final_weights"})
    body = assert_problem(await submit(service, continued(again, gd)), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["init", "id"] and "run its request again" in body["errors"][0]["fix"]


async def test_the_worker_refuses_a_continuation_whose_weights_were_not_filled_in(service):
    # a request that did not pass admission (e.g. put on a cluster by hand): refused naming init.id, never run
    from service.dynamics.errors import DynamicsError
    from service.jobs.tasks import simulate_request

    request = continued("0" * 32, {"method": "gd", "learning_rate": 0.05, "steps": 10})
    with pytest.raises(DynamicsError) as err:
        simulate_request(orjson.dumps(request))
    assert err.value.field == ("init", "id") and "POST /v1/simulations" in err.value.fix


async def test_a_sweep_continues_from_its_bases_simulation_and_not_from_a_grid_of_them(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first, first_doc = await submit_and_run(service, base(gd))
    sweep = {"base": continued(first, gd), "grid": {"training.learning_rate": [0.02, 0.05]}}
    response = await service.client.post("/v1/sweeps", json=sweep)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["base"]["init"]["weights"] == first_doc["final_weights"]
    stored_base = orjson.loads(service.app.state.sweep_store.get(response.json()["id"]).base)
    assert stored_base["init"]["weights"] == first_doc["final_weights"]
    other, _ = await submit_and_run(service, base(gd))
    response = await service.client.post("/v1/sweeps", json={**sweep, "grid": {"init.id": [first, other]}})
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["field"] == ["grid", "init.id", 1] and "one sweep per simulation" in body["errors"][0]["fix"]


async def test_a_simulation_that_ended_with_non_finite_weights_is_refused(service):
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 30}
    first = (await submit(service, base(gd))).json()["id"]
    document = run_as_worker(service, first)
    service.store.delete(first)
    broken = (await submit(service, base(gd))).json()["id"]
    document["final_weights"][0][0][0] = None  # JSON's null: a non-finite value
    service.finish(broken, document)
    body = assert_problem(await submit(service, continued(broken, gd)), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["init", "id"] and body["errors"][0]["code"] == "non_finite_weights"
