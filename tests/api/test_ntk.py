"""record.kernel over HTTP: refused without a hidden layer, counted in the trajectory size, served per time."""

from __future__ import annotations

import orjson
import pytest

from service.build import build_run
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request
from tests.support.trajectories import trajectory_document

pytestmark = pytest.mark.anyio


async def _create(service, body):
    return await service.client.post("/v1/simulations", content=orjson.dumps(body),
                                     headers={"content-type": "application/json"})


async def test_kernel_of_a_network_without_hidden_layers_is_refused_before_queueing(service):
    body = {**small_request(), "network": {"hidden": []}, "record": {"kernel": True}}
    problem = assert_problem(await _create(service, body), 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["record", "kernel"]
    assert service.engine.submitted == []


@pytest.mark.parametrize("settings_overrides", [{"max_trajectory_values": 2000}])
async def test_the_kernel_counts_towards_the_trajectory_size_limit(service):
    body = {**small_request(), "record": {"points": 100}}
    assert (await _create(service, body)).status_code == 202
    # 16 numbers per record without the kernel (1600 ≤ 2000); two 2 × 2 Grams and the distance add 9 (2500 > 2000)
    problem = assert_problem(await _create(service, {**body, "record": {"points": 100, "kernel": True}}),
                             422, "limit-exceeded")
    assert "record.kernel" in problem["errors"][0]["fix"]


@pytest.mark.parametrize("request_", [
    {**small_request(), "network": {"hidden": [3, 4]}, "record": {"points": 5, "kernel": True}},
    {"data": {"kind": "preset", "name": "whitened", "singular_values": [2.0, 1.0], "n_in": 2, "n_out": 2},
     "network": {"hidden": [2]}, "init": {"scheme": "lambda_balanced", "lambda": 0.5, "scale": 0.2, "seed": 0},
     "training": {"method": "exact", "t_max": 3.0}, "record": {"points": 5, "kernel": True}},
], ids=["gd_depth3", "exact_riccati"])
def test_the_document_serves_the_grams_per_time_per_hidden_layer(request_):
    spec = build_run(SimulationRequest.model_validate(request_))
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    doc = orjson.loads(orjson.dumps(trajectory_document(traj)))
    layers = len(request_["network"]["hidden"])
    assert len(doc["kernel"]["input_grams"]) == len(doc["time"]) == len(doc["kernel_distance"])
    for t in range(len(doc["time"])):
        assert len(doc["kernel"]["input_grams"][t]) == layers == len(doc["kernel"]["output_grams"][t])
        for h in range(layers):
            assert doc["kernel"]["input_grams"][t][h] == traj.kernel.input_grams[h][t].tolist()
            assert doc["kernel"]["output_grams"][t][h] == traj.kernel.output_grams[h][t].tolist()
    assert doc["kernel_distance"] == traj.kernel.distance.tolist()
