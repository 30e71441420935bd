"""The lazy limit as theory (service.dynamics.linearized): the loss of the network linearised at its initialisation.

The reference is a direct simulation of the linearised model on its parameters: θ_l stepped (GD) or integrated (flow,
scipy DOP853 at rtol 1e-12) with the Jacobian frozen at θ0, f_lin(θ) = W(θ0) + Σ_l A_l(0)(θ_l − θ_l(0))B_l(0) written
out here from the layer products, and its loss the per-sample MSE of f_lin on the task's data (tests/sample_loss.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from service.dynamics import init, presets
from service.dynamics.errors import InvalidParameterError
from service.dynamics.linearized import linearized_loss, spectrum
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, StochasticGradientDescent
from service.dynamics.problem import problem_from_data
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import preflight, simulate
from tests.support.sample_loss import per_sample_mse

# Closed form vs the θ loop: measured ≤ 8.4e-15 relative over every route (rows, kronecker, dense, stepped; D = 1, 2,
# 3; with and without weight decay; 300 steps): 1e-12 is ~100× that, and any wrong factor or kernel term is O(1).
GD_RTOL = 1e-12
# vs the θ-flow integrated by DOP853 at rtol 1e-12 over t ≤ 3: the integrator's global error, a few × 1e-12 relative
# along a contracting linear flow; 1e-9 leaves room for its error growth.
FLOW_RTOL = 1e-9


def layer_factors(ws):
    """A_l = W_D⋯W_{l+1} and B_l = W_{l−1}⋯W_1 (identities at the ends), l = 1 … D."""
    d = len(ws)
    a_s, b_s = [], []
    for l in range(d):
        a = np.eye(ws[-1].shape[0])
        for m in range(d - 1, l, -1):
            a = a @ ws[m]
        b = np.eye(ws[0].shape[1])
        for m in range(l):
            b = ws[m] @ b
        a_s.append(a)
        b_s.append(b)
    return a_s, b_s


def linearised_map(a_s, b_s, theta, theta0, w0):
    return w0 + sum(a @ (t - t0) @ b for a, t, t0, b in zip(a_s, theta, theta0, b_s))


def theta_gd(problem, ws, eta, steps, gamma):
    """f_lin at every step of GD on θ: θ_l ← θ_l − η(−2 A_lᵀ E B_lᵀ + γθ_l), E = Σ31 − f_lin Σ11."""
    a_s, b_s = layer_factors(ws)
    theta0 = [w.copy() for w in ws]
    theta = [w.copy() for w in ws]
    w0 = a_s[0] @ ws[0] @ b_s[0]
    maps = []
    for _ in range(steps + 1):
        wl = linearised_map(a_s, b_s, theta, theta0, w0)
        maps.append(wl)
        e = problem.sigma31 - wl @ problem.sigma11
        theta = [t - eta * (-2.0 * a.T @ e @ b.T + gamma * t) for a, t, b in zip(a_s, theta, b_s)]
    return maps


def theta_flow(problem, ws, times, gamma):
    a_s, b_s = layer_factors(ws)
    theta0 = [w.copy() for w in ws]
    w0 = a_s[0] @ ws[0] @ b_s[0]
    shapes = [w.shape for w in ws]
    cuts = np.cumsum([w.size for w in ws])[:-1]

    def unpack(y):
        return [p.reshape(s) for p, s in zip(np.split(y, cuts), shapes)]

    def rhs(_, y):
        theta = unpack(y)
        e = problem.sigma31 - linearised_map(a_s, b_s, theta, theta0, w0) @ problem.sigma11
        return np.concatenate([(2.0 * a.T @ e @ b.T - gamma * t).ravel() for a, t, b in zip(a_s, theta, b_s)])

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.concatenate([w.ravel() for w in ws]), t_eval=times,
                    method="DOP853", rtol=1e-12, atol=1e-14)
    assert sol.success
    return [linearised_map(a_s, b_s, unpack(sol.y[:, k]), theta0, w0) for k in range(len(times))]


@pytest.fixture(scope="module")
def data():
    """A task from data with inputs that are not whitened (the general "rows" route)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)) @ np.diag([1.0, 0.8, 0.5, 1.3, 0.9])
    y = x @ rng.standard_normal((4, 5)).T + 0.3 * rng.standard_normal((40, 4))
    return problem_from_data(x, y), x, y


CASES = [([], 0.0), ([6], 0.0), ([6], 0.1), ([3], 0.0), ([6, 3], 0.0), ([6, 3], 0.05)]


@pytest.mark.parametrize("hidden,gamma", CASES)
def test_gd_linearised_loss_matches_gd_on_the_linearised_parameters(data, hidden, gamma):
    problem, x, y = data
    w0 = init.initial_weights(problem, hidden, "gaussian", scale=0.5, seed=1)
    eta, steps = 0.01, 300
    maps = theta_gd(problem, w0, eta, steps, gamma)
    ks = np.arange(0, steps + 1, 30)
    expected = np.array([per_sample_mse(x, y, [maps[k]]) for k in ks])
    routes = [None, "stepped"] + (["rows", "dense"] if len(hidden) <= 1 else [])
    for route in routes:
        got = linearized_loss(problem, w0, GradientDescent(eta, steps, gamma), ks * eta, ks, route=route)
        np.testing.assert_allclose(got.loss, expected, rtol=GD_RTOL, err_msg=got.route)


