"""The NTK over a run (service.dynamics.ntk) against its definition: Θ = J Jᵀ with the Jacobian J of the network
outputs on the input basis with respect to every weight, built here column by column without autodiff.

f is linear in each layer separately, so f(W_l + E_pq) − f(W_l) is exactly the Jacobian column of weight (p, q)
(no truncation error, only round-off): an independent computation that shares nothing with the Gram formulas.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics.errors import InvalidParameterError
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow
from service.dynamics.ntk import hidden_grams, kernel_distance, ntk_matrix
from service.dynamics.presets import whitened
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate
from service.grid import point_summary

# J Jᵀ vs Σ Q ⊗ P: sums of O(10) products of O(1) entries in different orders, and a unit-step difference
# f(W + E) − f(W) whose round-off is ~ε·‖f‖: 1e-12 absolute is ~10⁴ ulps and far below any wrong term (O(1)).
ATOL = 1e-12


def _outputs(weights) -> np.ndarray:
    """f(e_a) for every input basis vector, output-major: entry i·n_in + a is f_i(e_a)."""
    w = weights[0]
    for wl in weights[1:]:
        w = wl @ w
    return w.ravel()  # W[i, a] = f_i(e_a): row-major is output-major


def ntk_by_definition(weights) -> np.ndarray:
    columns = []
    base = _outputs(weights)
    for l, w in enumerate(weights):
        for idx in np.ndindex(*w.shape):
            bumped = [v.copy() for v in weights]
            bumped[l][idx] += 1.0
            columns.append(_outputs(bumped) - base)
    jac = np.stack(columns, axis=1)
    return jac @ jac.T


def _random_weights(widths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((widths[l + 1], widths[l])) for l in range(len(widths) - 1)]


@pytest.mark.parametrize("widths", [[3, 4, 2], [3, 4, 5, 2], [2, 3, 2, 3, 2]], ids=["D2", "D3", "D4"])
def test_kernel_from_the_grams_is_the_jacobian_product(widths):
    weights = _random_weights(widths)
    inputs, outputs = hidden_grams(weights)
    np.testing.assert_allclose(ntk_matrix(inputs, outputs, widths[0], widths[-1]), ntk_by_definition(weights),
                               rtol=0, atol=ATOL * np.max(np.abs(ntk_by_definition(weights))))


def test_two_layer_kernel_is_held_by_w21tw21_and_w32w32t():
    w21, w32 = _random_weights([3, 4, 2], seed=1)
    inputs, outputs = hidden_grams([w21, w32])
    np.testing.assert_allclose(inputs[0], w21.T @ w21, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(outputs[0], w32 @ w32.T, rtol=1e-15, atol=1e-15)
    k = np.kron(w32 @ w32.T, np.eye(3)) + np.kron(np.eye(2), w21.T @ w21)   # docs/theory.md#ntk, output-major
    np.testing.assert_allclose(ntk_matrix(inputs, outputs, 3, 2), k, rtol=0, atol=1e-14)


def test_kernel_distance_is_one_minus_the_cosine_of_the_full_kernels():
    a, b = _random_weights([3, 4, 5, 2], seed=2), _random_weights([3, 4, 5, 2], seed=3)
    stacks = [np.stack([wa, wb]) for wa, wb in zip(a, b)]
    inputs, outputs = hidden_grams(stacks)
    d = kernel_distance(inputs, outputs, 3, 2)
    k0, k1 = ntk_by_definition(a), ntk_by_definition(b)
    expected = 1 - np.sum(k0 * k1) / (np.linalg.norm(k0) * np.linalg.norm(k1))
    assert d[0] == pytest.approx(0.0, abs=1e-15)
    assert d[1] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", [GradientDescent(0.02, 300), GradientFlow(t_max=6.0)], ids=["gd", "flow"])
def test_recorded_kernel_is_that_of_the_recorded_weights(method):
    problem = whitened([3.0, 1.0], n_in=3, n_out=2, seed=1)
    w0 = initial_weights(problem, [4, 3], "gaussian", scale=0.3, seed=0)
    traj = simulate(problem, w0, method, RecordSchedule(points=7, weights=True, kernel=True))
    for t in (0, 3, len(traj.time) - 1):
        weights = [w[t] for w in traj.weights]
        got = ntk_matrix([p[t] for p in traj.kernel.input_grams], [q[t] for q in traj.kernel.output_grams], 3, 2)
        np.testing.assert_allclose(got, ntk_by_definition(weights), rtol=0, atol=ATOL * np.max(np.abs(got)))
    assert abs(traj.kernel.distance[0]) < 1e-15  # the first record is the reference kernel


def test_riccati_kernel_from_the_p_blocks_equals_the_flow_kernel():
    problem = whitened([3.0, 1.0], n_in=3, n_out=3, seed=1)
    w0 = initial_weights(problem, [3], "lambda_balanced", lam=0.5, scale=0.3, seed=1)
    exact = simulate(problem, w0, Exact(t_max=3.0), RecordSchedule(points=9, kernel=True))
    flow = simulate(problem, w0, GradientFlow(t_max=3.0, rtol=1e-12, atol=1e-14), RecordSchedule(points=9, kernel=True))
    assert exact.weights is None and exact.modes.theory_model.startswith("riccati")
    # the chunked Riccati solution against DOP853 at rtol 1e-12: ~1e-10 on O(1) Grams
    for e, f in zip(exact.kernel.input_grams + exact.kernel.output_grams,
                    flow.kernel.input_grams + flow.kernel.output_grams):
        np.testing.assert_allclose(e, f, rtol=0, atol=1e-8)
    np.testing.assert_allclose(exact.kernel.distance, flow.kernel.distance, rtol=0, atol=1e-8)


def test_the_kernel_moves_less_and_less_as_the_init_becomes_lazier():
    problem = whitened([3.0, 2.0, 1.0], n_in=3, n_out=3)
    moved = {}
    for lam in (0.0, -1.0, -5.0, -25.0):
        w0 = initial_weights(problem, [3], "lambda_balanced", lam=lam, scale=0.05, seed=0)
        traj = simulate(problem, w0, GradientFlow(t_max=4.0), RecordSchedule(points=50, kernel=True))
        moved[lam] = float(traj.kernel.distance.max())
    # rich (λ = 0): the kernel is built from ~0 (measured max distance 0.40); lazy: it barely moves (2.6e-5 at
    # λ = −25, where the large layer's Gram ≈ |λ|·I dominates K and moves by ~s²/λ² relative)
    assert moved[0.0] > 0.3 > moved[-1.0] > moved[-5.0] > moved[-25.0]
    assert moved[-25.0] < 1e-4


def test_sweep_rows_carry_the_final_kernel_distance():
    problem = whitened([2.0, 1.0], n_in=2, n_out=2)
    w0 = initial_weights(problem, [3], "gaussian", scale=0.1, seed=0)
    with_kernel = simulate(problem, w0, GradientDescent(0.05, 50), RecordSchedule(points=4, kernel=True))
    without = simulate(problem, w0, GradientDescent(0.05, 50), RecordSchedule(points=4))
    assert point_summary(with_kernel)["final_kernel_distance"] == with_kernel.kernel.distance[-1] > 0
    assert point_summary(without)["final_kernel_distance"] is None


def test_linear_regression_has_no_kernel_to_record():
    problem = whitened([1.0], n_in=2, n_out=2)
    with pytest.raises(InvalidParameterError) as err:
        simulate(problem, initial_weights(problem, [], "gaussian", scale=0.1), GradientDescent(0.1, 5),
                 RecordSchedule(points=2, kernel=True))
    assert err.value.field == ("record", "kernel")


def test_without_record_kernel_there_is_no_kernel():
    problem = whitened([1.0], n_in=2, n_out=2)
    traj = simulate(problem, initial_weights(problem, [2], "gaussian", scale=0.1), GradientDescent(0.1, 5),
                    RecordSchedule(points=2))
    assert traj.kernel is None
