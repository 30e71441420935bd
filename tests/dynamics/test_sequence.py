"""Task sequences (service.dynamics.sequence) and the weights an exact run ends with (exact.factorise).

Independent references: a hand-written GD loop (the gradient formulas of docs/theory.md#gradient written out for two layers,
the task switched at the first step with η·k ≥ until); chained single-task runs (bit for bit: each phase is the
same compiled loop from the same state); the Riccati solution in its one-shot push-through form
P(x) = e^{Fx} P0 [I + K(x) P0]⁻¹ e^{Fx} with K(x) = ∫₀ˣ e^{2Fr} dr integrated by quadrature in the full
(Ni + No)-space (scipy expm and quad_vec; not the service's chunked eigen-coordinates), restarted at the switch from
its own P; losses as per-sample MSEs on the tasks' data (tests/sample_loss.py).

Braun et al.'s forgetting: while a λ-balanced two-layer network with whitened inputs learns task B from the state
P_s it reached on task A, its loss on A is L_A(t) = L_ls,A + c‖W(t) − Σ31ᴬ/c‖² with W(t) the lower-left block of
the Riccati solution for B restarted from P_s; the forgetting is L_A(t) − L_A(t_s), and once B is learned by a network
wide enough (W → Σ31ᴮ/c) the loss on A is L_ls,A + ‖Σ31ᴮ − Σ31ᴬ‖²/c: it depends on the tasks only, not on the init
(Braun, Dominé, Fitzgerald & Saxe, NeurIPS 2022 / J. Stat. Mech. 2023, 114004, doi:10.1088/1742-5468/ad01b8, section
on continual learning; the same L_A(t) as their group's code, Nico31415/ExactLearningDynamics forgetting.py, in
their ½-loss convention).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import quad_vec

from service.dynamics import exact, init, presets
from service.dynamics.errors import ExactNotApplicableError, InvalidParameterError, ShapeError
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, Hooks, StochasticGradientDescent
from service.dynamics.problem import problem_from_correlations, problem_from_data
from service.dynamics.record import RecordSchedule
from service.dynamics.sequence import Phase, TaskSequence, simulate_sequence, switch_step
from service.dynamics.simulate import preflight, simulate
from tests.support.sample_loss import per_sample_mse

# Exact vs flow across a switch: DOP853 keeps each step's local error below rtol·|y| + atol; the global error is
# those local errors carried along the trajectory, amplified where the flow escapes a saddle. Measured at rtol 1e-10:
# 1.6e-10 to 2.3e-10 of max |W| (λ = 0, 0.8, −0.6, one switch, t_max 8); the bound allows 100× that for the
# amplification of other inits and platforms, and is still far below any wrong continuation (O(1)).
FLOW_RTOL = 1e-10
EXACT_VS_FLOW_RTOL = 100 * FLOW_RTOL
# The factorisation's product and Grams vs the state: both come from the same P' (r × r) through one eigendecomposition
# and products with O; the difference is the dropped round-off eigenvalues and the products' round-off, a few ulps of
# max |P|: measured ≤ 3e-15 absolute at |P| ~ 5. 1e-13 relative is ~500 ulps.
FACTOR_RTOL = 1e-13


def data_task(n_in: int, n_out: int, n: int, rng, noise: float = 0.3, scale: float = 1.0):
    """A task from data with exactly whitened inputs (Σ11 = c·I, c = scale²): X = scale·√N·Q, Y = X Tᵀ + noise."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n_in)))
    x = scale * np.sqrt(n) * q
    y = x @ rng.standard_normal((n_out, n_in)).T + noise * rng.standard_normal((n, n_out))
    return problem_from_data(x, y), x, y


@pytest.fixture
def tasks():
    rng = np.random.default_rng(3)
    a, xa, ya = data_task(4, 3, 12, rng)
    b, xb, yb = data_task(4, 3, 12, rng)
    return (a, xa, ya), (b, xb, yb)


# ------------------------------------------------------------------------------------------------
# the weights an exact run ends with


