"""The learning time, one definition (the time a mode's strength first reaches half its strength at the optimum),
measured per method: exact from the closed form's root, flow on the integrator's dense output, GD at the crossing
step. Each is checked against an independent computation of the same root."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from service.build import build_run
from service.dynamics import learning_time, network, presets
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, StochasticGradientDescent
from service.dynamics.modes import mode_basis, mode_strengths, optimum
from service.dynamics.problem import problem_from_data
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest

# The λ sweep: 200 records over t = 4, a λ-balanced two-layer init, |λ| = 25 (lazy: every mode is learned
# within the first record interval, where linear interpolation between records erred by 14 %).
LAMBDA_SWEEP = {
    "data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4},
    "network": {"hidden": [4]},
    "init": {"scheme": "lambda_balanced", "lambda": -25.0, "scale": 0.1, "seed": 0},
    "training": {"method": "exact", "t_max": 4.0},
    "record": {"points": 200},
}


def _spec(request: dict):
    return build_run(SimulationRequest.model_validate(request))


def _with(request: dict, **parts) -> dict:
    return {**request, **{k: {**request.get(k, {}), **v} for k, v in parts.items()}}


def _riccati_closed_form_strengths(sigma31: np.ndarray, w21: np.ndarray, w32: np.ndarray, t: float) -> np.ndarray:
    """u_α(t) = u_αᵀ W(t) v_α from the one-shot closed form P(x) = e^{Fx} P0 [I + K(x) P0]⁻¹ e^{Fx}, x = 2t, on the
    whole (n_in + n_out) space (Σ11 = I; no chunks, no reduced subspace: docs/theory.md#riccati, evaluated directly)."""
    n_out, n_in = sigma31.shape
    lam = float(np.trace(w32.T @ w32 - w21 @ w21.T)) / w21.shape[0]
    f = np.block([[-(lam / 2) * np.eye(n_in), sigma31.T], [sigma31, (lam / 2) * np.eye(n_out)]])
    mu, o = np.linalg.eigh(f)
    x = 2.0 * t
    e = (o * np.exp(mu * x)) @ o.T
    k = (o * np.where(mu != 0, np.expm1(2 * mu * x) / np.where(mu != 0, 2 * mu, 1.0), x)) @ o.T
    q = np.vstack([w21.T, w32])
    p0 = q @ q.T
    p = e @ p0 @ np.linalg.solve(np.eye(n_in + n_out) + k @ p0, e)
    w = p[n_in:, :n_in]
    u, _, vt = np.linalg.svd(sigma31)
    return np.einsum("ia,ij,ja->a", u, w, vt.T)


@pytest.mark.parametrize("lam", [-25.0, 25.0])
def test_exact_learning_time_equals_the_root_of_the_riccati_closed_form_in_the_lambda_sweep_case(lam):
    spec = _spec(_with(LAMBDA_SWEEP, init={"lambda": lam}))
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    s31 = spec.problem.sigma31
    w21, w32 = spec.weights0
    optimum_strength = np.linalg.svd(s31, compute_uv=False)          # Σ11 = I, full rank: u*_α = s_α
    assert traj.time[1] == pytest.approx(4.0 / 199)                    # the first record interval holds them all
    for a in range(3):
        root = brentq(lambda t, a=a: _riccati_closed_form_strengths(s31, w21, w32, t)[a] - optimum_strength[a] / 2,
                      0.0, float(traj.time[1]), xtol=1e-16, rtol=1e-15)
        assert traj.modes.learning_time[a] == pytest.approx(root, rel=1e-6)
        assert traj.modes.learning_time[a] == pytest.approx(traj.modes.learning_time_theory[a], rel=1e-6)
    assert np.isnan(traj.modes.learning_time[3])                      # s_4 = 0: no learning time


def test_exact_learning_time_of_an_aligned_hierarchy_is_saxes_half_time():
    spec = _spec({"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                  "init": {"scheme": "aligned", "strength": 0.001}, "training": {"method": "exact", "t_max": 40.0},
                  "record": {"points": 40}})
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    s, c, u0 = traj.modes.singular_values, 1 / 8, 0.001
    # t½ = ln(s/(c·u0) − 1)/(4s), docs/theory.md#whitening: Σ11 = c·I
    np.testing.assert_allclose(traj.modes.learning_time, np.log(s / (c * u0) - 1) / (4 * s), rtol=1e-10)
    np.testing.assert_allclose(traj.modes.optimum_strength, s / c, rtol=1e-12)


def test_flow_learning_time_is_the_closed_form_root_to_the_solvers_tolerance():
    request = _with(LAMBDA_SWEEP, init={"lambda": 0.0}, training={"method": "flow", "t_max": 4.0, "rtol": 1e-10,
                                                                  "atol": 1e-12})
    spec = _spec(request)
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    s31 = spec.problem.sigma31
    w21, w32 = spec.weights0
    s = np.linalg.svd(s31, compute_uv=False)
    for a in range(3):
        first = int(np.argmax(traj.modes.strength[:, a] >= s[a] / 2))
        root = brentq(lambda t, a=a: _riccati_closed_form_strengths(s31, w21, w32, t)[a] - s[a] / 2,
                      float(traj.time[first - 1]), float(traj.time[first]), xtol=1e-16, rtol=1e-15)
        assert traj.modes.learning_time[a] == pytest.approx(root, rel=1e-8)


def _gd_every_step(problem, weights0, eta: float, steps: int) -> np.ndarray:
    """Plain numpy GD, W_l ← W_l − η ∂L/∂W_l, with the mode strengths at every step (T = steps + 1, k)."""
    basis = mode_basis(problem)
    ws = [np.array(w, dtype=np.float64) for w in weights0]
    out = [mode_strengths(network.network_map(ws), basis)]
    for _ in range(steps):
        ws = [w - eta * g for w, g in zip(ws, network.gradients(problem, ws), strict=True)]
        out.append(mode_strengths(network.network_map(ws), basis))
    return np.array(out)


def test_gd_learning_time_is_eta_times_the_first_step_at_half_the_optimum_strength():
    problem = presets.hierarchy(depth=2)
    w0 = initial_weights(problem, [6], "gaussian", scale=0.01, seed=1)
    eta, steps = 0.2, 400
    traj = simulate(problem, w0, GradientDescent(eta, steps, stop_at_convergence=False), RecordSchedule(points=9))
    every = _gd_every_step(problem, w0, eta, steps)
    target = 0.5 * mode_strengths(optimum(problem, [6]).product, mode_basis(problem))
    for a in range(every.shape[1]):
        k = int(np.argmax(every[:, a] >= target[a]))
        assert every[k - 1, a] < target[a] <= every[k, a]
        assert traj.modes.learning_time[a] == pytest.approx(eta * k, rel=1e-12)
    assert np.diff(traj.step)[0] == 50                                  # records 50 steps apart, times to the step


def test_gd_learning_time_of_a_large_network_is_found_in_passes_that_narrow_the_interval(monkeypatch):
    problem = presets.hierarchy(depth=2)
    w0 = initial_weights(problem, [6], "gaussian", scale=0.01, seed=1)
    method, record = GradientDescent(0.2, 400, stop_at_convergence=False), RecordSchedule(points=3)
    whole = simulate(problem, w0, method, record).modes.learning_time
    monkeypatch.setattr(learning_time, "RESTEP_BYTES", 1)               # three records a pass
    np.testing.assert_array_equal(simulate(problem, w0, method, record).modes.learning_time, whole)


def test_gd_learning_time_of_an_aligned_init_equals_the_exact_gd_maps():
    spec = _spec({"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                  "init": {"scheme": "aligned", "strength": 0.001},
                  "training": {"method": "gd", "learning_rate": 0.05, "steps": 800}, "record": {"points": 50}})
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record)
    assert traj.modes.theory_model == "gd_map_decoupled_modes"
    np.testing.assert_allclose(traj.modes.learning_time, traj.modes.learning_time_theory, rtol=1e-12)


