"""Gradient flow (service.dynamics.flow): closed forms (docs/theory.md#saxe-balanced,
docs/theory.md#exact-gd-shallow), the conservation law (docs/theory.md#conservation), the O(η) relation between GD
and flow (docs/theory.md#conventions), stopping rules, hooks and records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from service.dynamics import network
from service.dynamics.errors import StopRequested, WorkLimitError
from service.dynamics.flow import flow_convergence_rtol, run_flow
from service.dynamics.gd import run_gd
from service.dynamics.methods import GradientDescent, GradientFlow, Hooks
from service.dynamics.problem import Problem

from .test_gd import (
    aligned_init,
    at,
    gradient_norm,
    mode_strength,
    nonwhite_problem,
    orthogonal,
    random_net,
    whitened_problem,
)

TIGHT = dict(rtol=1e-11, atol=1e-13)  # the brute-force setting of the closed-form tests (test_exact.py)


def saxe_u(t, s, u0):
    """docs/theory.md#saxe-balanced, our units (τ = 1/2): u(t) = s e^{4st} / (e^{4st} − 1 + s/u0)."""
    e = np.exp(4 * s * t)
    return s * e / (e - 1 + s / u0)


def balance_of(weights):
    return network.balance(weights)


# ------------------------------------------------------------------------------------------------
# closed forms


def test_balanced_modes_follow_saxe_closed_form():
    rng = np.random.default_rng(0)
    s = np.array([3.0, 2.0, 1.0, 0.5])
    u0 = np.array([1e-3, 2e-3, 5e-4, 1e-3])
    u, v = orthogonal(rng, 6), orthogonal(rng, 5)
    problem = whitened_problem(u, s, v)
    w0 = aligned_init(rng, u, v, [5, 4, 6], np.sqrt(u0))
    times = np.linspace(0, 4, 41)
    result = run_flow(problem, w0, GradientFlow(4.0, **TIGHT), times)
    assert result.outcome == "completed"
    np.testing.assert_array_equal(result.times, times)
    got = np.array([[mode_strength(at(result, j), u, v, k) for k in range(4)] for j in range(times.size)])
    # at rtol 1e-11 we measure 5e-11. Errors made on the plateau are amplified
    # through the sigmoid, but relative to u0-sized values, so they stay ~1e-11 absolute; 1e-9 is a 20× margin.
    np.testing.assert_allclose(got, saxe_u(times[:, None], s, u0), rtol=0, atol=1e-9)


def test_balanced_mode_flow_matches_test_vector_a1():
    """Test vector A1 (as in test_exact.py): s = 2, u0 = 1e-3: u(0.5) = 0.0531731586, u(1) = 1.1971819822,
    u(2) = 1.9995501856."""
    a0 = np.sqrt(1e-3)
    result = run_flow(Problem(np.eye(1), np.array([[2.0]])), [np.array([[a0]]), np.array([[a0]])],
                      GradientFlow(2.0, **TIGHT), np.array([0.0, 0.5, 1.0, 2.0]))
    got = [network.network_map(at(result, j))[0, 0] for j in (1, 2, 3)]
    # the vector is printed to 10 decimals (±5e-11); integration at rtol 1e-11 adds ~3e-11 (measured)
    np.testing.assert_allclose(got, [0.0531731586, 1.1971819822, 1.9995501856], rtol=0, atol=1e-10)


def test_shallow_flow_matches_expm_formula():
    """docs/theory.md#exact-gd-shallow: W(t) = W* + (W0 − W*) expm(−2 Σ11 t), W* = Σ31 Σ11⁻¹, any Σ11."""
    rng = np.random.default_rng(11)
    problem = nonwhite_problem(rng, 4, 3, n=50)
    w_star = problem.sigma31 @ np.linalg.inv(problem.sigma11)
    w0 = rng.standard_normal((3, 4))
    times = np.array([0.0, 0.3, 1.3])
    result = run_flow(problem, [w0], GradientFlow(1.3, **TIGHT), times)
    for j, t in enumerate(times):
        pred = w_star + (w0 - w_star) @ expm(-2 * problem.sigma11 * t)
        # a linear, contracting ODE: the global error stays at the per-step tolerance, ~rtol·‖W‖ = 1e-11·O(1)
        # (we measured 7e-12 here); 1e-10 is a 10× margin
        np.testing.assert_allclose(result.weights[0][j], pred, rtol=0, atol=1e-10)


