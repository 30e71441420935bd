"""Full-batch gradient descent (service.dynamics.gd): exactness against a literal loop and the discrete-time
closed forms (docs/theory.md#exact-gd), stopping rules (docs/theory.md#gd-stability, converged/diverged), hooks and
records."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import network, presets
from service.dynamics.errors import (
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    StopRequested,
)
from service.dynamics.gd import (
    blowup_threshold,
    convergence_rtol,
    frobenius_norm,
    run_gd,
    step_flops,
)
from service.dynamics.methods import GradientDescent, Hooks
from service.dynamics.problem import Problem, problem_from_data
from service.dynamics.record import RecordSchedule

# ------------------------------------------------------------------------------------------------
# helpers (also used by test_flow.py)


def orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def nonwhite_problem(rng, n_in, n_out, n=80):
    """Σ11 from anisotropic data (eigenvalues spread over ~2 decades), Σ31 from a noisy linear teacher."""
    x = rng.standard_normal((n, n_in)) * np.geomspace(2.0, 0.3, n_in)
    y = x @ rng.standard_normal((n_in, n_out)) + 0.3 * rng.standard_normal((n, n_out))
    return problem_from_data(x, y)


def whitened_problem(u, s, v):
    """Σ11 = I, Σ31 = U diag(s) Vᵀ (s padded with zeros to n_out × n_in)."""
    big = np.zeros((u.shape[0], v.shape[0]))
    big[:len(s), :len(s)] = np.diag(s)
    return Problem(np.eye(v.shape[0]), u @ big @ v.T)


def aligned_init(rng, u, v, widths, a):
    """Decoupled balanced init W_l = R_{l+1} diag(a) R_lᵀ with R_1 = V, R_{D+1} = U (docs/theory.md#saxe-deep)."""
    rs = [v] + [orthogonal(rng, w) for w in widths[1:-1]] + [u]
    out = []
    for l in range(len(widths) - 1):
        core = np.zeros((widths[l + 1], widths[l]))
        core[:len(a), :len(a)] = np.diag(a)
        out.append(rs[l + 1] @ core @ rs[l].T)
    return out


def random_net(rng, widths, scale):
    return [scale * rng.standard_normal((widths[l + 1], widths[l])) for l in range(len(widths) - 1)]


def literal_gd(problem, weights0, eta, steps, decay=0.0):
    """The definition: W_l ← W_l − η(∂L/∂W_l + γW_l) with network.gradients; every state."""
    ws = [w.copy() for w in weights0]
    states = [ws]
    for _ in range(steps):
        ws = [w - eta * g for w, g in zip(ws, network.gradients(problem, ws, decay))]
        states.append(ws)
    return states


def gradient_norm(problem, weights, decay=0.0):
    return network.gradient_norm(network.gradients(problem, weights, decay))


def mode_strength(weights, u, v, k):
    return float(u[:, k] @ network.network_map(weights) @ v[:, k])


def at(result, index):
    return [w[index] for w in result.weights]


def full_record(steps):
    return np.arange(steps + 1, dtype=np.int64)


# ------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("widths", [[5, 3], [4, 6, 3], [3, 4, 5], [4, 5, 6, 3], [3, 2, 4, 3, 5]],
                         ids=["D1", "D2-o<h", "D2-o>h", "D3", "D4"])
@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_gd_equals_literal_loop_of_network_gradients(widths, decay):
    rng = np.random.default_rng(len(widths) * 10 + int(decay > 0))
    problem = nonwhite_problem(rng, widths[0], widths[-1])
    w0 = random_net(rng, widths, 0.35)
    eta, steps = 0.01, 150  # > 4 check intervals, so fused and checked steps both occur
    result = run_gd(problem, w0, GradientDescent(eta, steps, decay), full_record(steps))
    ref = literal_gd(problem, w0, eta, steps, decay)
    assert result.outcome == "completed"
    # The two differ only in rounding (BLAS products with folded α/β vs numpy, ~1e-16 per operation).
    # η is well inside the stability region along these trajectories (a 1e-12 perturbation of W0 grows
    # at most ~15× over the run), so the difference stays ≲ 1e-14; 1e-12 relative is a safe bound, while
    # any error in the formula shows at ≥ η·‖G‖ ~ 1e-3. (Near the edge of stability GD itself amplifies
    # rounding geometrically and no such comparison holds.)
    for k in range(steps + 1):
        for l in range(len(w0)):
            scale = np.max(np.abs(ref[k][l]))
            np.testing.assert_allclose(result.weights[l][k], ref[k][l], rtol=0, atol=1e-12 * scale)