def test_sgd_learning_time_is_the_first_record_at_half_the_optimum_strength():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3))
    y = x @ np.diag([2.0, 1.0, 0.5])
    problem = problem_from_data(x, y)
    w0 = initial_weights(problem, [4], "gaussian", scale=0.05, seed=0)
    traj = simulate(problem, w0, StochasticGradientDescent(0.02, batch_size=8, steps=600), RecordSchedule(points=31))
    expected = learning_time.record_learning_times(traj.time, traj.modes.strength, traj.modes.optimum_strength)
    np.testing.assert_array_equal(traj.modes.learning_time, expected)
    assert np.all(np.isfinite(expected))


def test_a_mode_beyond_the_bottleneck_has_no_learning_time_in_any_method():
    problem = presets.whitened([3.0, 2.0, 1.0], 3, 3)
    w0 = initial_weights(problem, [2], "balanced", scale=0.1, seed=0)
    for method in (GradientFlow(6.0), GradientDescent(0.02, 300)):
        lt = simulate(problem, w0, method, RecordSchedule(points=20)).modes.learning_time
        assert np.all(np.isfinite(lt[:2])) and np.isnan(lt[2])


def test_exact_learning_time_beyond_the_run_is_nan_though_the_theory_has_it():
    spec = _spec(_with(LAMBDA_SWEEP, init={"lambda": 0.0}, training={"t_max": 0.3}))
    traj = simulate(spec.problem, spec.weights0, Exact(0.3), RecordSchedule(points=10))
    assert np.all(np.isnan(traj.modes.learning_time[:3]))
    assert np.all(traj.modes.learning_time_theory[:3] > 0.3)
