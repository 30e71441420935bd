"""POST /v1/gradients: the loss and ∂L/∂W_l at given weights, against computations that share no code with it.

The reference quantity is the loss of the raw dataset, L = (1/N) Σ_i ‖y_i − W_D⋯W_1 x_i‖² summed over the
rows in numpy, and its central finite differences; the service computes from Σ11, Σ31, Σ33 instead.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.build import build_gradients
from service.dynamics.methods import GradientDescent
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate
from service.limits import Limits
from service.schemas import GRADIENTS_EXAMPLE, GradientsRequest
from tests.api.conftest import assert_problem
from tests.support.sample_loss import per_sample_mse

pytestmark = pytest.mark.anyio

# Central differences with step h on a loss of size O(1): truncation O(h²·L''') ≈ 1e-10 and round-off
# O(ε·L/h) ≈ 1e-10 at h = 1e-5, so a relative error of 1e-6 on a gradient of norm O(1) is loose by 10³ and
# still catches any factor (2, ½), sign or transpose mistake, which are O(1).
FD_STEP = 1e-5
FD_RTOL = 1e-6


def _dataset(n_in: int, n_out: int, n: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), rng.standard_normal((n, n_out))


def _weights(widths: list[int], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((widths[l + 1], widths[l])) * 0.7 for l in range(len(widths) - 1)]


def _finite_difference(x, y, weights, decay: float = 0.0) -> list[np.ndarray]:
    def objective(ws):
        return per_sample_mse(x, y, ws) + 0.5 * decay * sum(float(np.sum(w * w)) for w in ws)

    grads = []
    for l, w in enumerate(weights):
        g = np.zeros_like(w)
        for idx in np.ndindex(*w.shape):
            plus = [v.copy() for v in weights]
            minus = [v.copy() for v in weights]
            plus[l][idx] += FD_STEP
            minus[l][idx] -= FD_STEP
            g[idx] = (objective(plus) - objective(minus)) / (2 * FD_STEP)
        grads.append(g)
    return grads


async def _post(service, body) -> dict:
    response = await service.client.post("/v1/gradients", content=orjson.dumps(body),
                                          headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def _body(x, y, weights, **extra) -> dict:
    return {"data": {"kind": "dataset", "x": x.tolist(), "y": y.tolist()},
            "weights": [w.tolist() for w in weights], **extra}


@pytest.mark.parametrize("widths", [[3, 2], [3, 4, 2], [3, 4, 5, 2], [2, 3, 4, 3, 2]],
                         ids=["depth1", "depth2", "depth3", "depth4"])
async def test_gradients_equal_finite_differences_of_the_dataset_loss(service, widths):
    x, y = _dataset(widths[0], widths[-1])
    weights = _weights(widths)
    got = await _post(service, _body(x, y, weights))
    expected = _finite_difference(x, y, weights)
    assert len(got["gradients"]) == len(weights)
    for g, e in zip(got["gradients"], expected):
        assert np.asarray(g).shape == e.shape
        np.testing.assert_allclose(g, e, rtol=FD_RTOL, atol=FD_RTOL * np.max(np.abs(e)))


async def test_weight_decay_gradients_are_those_of_the_objective_with_the_half_norm_penalty(service):
    x, y = _dataset(3, 2)
    weights = _weights([3, 4, 2])
    got = await _post(service, _body(x, y, weights, weight_decay=0.3))
    for g, e in zip(got["gradients"], _finite_difference(x, y, weights, decay=0.3)):
        np.testing.assert_allclose(g, e, rtol=FD_RTOL, atol=FD_RTOL * np.max(np.abs(e)))
    penalty = 0.15 * sum(float(np.sum(w * w)) for w in weights)
    # the loss is the data loss of trajectories (no penalty), the objective adds it: identities, 1e-12 relative
    assert got["loss"] == pytest.approx(per_sample_mse(x, y, weights), rel=1e-12)
    assert got["objective"] == pytest.approx(got["loss"] + penalty, rel=1e-12)


async def test_two_layer_gradient_of_w21_is_the_w32_transpose_form(service):
    body = GRADIENTS_EXAMPLE
    s11, s31 = np.array(body["data"]["sigma11"]), np.array(body["data"]["sigma31"])
    w21, w32 = (np.array(w) for w in body["weights"])
    got = await _post(service, body)
    e = s31 - w32 @ w21 @ s11
    # the Σ32ᵀ misprint (docs/theory.md#gradient-typo) would give a different matrix; round-off only separates
    # these (1e-14)
    np.testing.assert_allclose(got["gradients"][0], -2 * w32.T @ e, rtol=0, atol=1e-14)
    np.testing.assert_allclose(got["gradients"][1], -2 * e @ w21.T, rtol=0, atol=1e-14)


async def test_loss_is_the_dataset_mse(service):
    x, y = _dataset(3, 2)
    weights = _weights([3, 5, 2])
    got = await _post(service, _body(x, y, weights))
    # correlation identity vs the per-sample sum: round-off of a handful of O(1) terms, 1e-12 relative
    assert got["loss"] == pytest.approx(per_sample_mse(x, y, weights), rel=1e-12)
    assert got["loss_without_sigma33"] == pytest.approx(got["loss"] - float(np.sum(y * y)) / len(y), rel=1e-12)


async def test_loss_and_objective_are_null_without_sigma33_and_the_gradient_is_still_given(service):
    body = {**GRADIENTS_EXAMPLE, "data": {k: v for k, v in GRADIENTS_EXAMPLE["data"].items() if k != "sigma33"}}
    got = await _post(service, body)
    full = await _post(service, GRADIENTS_EXAMPLE)
    assert got["loss"] is None and got["objective"] is None
    assert got["loss_without_sigma33"] == full["loss_without_sigma33"]
    assert got["gradients"] == full["gradients"]


async def test_gradient_norm_is_the_frobenius_norm_of_all_layers(service):
    got = await _post(service, GRADIENTS_EXAMPLE)
    norm = np.sqrt(sum(float(np.sum(np.asarray(g) ** 2)) for g in got["gradients"]))
    assert got["gradient_norm"] == pytest.approx(norm, rel=1e-15)


async def test_one_gd_step_of_a_simulation_subtracts_learning_rate_times_the_gradient(service):
    got = await _post(service, GRADIENTS_EXAMPLE)
    spec = build_gradients(GradientsRequest.model_validate(GRADIENTS_EXAMPLE), Limits())
    eta = 0.01
    traj = simulate(spec.problem, spec.weights, GradientDescent(eta, 1), RecordSchedule(points=2, weights=True))
    for w_sim, w0, g in zip(traj.weights, spec.weights, got["gradients"]):
        # the compiled GD kernel and the numpy gradient agree to round-off of one step (1e-15 absolute)
        np.testing.assert_allclose(w_sim[-1], w0 - eta * np.asarray(g), rtol=0, atol=1e-15)


async def test_a_preset_is_accepted_as_data(service):
    got = await _post(service, {"data": {"kind": "preset", "name": "hierarchy", "depth": 1},
                                "weights": [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]})
    # at W = 0: L = tr Σ33 and ∂L/∂W = −2 Σ31; hierarchy depth 1 has Y = [[1,1],[1,0],[0,1]], Σ31 = Y/2
    assert got["loss"] == pytest.approx(2.0, rel=1e-15)
    assert got["gradients"][0] == [[-1.0, -1.0], [-1.0, 0.0], [0.0, -1.0]]


# ------------------------------------------------------------------------------------------------
# validation: the same problems as simulations


async def test_weights_that_do_not_chain_are_invalid_naming_the_layer(service):
    body = {**GRADIENTS_EXAMPLE, "weights": [[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]]}
    response = await service.client.post("/v1/gradients", json=body)
    problem = assert_problem(response, 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["weights", 1]
    assert "needs (2, 1)" in problem["errors"][0]["message"]


async def test_last_layer_with_the_wrong_output_count_is_invalid(service):
    body = {**GRADIENTS_EXAMPLE, "weights": [[[1.0, 2.0]], [[1.0], [2.0], [3.0]]]}
    problem = assert_problem(await service.client.post("/v1/gradients", json=body), 422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["weights", 1]


async def test_ragged_weights_are_a_validation_error(service):
    body = {**GRADIENTS_EXAMPLE, "weights": [[[1.0, 2.0], [3.0]]]}
    problem = assert_problem(await service.client.post("/v1/gradients", json=body), 422, "validation-error")
    assert problem["errors"][0]["field"] == ["weights", 0, 1]  # the row that differs from row 0
    assert problem["errors"][0]["code"] == "ragged_matrix"


async def test_a_non_symmetric_sigma11_is_refused_as_for_simulations(service):
    data = {**GRADIENTS_EXAMPLE["data"], "sigma11": [[1.0, 0.5], [0.0, 1.0]]}
    problem = assert_problem(await service.client.post("/v1/gradients", json={**GRADIENTS_EXAMPLE, "data": data}),
                             422, "invalid-simulation")
    assert problem["errors"][0]["field"] == ["data", "sigma11"]


async def test_an_empty_body_is_malformed_json(service):
    response = await service.client.post("/v1/gradients", content=b"", headers={"content-type": "application/json"})
    problem = assert_problem(response, 400, "malformed-json")
    assert "GradientsRequest" in problem["detail"]


async def test_form_data_is_an_unsupported_media_type(service):
    response = await service.client.post("/v1/gradients", content=orjson.dumps(GRADIENTS_EXAMPLE),
                                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize("settings_overrides", [{"max_dimension": 4}])
async def test_a_hidden_width_above_the_limit_names_its_weight_matrix(service):
    body = {**GRADIENTS_EXAMPLE, "weights": [[[0.0, 0.0]] * 5, [[0.0] * 5] * 2]}
    problem = assert_problem(await service.client.post("/v1/gradients", json=body), 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["weights", 0]


@pytest.mark.parametrize("settings_overrides", [{"max_layers": 2}])
async def test_more_layers_than_the_limit_are_refused(service):
    body = {**GRADIENTS_EXAMPLE, "weights": [[[0.0, 0.0]], [[0.0]], [[0.0], [0.0]]]}
    problem = assert_problem(await service.client.post("/v1/gradients", json=body), 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["weights"]