@pytest.mark.parametrize("hidden,gamma", [([6], 0.0), ([6], 0.1), ([6, 3], 0.0)])
def test_flow_linearised_loss_matches_the_linearised_parameter_flow(data, hidden, gamma):
    problem, x, y = data
    w0 = init.initial_weights(problem, hidden, "gaussian", scale=0.5, seed=1)
    times = np.linspace(0.0, 3.0, 7)
    maps = theta_flow(problem, w0, times, gamma)
    expected = np.array([per_sample_mse(x, y, [m]) for m in maps])
    for route in [None, "stepped"]:
        got = linearized_loss(problem, w0, GradientFlow(t_max=3.0, weight_decay=gamma), times, route=route)
        np.testing.assert_allclose(got.loss, expected, rtol=FLOW_RTOL, err_msg=got.route)


@pytest.mark.parametrize("hidden", [[], [4]])
def test_whitened_inputs_take_the_kronecker_route(hidden):
    problem = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=3, seed=1)
    w0 = init.initial_weights(problem, hidden, "gaussian", scale=0.3, seed=2)
    assert spectrum(problem, w0).route == "kronecker"
    steps = np.arange(0, 201, 20)
    kron = linearized_loss(problem, w0, GradientDescent(0.01, 200), steps * 0.01, steps)
    rows = linearized_loss(problem, w0, GradientDescent(0.01, 200), steps * 0.01, steps, route="rows")
    assert kron.route == "kronecker" and rows.route == "rows"
    np.testing.assert_allclose(kron.loss, rows.loss, rtol=GD_RTOL)


def test_shallow_network_is_its_own_linearisation(data):
    """D = 1: f is linear, so the linearised loss is the loss itself (GD, flow and exact)."""
    problem, _, _ = data
    w0 = init.initial_weights(problem, [], "gaussian", scale=0.5, seed=1)
    for method in [GradientDescent(0.05, 200), GradientFlow(t_max=4.0, rtol=1e-11, atol=1e-13), Exact(t_max=4.0)]:
        traj = simulate(problem, w0, method, RecordSchedule(points=11, linearized=True))
        np.testing.assert_allclose(traj.linearized_loss, traj.loss, rtol=1e-9)


def test_trajectory_records_the_linearised_loss_and_its_excess(data):
    problem, _, _ = data
    w0 = init.initial_weights(problem, [6], "gaussian", scale=0.5, seed=1)
    traj = simulate(problem, w0, GradientDescent(0.01, 300), RecordSchedule(points=11, linearized=True))
    direct = linearized_loss(problem, w0, GradientDescent(0.01, 300), traj.time, traj.step)
    np.testing.assert_array_equal(traj.linearized_loss, direct.loss)
    np.testing.assert_allclose(traj.linearized_excess_loss, direct.loss - traj.optimum.loss, rtol=1e-12, atol=1e-12)
    assert traj.linearized_loss[0] == pytest.approx(traj.loss[0], rel=1e-13)
    plain = simulate(problem, w0, GradientDescent(0.01, 300), RecordSchedule(points=11))
    assert plain.linearized_loss is None and plain.linearized_excess_loss is None


# Lazy vs rich (Dominé et al. 2024): a λ-balanced init with the same network map W0 (a small Gaussian init's) for every
# λ. Measured max_t |L(t) − L_lin(t)| / L(0), flow, t ≤ 4: 0.945 at λ = 0, 0.215 at −1, 0.023 at −5, 1.01e-3 at ±25,
# 2.4e-6 at 100 (GD with η = 0.002: 0.945, 0.215, 0.023, 9.3e-4).
LAZY_GAP = 2e-3      # |λ| = 25: measured 1.01e-3
RICH_GAP = 0.5       # λ = 0:    measured 0.945


@pytest.mark.parametrize("method", [GradientFlow(t_max=4.0, rtol=1e-10, atol=1e-12), GradientDescent(0.002, 2000)],
                         ids=["flow", "gd"])
def test_lazy_runs_follow_the_linearised_loss_and_rich_ones_depart(method):
    problem = presets.whitened([3.0, 2.0, 1.0], n_in=3, n_out=3)
    gaps = {}
    for lam in [0.0, -1.0, -5.0, -25.0, 25.0]:
        w0 = init.initial_weights(problem, [3], "lambda_balanced", lam=lam, scale=0.05, seed=0)
        traj = simulate(problem, w0, method, RecordSchedule(points=201, linearized=True))
        gaps[lam] = float(np.max(np.abs(traj.loss - traj.linearized_loss)) / traj.loss[0])
    assert gaps[-25.0] < LAZY_GAP and gaps[25.0] < LAZY_GAP
    assert gaps[0.0] > RICH_GAP
    assert gaps[0.0] > gaps[-1.0] > gaps[-5.0] > gaps[-25.0]


@pytest.mark.parametrize("method", [GradientDescent(0.01, 10, momentum=0.9),
                                    StochasticGradientDescent(0.01, batch_size=2, steps=10)])
def test_the_linearised_loss_is_refused_for_momentum_and_sgd_naming_the_field(method):
    problem = problem_from_data(np.eye(4), np.eye(4)[:, :3])
    w0 = init.initial_weights(problem, [3], "gaussian", scale=0.1, seed=0)
    with pytest.raises(InvalidParameterError) as info:
        preflight(problem, w0, method, RecordSchedule(points=5, linearized=True))
    assert info.value.field == ("record", "linearized")