@pytest.mark.parametrize("ni,nh,no,lam", [(4, 3, 5, 0.0), (5, 3, 4, 0.7), (5, 4, 3, -1.3), (3, 6, 2, 0.0)])
def test_riccati_final_weights_reproduce_the_state_product_and_grams(ni, nh, no, lam):
    rng = np.random.default_rng(ni + 10 * nh + 100 * no)
    problem = problem_from_correlations(np.eye(ni), rng.standard_normal((no, ni)))
    w0 = init.initial_weights(problem, [nh], "lambda_balanced", lam=lam, scale=0.3, seed=2)
    run = exact.exact_run(problem, w0, np.linspace(0.0, 3.0, 7), w32_gram=True)
    assert run.model == exact.MODEL_RICCATI
    w21, w32 = run.final_weights
    assert w21.shape == (nh, ni) and w32.shape == (no, nh)
    scale = max(np.abs(run.w21_gram[-1]).max(), np.abs(run.w32_gram[-1]).max())
    np.testing.assert_allclose(w32 @ w21, run.product[-1], rtol=0, atol=FACTOR_RTOL * scale)
    np.testing.assert_allclose(w21.T @ w21, run.w21_gram[-1], rtol=0, atol=FACTOR_RTOL * scale)
    np.testing.assert_allclose(w32 @ w32.T, run.w32_gram[-1], rtol=0, atol=FACTOR_RTOL * scale)
    # the factors carry the init's balance λI (conserved by the flow), so a later Riccati run accepts them
    got_lam, dev = exact.lambda_balance(w21, w32)
    assert dev < 1e-13 and got_lam == pytest.approx(lam, abs=1e-13)


def test_exact_final_weights_of_the_other_models_are_their_last_weights():
    problem = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=3, seed=1)
    for hidden, scheme in [([], "gaussian"), ([4], "aligned"), ([4, 4], "aligned")]:
        w0 = init.initial_weights(problem, hidden, scheme, **({"scale": 0.1} if scheme == "gaussian" else {}))
        traj = simulate(problem, w0, Exact(t_max=2.0), RecordSchedule(points=5, weights=True))
        for w, final in zip(traj.weights, traj.final_weights):
            np.testing.assert_array_equal(w[-1], final)


def test_a_run_continued_from_final_weights_equals_the_sequence(tasks):
    """Two exact runs chained through ``final_weights`` (a later run starting from an earlier one's end, init
    "given") equal the sequence run of the same two tasks."""
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [5], "lambda_balanced", lam=0.0, scale=0.05, seed=1)
    first = simulate(a, w0, Exact(t_max=3.0), RecordSchedule(points=4))
    given = init.initial_weights(b, [5], "given", weights=first.final_weights)
    second = simulate(b, given, Exact(t_max=2.0), RecordSchedule(points=5))
    seq = simulate(TaskSequence([Phase(a, 3.0), Phase(b)]), w0, Exact(t_max=5.0),
                   RecordSchedule(times=(1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0)))
    scale = np.abs(seq.product).max()
    np.testing.assert_allclose(seq.product[-5:], second.product, rtol=0, atol=1e-13 * scale)


# ------------------------------------------------------------------------------------------------
# GD across a switch