def test_flow_matches_brute_force_solve_ivp_for_a_deep_unbalanced_net():
    rng = np.random.default_rng(2)
    problem = nonwhite_problem(rng, 4, 3)
    w0 = random_net(rng, [4, 5, 6, 3], 0.5)
    times = np.linspace(0, 1.5, 7)
    result = run_flow(problem, w0, GradientFlow(1.5, **TIGHT), times)
    shapes = [w.shape for w in w0]
    sizes = np.cumsum([0] + [w.size for w in w0])

    def f(t, y):
        ws = [y[sizes[l]:sizes[l + 1]].reshape(shapes[l]) for l in range(3)]
        return -np.concatenate([g.ravel() for g in network.gradients(problem, ws)])

    ref = solve_ivp(f, (0, 1.5), np.concatenate([w.ravel() for w in w0]), method="DOP853", t_eval=times, **TIGHT)
    for l in range(3):
        got = result.weights[l].reshape(times.size, -1)
        want = ref.y[sizes[l]:sizes[l + 1]].T
        # same method and tolerances: here the step sequences coincide and only rounding differs (measured
        # 5e-15); if a step choice flipped, both would still be within ~rtol = 1e-11 of the flow: 1e-10
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# conservation law and the O(η) relation to GD


def test_flow_conserves_layer_balance_for_deep_nonwhitened_net():
    """docs/theory.md#conservation: W_{l+1}ᵀW_{l+1} − W_lW_lᵀ is constant under the flow (1e-13 at rtol 1e-11)."""
    rng = np.random.default_rng(4)
    problem = nonwhite_problem(rng, 4, 3)
    w0 = random_net(rng, [4, 5, 6, 3], 0.5)
    result = run_flow(problem, w0, GradientFlow(2.0, **TIGHT), np.array([0.0, 1.0, 2.0]))
    c0 = balance_of(w0)
    drift = max(np.max(np.abs(c - c_0)) for j in (1, 2) for c, c_0 in zip(balance_of(at(result, j)), c0))
    # conservation holds for the exact flow; DOP853 at rtol 1e-11 keeps it to the integration error
    # (we measure 2e-13 with entries of C up to 2.5); 1e-11 is a 50× margin
    assert drift < 1e-11


def test_balance_decays_as_exp_minus_two_gamma_t_with_weight_decay():
    rng = np.random.default_rng(4)
    problem = nonwhite_problem(rng, 4, 3)
    w0 = random_net(rng, [4, 5, 6, 3], 0.5)
    gamma, t = 0.3, 2.0
    result = run_flow(problem, w0, GradientFlow(t, weight_decay=gamma, **TIGHT), np.array([0.0, t]))
    for c, c_0 in zip(balance_of(at(result, -1)), balance_of(w0)):
        # we measure 6e-14: same integration-error argument as without decay
        np.testing.assert_allclose(c, np.exp(-2 * gamma * t) * c_0, rtol=0, atol=1e-11)


def test_gd_balance_drift_halves_with_the_learning_rate():
    """docs/theory.md#conservation: under GD the balance drifts by O(η²) per step, so O(η) at fixed t."""
    rng = np.random.default_rng(4)
    problem = nonwhite_problem(rng, 4, 3)
    w0 = random_net(rng, [4, 5, 6, 3], 0.5)
    c0 = balance_of(w0)
    drift = []
    for eta in (0.005, 0.0025):
        steps = int(round(1.0 / eta))
        result = run_gd(problem, w0, GradientDescent(eta, steps), np.array([0, steps]))
        drift.append(max(np.max(np.abs(c - c_0)) for c, c_0 in zip(balance_of(at(result, -1)), c0)))
    # first order in η: ratio → 2 as η → 0
    assert drift[0] / drift[1] == pytest.approx(2.0, rel=0.1)