def test_gd_float32_agrees_with_float64_at_float32_precision():
    rng = np.random.default_rng(3)
    problem = nonwhite_problem(rng, 6, 4)
    w0 = random_net(rng, [6, 8, 4], 0.5)
    method, rec = GradientDescent(0.02, 200), np.array([0, 50, 200])
    r64 = run_gd(problem, w0, method, rec)
    r32 = run_gd(problem, w0, method, rec, dtype=np.float32)
    assert all(w.dtype == np.float32 for w in r32.weights)
    # float32 rounding (ε = 6e-8) per operation, accumulated over 200 steps of a contracting map: a few
    # hundred ε at most (measured 5e-7 relative); 5e-6 keeps a 10× margin and still fails for a float32
    # result that went through float64 or for any wrong step (≥ η·‖G‖ ~ 1e-3).
    for l in range(2):
        scale = np.max(np.abs(r64.weights[l]))
        np.testing.assert_allclose(r32.weights[l], r64.weights[l], rtol=0, atol=5e-6 * scale)


def test_shallow_gd_equals_matrix_power_formula():
    """docs/theory.md#exact-gd-shallow: W_k = W* + (W_0 − W*)(I − 2ηΣ11)^k, W* = Σ31Σ11⁻¹, any Σ11."""
    rng = np.random.default_rng(11)
    problem = nonwhite_problem(rng, 4, 3, n=50)
    w_star = problem.sigma31 @ np.linalg.inv(problem.sigma11)
    w0 = rng.standard_normal((3, 4))
    eta, steps = 0.05, 137
    result = run_gd(problem, [w0], GradientDescent(eta, steps), np.array([0, 40, steps]))
    m = np.eye(4) - 2 * eta * problem.sigma11
    for j, k in enumerate(result.steps):
        pred = w_star + (w0 - w_star) @ np.linalg.matrix_power(m, int(k))
        # we measure 9e-16; both sides round at ~ε per step on a
        # contracting map, the formula's matrix power adds ~k·ε: 1e-14·‖W*‖ leaves a 10× margin.
        np.testing.assert_allclose(result.weights[0][j], pred, rtol=0, atol=1e-14 * np.max(np.abs(w_star)))


@pytest.mark.parametrize("depth", [2, 3])
def test_decoupled_balanced_gd_follows_exact_scalar_map(depth):
    """docs/theory.md#exact-gd-modes: per mode a_{k+1} = a_k + 2η a_k^{D−1}(s − a_k^D), u_k = a_k^D, exactly."""
    rng = np.random.default_rng(20 + depth)
    s = np.array([2.0, 1.0, 0.4])
    u, v = orthogonal(rng, 4), orthogonal(rng, 3)
    problem = whitened_problem(u, s, v)
    a0 = np.array([0.1, 0.05, 0.2])
    w0 = aligned_init(rng, u, v, [3] + [3] * (depth - 1) + [4], a0)
    eta, steps = 0.03, 300
    result = run_gd(problem, w0, GradientDescent(eta, steps), np.array([0, steps]))
    a = a0.copy()
    for _ in range(steps):
        a = a + 2 * eta * a ** (depth - 1) * (s - a ** depth)
    got = [mode_strength(at(result, -1), u, v, k) for k in range(3)]
    # we measure 1.3e-15; mode strengths are O(1) and the map contracts near
    # the optimum, so rounding stays at a few ulp; 1e-14 allows for the rotation into the mode basis.
    np.testing.assert_allclose(got, a ** depth, rtol=0, atol=1e-14)