def test_gd_across_a_switch_matches_a_hand_written_loop(tasks):
    (a, _, _), (b, _, _) = tasks
    eta, steps, until = 0.01, 500, 1.995           # the switch is at the first k with η·k ≥ until: k = 200
    k_switch = switch_step(until, eta)
    assert k_switch == 200
    w0 = init.initial_weights(a, [5], "gaussian", scale=0.1, seed=4)
    traj = simulate(TaskSequence([Phase(a, until), Phase(b)]), w0, GradientDescent(eta, steps),
                    RecordSchedule(points=26, weights=True))
    assert traj.phase_starts[1] == k_switch * eta and 200 in traj.step
    w21, w32 = (w.copy() for w in w0)
    expected = {}
    for k in range(steps + 1):
        expected[k] = (w21.copy(), w32.copy())
        pb = a if k < k_switch else b
        e = pb.sigma31 - w32 @ w21 @ pb.sigma11                    # −∂L/∂W = 2E for the product
        g21, g32 = 2.0 * w32.T @ e, 2.0 * e @ w21.T
        w21, w32 = w21 + eta * g21, w32 + eta * g32
    for i, k in enumerate(traj.step):
        np.testing.assert_allclose(traj.weights[0][i], expected[k][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(traj.weights[1][i], expected[k][1], rtol=1e-12, atol=1e-12)
        assert traj.phase[i] == (0 if k < k_switch else 1)


def test_gd_sequence_is_bit_for_bit_the_chained_single_runs(tasks):
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [5], "gaussian", scale=0.1, seed=4)
    seq = simulate(TaskSequence([Phase(a, 2.0), Phase(b)]), w0, GradientDescent(0.01, 500),
                   RecordSchedule(points=11, weights=True))
    first = simulate(a, w0, GradientDescent(0.01, 200, stop_at_convergence=False),
                     RecordSchedule(points=5, weights=True))
    second = simulate(b, first.final_weights, GradientDescent(0.01, 300), RecordSchedule(points=7, weights=True))
    chained = {int(k): [w[i] for w in first.weights] for i, k in enumerate(first.step)}
    chained.update({int(k) + 200: [w[i] for w in second.weights] for i, k in enumerate(second.step)})
    common = [i for i, k in enumerate(seq.step) if int(k) in chained]
    assert len(common) >= 8
    for i in common:
        for w, ref in zip(seq.weights, chained[int(seq.step[i])]):
            np.testing.assert_array_equal(w[i], ref)


# ------------------------------------------------------------------------------------------------
# exact across a switch


@pytest.mark.parametrize("lam,hidden", [(0.0, 5), (0.8, 3), (-0.6, 4)])
def test_exact_across_a_switch_matches_the_flow(tasks, lam, hidden):
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [hidden], "lambda_balanced", lam=lam, scale=0.05, seed=1)
    seq = TaskSequence([Phase(a, 3.0), Phase(b)])
    ex = simulate(seq, w0, Exact(t_max=8.0), RecordSchedule(points=41))
    fl = simulate(seq, w0, GradientFlow(t_max=8.0, rtol=FLOW_RTOL, atol=FLOW_RTOL * 1e-2), RecordSchedule(points=41))
    np.testing.assert_array_equal(ex.time, fl.time)
    np.testing.assert_array_equal(ex.phase, fl.phase)
    scale = np.abs(ex.product).max()
    np.testing.assert_allclose(ex.product, fl.product, rtol=0, atol=EXACT_VS_FLOW_RTOL * scale)
    np.testing.assert_allclose(ex.task_loss, fl.task_loss, rtol=0, atol=EXACT_VS_FLOW_RTOL * ex.task_loss.max())


def test_exact_continues_an_aligned_run_with_the_riccati_solution_on_a_new_task():
    """An aligned balanced init (per-mode closed form) is zero-balanced: on a task with other singular vectors the
    state at the switch is no longer aligned, but still λ-balanced, so the Riccati solution continues it exactly."""
    a = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=1)
    b = presets.whitened([2.5, 1.5, 0.5], n_in=4, n_out=4, seed=2)
    w0 = init.initial_weights(a, [4], "aligned", strength=1e-2)
    assert exact.check_exact(a, w0) == exact.MODEL_MODES
    at_switch = simulate(a, w0, Exact(t_max=2.0), RecordSchedule(points=3)).final_weights
    assert exact.check_exact(b, at_switch) == exact.MODEL_RICCATI
    seq = TaskSequence([Phase(a, 2.0), Phase(b)])
    ex = simulate(seq, w0, Exact(t_max=5.0), RecordSchedule(points=21))
    fl = simulate(seq, w0, GradientFlow(t_max=5.0, rtol=FLOW_RTOL, atol=FLOW_RTOL * 1e-2), RecordSchedule(points=21))
    np.testing.assert_allclose(ex.product, fl.product, rtol=0, atol=EXACT_VS_FLOW_RTOL * np.abs(ex.product).max())


def test_exact_refuses_a_deep_aligned_state_on_a_task_with_other_modes_naming_the_phase():
    a = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=1)
    b = presets.whitened([2.5, 1.5, 0.5], n_in=4, n_out=4, seed=2)
    w0 = init.initial_weights(a, [4, 4], "aligned", strength=1e-2)
    seq = TaskSequence([Phase(a, 2.0), Phase(b)])
    preflight(seq, w0, Exact(t_max=5.0))               # passes: only the run reaches the state at the switch
    with pytest.raises(ExactNotApplicableError) as err:
        simulate(seq, w0, Exact(t_max=5.0))
    assert err.value.field == ("phases", 1)
    assert "phase 1" in err.value.message and "state at the switch" in err.value.message
    assert err.value.fix.startswith('use method "flow"')


