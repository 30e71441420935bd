"""training.method sgd and training.momentum/nesterov over HTTP: each admitted request, run as a worker runs it, follows
the hand-written loop of PyTorch's torch.optim.SGD (tests/support/reference_loops.py); refusals are problem+json naming
the field and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import network
from service.dynamics.problem import Problem, problem_from_data
from service.dynamics.sgd import stability_factor
from tests.api.conftest import assert_problem, small_request
from tests.support.real_runs import submit, submit_and_run
from tests.support.reference_loops import literal_momentum_gd, literal_sgd

pytestmark = pytest.mark.anyio


def dataset_and_net(seed: int = 3, n: int = 23, widths=(4, 5, 3)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, widths[0])) * np.geomspace(1.5, 0.5, widths[0])
    y = x @ rng.standard_normal((widths[0], widths[-1])) + 0.3 * rng.standard_normal((n, widths[-1]))
    w0 = [0.4 * rng.standard_normal((widths[l + 1], widths[l])) for l in range(len(widths) - 1)]
    return x, y, w0


def request_on(x, y, w0, training: dict, **record) -> dict:
    return {"data": {"kind": "dataset", "x": x.tolist(), "y": y.tolist()},
            "network": {"hidden": [w.shape[0] for w in w0[:-1]]},
            "init": {"scheme": "given", "weights": [w.tolist() for w in w0]},
            "training": training, "record": {"points": 11, "weights": True, **record}}


def assert_records_follow(doc: dict, states: list) -> None:
    """Every recorded layer within 1e-12·max|W_l| of the literal state at its step. The loop and the compiled run do the
    same operations in another order (~1e-16 each) and at these step sizes nothing amplifies it: the core's tests
    measured ≤ 9e-16 (tests/dynamics/test_sgd.py); a wrong term (momentum missing, another batch) shows at ≥ η·|g|."""
    assert len(doc["step"]) >= 3
    for i, k in enumerate(doc["step"]):
        for l, want in enumerate(states[k]):
            np.testing.assert_allclose(doc["weights"][i][l], want, rtol=0, atol=1e-12 * np.max(np.abs(want)))


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
async def test_gd_with_momentum_follows_pytorchs_update_rule(service, nesterov):
    x, y, w0 = dataset_and_net()
    eta, steps, mu, decay = 0.01, 120, 0.9, 0.03
    training = {"method": "gd", "learning_rate": eta, "steps": steps, "weight_decay": decay, "momentum": mu,
                "nesterov": nesterov, "stop_at_convergence": False}
    _, doc = await submit_and_run(service, request_on(x, y, w0, training))
    assert doc["method"] == "gd" and doc["outcome"] == "completed" and doc["step"][-1] == steps
    assert_records_follow(doc, literal_momentum_gd(problem_from_data(x, y), w0, eta, steps, mu, nesterov, decay))


async def test_sgd_follows_the_literal_loop_of_its_seeded_batches(service):
    # 23 samples in batches of 7: every epoch ends on a remainder batch of 2; 50 steps stop mid-epoch
    x, y, w0 = dataset_and_net()
    eta, batch, steps, seed, mu, decay = 0.02, 7, 50, 11, 0.5, 0.01
    training = {"method": "sgd", "learning_rate": eta, "batch_size": batch, "steps": steps, "seed": seed,
                "momentum": mu, "nesterov": True, "weight_decay": decay}
    job_id, doc = await submit_and_run(service, request_on(x, y, w0, training))
    assert doc["method"] == "sgd" and doc["outcome"] == "completed" and doc["step"][-1] == steps
    assert_records_follow(doc, literal_sgd(problem_from_data(x, y), w0, eta, batch, steps, seed, mu, True, decay))
    stored = (await service.client.get(f"/v1/simulations/{job_id}")).json()["request"]["training"]
    assert stored == {**training, "epochs": None, "allow_unstable": False}


async def test_sgd_epochs_take_ceil_n_over_batch_steps_each(service):
    x, y, w0 = dataset_and_net()
    training = {"method": "sgd", "learning_rate": 0.02, "batch_size": 7, "epochs": 3, "seed": 1}
    _, doc = await submit_and_run(service, request_on(x, y, w0, training))
    assert doc["step"][-1] == 3 * 4  # ⌈23/7⌉ = 4 batches per epoch
    assert doc["time"][-1] == pytest.approx(0.02 * 12, rel=1e-15)


async def test_sgd_on_correlations_is_refused_naming_data_and_saying_a_dataset_is_needed(service):
    request = small_request(training={"method": "sgd", "learning_rate": 0.05, "batch_size": 2, "steps": 10})
    body = assert_problem(await submit(service, request), 422, "invalid-simulation")
    (error,) = body["errors"]
    assert error["field"] == ["data"]
    assert "dataset" in error["fix"] and "samples" in error["message"]


@pytest.mark.parametrize("training, field", [
    ({"steps": 10, "epochs": 2}, ["training", "steps"]),
    ({}, ["training", "epochs"]),
    ({"steps": 10, "batch_size": 24}, ["training", "batch_size"]),
    ({"steps": 10, "nesterov": True}, ["training", "nesterov"]),
], ids=["steps-and-epochs", "neither", "batch-above-n", "nesterov-without-momentum"])
async def test_invalid_sgd_settings_are_refused_naming_the_field(service, training, field):
    x, y, w0 = dataset_and_net()
    request = request_on(x, y, w0, {"method": "sgd", "learning_rate": 0.02, "batch_size": 7, **training})
    body = assert_problem(await submit(service, request), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == field and body["errors"][0]["fix"]


@pytest.mark.parametrize("momentum", [1.0, -0.1])
async def test_momentum_outside_zero_to_one_is_a_validation_error(service, momentum):
    request = small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 10, "momentum": momentum})
    body = assert_problem(await submit(service, request), 422, "validation-error")
    assert body["errors"][0]["field"] == ["training", "momentum"]


@pytest.mark.parametrize("settings_overrides", [{"max_steps": 100}])
async def test_sgd_epochs_above_the_step_limit_are_refused_before_running(service):
    # 23 samples in batches of 7: 30 epochs are 120 steps, above the limit of 100; 25 epochs (100 steps) pass
    x, y, w0 = dataset_and_net()
    training = {"method": "sgd", "learning_rate": 0.02, "batch_size": 7, "epochs": 30}
    body = assert_problem(await submit(service, request_on(x, y, w0, training)), 422, "limit-exceeded")
    assert body["errors"][0]["field"] == ["training", "epochs"] and "30 × 4" in body["errors"][0]["message"]
    response = await submit(service, request_on(x, y, w0, {**training, "epochs": 25}))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
async def test_momentum_moves_the_admitted_learning_rate_by_its_stability_factor(service, nesterov):
    # Σ11 = I, s_max = 2, two layers: the GD bound is 1/(D·s_max^(2−2/D)) = 1/4 (docs/theory.md#gd-stability);
    # heavy ball multiplies it by 1 + μ, Nesterov by (1 + μ)/(1 + 2μ)
    mu = 0.5
    bound = 0.25 * stability_factor(mu, nesterov)
    assert network.gd_stability_bound(Problem(np.eye(2), np.diag([2.0, 0.5])), 2) == pytest.approx(0.25)
    for eta, admitted in ((0.99 * bound, True), (1.01 * bound, False)):
        request = small_request(training={"method": "gd", "learning_rate": eta, "steps": 10, "momentum": mu,
                                          "nesterov": nesterov})
        response = await submit(service, request)
        if admitted:
            assert response.status_code == 202, response.text
        else:
            body = assert_problem(response, 422, "unstable-learning-rate")
            assert body["errors"][0]["field"] == ["training", "learning_rate"]
            assert f"{bound:.6g}" in body["errors"][0]["message"] and "momentum 0.5" in body["errors"][0]["message"]
