"""record.sharpness, record.sharpness_k, record.linearized and the random-matrix theory over HTTP: each request is
admitted, runs as a worker runs it, and its trajectory carries the field with the values an independent computation
gives (a Hessian from finite differences, the linear model's own loss, the theory called on the preset built
directly); what the core refuses, and what costs too much, is problem+json naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import init as core_init
from service.dynamics import network, presets
from service.dynamics.methods import GradientDescent
from service.dynamics.problem import Problem
from service.dynamics.random_matrix import random_matrix_loss_theory
from tests.api.conftest import assert_problem, small_request
from tests.support.real_runs import submit, submit_and_run

pytestmark = pytest.mark.anyio

SIGMA11 = np.diag([1.5, 1.2, 1.0, 0.9, 0.7, 0.5])
SIGMA31 = np.array([[2.0, 0.3, 0.0, 0.1, 0.0, 0.2], [0.1, 1.4, 0.2, 0.0, 0.3, 0.0], [0.0, 0.2, 0.9, 0.1, 0.0, 0.1],
                    [0.3, 0.0, 0.1, 0.6, 0.2, 0.0], [0.0, 0.1, 0.0, 0.2, 0.4, 0.1], [0.2, 0.0, 0.1, 0.0, 0.1, 0.3]])


def correlations(sigma11=SIGMA11, sigma31=SIGMA31) -> dict:
    return {"kind": "correlations", "sigma11": np.asarray(sigma11).tolist(), "sigma31": np.asarray(sigma31).tolist()}


def fd_hessian(problem: Problem, weights: list[np.ndarray], h: float = 1e-5) -> np.ndarray:
    """The Hessian of L w.r.t. all weights (flattened layer by layer, row-major) by central differences of the
    gradients of docs/theory.md#gradient (``network.gradients``), symmetrised."""
    sizes = [w.size for w in weights]
    n = sum(sizes)
    flat = np.concatenate([w.ravel() for w in weights])

    def unflat(v):
        out, o = [], 0
        for w, s in zip(weights, sizes, strict=True):
            out.append(v[o:o + s].reshape(w.shape))
            o += s
        return out

    def grad(v):
        return np.concatenate([g.ravel() for g in network.gradients(problem, unflat(v))])

    hess = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        hess[:, i] = (grad(flat + e) - grad(flat - e)) / (2 * h)
    return (hess + hess.T) / 2


@pytest.mark.parametrize("k", [1, 3], ids=["lanczos", "arpack"])
async def test_sharpness_is_the_top_of_the_finite_difference_hessian_and_the_threshold_two_over_eta(service, k):
    # (6, 6, 6): 72 weights, above the dense solver's 64, so k = 1 takes the compiled Lanczos and k = 3 ARPACK
    eta, mu = 0.05, 0.5
    request = {"data": correlations(), "network": {"hidden": [6]},
               "init": {"scheme": "gaussian", "scale": 0.3, "seed": 4},
               "training": {"method": "gd", "learning_rate": eta, "steps": 60, "momentum": mu,
                            "stop_at_convergence": False},
               "record": {"points": 4, "sharpness": True, "sharpness_k": k}}
    _, doc = await submit_and_run(service, request)
    sharp = np.array(doc["sharpness"])
    assert sharp.shape == (len(doc["time"]), k)
    assert doc["sharpness_threshold"] == pytest.approx(2 * (1 + mu) / eta, rel=1e-15)  # heavy ball: 2(1 + μ)/η
    weights = [np.array(w) for w in doc["final_weights"]]
    want = np.linalg.eigvalsh(fd_hessian(Problem(SIGMA11, SIGMA31), weights))[::-1][:k]
    # central differences of the exact gradient: truncation O(h²·|∂³L|) ≈ 1e-10 and round-off ≈ 1e-16/h·|∇L| ≈ 1e-11
    # at h = 1e-5 (measured ≤ 3e-10 relative); the Lanczos residual 1e-8·‖H‖ bounds the eigenvalue's error far below
    np.testing.assert_allclose(sharp[-1], want, rtol=1e-7)


async def test_flow_records_sharpness_without_a_threshold(service):
    request = {"data": correlations(), "network": {"hidden": [2]}, "training": {"method": "flow", "t_max": 1.0},
               "record": {"points": 3, "sharpness": True}}
    _, doc = await submit_and_run(service, request)
    assert len(doc["sharpness"]) == 3 and doc["sharpness_threshold"] is None


async def test_without_record_sharpness_the_trajectory_has_none(service):
    _, doc = await submit_and_run(service, small_request())
    assert doc["sharpness"] is None and doc["linearized_loss"] is None and doc["task_loss"] is None