def test_balanced_mode_gd_matches_test_vector_a3():
    """Test vector A3 (as in test_exact.py): s = 2, u0 = 1e-3, η = 0.01, 100 steps → u = 1.1454400853 (D = 2)."""
    problem = Problem(np.eye(1), np.array([[2.0]]))
    a0 = np.sqrt(1e-3)
    result = run_gd(problem, [np.array([[a0]]), np.array([[a0]])], GradientDescent(0.01, 100), np.array([0, 100]))
    u = network.network_map(at(result, -1))[0, 0]
    assert u == pytest.approx(1.1454400853, abs=1e-10)  # the vector is printed to 10 decimals


def test_gd_reaches_reduced_rank_optimum_from_small_random_init():
    """docs/theory.md#optimum: hidden width h < rank → W* = U_h U_hᵀ Σ31 Σ11⁻¹ with U_h from M = Σ31 Σ11^{−1/2}."""
    rng = np.random.default_rng(5)
    problem = nonwhite_problem(rng, 4, 4, n=200)
    e, q = np.linalg.eigh(problem.sigma11)
    m = problem.sigma31 @ q @ np.diag(e ** -0.5) @ q.T
    u_m = np.linalg.svd(m)[0]
    h = 2
    w_star = u_m[:, :h] @ u_m[:, :h].T @ problem.sigma31 @ np.linalg.inv(problem.sigma11)
    w0 = random_net(rng, [4, h, 4], 1e-3)
    eta = 0.2 / np.linalg.eigvalsh(problem.sigma11)[-1] / max(1.0, np.linalg.norm(m, 2))
    result = run_gd(problem, w0, GradientDescent(eta, 200_000), np.array([0, 200_000]))
    assert result.outcome == "converged"
    # At convergence ‖∇L‖ ≤ 1e-10‖Σ31‖; the distance to the minimum is ≲ ‖∇L‖/μ with μ the smallest
    # nonzero curvature (~0.1 here), i.e. ~1e-9 relative (measured 9e-10); 1e-8 is a 10× margin, while a
    # saddle (a wrong pair of modes learnt) would be off by O(1).
    w = network.network_map(at(result, -1))
    np.testing.assert_allclose(w, w_star, rtol=0, atol=1e-8 * np.max(np.abs(w_star)))


# ------------------------------------------------------------------------------------------------
# stopping rules


def test_shallow_gd_diverges_just_above_the_stability_bound():
    """docs/theory.md#gd-stability: D = 1 diverges iff η > 1/λ_max(Σ11); at 1.02× the error grows by 1.04 per step."""
    rng = np.random.default_rng(7)
    problem = nonwhite_problem(rng, 4, 3, n=50)
    lam = np.linalg.eigvalsh(problem.sigma11)[-1]
    result = run_gd(problem, [rng.standard_normal((3, 4))], GradientDescent(1.02 / lam, 20_000),
                    np.array([0, 100, 20_000]))
    assert result.outcome == "diverged"
    assert result.diverged_at_step is not None and 100 < result.diverged_at_step < 20_000
    assert result.steps[-1] == result.diverged_at_step
    assert result.diverged_at_time == pytest.approx(result.diverged_at_step * 1.02 / lam)
    assert all(np.all(np.isfinite(w)) for w in result.weights)


def test_shallow_gd_converges_just_below_the_stability_bound():
    rng = np.random.default_rng(7)
    problem = nonwhite_problem(rng, 4, 3, n=50)
    lam = np.linalg.eigvalsh(problem.sigma11)[-1]
    result = run_gd(problem, [rng.standard_normal((3, 4))], GradientDescent(0.98 / lam, 20_000),
                    np.array([0, 20_000]))
    assert result.outcome == "converged"


@pytest.mark.parametrize("factor, outcome", [(0.98, "converged"), (1.02, "diverged")])
def test_weight_decay_lowers_the_shallow_stability_bound_to_two_over_twice_lambda_max_plus_decay(factor, outcome):
    """D = 1 with decay γ: W ← W(1 − ηγ − 2ηΣ11) + 2ηΣ31 is stable iff η < 2/(2λ_max + γ). γ = λ_max here,
    so the γ-free bound 1/λ_max is 1.5× too large: 0.98× the bound with decay must converge, 1.02× diverge."""
    rng = np.random.default_rng(7)
    problem = nonwhite_problem(rng, 4, 3, n=50)
    lam = np.linalg.eigvalsh(problem.sigma11)[-1]
    bound = network.gd_stability_bound(problem, 1, weight_decay=lam)
    assert bound == pytest.approx(2 / (3 * lam), rel=1e-14)
    result = run_gd(problem, [rng.standard_normal((3, 4))],
                    GradientDescent(factor * bound, 20_000, weight_decay=lam), np.array([0, 20_000]))
    assert result.outcome == outcome