def test_gd_to_flow_gap_halves_with_the_learning_rate():
    """docs/theory.md#conventions: at equal t, GD and the flow differ by O(η) (an independent computation found
    the gap at t = 2 to be 2.6e-2, 1.3e-2, 6.3e-3 for η = .02, .01, .005)."""
    rng = np.random.default_rng(0)
    s = np.array([3.0, 2.0, 1.0, 0.5])
    u, v = orthogonal(rng, 6), orthogonal(rng, 5)
    problem = whitened_problem(u, s, v)
    w0 = aligned_init(rng, u, v, [5, 4, 6], np.sqrt([1e-3, 2e-3, 5e-4, 1e-3]))
    flow = run_flow(problem, w0, GradientFlow(2.0, **TIGHT), np.array([0.0, 2.0]))
    u_flow = np.array([mode_strength(at(flow, -1), u, v, k) for k in range(4)])
    gaps = []
    for eta in (0.02, 0.01, 0.005):
        steps = int(round(2.0 / eta))
        gd = run_gd(problem, w0, GradientDescent(eta, steps), np.array([0, steps]))
        gaps.append(np.max(np.abs([mode_strength(at(gd, -1), u, v, k) for k in range(4)] - u_flow)))
    assert gaps[0] / gaps[1] == pytest.approx(2.0, rel=0.1)
    assert gaps[1] / gaps[2] == pytest.approx(2.0, rel=0.1)


# ------------------------------------------------------------------------------------------------
# stopping rules


def test_flow_stops_early_when_converged():
    rng = np.random.default_rng(5)
    problem = nonwhite_problem(rng, 3, 2)
    w0 = random_net(rng, [3, 4, 2], 0.5)
    method = GradientFlow(1e4)
    result = run_flow(problem, w0, method, np.array([0.0, 1.0, 1e4]))
    assert result.outcome == "converged"
    assert 1.0 < result.times[-1] < 1e4 and result.times[:2].tolist() == [0.0, 1.0]
    tol = flow_convergence_rtol(method.rtol) * np.linalg.norm(problem.sigma31)
    assert gradient_norm(problem, at(result, -1)) <= tol


def test_flow_without_stop_at_convergence_integrates_to_t_max():
    rng = np.random.default_rng(5)
    problem = nonwhite_problem(rng, 3, 2)
    w0 = random_net(rng, [3, 4, 2], 0.5)
    result = run_flow(problem, w0, GradientFlow(200.0, stop_at_convergence=False), np.array([0.0, 1.0, 100.0, 200.0]))
    assert result.outcome == "completed" and result.times.tolist() == [0.0, 1.0, 100.0, 200.0]
    tol = flow_convergence_rtol(1e-8) * np.linalg.norm(problem.sigma31)
    assert gradient_norm(problem, at(result, -1)) <= tol  # at the minimum, recorded to the end


def test_finite_time_blow_up_is_reported_as_diverged_without_nan():
    """Σ11 = 0, Σ31 = s, depth 3 balanced: da/dt = 2s a², a(t) = a0/(1 − 2 s a0 t), infinite at 1/(2 s a0)."""
    s, a0 = 1.0, 0.5
    problem = Problem(np.zeros((1, 1)), np.array([[s]]))
    w0 = [np.array([[a0]])] * 3
    result = run_flow(problem, w0, GradientFlow(2.0), np.linspace(0, 2, 21))
    t_star = 1 / (2 * s * a0)
    assert result.outcome == "diverged"
    # detection happens once the gradient (∝ a²) is 1e12 above its start, i.e. a ≈ 1e6 a0: t* (1 − 1e-6)
    assert t_star * (1 - 1e-3) < result.diverged_at_time <= t_star
    assert result.diverged_at_step is None and result.steps is None
    assert all(np.all(np.isfinite(w)) for w in result.weights)
    assert result.times[-1] <= result.diverged_at_time and np.all(np.diff(result.times) > 0)
    np.testing.assert_allclose(result.weights[0][:10, 0, 0], a0 / (1 - 2 * s * a0 * result.times[:10]), rtol=1e-6)


