"""Sweeps over the settings of issue 20: sgd's seed, momentum, a task sequence's base. Each sweep is admitted over
HTTP, its stored points are run as a worker's chunk runs them (base + values → request → build → one
``simulate_batch``; tasks._run_points), and every point equals the same request run as a single simulation."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.grid import apply_params
from service.jobs.tasks import _run_points, build_points
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem
from tests.support.real_runs import submit_and_run

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(5)
X = RNG.standard_normal((24, 3))
Y = X @ RNG.standard_normal((3, 2)) + 0.2 * RNG.standard_normal((24, 2))
SGD_BASE = {"data": {"kind": "dataset", "x": X.tolist(), "y": Y.tolist()}, "network": {"hidden": [4]},
            "init": {"scheme": "gaussian", "scale": 0.1, "seed": 0},
            "training": {"method": "sgd", "learning_rate": 0.02, "batch_size": 5, "epochs": 4},
            "record": {"points": 9}}


async def run_sweep(service, body: dict) -> list:
    """POST the sweep, then run its stored points as one worker chunk; the trajectories in point order."""
    response = await service.client.post("/v1/sweeps", json=body)
    assert response.status_code == 202, response.text
    row = service.app.state.sweep_store.get(response.json()["id"])
    results: dict = {}
    items = [(k, p) for k, p, _ in service.app.state.sweep_store.pending_points(row.id)]
    built = build_points(orjson.loads(row.base), items, results)
    done = _run_points(built, results, None)
    assert results == {}
    return [traj for _, traj in sorted(done, key=lambda item: item[0][0])]


def apply(request: dict, path: str, value) -> dict:
    return apply_params(orjson.loads(SimulationRequest.model_validate(request).model_dump_json(by_alias=True)),
                        {path: value})


async def test_a_sweep_over_sgd_seeds_runs_each_seed_as_its_own_simulation(service):
    seeds = [0, 1, 2]
    trajectories = await run_sweep(service, {"base": SGD_BASE, "grid": {"training.seed": seeds}})
    products = [t.product[-1] for t in trajectories]
    assert all(t.method == "sgd" for t in trajectories)
    assert not np.array_equal(products[0], products[1]) and not np.array_equal(products[1], products[2])
    for seed, traj in zip(seeds, trajectories, strict=True):
        _, single = await submit_and_run(service, apply(SGD_BASE, "training.seed", seed))
        assert traj.product.tolist() == single["product"]  # the same batches, bit for bit


async def test_a_sweep_over_momentum_equals_single_simulations(service):
    base = {**SGD_BASE, "training": {"method": "gd", "learning_rate": 0.02, "steps": 60}}
    trajectories = await run_sweep(service, {"base": base, "grid": {"training.momentum": [0.0, 0.5, 0.9]}})
    for mu, traj in zip([0.0, 0.5, 0.9], trajectories, strict=True):
        _, single = await submit_and_run(service, apply(base, "training.momentum", mu))
        if mu == 0.0:  # plain GD: grouped, a two-layer net in SIMD lanes, equal to round-off (test_lanes.py)
            np.testing.assert_allclose(traj.product, single["product"], rtol=1e-12, atol=1e-15)
        else:  # momentum runs alone, through simulate itself
            assert traj.product.tolist() == single["product"]


async def test_a_sweep_over_a_task_sequences_learning_rate_records_its_task_losses(service):
    task = {"kind": "preset", "name": "whitened", "singular_values": [2.0, 1.0], "n_in": 3, "n_out": 3}
    base = {"data": {"kind": "sequence", "phases": [{"data": {**task, "seed": 1}, "until": 2.0},
                                                    {"data": {**task, "seed": 2}}]},
            "network": {"hidden": [3]}, "training": {"method": "gd", "learning_rate": 0.02, "steps": 250},
            "record": {"points": 11}}
    trajectories = await run_sweep(service, {"base": base, "grid": {"training.learning_rate": [0.01, 0.02]}})
    for eta, traj in zip([0.01, 0.02], trajectories, strict=True):
        _, single = await submit_and_run(service, apply(base, "training.learning_rate", eta))
        assert traj.task_loss.tolist() == single["task_loss"] and traj.phase.tolist() == single["phase"]


async def test_a_sweep_point_with_an_invalid_sgd_setting_is_named_by_its_grid_entry(service):
    response = await service.client.post("/v1/sweeps", json={"base": SGD_BASE, "grid": {"training.batch_size": [5, 25]}})
    body = assert_problem(response, 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["grid", "training.batch_size", 1]


def test_a_chunks_points_that_keep_the_base_data_share_its_problem():
    base = SimulationRequest.model_validate({**SGD_BASE, "training": {"method": "gd", "learning_rate": 0.02,
                                                                      "steps": 10}}).model_dump(mode="json")
    items = [(0, orjson.dumps({"init.scale": 0.1})), (1, orjson.dumps({"training.learning_rate": 0.01})),
             (2, orjson.dumps({"data.y": (2 * Y).tolist()})), (3, orjson.dumps({"init.seed": 3}))]
    results: dict = {}
    specs = dict(build_points(base, items, results))
    assert results == {}
    assert specs[0].problem is specs[1].problem is specs[3].problem
    assert specs[2].problem is not specs[0].problem
    np.testing.assert_allclose(specs[2].problem.sigma31, 2 * specs[0].problem.sigma31, rtol=1e-15)


def test_a_point_refused_while_building_leaves_the_others_sharing_the_problem():
    base = SimulationRequest.model_validate({**SGD_BASE, "training": {"method": "gd", "learning_rate": 0.02,
                                                                      "steps": 10}}).model_dump(mode="json")
    items = [(0, orjson.dumps({"training.learning_rate": 1e6})), (1, orjson.dumps({"init.scale": 0.1})),
             (2, orjson.dumps({"init.scale": 0.2}))]
    results: dict = {}
    specs = dict(build_points(base, items, results))
    assert set(results) == {0} and results[0]["status"] == "failed"
    assert specs[1].problem is specs[2].problem