def test_exact_refuses_a_later_task_without_whitened_inputs_before_running():
    a = presets.whitened([3.0, 2.0], n_in=3, n_out=3, seed=1)
    b = problem_from_correlations(np.diag([1.0, 2.0, 3.0]), a.sigma31)
    w0 = init.initial_weights(a, [3], "lambda_balanced", lam=0.0, scale=0.1, seed=0)
    with pytest.raises(ExactNotApplicableError) as err:
        preflight(TaskSequence([Phase(a, 1.0), Phase(b)]), w0, Exact(t_max=2.0))
    assert err.value.field == ("phases", 1, "data", "sigma11")
    assert err.value.fix.startswith('use method "flow"')
    # the first phase's own data failing names that phase too
    with pytest.raises(ExactNotApplicableError) as err:
        preflight(TaskSequence([Phase(b, 1.0), Phase(a)]), w0, Exact(t_max=2.0))
    assert err.value.field == ("phases", 0, "data", "sigma11")


# ------------------------------------------------------------------------------------------------
# Braun et al.'s forgetting


def _f_matrix(sigma31, lam):
    no, ni = sigma31.shape
    return np.block([[-(lam / 2) * np.eye(ni), sigma31.T], [sigma31, (lam / 2) * np.eye(no)]])


def _one_shot(p0, f, x):
    """P(x) = e^{Fx} P0 [I + K(x) P0]⁻¹ e^{Fx}, K(x) = ∫₀ˣ e^{2Fr} dr by adaptive quadrature (x = 2t, Σ11 = I)."""
    k = quad_vec(lambda r: scipy.linalg.expm(2.0 * f * r), 0.0, x, epsabs=1e-14, epsrel=1e-13)[0]
    e = scipy.linalg.expm(f * x)
    return e @ p0 @ np.linalg.solve(np.eye(len(p0)) + k @ p0, e)


def test_forgetting_of_task_a_follows_braun_et_al_closed_form(tasks):
    (a, xa, ya), (b, _, _) = tasks
    lam, t_s = 0.5, 1.5
    w0 = init.initial_weights(a, [3], "lambda_balanced", lam=lam, scale=0.3, seed=5)
    after = (2.0, 2.5, 3.0)
    traj = simulate(TaskSequence([Phase(a, t_s), Phase(b)]), w0, Exact(t_max=3.0),
                    RecordSchedule(times=(0.5, 1.0) + after))
    q0 = np.vstack([w0[0].T, w0[1]])
    p_s = _one_shot(q0 @ q0.T, _f_matrix(a.sigma31, lam), 2 * t_s)          # the state reached on task A
    ni = a.n_in
    i_s = int(np.flatnonzero(traj.time == t_s)[0])
    loss_a_at_switch = per_sample_mse(xa, ya, [p_s[ni:, :ni]])
    assert traj.task_loss[i_s, 0] == pytest.approx(loss_a_at_switch, rel=1e-11)
    for t in after:
        p = _one_shot(p_s, _f_matrix(b.sigma31, lam), 2 * (t - t_s))        # restarted on task B from P_s
        i = int(np.flatnonzero(traj.time == t)[0])
        assert traj.phase[i] == 1
        expected = per_sample_mse(xa, ya, [p[ni:, :ni]])
        assert traj.task_loss[i, 0] == pytest.approx(expected, rel=1e-11)
        # the forgetting L_A(t) − L_A(t_s)
        assert traj.task_loss[i, 0] - traj.task_loss[i_s, 0] == pytest.approx(expected - loss_a_at_switch, rel=1e-9)
    assert traj.task_loss[-1, 0] > 2 * traj.task_loss[i_s, 0]               # A is forgotten while B is learned


