"""Sharpness (service.dynamics.sharpness, hessian_loop): the exact Hessian-vector product against finite
differences of ``network.gradients``, the top eigenvalues against dense Hessians, the closed form at a balanced
minimum that ``network.gd_stability_bound`` uses, the record in a trajectory, and the edge of stability."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import init, network, presets
from service.dynamics.errors import ExactNotApplicableError, InvalidParameterError
from service.dynamics.methods import (
    Exact,
    GradientDescent,
    GradientFlow,
    StochasticGradientDescent,
)
from service.dynamics.problem import Problem, problem_from_correlations
from service.dynamics.record import RecordSchedule
from service.dynamics.sharpness import (
    CompiledHessian,
    HessianOperator,
    hessian_vector_product,
    sharpness_record,
    sharpness_threshold,
    top_eigenvalues,
)
from service.dynamics.simulate import preflight, simulate

from .test_gd import aligned_init, nonwhite_problem, orthogonal, random_net

WIDTHS = [[3, 2], [3, 4, 2], [4, 3, 5, 2], [3, 2, 4, 3, 2]]
WIDTH_IDS = ["D1", "D2", "D3", "D4"]


def flat(weights):
    return np.concatenate([np.asarray(w).ravel() for w in weights])


def fd_hessian(problem, weights, h):
    """The dense Hessian by central differences of ``network.gradients`` along each weight (independent of the
    product's formula), symmetrised."""
    x0 = flat(weights)
    shapes = [w.shape for w in weights]
    cuts = np.cumsum([0] + [w.size for w in weights])

    def grad(x):
        ws = [x[cuts[l]:cuts[l + 1]].reshape(shapes[l]) for l in range(len(shapes))]
        return flat(network.gradients(problem, ws))

    cols = []
    for j in range(x0.size):
        e = np.zeros_like(x0)
        e[j] = h
        cols.append((grad(x0 + e) - grad(x0 - e)) / (2 * h))
    dense = np.array(cols).T
    return 0.5 * (dense + dense.T)


# ------------------------------------------------------------------------------------------------
# the product


@pytest.mark.parametrize("widths", WIDTHS, ids=WIDTH_IDS)
def test_hessian_vector_product_equals_central_differences_of_the_gradients(widths):
    rng = np.random.default_rng(len(widths))
    problem = nonwhite_problem(rng, widths[0], widths[-1])
    ws = random_net(rng, widths, 0.7)
    vs = [rng.standard_normal(w.shape) for w in ws]
    h = 1e-5
    plus = network.gradients(problem, [w + h * v for w, v in zip(ws, vs)])
    minus = network.gradients(problem, [w - h * v for w, v in zip(ws, vs)])
    fd = flat([(a - b) / (2 * h) for a, b in zip(plus, minus)])
    exact = flat(hessian_vector_product(problem, ws, vs))
    compiled = CompiledHessian(problem, widths).at(flat(ws)).matvec(flat(vs))
    # central differences: truncation h²/6·|d³∇/dε³| ≈ 1e-10·O(10) and round-off eps·|∇|/h ≈ 1e-11·O(10), so
    # ~1e-9 relative (measured ≤ 3.2e-10); a wrong term is O(1) off
    scale = np.max(np.abs(exact))
    np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-8 * scale)
    # the compiled product evaluates the same formula with BLAS: round-off only
    np.testing.assert_allclose(compiled, exact, rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("widths", WIDTHS, ids=WIDTH_IDS)
def test_the_hessian_of_the_product_is_symmetric(widths):
    rng = np.random.default_rng(10 + len(widths))
    problem = nonwhite_problem(rng, widths[0], widths[-1])
    op = CompiledHessian(problem, widths).at(flat(random_net(rng, widths, 0.7)))
    cols = np.array([op.matvec(e) for e in np.eye(op.n)]).T
    # the three terms of (HV)_l are not written symmetrically: symmetry is a check of the formula (round-off only)
    np.testing.assert_allclose(cols, cols.T, rtol=0, atol=1e-13 * np.max(np.abs(cols)))


# ------------------------------------------------------------------------------------------------
# the eigenvalues


@pytest.mark.parametrize("widths", [[3, 4, 2], [4, 3, 5, 2]], ids=["3-4-2", "4-3-5-2"])
def test_top_eigenvalues_equal_those_of_the_dense_hessian_from_finite_differences(widths):
    rng = np.random.default_rng(20 + len(widths))
    problem = nonwhite_problem(rng, widths[0], widths[-1])
    ws = random_net(rng, widths, 0.6)
    want = np.linalg.eigvalsh(fd_hessian(problem, ws, 1e-5))[::-1]
    scale = np.max(np.abs(want))
    # finite-difference Hessian: each entry to ~1e-9 relative (as above), its eigenvalues as well (Weyl);
    # measured ≤ 8e-12
    tol = 1e-8 * scale
    np.testing.assert_allclose(top_eigenvalues(problem, ws, 1, solver="lanczos"), want[:1], rtol=0, atol=tol)
    for solver in ("arpack", "dense", "auto"):
        np.testing.assert_allclose(top_eigenvalues(problem, ws, 3, solver=solver), want[:3], rtol=0, atol=tol)


@pytest.mark.parametrize("widths", [[10, 12, 9], [8, 6, 7, 5], [6, 9, 4, 7, 5]], ids=["D2", "D3", "D4"])
def test_top_eigenvalues_equal_eigvalsh_of_the_exact_dense_hessian(widths):
    rng = np.random.default_rng(30 + len(widths))
    problem = nonwhite_problem(rng, widths[0], widths[-1], n=200)
    ws = random_net(rng, widths, 0.5)
    dense = HessianOperator(problem, ws).dense()
    assert dense.shape[0] > 64  # the iterative solvers, not the dense path
    want = np.linalg.eigvalsh(dense)[::-1]
    # Ritz residual ≤ SHARPNESS_RTOL = 1e-8 (relative), eigenvalue error ≈ residual²/gap: measured ≤ 2e-15
    # relative; 1e-9 leaves room without admitting a wrong eigenvalue (gaps here are ≥ 4e-2 relative)
    tol = 1e-9 * want[0]
    np.testing.assert_allclose(top_eigenvalues(problem, ws, 1), want[:1], rtol=0, atol=tol)
    np.testing.assert_allclose(top_eigenvalues(problem, ws, 3), want[:3], rtol=0, atol=tol)


def test_arpack_finds_a_repeated_top_eigenvalue_with_its_multiplicity():
    # the hierarchy's two level-1 splits share a singular value: at the balanced optimum the Hessian's second and
    # third eigenvalues are equal; single-vector Lanczos would skip the copy, ARPACK (k ≥ 2) finds both
    problem = presets.hierarchy(2)
    basis_init = init.initial_weights(problem, [8], "aligned", strength=1.0, seed=3)
    traj = simulate(problem, basis_init, Exact(t_max=200.0), RecordSchedule(points=2, weights=True))
    ws = [w[-1] for w in traj.weights]
    want = np.linalg.eigvalsh(HessianOperator(problem, ws).dense())[::-1]
    assert abs(want[1] - want[2]) < 1e-12 * want[0] and want[0] - want[1] > 1e-3 * want[0]
    np.testing.assert_allclose(top_eigenvalues(problem, ws, 4), want[:4], rtol=0, atol=1e-9 * want[0])


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("c", [1.0, 0.25])
def test_top_eigenvalue_at_a_balanced_global_minimum_is_the_curvature_of_the_gd_stability_bound(depth, c):
    # Σ11 = c·I, Σ31 = U diag(s) Vᵀ; at the balanced minimum every layer carries (s/c)^(1/D) per mode and E = 0,
    # so H is the Gauss–Newton part with top eigenvalue 2cD(s_max/c)^(2−2/D) (network.gd_stability_bound)
    rng = np.random.default_rng(depth)
    n_in, n_out, hidden = 4, 3, 5
    u, v = orthogonal(rng, n_out), orthogonal(rng, n_in)
    s = np.array([2.0, 1.2, 0.5])
    big = np.zeros((n_out, n_in))
    big[:3, :3] = np.diag(s)
    problem = Problem(c * np.eye(n_in), u @ big @ v.T)
    ws = aligned_init(rng, u, v, [n_in] + [hidden] * (depth - 1) + [n_out], (s / c) ** (1.0 / depth))
    np.testing.assert_allclose(network.network_map(ws) @ problem.sigma11, problem.sigma31, atol=1e-13)  # a minimum
    closed_form = 2 * c * depth * (s.max() / c) ** (2 - 2 / depth)
    got = top_eigenvalues(problem, ws, 1)[0]
    # the solver's residual bound 1e-8 relative; measured ≤ 2.5e-15
    assert got == pytest.approx(closed_form, rel=1e-10)
    assert got == pytest.approx(2 / network.gd_stability_bound(problem, depth), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# in a trajectory


def test_a_run_records_the_sharpness_of_every_record_from_a_fixed_start_vector():
    rng = np.random.default_rng(40)
    problem = nonwhite_problem(rng, 8, 6)
    w0 = random_net(rng, [8, 10, 6], 0.3)
    traj = simulate(problem, w0, GradientDescent(0.01, 300), RecordSchedule(points=7, weights=True, sharpness=True,
                                                                            sharpness_k=2))
    assert traj.sharpness.shape == (len(traj.time), 2) and traj.sharpness_threshold == 2 / 0.01
    for i in range(len(traj.time)):
        # the same bits whatever the other records: a record's value depends on its weights only
        np.testing.assert_array_equal(traj.sharpness[i], top_eigenvalues(problem, [w[i] for w in traj.weights], 2))
    again = simulate(problem, w0, GradientDescent(0.01, 300), RecordSchedule(points=7, sharpness=True, sharpness_k=2))
    np.testing.assert_array_equal(again.sharpness, traj.sharpness, strict=True)


def test_a_float32_run_takes_its_sharpness_in_float64_from_its_weights():
    rng = np.random.default_rng(41)
    problem = nonwhite_problem(rng, 5, 4)
    traj = simulate(problem, random_net(rng, [5, 6, 4], 0.3), GradientDescent(0.01, 100),
                    RecordSchedule(points=3, weights=True, sharpness=True), dtype="float32")
    assert traj.weights[0].dtype == np.float64 and traj.sharpness.dtype == np.float64
    np.testing.assert_array_equal(traj.sharpness, sharpness_record(problem, traj.weights, 1))


@pytest.mark.parametrize("method, threshold", [
    (GradientDescent(0.05, 10), 2 / 0.05),
    (GradientDescent(0.05, 10, weight_decay=0.5), 2 / 0.05 - 0.5),
    (GradientDescent(0.05, 10, momentum=0.9), 2 * 1.9 / 0.05),
    (GradientDescent(0.05, 10, momentum=0.9, nesterov=True), 2 * 1.9 / 2.8 / 0.05),
    (StochasticGradientDescent(0.05, 4, steps=10), 2 / 0.05),
    (GradientFlow(1.0), None),
    (Exact(1.0), None),
])
def test_the_threshold_is_the_stability_limit_of_the_method(method, threshold):
    got = sharpness_threshold(method)
    assert got == (None if threshold is None else pytest.approx(threshold, rel=1e-15))


def test_exact_riccati_runs_refuse_the_sharpness_and_decoupled_ones_record_it():
    problem = presets.whitened([3.0, 1.0], 3, 3)
    riccati_init = init.initial_weights(problem, [3], "lambda_balanced", lam=0.5, scale=0.1, seed=1)
    with pytest.raises(ExactNotApplicableError) as err:
        preflight(problem, riccati_init, Exact(5.0), RecordSchedule(sharpness=True))
    assert err.value.field == ("record", "sharpness")
    aligned = init.initial_weights(problem, [3], "aligned", strength=0.01)
    traj = simulate(problem, aligned, Exact(30.0), RecordSchedule(points=3, sharpness=True))
    assert traj.sharpness_threshold is None
    # converged by t = 30: the balanced minimum's 2cD·s_max^(2 − 2/D) = 4·3 = 12
    assert traj.sharpness[-1, 0] == pytest.approx(12.0, rel=1e-6)


@pytest.mark.parametrize("k", [0, 1000, 1.5, True])
def test_sharpness_k_must_count_eigenvalues_the_net_has(k):
    rng = np.random.default_rng(0)
    problem = nonwhite_problem(rng, 3, 2)
    with pytest.raises(InvalidParameterError) as err:
        preflight(problem, random_net(rng, [3, 4, 2], 0.1), GradientDescent(0.1, 10),
                  RecordSchedule(sharpness=True, sharpness_k=k))
    assert err.value.field == ("record", "sharpness_k")


# ------------------------------------------------------------------------------------------------
# the edge of stability


def test_gd_sharpens_progressively_to_two_over_eta_and_converges_at_the_edge_of_stability():
    """Progressive sharpening and the edge of stability (Cohen et al. 2021) in a two-layer linear net of 3 weights.

    Inputs: a loud feature (variance 400) that the target ignores, and a quiet one (variance 1) it depends on
    weakly (Σ31 = [0, 0.02]). Learning the quiet feature grows W2, and with it the curvature 2·400·W2² of the
    loud direction: the sharpness rises slowly, over ~700 steps, from 0.004·2/η. Gradient flow from the same init
    ends at a minimum of sharpness 1.28·2/η, but the minima W2·W1 = W* also include flatter ones (smaller W2).
    GD (η = 0.16, 2/η = 12.5) does not follow the flow: past 2/η it overshoots (to 1.23·2/η, step 880) and is
    thrown out twice (loss spikes to 3.6e-3 and 4.7e-5, catapults), then hovers within 0.3 % of 2/η with the loss
    oscillating (281 increases over steps 2230-2730), and finally settles at a minimum of sharpness 0.9986·2/η,
    the loss decreasing to 5e-13. The overshoot is what deep linear nets do here: a direction that was stable has
    contracted, and its instability needs steps to grow back, while the sharpness keeps rising.
    """
    s11 = np.array([[400.0, 1.0], [1.0, 1.0]])
    s31 = np.array([[0.0, 0.02]])
    w_star = s31 @ np.linalg.inv(s11)
    problem = problem_from_correlations(s11, s31, w_star @ s11 @ w_star.T)
    rng = np.random.default_rng(0)
    w0 = [0.01 * rng.standard_normal((1, 2)), 0.01 * rng.standard_normal((1, 1))]
    eta, steps = 0.16, 5000
    traj = simulate(problem, w0, GradientDescent(eta, steps, stop_at_convergence=False),
                    RecordSchedule(points=steps + 1, sharpness=True))
    assert traj.outcome == "completed" and traj.step.tolist() == list(range(steps + 1))
    edge = traj.sharpness_threshold
    assert edge == 2 / eta
    sharp, loss = traj.sharpness[:, 0] / edge, traj.loss
    cross = int(np.argmax(sharp >= 1.0))
    # progressive sharpening: from far below the edge, slowly (hundreds of steps), without falling back
    # (the largest dip before the crossing is 8e-6 of 2/η)
    assert sharp[0] < 0.01 and cross > 500
    assert sharp[cross // 2] < 0.1 < sharp[3 * cross // 4] < 0.5
    assert np.min(np.diff(sharp[:cross])) > -1e-4
    # overshoot, then hovering at the edge from step cross + 1500 to the end: within 0.5 % (measured 0.27 %)
    assert sharp.max() < 1.25
    tail = sharp[cross + 1500:]
    assert np.max(np.abs(tail - 1.0)) < 5e-3
    # the loss keeps decreasing, not monotonically: hundreds of increases after the crossing (measured 685), and
    # the end is 1e-10 of the largest loss after the crossing (measured 1.5e-10; bound 1e-8)
    assert np.sum(np.diff(loss[cross:]) > 0) > 100
    assert loss[-1] < 1e-8 * np.max(loss[cross:])
    # GD's minimum sits at the edge, just on the stable side; gradient flow's is far beyond it
    assert 0.99 < sharp[-1] <= 1.0
    flow = simulate(problem, w0, GradientFlow(eta * steps, stop_at_convergence=False),
                    RecordSchedule(points=2, sharpness=True))
    assert flow.loss[-1] < 1e-15 and flow.sharpness[-1, 0] / edge > 1.25


def test_a_stop_request_is_honoured_between_the_records_of_the_sharpness():
    # the sharpness is post-processing, after the run reported progress 1.0; a large net's records take seconds
    # each, so the worker's stop check runs between them
    from service.dynamics.errors import StopRequested
    from service.dynamics.methods import Hooks

    rng = np.random.default_rng(50)
    problem = nonwhite_problem(rng, 12, 10, n=100)
    w0 = random_net(rng, [12, 14, 10], 0.3)
    finished, asked = [], []

    def should_stop():
        asked.append(bool(finished))
        return bool(finished)

    hooks = Hooks(progress=lambda f: finished.append(f) if f == 1.0 else None, should_stop=should_stop, interval=0.0)
    with pytest.raises(StopRequested):
        simulate(problem, w0, GradientDescent(0.01, 50), RecordSchedule(points=20, sharpness=True), hooks=hooks)
    assert asked[-1] and finished  # stopped by a check after the steps were done, i.e. inside the sharpness
