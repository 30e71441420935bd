"""Smaller contract gaps of issue 19.10: an init scale that overflows is refused naming it (not init.weights[1], which
the client never sent), and duplicate JSON keys are refused (``"steps": 200, "steps": 1e7`` ran 10⁷ steps)."""

from __future__ import annotations

import orjson
import pytest

from tests.api.conftest import assert_problem, small_request
from tests.support.sweeps import sweep_body

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("init", "field"), [
    ({"scheme": "gaussian", "scale": 1e308, "seed": 1}, ["init", "scale"]),
    ({"scheme": "orthogonal", "scale": 1e308, "seed": 1}, ["init", "scale"]),
    ({"scheme": "aligned", "strength": 1e308}, ["init", "strength"]),
])
async def test_an_init_that_overflows_is_refused_naming_its_parameter(service, init, field):
    request = {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
               "init": init, "training": {"method": "gd", "learning_rate": 0.01, "steps": 10}}
    problem = assert_problem(await service.client.post("/v1/simulations", json=request), 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == field and "overflow" in problem["errors"][0]["message"]
    assert service.job_count() == 0


async def test_duplicate_keys_in_a_simulation_are_refused_naming_the_key(service):
    body = (b'{"data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], '
            b'[0.0, 0.5]]}, "network": {"hidden": [3]}, "training": {"method": "gd", "learning_rate": 0.05, '
            b'"steps": 200, "steps": 10000000}}')
    response = await service.client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422, "validation-error")
    assert problem["errors"][0]["field"] == ["training", "steps"]
    assert problem["errors"][0]["code"] == "duplicate_key" and service.job_count() == 0


async def test_duplicate_keys_in_a_sweep_and_in_a_gradients_body_are_refused(service):
    sweep = sweep_body()
    text = (b'{"base": ' + orjson.dumps(sweep["base"]) + b', "grid": {"init.seed": [0]}, '
            b'"grid": {"init.seed": [0, 1, 2]}}')
    response = await service.client.post("/v1/sweeps", content=text, headers={"content-type": "application/json"})
    assert assert_problem(response, 422, "validation-error")["errors"][0]["field"] == ["grid"]
    gradients = (b'{"data": {"kind": "preset", "name": "hierarchy", "depth": 1}, "weights": [[[0, 0], [0, 0], [0, 0]]],'
                 b' "weight_decay": 0.0, "weight_decay": 1.0}')
    response = await service.client.post("/v1/gradients", content=gradients,
                                         headers={"content-type": "application/json"})
    assert assert_problem(response, 422, "validation-error")["errors"][0]["field"] == ["weight_decay"]


async def test_equal_keys_in_different_objects_are_fine(service):
    response = await service.client.post("/v1/simulations", json=small_request(
        init={"scheme": "gaussian", "scale": 0.01, "seed": 0}))  # "scale" and "seed" also elsewhere: no matter
    assert response.status_code == 202