def stiff_problem():
    """D = 1, Σ11 = diag(1e3, 1e-3): the flow settles on a time scale 1/(2·1e-3) while DOP853's step is held
    at ~3/(2·1e3) by stability, ~10⁶ steps to t = 1e4."""
    return Problem(np.diag([1e3, 1e-3]), np.array([[1.0, 1.0]]))


def test_flow_over_its_step_cap_raises_work_limit_naming_t_max():
    with pytest.raises(WorkLimitError) as info:
        run_flow(stiff_problem(), [np.zeros((1, 2))], GradientFlow(1e4, max_steps=200), np.array([0.0, 1e4]))
    assert info.value.field == ("training", "t_max") and "200 integrator steps" in info.value.message


def test_flow_step_cap_above_the_steps_taken_changes_nothing():
    rng = np.random.default_rng(5)
    problem = nonwhite_problem(rng, 3, 2)
    w0 = random_net(rng, [3, 4, 2], 0.5)
    times = np.linspace(0.0, 20.0, 11)
    free = run_flow(problem, w0, GradientFlow(20.0), times)
    capped = run_flow(problem, w0, GradientFlow(20.0, max_steps=100_000), times)
    assert all(np.array_equal(a, b) for a, b in zip(free.weights, capped.weights))


# ------------------------------------------------------------------------------------------------
# records, dtype and hooks


def test_record_times_are_honoured_exactly():
    rng = np.random.default_rng(6)
    problem = nonwhite_problem(rng, 3, 2)
    times = np.array([0.0, 1e-4, 0.01, 0.3, 0.31, 1.7, 2.5])
    result = run_flow(problem, random_net(rng, [3, 4, 2], 0.3), GradientFlow(2.5), times)
    assert result.outcome == "completed" and result.steps is None
    np.testing.assert_array_equal(result.times, times)
    assert all(w.shape[0] == times.size for w in result.weights)


def test_float32_flow_is_the_float64_flow_rounded():
    rng = np.random.default_rng(7)
    problem = nonwhite_problem(rng, 3, 2)
    w0 = random_net(rng, [3, 4, 2], 0.3)
    times = np.linspace(0, 1, 5)
    r64 = run_flow(problem, w0, GradientFlow(1.0), times)
    r32 = run_flow(problem, w0, GradientFlow(1.0), times, dtype=np.float32)
    for a, b in zip(r32.weights, r64.weights):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(np.float32))  # integrated in float64, cast at the end


def test_flow_progress_is_non_decreasing_and_ends_at_one():
    rng = np.random.default_rng(8)
    seen = []
    run_flow(nonwhite_problem(rng, 3, 2), random_net(rng, [3, 4, 2], 0.3), GradientFlow(5.0, **TIGHT),
             np.array([0.0, 5.0]), hooks=Hooks(progress=seen.append, interval=0.0))
    assert len(seen) > 5
    assert all(b >= a for a, b in zip(seen, seen[1:])) and seen[-1] == 1.0


def test_flow_stop_request_raises_at_the_next_check():
    rng = np.random.default_rng(9)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(StopRequested):
        run_flow(nonwhite_problem(rng, 3, 2), random_net(rng, [3, 4, 2], 0.3), GradientFlow(100.0, **TIGHT),
                 np.array([0.0, 100.0]), hooks=Hooks(should_stop=should_stop, interval=0.0))
    assert len(calls) == 2