@pytest.mark.parametrize("decay", [0.5, 2.0])
def test_two_layer_gd_just_below_the_bound_with_weight_decay_does_not_diverge(decay):
    """D ≥ 2: the bound 2/(curvature + γ) adds γ to the curvature of the γ = 0 minimum, which only shrinks with
    decay, so it errs on the safe side: 0.98× it must stay finite for 20,000 steps
    (docs/theory.md#gd-stability, whitened, s_max = 2.5)."""
    problem = presets.whitened([2.5, 1.0, 0.25], 4, 3, seed=1)
    w0 = random_net(np.random.default_rng(3), [4, 4, 3], 0.1)
    bound = network.gd_stability_bound(problem, 2, weight_decay=decay)
    assert bound == pytest.approx(2 / (4 * 2.5 + decay), rel=1e-13)
    result = run_gd(problem, w0, GradientDescent(0.98 * bound, 20_000, weight_decay=decay), np.array([0, 20_000]))
    assert result.outcome != "diverged"


def test_runs_sharing_the_threads_scratch_vector_give_the_bits_of_a_fresh_one(monkeypatch):
    """The kernel's scratch is reused across runs on a thread (gd.scratch_for); a run of another shape in
    between, which overwrites it, must change no bit of the next run."""
    from service.dynamics import gd

    rng = np.random.default_rng(31)
    problem, w0 = nonwhite_problem(rng, 5, 3), random_net(rng, [5, 7, 3], 0.3)
    other, w_other = nonwhite_problem(rng, 9, 4), random_net(rng, [9, 2, 6, 4], 0.3)
    method, rec = GradientDescent(0.05, 300), np.array([0, 150, 300])
    first = run_gd(problem, w0, method, rec)
    run_gd(other, w_other, GradientDescent(0.05, 50), np.array([0, 50]))
    again = run_gd(problem, w0, method, rec)
    monkeypatch.setattr(gd, "SCRATCH_CACHE_MAX_BYTES", 0)  # every run allocates its own scratch
    fresh = run_gd(problem, w0, method, rec)
    for a, b, c in zip(first.weights, again.weights, fresh.weights):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_divergence_step_is_the_first_step_beyond_the_threshold():
    """The check/replay scheme reports exactly the first blown-up step of the literal iteration."""
    rng = np.random.default_rng(8)
    problem = nonwhite_problem(rng, 3, 2, n=40)
    lam = np.linalg.eigvalsh(problem.sigma11)[-1]
    w0 = [rng.standard_normal((2, 3))]
    eta = 1.3 / lam  # growth ≈ 1.6 per step: blow-up within ~60 steps, between two checks
    result = run_gd(problem, w0, GradientDescent(eta, 1000), np.array([0, 1000]))
    threshold = blowup_threshold(gradient_norm(problem, w0), np.linalg.norm(problem.sigma31), np.float64)
    states = literal_gd(problem, w0, eta, 200)
    first = next(k for k, ws in enumerate(states) if gradient_norm(problem, ws) > threshold)
    assert result.outcome == "diverged" and result.diverged_at_step == first
    np.testing.assert_allclose(result.weights[0][-1], states[first][0], rtol=1e-12)