def test_forgetting_at_convergence_depends_on_the_tasks_only(tasks):
    """Once B is learned (full-rank network: W → Σ31ᴮ), L_A = L_ls,A + ‖Σ31ᴮ − Σ31ᴬ‖², for any λ and init."""
    (a, xa, ya), (b, _, _) = tasks
    expected = a.residual_loss + float(np.sum((b.sigma31 - a.sigma31) ** 2))
    for lam, seed in [(0.0, 1), (1.0, 2), (-0.5, 3)]:
        w0 = init.initial_weights(a, [3], "lambda_balanced", lam=lam, scale=0.2, seed=seed)
        traj = simulate(TaskSequence([Phase(a, 4.0), Phase(b)]), w0, Exact(t_max=40.0), RecordSchedule(points=11))
        assert traj.task_loss[-1, 0] == pytest.approx(expected, rel=1e-10)
        assert traj.task_loss[-1, 1] == pytest.approx(b.residual_loss, rel=1e-8, abs=1e-12)


def test_flow_forgetting_matches_the_exact_forgetting(tasks):
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [3], "lambda_balanced", lam=0.5, scale=0.3, seed=5)
    seq = TaskSequence([Phase(a, 1.5), Phase(b)])
    ex = simulate(seq, w0, Exact(t_max=4.0), RecordSchedule(points=17))
    fl = simulate(seq, w0, GradientFlow(t_max=4.0, rtol=FLOW_RTOL, atol=FLOW_RTOL * 1e-2), RecordSchedule(points=17))
    np.testing.assert_allclose(fl.task_loss[:, 0], ex.task_loss[:, 0], rtol=EXACT_VS_FLOW_RTOL)


# ------------------------------------------------------------------------------------------------
# what the trajectory holds


def test_records_phases_and_current_losses(tasks):
    (a, xa, ya), (b, xb, yb) = tasks
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    traj = simulate(TaskSequence([Phase(a, 1.23), Phase(b, 2.5), Phase(a)]), w0,
                    GradientFlow(t_max=4.0), RecordSchedule(points=5, weights=True))
    np.testing.assert_array_equal(traj.phase_starts, [0.0, 1.23, 2.5])
    assert {1.23, 2.5} <= set(traj.time)                                  # a record at every switch
    np.testing.assert_array_equal(traj.phase, np.searchsorted([1.23, 2.5], traj.time, side="right"))
    assert traj.task_loss.shape == (len(traj.time), 3) and traj.task_loss_kind == ("loss",) * 3
    for i in range(len(traj.time)):
        ws = [w[i] for w in traj.weights]
        np.testing.assert_allclose(traj.task_loss[i, 0], per_sample_mse(xa, ya, ws), rtol=1e-10)
        np.testing.assert_allclose(traj.task_loss[i, 1], per_sample_mse(xb, yb, ws), rtol=1e-10)
        np.testing.assert_array_equal(traj.task_loss[i, 2], traj.task_loss[i, 0])   # phase 2 is task A again
        assert traj.loss[i] == traj.task_loss[i, traj.phase[i]]
    for w, final in zip(traj.weights, traj.final_weights):
        np.testing.assert_array_equal(w[-1], final)