async def test_sharpness_k_beyond_the_number_of_weights_is_refused_naming_it(service):
    request = small_request(record={"points": 5, "sharpness": True, "sharpness_k": 13})  # 2·3 + 3·2 = 12 weights
    body = assert_problem(await submit(service, request), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["record", "sharpness_k"] and "12 weights" in body["errors"][0]["message"]


async def test_sharpness_of_an_exact_riccati_run_is_refused_naming_record_sharpness(service):
    request = small_request(init={"scheme": "lambda_balanced", "lambda": 0.5, "scale": 0.1, "seed": 0},
                            network={"hidden": [2]}, training={"method": "exact", "t_max": 2.0},
                            record={"points": 5, "sharpness": True})
    body = assert_problem(await submit(service, request), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["record", "sharpness"] and "flow" in body["errors"][0]["fix"]


@pytest.mark.parametrize("settings_overrides", [{"max_hessian_products": 100_000}])
@pytest.mark.parametrize("record, field", [
    ({"points": 1001}, ["record", "points"]),
    ({"points": 400, "sharpness_k": 3}, ["record", "sharpness_k"]),
], ids=["records", "eigenvalues"])
async def test_sharpness_above_the_hessian_product_limit_is_refused_before_running(service, record, field):
    # planned at 100 products per eigenvalue per record: 1001 records × 1 and 400 × 3 are above 100,000
    body = assert_problem(await submit(service, small_request(record={"sharpness": True, **record})), 422,
                          "limit-exceeded")
    assert body["errors"][0]["field"] == field and "100000" in body["errors"][0]["message"]
    fine = small_request(record={"points": 1000, "sharpness": True})
    assert (await submit(service, fine)).status_code == 202


@pytest.mark.parametrize("training", [
    {"method": "gd", "learning_rate": 0.05, "steps": 200, "stop_at_convergence": False},
    {"method": "flow", "t_max": 10.0, "rtol": 1e-11, "atol": 1e-13, "stop_at_convergence": False},
], ids=["gd", "flow"])
async def test_linearized_loss_of_a_linear_model_is_its_loss(service, training):
    # one weight matrix: f(W) = W x is linear, its linearisation is itself: L_lin(t) = L(t) (docs/theory.md#linearized)
    sigma33 = SIGMA31 @ np.linalg.inv(SIGMA11) @ SIGMA31.T + 0.1 * np.eye(6)  # least-squares residual 0.1 per output
    request = {"data": {**correlations(), "sigma33": sigma33.tolist()}, "network": {"hidden": []},
               "init": {"scheme": "gaussian", "scale": 0.5, "seed": 1}, "training": training,
               "record": {"points": 11, "linearized": True}}
    _, doc = await submit_and_run(service, request)
    # gd: the same Euler map in the eigenbasis of Σ11 against the compiled steps, round-off of 200 steps (measured
    # ≤ 1e-14 relative); flow: the closed form against DOP853 at rtol 1e-11 (measured ≤ 2e-11)
    np.testing.assert_allclose(doc["linearized_loss"], doc["loss"], rtol=1e-9)
    np.testing.assert_allclose(np.array(doc["linearized_excess_loss"]), np.array(doc["excess_loss"]),
                               rtol=1e-9, atol=1e-12 * doc["loss"][0])


async def test_linearized_loss_departs_from_the_loss_of_a_rich_two_layer_run(service):
    # a small init in a two-layer net: K(0) ≈ 0, so the linearised model hardly learns while the network does
    request = small_request(init={"scheme": "gaussian", "scale": 0.01, "seed": 0},
                            data={**small_request()["data"], "sigma33": [[4.0, 0.0], [0.0, 0.25]]},
                            training={"method": "gd", "learning_rate": 0.05, "steps": 400,
                                      "stop_at_convergence": False}, record={"points": 21, "linearized": True})
    _, doc = await submit_and_run(service, request)
    assert doc["linearized_loss"][0] == pytest.approx(doc["loss"][0], rel=1e-13)
    assert doc["loss"][-1] < 1e-6 * doc["loss"][0] and doc["linearized_loss"][-1] > 0.9 * doc["loss"][0]


@pytest.mark.parametrize("training", [
    {"method": "gd", "learning_rate": 0.05, "steps": 10, "momentum": 0.9},
    {"method": "sgd", "learning_rate": 0.05, "batch_size": 2, "steps": 10},
], ids=["momentum", "sgd"])
async def test_linearized_with_momentum_or_sgd_is_refused_naming_record_linearized(service, training):
    data = {"kind": "dataset", "x": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "y": [[1.0], [-1.0], [0.0]]}
    request = small_request(data=data, training=training, record={"points": 5, "linearized": True})
    body = assert_problem(await submit(service, request), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["record", "linearized"] and "flow" in body["errors"][0]["fix"]


async def test_noisy_teacher_runs_carry_the_random_matrix_theory_also_with_fewer_samples_than_inputs(service):
    # N = 6 < n_in = 10: the paper's N < n_in regime
    params = {"n_in": 10, "n_out": 8, "n_samples": 6, "noise": 0.5, "singular_values": [3.0], "rank": 1, "seed": 2}
    request = {"data": {"kind": "preset", "name": "noisy_teacher", **params}, "network": {"hidden": [8]},
               "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
               "training": {"method": "gd", "learning_rate": 0.02, "steps": 300}, "record": {"points": 11}}
    _, doc = await submit_and_run(service, request)
    theory = doc["loss_theory_random_matrix"]
    assert theory["model"] == "random_matrix" and theory["exact"] is False
    assert "Lampinen & Ganguli 2019" in theory["source"] and "docs/theory.md#generalization" in theory["source"]
    # the same theory of the preset built in the core directly, at the served records
    problem = presets.noisy_teacher(**params)
    w0 = core_init.initial_weights(problem, [8], "gaussian", scale=0.01, seed=0)
    direct = random_matrix_loss_theory(problem, w0, GradientDescent(0.02, 300), np.array(doc["time"]),
                                       np.array(doc["step"]))
    np.testing.assert_array_equal(theory["loss"], direct.loss)
    np.testing.assert_array_equal(theory["test_loss"], direct.test_loss)