def test_two_layer_gd_converges_below_and_not_above_the_curvature_bound():
    """docs/theory.md#gd-stability: near the balanced optimum GD is stable iff η < 1/(D s_max^{2−2/D}) = 1/(2 s_max).

    Just above it GD does not blow up here: it settles on an oscillation around the minimum
    (period two), so the run completes without converging.
    """
    rng = np.random.default_rng(1)
    s = np.array([2.0, 1.0, 0.5])
    u, v = orthogonal(rng, 4), orthogonal(rng, 3)
    problem = whitened_problem(u, s, v)
    near = [w + 1e-3 * rng.standard_normal(w.shape) for w in aligned_init(rng, u, v, [3, 3, 4], np.sqrt(s))]
    bound = 1 / (2 * s.max())
    below = run_gd(problem, near, GradientDescent(0.95 * bound, 5000), np.array([0, 5000]))
    above = run_gd(problem, near, GradientDescent(1.05 * bound, 5000), np.array([0, 4999, 5000]))
    assert below.outcome == "converged"
    assert above.outcome != "converged"
    assert gradient_norm(problem, at(above, -1)) > 1e-2 * np.linalg.norm(problem.sigma31)


def test_converged_run_stops_early_with_small_gradient():
    rng = np.random.default_rng(9)
    problem = nonwhite_problem(rng, 3, 2, n=40)
    lam = np.linalg.eigvalsh(problem.sigma11)
    steps = 100_000
    result = run_gd(problem, [rng.standard_normal((2, 3))], GradientDescent(0.9 / lam[-1], steps),
                    np.array([0, 10, steps]))
    assert result.outcome == "converged"
    assert result.steps[-1] < steps and result.steps[:2].tolist() == [0, 10]
    tol = convergence_rtol(np.float64) * np.linalg.norm(problem.sigma31)
    assert gradient_norm(problem, at(result, -1)) <= tol


def test_without_stop_at_convergence_gd_steps_on_and_records_the_whole_time_axis():
    rng = np.random.default_rng(9)
    problem = nonwhite_problem(rng, 3, 2, n=40)
    eta = 0.9 / np.linalg.eigvalsh(problem.sigma11)[-1]
    w0, rec = [rng.standard_normal((2, 3))], np.array([0, 10, 2_000, 50_000])
    stopping = run_gd(problem, w0, GradientDescent(eta, 50_000), rec)
    full = run_gd(problem, w0, GradientDescent(eta, 50_000, stop_at_convergence=False), rec)
    assert stopping.outcome == "converged" and stopping.steps[-1] < 2_000
    assert full.outcome == "completed" and full.steps.tolist() == rec.tolist()
    # the same steps up to the stop, bit for bit (checks sit at the same steps either way) ...
    np.testing.assert_array_equal(full.weights[0][1], stopping.weights[0][1])
    # ... and on: the optimum W* = Σ31 Σ11⁻¹ of the shallow problem to round-off
    optimum = np.linalg.solve(problem.sigma11, problem.sigma31.T).T
    np.testing.assert_allclose(full.weights[0][-1], optimum, rtol=0, atol=1e-12 * np.abs(optimum).max())


def test_converged_step_is_the_first_step_below_the_tolerance():
    rng = np.random.default_rng(10)
    problem = nonwhite_problem(rng, 2, 2, n=40)
    lam = np.linalg.eigvalsh(problem.sigma11)
    w0 = [rng.standard_normal((2, 2))]
    eta = 0.45 / lam[-1]  # slowest mode contracts by 1 − 0.9 λ_min/λ_max per step
    result = run_gd(problem, w0, GradientDescent(eta, 10_000), np.array([0, 10_000]))
    tol = convergence_rtol(np.float64) * np.linalg.norm(problem.sigma31)
    states = literal_gd(problem, w0, eta, result.steps[-1] + 5)
    norms = np.array([gradient_norm(problem, ws) for ws in states])
    first = int(np.argmax(norms <= tol))
    # the norm shrinks by a fixed factor per step, so rounding cannot move the crossing by a step
    # unless the ratio at the crossing is within ~1e-12 of the tolerance
    assert abs(norms[first] / tol - 1) > 1e-9 and abs(norms[first - 1] / tol - 1) > 1e-9
    assert result.outcome == "converged" and result.steps[-1] == first


def test_converged_at_step_zero_when_started_at_the_optimum():
    problem = Problem(np.eye(2), np.diag([1.0, 0.5]))
    result = run_gd(problem, [np.diag([1.0, 0.5])], GradientDescent(0.1, 100), np.array([0, 50, 100]))
    assert result.outcome == "converged" and result.steps.tolist() == [0]


# ------------------------------------------------------------------------------------------------
# records and hooks