def test_float32_flow_sequence_integrates_in_float64_and_rounds_only_the_records(tasks):
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    seq = TaskSequence([Phase(a, 1.0), Phase(b)])
    f64 = simulate(seq, w0, GradientFlow(t_max=2.0), RecordSchedule(points=5, weights=True))
    f32 = simulate(seq, w0, GradientFlow(t_max=2.0), RecordSchedule(points=5, weights=True), dtype="float32")
    for w32, w64 in zip(f32.weights, f64.weights):     # the trajectory holds the float32 records as float64
        np.testing.assert_array_equal(w32, w64.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("method", [GradientDescent(0.01, 300), GradientFlow(t_max=3.0), Exact(t_max=3.0)],
                         ids=["gd", "flow", "exact"])
def test_a_single_phase_is_the_plain_run(tasks, method):
    (a, _, _), _ = tasks
    w0 = init.initial_weights(a, [3], "lambda_balanced", lam=0.3, scale=0.1, seed=0)
    plain = simulate(a, w0, method, RecordSchedule(points=7))
    seq = simulate(TaskSequence([Phase(a)]), w0, method, RecordSchedule(points=7))
    for name in ("time", "loss", "excess_loss", "product", "gradient_norm", "distance_to_optimum", "balance_drift"):
        np.testing.assert_array_equal(getattr(seq, name), getattr(plain, name), err_msg=name)
    np.testing.assert_array_equal(seq.modes.theory, plain.modes.theory)
    np.testing.assert_array_equal(seq.task_loss[:, 0], plain.loss)
    assert seq.task_loss_kind == ("loss",) and np.all(seq.phase == 0) and list(seq.phase_starts) == [0.0]


def test_gradient_norm_is_that_of_each_records_task(tasks):
    (a, _, _), (b, _, _) = tasks
    from service.dynamics import network
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    traj = simulate(TaskSequence([Phase(a, 0.5), Phase(b)]), w0, GradientDescent(0.01, 100),
                    RecordSchedule(points=6, weights=True))
    for i in range(len(traj.time)):
        pb = a if traj.phase[i] == 0 else b
        expected = network.gradient_norm(network.gradients(pb, [w[i] for w in traj.weights]))
        assert traj.gradient_norm[i] == pytest.approx(expected, rel=1e-12)


def test_a_task_without_sigma33_reports_its_excess_loss(tasks):
    (a, _, _), (b, _, _) = tasks
    b_bare = problem_from_correlations(b.sigma11, b.sigma31)                  # no Σ33: loss known up to tr Σ33
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    traj = simulate(TaskSequence([Phase(a, 1.0), Phase(b_bare)]), w0, GradientFlow(t_max=2.0),
                    RecordSchedule(points=5))
    full = simulate(TaskSequence([Phase(a, 1.0), Phase(b)]), w0, GradientFlow(t_max=2.0), RecordSchedule(points=5))
    assert traj.task_loss_kind == ("loss", "excess_loss") and traj.loss is None
    np.testing.assert_array_equal(traj.task_loss[:, 1], traj.task_excess_loss[:, 1])
    np.testing.assert_allclose(traj.task_loss[:, 1], full.task_loss[:, 1] - full.optimum.loss, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(traj.excess_loss, full.excess_loss, rtol=1e-9, atol=1e-12)


def test_theory_overlays_hold_for_the_first_phase_only():
    a = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=1)
    b = presets.whitened([2.5, 1.5, 0.5], n_in=4, n_out=4, seed=2)
    w0 = init.initial_weights(a, [4], "aligned", strength=1e-3)
    single = simulate(a, w0, GradientDescent(0.01, 400), RecordSchedule(points=9))
    traj = simulate(TaskSequence([Phase(a, 2.0), Phase(b)]), w0, GradientDescent(0.01, 400), RecordSchedule(points=9))
    first = traj.phase == 0
    np.testing.assert_array_equal(traj.modes.theory[first], single.modes.theory[:first.sum()])
    assert np.all(np.isnan(traj.modes.theory[~first]))
    assert "first phase only" in traj.modes.theory_assumptions


def test_hooks_see_the_whole_run_progress(tasks):
    (a, _, _), (b, _, _) = tasks
    seen = []
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    simulate_sequence(TaskSequence([Phase(a, 1.0), Phase(b)]), w0, GradientDescent(0.01, 400),
                      hooks=Hooks(progress=seen.append, interval=0.0))
    assert seen == sorted(seen) and seen[-1] == 1.0 and any(0.2 < f < 0.3 for f in seen)


@pytest.mark.parametrize("phases,method,field", [
    ([(0, 3.0), (1, None)], GradientFlow(t_max=3.0), ("phases", 0, "until")),     # the next phase never starts
    ([(0, 1.0), (1, 0.5), (0, None)], GradientFlow(t_max=3.0), ("phases", 1, "until")),  # not increasing
    ([(0, 1.0), (1, 2.0)], GradientFlow(t_max=3.0), ("phases", 1, "until")),     # the last phase runs to the end
    ([(0, None), (1, None)], GradientFlow(t_max=3.0), ("phases", 0, "until")),   # an earlier phase needs its end
    ([(0, 0.101), (1, 0.105), (0, None)], GradientDescent(0.01, 100), ("phases", 1, "until")),  # same GD step
    ([], GradientFlow(t_max=3.0), ("phases",)),
])
def test_invalid_phases_name_the_field(tasks, phases, method, field):
    (a, _, _), (b, _, _) = tasks
    seq = TaskSequence([Phase((a, b)[i], u) for i, u in phases])
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    with pytest.raises(InvalidParameterError) as err:
        simulate(seq, w0, method)
    assert err.value.field == field


def test_tasks_of_other_shapes_and_linearized_records_are_refused(tasks):
    (a, _, _), _ = tasks
    other = presets.whitened([1.0], n_in=4, n_out=2)
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    with pytest.raises(ShapeError) as err:
        simulate(TaskSequence([Phase(a, 1.0), Phase(other)]), w0, GradientFlow(t_max=2.0))
    assert err.value.field == ("phases", 1, "data")
    with pytest.raises(InvalidParameterError) as err:
        simulate(TaskSequence([Phase(a)]), w0, GradientFlow(t_max=2.0), RecordSchedule(linearized=True))
    assert err.value.field == ("record", "linearized")


def test_gd_divergence_in_a_later_phase_stops_the_run_and_names_it(tasks):
    (a, _, _), _ = tasks
    big = problem_from_correlations(np.eye(4), 30.0 * a.sigma31, None)
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    traj = simulate(TaskSequence([Phase(a, 1.0), Phase(big)]), w0, GradientDescent(0.05, 400))
    assert traj.outcome == "diverged" and traj.diverged_at_step > 20 and traj.phase[-1] == 1
    assert "phase 1" in traj.stability_hint


@pytest.mark.parametrize("method, field", [
    (GradientDescent(0.05, 100, momentum=0.9), ("training", "momentum")),
    (StochasticGradientDescent(0.05, 4, steps=100), ("training", "method")),
])
def test_momentum_and_sgd_are_refused_for_sequences_naming_the_field(tasks, method, field):
    # their buffer and sample order have no carry-over across a switch: refused, never run without them
    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    with pytest.raises(InvalidParameterError) as err:
        simulate(TaskSequence([Phase(a, 1.0), Phase(b)]), w0, method)
    assert err.value.field == field


def test_a_sweep_batch_runs_sequence_points_alone_and_equal_to_simulate(tasks):
    from service.dynamics.batch import SweepPoint, group_key, simulate_batch

    (a, _, _), (b, _, _) = tasks
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.1, seed=0)
    seq = TaskSequence([Phase(a, 1.0), Phase(b)])
    points = [SweepPoint(seq, w0, GradientDescent(eta, 100), RecordSchedule(points=7)) for eta in (0.02, 0.03)]
    points.append(SweepPoint(a, w0, GradientDescent(0.02, 100), RecordSchedule(points=7)))
    assert [group_key(p) is None for p in points] == [True, True, False]
    for point, traj in zip(points, simulate_batch(points)):
        alone = simulate(point.problem, point.weights0, point.method, point.record)
        if group_key(point) is None:  # run alone, through simulate itself
            np.testing.assert_array_equal(traj.product, alone.product, strict=True)
        else:  # a plain GD group of two-layer nets steps in SIMD lanes: simulate to round-off (test_lanes.py)
            np.testing.assert_allclose(traj.product, alone.product, rtol=1e-12, atol=1e-15)
        assert (traj.task_loss is None) == (point.problem is a)


def test_the_sharpness_of_a_record_is_that_of_its_own_tasks_loss(tasks):
    # task B with Σ31 ten times A's: its Hessian at the same weights is another one; each record is taken on its task
    from service.dynamics.sharpness import top_eigenvalues

    (a, _, _), _ = tasks
    b = problem_from_correlations(a.sigma11, 10.0 * a.sigma31, None)
    w0 = init.initial_weights(a, [3], "gaussian", scale=0.3, seed=0)
    traj = simulate(TaskSequence([Phase(a, 0.5), Phase(b)]), w0, GradientDescent(0.005, 200),
                    RecordSchedule(points=5, weights=True, sharpness=True, sharpness_k=2))
    assert set(traj.phase.tolist()) == {0, 1}
    for i, p in enumerate(traj.phase):
        at = [w[i] for w in traj.weights]
        np.testing.assert_array_equal(traj.sharpness[i], top_eigenvalues((a, b)[p], at, 2))
        assert not np.allclose(traj.sharpness[i], top_eigenvalues((b, a)[p], at, 2), rtol=1e-3)
