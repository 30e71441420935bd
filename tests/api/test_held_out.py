"""data.test over HTTP: accepted on every data kind, validated like the training data, left out when absent."""

from __future__ import annotations

import orjson
import pytest

from service.build import build_run
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request
from tests.support.trajectories import trajectory_document

pytestmark = pytest.mark.anyio

TEST_CORRELATIONS = {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]],
                     "sigma31": [[1.8, 0.1], [0.0, 0.4]], "sigma33": [[3.5, 0.0], [0.0, 0.3]]}


def _with_test(test, data=None) -> dict:
    base = small_request()
    return {**base, "data": {**(data or base["data"]), "test": test}}


async def _create(service, body):
    return await service.client.post("/v1/simulations", content=orjson.dumps(body),
                                     headers={"content-type": "application/json"})


@pytest.mark.parametrize("data", [
    {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]]},
    {"kind": "dataset", "x": [[1.0, 0.0], [0.0, 1.0]], "y": [[2.0, 0.0], [0.0, 0.5]]},
    {"kind": "preset", "name": "whitened", "singular_values": [2.0, 0.5], "n_in": 2, "n_out": 2},
], ids=["correlations", "dataset", "preset"])
async def test_every_data_kind_takes_a_test_member_and_stores_it(service, data):
    response = await _create(service, _with_test(TEST_CORRELATIONS, data))
    assert response.status_code == 202, response.text
    assert response.json()["request"]["data"]["test"] == TEST_CORRELATIONS


async def test_a_request_without_test_data_has_no_test_member_in_its_canonical_form(service):
    sim = (await _create(service, small_request())).json()
    assert "test" not in sim["request"]["data"]


async def test_test_data_of_another_output_dimension_is_invalid_naming_test_sigma31(service):
    test = {**TEST_CORRELATIONS, "sigma31": [[1.0, 0.0]], "sigma33": [[1.0]]}
    problem = assert_problem(await _create(service, _with_test(test)), 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["data", "test", "sigma31"]


async def test_test_correlations_need_sigma33(service):
    test = {k: v for k, v in TEST_CORRELATIONS.items() if k != "sigma33"}
    problem = assert_problem(await _create(service, _with_test(test)), 422, "validation-error")
    assert problem["errors"][0]["field"] == ["data", "test", "sigma33"]
    assert problem["errors"][0]["code"] == "missing"


async def test_a_non_symmetric_test_sigma11_is_refused_like_the_training_one(service):
    test = {**TEST_CORRELATIONS, "sigma11": [[1.0, 0.3], [0.0, 1.0]]}
    problem = assert_problem(await _create(service, _with_test(test)), 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["data", "test", "sigma11"]


async def test_an_unknown_test_kind_is_a_validation_error_at_test_kind(service):
    problem = assert_problem(await _create(service, _with_test({"kind": "preset"})), 422, "validation-error")
    assert problem["errors"][0]["field"] == ["data", "test", "kind"]


@pytest.mark.parametrize("settings_overrides", [{"max_dataset_values": 10}])
async def test_a_test_dataset_above_the_size_limit_is_refused(service):
    test = {"kind": "dataset", "x": [[1.0, 0.0]] * 3, "y": [[1.0, 0.0]] * 3}
    problem = assert_problem(await _create(service, _with_test(test)), 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["data", "test", "x"]


def test_the_trajectory_document_carries_test_loss_and_early_stopping():
    request = SimulationRequest.model_validate({**_with_test(TEST_CORRELATIONS), "record": {"points": 20}})
    spec = build_run(request)
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    doc = orjson.loads(orjson.dumps(trajectory_document(traj)))
    assert doc["test_loss"] == traj.test_loss.tolist()
    best = min(range(len(doc["test_loss"])), key=doc["test_loss"].__getitem__)
    assert doc["early_stopping"] == {"time": doc["time"][best], "step": doc["step"][best],
                                     "test_loss": doc["test_loss"][best]}


async def test_the_noisy_teacher_brings_its_own_test_distribution_and_takes_none(service):
    data = {"kind": "preset", "name": "noisy_teacher", "test": TEST_CORRELATIONS}
    problem = assert_problem(await _create(service, {**small_request(), "data": data}), 422, "validation-error")
    assert problem["errors"][0]["field"] == ["data", "test"]
    assert problem["errors"][0]["code"] == "extra_forbidden"


async def test_a_noisy_teacher_run_reports_its_test_loss_and_theory():
    request = SimulationRequest.model_validate({
        "data": {"kind": "preset", "name": "noisy_teacher", "n_in": 4, "n_out": 4, "n_samples": 4, "noise": 1.0,
                 "singular_values": [3.0, 1.0]},
        "network": {"hidden": [4]}, "init": {"scheme": "aligned", "strength": 0.001},
        "training": {"method": "exact", "t_max": 10.0}, "record": {"points": 30}})
    spec = build_run(request)
    doc = orjson.loads(orjson.dumps(trajectory_document(simulate(spec.problem, spec.weights0, spec.method,
                                                                  spec.record))))
    assert doc["loss_theory"]["model"] == "modes_generalization" and doc["loss_theory"]["exact"]
    assert doc["early_stopping"]["step"] is None  # exact: no steps
    # exact mode solution, exact decomposition: round-off (1e-10 relative is ~10⁵ ulps)
    assert doc["loss_theory"]["test_loss"] == pytest.approx(doc["test_loss"], rel=1e-10)


@pytest.mark.parametrize("settings_overrides", [{"max_dimension": 8}])
async def test_a_noisy_teacher_above_the_dimension_limit_is_refused_before_it_is_built(service):
    data = {"kind": "preset", "name": "noisy_teacher", "n_in": 9, "n_samples": 9}
    problem = assert_problem(await _create(service, {**small_request(), "data": data}), 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["data", "n_in"]