def test_record_steps_are_honoured_exactly():
    rng = np.random.default_rng(12)
    problem = nonwhite_problem(rng, 3, 3)
    w0 = random_net(rng, [3, 4, 3], 0.3)
    rec = np.array([0, 1, 2, 31, 32, 33, 64, 99, 250, 251, 400], dtype=np.int64)
    eta = 0.01
    result = run_gd(problem, w0, GradientDescent(eta, 400), rec)
    assert result.outcome == "completed"
    assert result.steps.tolist() == rec.tolist()
    np.testing.assert_array_equal(result.times, eta * rec)
    ref = literal_gd(problem, w0, eta, 400)
    for j, k in enumerate(rec):
        for l in range(2):
            np.testing.assert_allclose(result.weights[l][j], ref[k][l], rtol=0, atol=1e-12)


def test_zero_steps_returns_the_initial_state():
    w0 = [np.array([[0.3, -0.2]])]
    result = run_gd(Problem(np.eye(2), np.array([[1.0, 0.0]])), w0, GradientDescent(0.1, 0), np.array([0]))
    assert result.outcome == "completed" and result.steps.tolist() == [0]
    np.testing.assert_array_equal(result.weights[0][0], w0[0])


def test_progress_hook_gets_non_decreasing_fractions_ending_at_one():
    rng = np.random.default_rng(13)
    problem = nonwhite_problem(rng, 3, 2)
    seen = []
    hooks = Hooks(progress=seen.append, interval=0.0)  # interval 0: a check after every chunk
    run_gd(problem, random_net(rng, [3, 4, 2], 0.3), GradientDescent(1e-3, 300), np.array([0, 300]), hooks=hooks)
    assert len(seen) > 10
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert seen[-1] == 1.0 and 0.0 <= seen[0]


def test_stop_request_raises_at_the_next_check():
    rng = np.random.default_rng(14)
    problem = nonwhite_problem(rng, 3, 2)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(StopRequested):
        run_gd(problem, random_net(rng, [3, 4, 2], 0.3), GradientDescent(1e-3, 1_000_000), np.array([0, 10]),
               hooks=Hooks(should_stop=should_stop, interval=0.0))
    assert len(calls) == 3  # raised on the first True, no further check or step batch


def sparse_record(steps):
    """Records around the first check boundaries and spread over the run."""
    return np.unique(np.r_[0, 1, 31, 32, 33, np.linspace(0, steps, 17).astype(np.int64)])


def shallow_case(rng, eta_over_lambda):
    problem = nonwhite_problem(rng, 3, 2, n=40)
    return problem, [rng.standard_normal((2, 3))], eta_over_lambda / np.linalg.eigvalsh(problem.sigma11)[-1]


@pytest.mark.parametrize("decay", [0.0, 0.1])
@pytest.mark.parametrize("case", ["completed-D2", "completed-D3", "diverged-D2", "diverged-D1", "converged-D1"])
def test_hooks_with_one_step_chunks_change_no_bit(case, decay):
    """The contract behind job reruns and HTTP == core: hooks cut the run into chunks whose lengths follow
    the measured speed; interval 0 makes every chunk one step, so chunk ends fall between checks, inside
    the replay before a stop, everywhere. With γ > 0 checked and fused steps round differently, so a
    check schedule that moved with the chunks would show in the last bits (it did: 1e-14 at 8-16-8)."""
    rng = np.random.default_rng(15)
    outcome, label = case.split("-")
    if label == "D1":
        # η = 1.3/λ_max: growth ≈ 1.6 per step, blow-up after ~60 steps; 0.9/λ_max: converges in ~10⁴ steps
        problem, w0, eta = shallow_case(rng, 1.3 if outcome == "diverged" else 0.9)
        steps = 100_000 if outcome == "converged" else 1000
    else:
        # η = 0.058: just past where this problem's nets stop converging; from a small init the run
        # learns, then blows up after a few check intervals (steps 52-75), so replays start from a
        # state saved in an earlier chunk
        widths = [5, 6, 4] if label == "D2" else [5, 3, 6, 4]
        problem, w0 = nonwhite_problem(rng, 5, 4), random_net(rng, widths, 0.4 if outcome == "completed" else 0.05)
        eta, steps = (0.01, 300) if outcome == "completed" else (0.058, 300)
    method, rec = GradientDescent(eta, steps, decay), sparse_record(steps)
    seen = []
    plain = run_gd(problem, w0, method, rec)
    hooked = run_gd(problem, w0, method, rec, hooks=Hooks(progress=seen.append, interval=0.0))
    assert plain.outcome == outcome
    assert len(seen) > plain.steps[-1] // 32  # more chunk ends than checks (CHECK_EVERY = 32)
    for name in ("times", "steps"):
        np.testing.assert_array_equal(getattr(hooked, name), getattr(plain, name), strict=True)
    for got, want in zip(hooked.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(got, want, strict=True)  # bit for bit: no tolerance
    assert (hooked.outcome, hooked.diverged_at_step, hooked.diverged_at_time) == \
        (plain.outcome, plain.diverged_at_step, plain.diverged_at_time)


def test_step_flops_picks_the_cheaper_two_layer_order():
    i, h, o = 8, 16, 8
    assert step_flops([i, h, o]) == min(2 * h * i * i, 2 * o * i * i) + 6 * o * h * i
    assert step_flops([300, 300, 300]) == 8 * 300 ** 3


# ------------------------------------------------------------------------------------------------
# input checks


def test_non_finite_initial_weights_are_rejected_with_their_field():
    problem = Problem(np.eye(2), np.eye(2))
    with pytest.raises(NonFiniteError) as err:
        run_gd(problem, [np.eye(2), np.array([[np.nan, 0], [0, 1]])], GradientDescent(0.1, 5), np.array([0, 5]))
    assert err.value.field == ("init", "weights", 1)


def test_weights_that_do_not_chain_are_rejected():
    problem = Problem(np.eye(3), np.ones((2, 3)))
    with pytest.raises(ShapeError) as err:
        run_gd(problem, [np.ones((4, 3)), np.ones((2, 5))], GradientDescent(0.1, 5), np.array([0, 5]))
    assert err.value.field == ("init", "weights", 1)


def test_record_steps_beyond_the_run_are_rejected():
    with pytest.raises(InvalidParameterError):
        run_gd(Problem(np.eye(1), np.eye(1)), [np.eye(1)], GradientDescent(0.1, 5), np.array([0, 6]))


def test_frobenius_norm_without_blas_equals_numpys_to_round_off():
    # a sum of 10⁴ squares in another order: relative difference a few ulps (≤ 1e-14 is 45 ulps)
    a = np.random.default_rng(3).standard_normal((100, 100))
    assert frobenius_norm(a) == pytest.approx(np.linalg.norm(a), rel=1e-14)


def _regression_problem(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 10))
    return Problem(x @ x.T / 10 + 0.1 * np.eye(4), rng.standard_normal((3, 4))), rng


def test_records_of_a_run_stay_as_they_were_after_the_next_run_on_the_thread():
    # the snapshot buffer is reused by the next run: the records must have been copied out (D = 1 too,
    # where a layer's column block is the whole row and a non-copying unpack would alias the buffer)
    problem, rng = _regression_problem(21)
    for w0 in ([0.1 * rng.standard_normal((3, 4))], [0.1 * rng.standard_normal((5, 4)), 0.1 * rng.standard_normal((3, 5))]):
        first = run_gd(problem, w0, GradientDescent(0.05, 50), np.array([0, 25, 50]))
        kept = [w.copy() for w in first.weights]
        run_gd(problem, [2.0 * w for w in w0], GradientDescent(0.05, 50), np.array([0, 25, 50]))
        for a, b in zip(first.weights, kept, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_run_started_from_a_hook_leaves_the_outer_runs_records_intact():
    problem, rng = _regression_problem(22)
    w0 = [0.1 * rng.standard_normal((5, 4)), 0.1 * rng.standard_normal((3, 5))]
    method, rec = GradientDescent(0.05, 400), np.array([0, 100, 200, 300, 400])
    plain = run_gd(problem, w0, method, rec)

    def inner_run(_fraction: float) -> None:  # a hook on the same thread running another simulation
        run_gd(problem, [3.0 * w for w in w0], method, rec)

    hooked = run_gd(problem, w0, method, rec, hooks=Hooks(progress=inner_run, interval=0.0))
    for a, b in zip(hooked.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# sharing cores: the blas_threads hook


def blas_pool_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def large_two_layer(rng, n=160):
    """A (160,160,160) net: 6·160³ ≈ 2.5e7 FLOPs a step, above SINGLE_THREAD_MAX_FLOPS (1e7)."""
    x = rng.standard_normal((2 * n, n))
    problem = problem_from_data(x, x @ rng.standard_normal((n, n)) / np.sqrt(n))
    return problem, [0.01 * rng.standard_normal((n, n)) for _ in range(2)]


def test_blas_threads_hook_sets_a_large_runs_threads_at_its_start_and_at_every_check():
    from threadpoolctl import threadpool_limits

    problem, w0 = large_two_layer(np.random.default_rng(0))
    asked, seen = [], []

    def blas_threads():
        asked.append(2 if len(asked) % 2 == 0 else 1)
        return asked[-1]

    def progress(_):
        seen.append(blas_pool_threads())  # checks call progress first: the chunk just run used asked[-1]

    with threadpool_limits(limits=1, user_api="blas"):
        run_gd(problem, w0, GradientDescent(learning_rate=0.01, steps=60), np.array([0, 60]),
               hooks=Hooks(progress=progress, blas_threads=blas_threads, interval=0.0))
        assert blas_pool_threads() == {1}  # the process's setting is back after the run
    assert len(asked) >= 3  # at the start and at the checks between chunks
    # each chunk ran on the count asked before it (the last progress call is the run's end)
    assert seen == [{n} for n in asked]


def test_small_runs_stay_on_one_blas_thread_whatever_the_hook_allows():
    rng = np.random.default_rng(1)
    problem = nonwhite_problem(rng, 8, 8)
    asked, seen = [], []
    run_gd(problem, [0.1 * rng.standard_normal((16, 8)), 0.1 * rng.standard_normal((8, 16))],
           GradientDescent(learning_rate=0.01, steps=200), np.array([0, 200]),
           hooks=Hooks(progress=lambda _: seen.append(blas_pool_threads()),
                       blas_threads=lambda: asked.append(2) or 2, interval=0.0))
    assert asked == [] and seen and all(s == {1} for s in seen)


def test_changing_blas_threads_between_chunks_changes_a_run_by_round_off_only():
    # OpenBLAS partitions a product differently on 1 and 2 threads: the same run differs in the last bits
    # (measured 1.4e-16 absolute at 300³ after 60 steps), never more; bit-for-bit reruns hold for a fixed count
    problem, w0 = large_two_layer(np.random.default_rng(2))
    method, rec = GradientDescent(learning_rate=0.01, steps=100), np.array([0, 50, 100])
    flip = iter(range(10 ** 6))
    shared = run_gd(problem, w0, method, rec, hooks=Hooks(blas_threads=lambda: 1 + next(flip) % 2, interval=0.0))
    plain = run_gd(problem, w0, method, rec)
    for a, b in zip(shared.weights, plain.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


@pytest.mark.parametrize("spacing", ["linear", "log"])
def test_the_record_steps_are_the_sorted_unique_nearest_steps_of_the_record_times(spacing):
    rng = np.random.default_rng(3)
    for _ in range(300):
        record = RecordSchedule(points=int(rng.integers(2, 400)), spacing=spacing)
        eta, n = 10 ** rng.uniform(-4, 0), int(rng.integers(1, 100_000))
        t = record.sample_times(eta * n, t_min=eta)
        want = np.unique(np.concatenate([[0], np.clip(np.rint(t / eta), 0, n), [n]]).astype(np.int64))
        got = record.gd_steps(eta, n)
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable  # kept for the next caller: nobody may change it


def test_explicit_record_times_give_their_nearest_steps_given_as_a_list_too():
    times = (0.3, 0.05, 0.3, 1.0)
    want = np.array([0, 5, 30, 100])
    np.testing.assert_array_equal(RecordSchedule(times=times).gd_steps(0.01, 100), want)
    np.testing.assert_array_equal(RecordSchedule(times=list(times)).gd_steps(0.01, 100), want)
