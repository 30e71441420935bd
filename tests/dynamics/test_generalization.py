"""Held-out data along a run (service.dynamics.generalization): test loss, early stopping, sweep rows.

The reference test loss is the MSE of the recorded weights on the raw test samples, (1/N) Σ_i ‖y_i − W_D⋯W_1 x_i‖²,
computed here sample by sample; the core computes it from the test correlations.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics.batch import SweepPoint, simulate_batch
from service.dynamics.errors import InvalidParameterError, ShapeError
from service.dynamics.generalization import early_stopping, mse
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow
from service.dynamics.presets import noisy_teacher, whitened
from service.dynamics.problem import (
    problem_from_correlations,
    problem_from_data,
    with_test,
)
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate
from service.grid import point_summary
from tests.support.sample_loss import per_sample_mse

# test_loss vs the per-sample MSE: the correlation identity tr Σ33 − 2tr(WΣ31ᵀ) + tr(WΣ11Wᵀ) cancels terms of size
# ~tr Σ33 down to an L_test of the same order here, so the two sums differ by a few ulps of tr Σ33: 1e-10 relative
# (the bar) is ~10⁵ ulps, and any wrong factor, transpose or stale record is O(1).
MSE_RTOL = 1e-10


def _test_samples(problem, n: int = 40, noise: float = 0.3, seed: int = 7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, problem.n_in))
    y = x @ problem.sigma31.T + noise * rng.standard_normal((n, problem.n_out))
    return x, y


@pytest.fixture
def task():
    train = whitened([3.0, 1.0, 0.2], n_in=4, n_out=3, seed=2)
    x, y = _test_samples(train)
    return with_test(train, problem_from_data(x, y)), x, y


@pytest.mark.parametrize("method", [GradientDescent(0.02, 400), GradientFlow(t_max=8.0), Exact(t_max=8.0)],
                         ids=["gd", "flow", "exact"])
def test_test_loss_is_the_test_mse_of_the_recorded_weights(task, method):
    problem, x, y = task
    w0 = initial_weights(problem, [5], "aligned", strength=1e-3)
    traj = simulate(problem, w0, method, RecordSchedule(points=12, weights=True))
    expected = [per_sample_mse(x, y, [w[t] for w in traj.weights]) for t in range(len(traj.time))]
    np.testing.assert_allclose(traj.test_loss, expected, rtol=MSE_RTOL)


def test_test_loss_of_the_riccati_solution_uses_its_network_map(task):
    problem, x, y = task
    w0 = initial_weights(problem, [3], "lambda_balanced", lam=0.5, scale=0.3, seed=1)
    traj = simulate(problem, w0, Exact(t_max=5.0), RecordSchedule(points=9))
    assert traj.modes.theory_model.startswith("riccati")  # no weights: the test loss comes from P(t)
    expected = [float(np.mean(np.sum((y - x @ w.T) ** 2, axis=1))) for w in traj.product]
    np.testing.assert_allclose(traj.test_loss, expected, rtol=MSE_RTOL)


def test_early_stopping_is_the_record_of_least_test_loss(task):
    problem, _, _ = task
    w0 = initial_weights(problem, [5], "gaussian", scale=0.01, seed=0)
    traj = simulate(problem, w0, GradientDescent(0.02, 600), RecordSchedule(points=30))
    i = int(np.argmin(traj.test_loss))
    stop = traj.early_stopping
    assert (stop.index, stop.time, stop.step, stop.test_loss) == (i, traj.time[i], traj.step[i], traj.test_loss[i])


def test_early_stopping_takes_the_first_of_tied_minima_and_skips_non_finite_records():
    stop = early_stopping(np.array([0.0, 1.0, 2.0, 3.0]), None, np.array([np.nan, 2.0, 1.0, 1.0]))
    assert (stop.index, stop.time, stop.step, stop.test_loss) == (2, 2.0, None, 1.0)


def test_without_test_data_there_is_no_test_loss_and_no_early_stopping():
    problem = whitened([2.0, 1.0], n_in=2, n_out=2)
    traj = simulate(problem, initial_weights(problem, [3], "gaussian", scale=0.01), GradientFlow(t_max=2.0),
                    RecordSchedule(points=5))
    assert traj.test_loss is None and traj.early_stopping is None


def test_test_loss_of_the_training_statistics_is_the_training_loss(task):
    problem, _, _ = task
    same = with_test(problem, problem_from_correlations(problem.sigma11, problem.sigma31, problem.sigma33))
    traj = simulate(same, initial_weights(same, [5], "gaussian", scale=0.1, seed=3), GradientDescent(0.02, 100),
                    RecordSchedule(points=6))
    # one formula on the same Σ: equal up to the order of two sums (1e-13 absolute on O(10) losses)
    np.testing.assert_allclose(traj.test_loss, traj.loss, rtol=0, atol=1e-13)


def test_mse_of_a_stack_is_the_mse_of_each_map(task):
    problem, x, y = task
    stack = np.random.default_rng(0).standard_normal((3, problem.n_out, problem.n_in))
    got = mse(problem.test, stack)
    for t in range(3):
        assert got[t] == pytest.approx(float(np.mean(np.sum((y - x @ stack[t].T) ** 2, axis=1))), rel=MSE_RTOL)


def test_test_data_of_another_input_dimension_is_refused_naming_the_test_field(task):
    problem, _, _ = task
    other = problem_from_correlations(np.eye(5), np.zeros((3, 5)), np.eye(3))
    with pytest.raises(ShapeError) as err:
        with_test(problem, other)
    assert err.value.field == ("data", "test", "sigma11")


def test_test_correlations_without_sigma33_are_refused():
    problem = whitened([1.0], n_in=2, n_out=2)
    with pytest.raises(InvalidParameterError) as err:
        with_test(problem, problem_from_correlations(np.eye(2), np.zeros((2, 2))))
    assert err.value.field == ("data", "test", "sigma33")


def test_sweep_points_carry_the_test_loss_of_simulate_and_their_rows_summarise_it(task):
    problem, _, _ = task
    points = [SweepPoint(problem, initial_weights(problem, [5], "gaussian", scale=0.01, seed=s),
                         GradientDescent(0.02, 300), RecordSchedule(points=10)) for s in (0, 1)]
    for point, traj in zip(points, simulate_batch(points)):
        single = simulate(point.problem, point.weights0, point.method, point.record)
        # two-layer points step in SIMD lanes: simulate to round-off (tests/dynamics/test_lanes.py)
        np.testing.assert_allclose(traj.test_loss, single.test_loss, rtol=1e-11)
        row = point_summary(traj)
        assert row["final_test_loss"] == traj.test_loss[-1]
        assert row["min_test_loss"] == float(np.min(traj.test_loss))
        assert row["early_stopping_time"] == traj.time[int(np.argmin(traj.test_loss))]


def test_rows_without_test_data_have_null_test_fields():
    problem = whitened([2.0, 1.0], n_in=2, n_out=2)
    traj = simulate(problem, initial_weights(problem, [3], "gaussian", scale=0.01), GradientDescent(0.05, 10),
                    RecordSchedule(points=3))
    row = point_summary(traj)
    assert row["final_test_loss"] is None and row["min_test_loss"] is None and row["early_stopping_time"] is None


# ------------------------------------------------------------------------------------------------
# the noisy teacher (Lampinen & Ganguli 2019) and the mode theory of train and test loss


def test_noisy_teacher_trains_on_whitened_inputs_and_tests_on_the_exact_teacher_distribution():
    problem = noisy_teacher(n_in=6, n_out=5, n_samples=9, noise=0.7, singular_values=[3.0, 1.0], seed=4)
    test = problem.test
    # Σ11 = XᵀX/N of orthonormal columns × sqrt(N): I to round-off (1e-15)
    np.testing.assert_allclose(problem.sigma11, np.eye(6), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.svd(test.sigma31, compute_uv=False)[:3], [3.0, 1.0, 0.0], atol=1e-14)
    np.testing.assert_array_equal(test.sigma11, np.eye(6))
    np.testing.assert_allclose(test.sigma33, test.sigma31 @ test.sigma31.T + 0.49 * np.eye(5), rtol=1e-15)
    # the test loss of any W is its distance to the teacher plus the Bayes error n_out·noise²
    w = np.random.default_rng(0).standard_normal((5, 6))
    assert mse(test, w) == pytest.approx(np.sum((w - test.sigma31) ** 2) + 5 * 0.49, rel=1e-13)


def test_noise_free_teacher_data_has_the_teacher_as_sigma31():
    problem = noisy_teacher(n_in=4, n_out=4, n_samples=7, noise=0.0, singular_values=[2.0, 1.0])
    np.testing.assert_allclose(problem.sigma31, problem.test.sigma31, rtol=0, atol=1e-14)


def test_noisy_teacher_rank_keeps_the_leading_singular_values():
    problem = noisy_teacher(n_in=4, n_out=4, n_samples=4, noise=0.0, singular_values=[3.0, 2.0, 1.0], rank=2)
    np.testing.assert_allclose(np.linalg.svd(problem.test.sigma31, compute_uv=False), [3.0, 2.0, 0.0, 0.0],
                               atol=1e-14)


def test_noisy_teacher_checks_its_sample_size():
    # fewer samples than inputs is the paper's P < N1 case (tests/dynamics/test_random_matrix.py); zero is not a sample
    with pytest.raises(InvalidParameterError) as err:
        noisy_teacher(n_in=8, n_samples=0)
    assert err.value.field == ("data", "n_samples")


@pytest.fixture(scope="module")
def noisy():
    return noisy_teacher(n_in=8, n_out=8, n_samples=8, noise=1.0, singular_values=[4.0, 2.0, 1.0])


def test_loss_theory_of_an_aligned_gd_run_is_exact_and_equals_the_simulated_train_and_test_loss(noisy):
    w0 = initial_weights(noisy, [8], "aligned", strength=1e-3)
    traj = simulate(noisy, w0, GradientDescent(0.02, 2000), RecordSchedule(points=100))
    theory = traj.loss_theory
    assert theory.model == "modes_generalization" and theory.exact
    # exact per-mode GD map and exact loss decomposition: round-off of sums of O(30) terms (measured 2e-15)
    np.testing.assert_allclose(theory.test_loss, traj.test_loss, rtol=1e-10)
    np.testing.assert_allclose(theory.loss, traj.loss, rtol=1e-10, atol=1e-10 * traj.loss[0])
    assert int(np.argmin(theory.test_loss)) == traj.early_stopping.index


def _theory_gap(traj) -> float:
    return float(np.max(np.abs(traj.loss_theory.test_loss - traj.test_loss)) / traj.test_loss[0])


def test_small_init_loss_theory_of_the_flow_is_within_one_percent(noisy):
    w0 = initial_weights(noisy, [8], "gaussian", scale=1e-3, seed=0)
    traj = simulate(noisy, w0, GradientFlow(t_max=8.0), RecordSchedule(points=100))
    assert not traj.loss_theory.exact and "approximate" in traj.loss_theory.assumptions
    # Saxe's formula from an effective start, modes approximately decoupled: measured 0.68 % of L_test(0)
    assert _theory_gap(traj) < 0.01


def test_small_init_loss_theory_of_gd_is_off_by_first_order_in_the_learning_rate(noisy):
    w0 = initial_weights(noisy, [8], "gaussian", scale=1e-3, seed=0)
    gaps = [_theory_gap(simulate(noisy, w0, GradientDescent(eta, int(6 / eta)), RecordSchedule(points=100)))
            for eta in (0.02, 0.01, 0.005)]
    # the stated approximation is the flow at t = η·step, O(η) from GD: halving η halves the gap (measured
    # ratios 1.85 and 1.99; a small-init floor of ~0.6 % keeps them below 2)
    assert 1.6 < gaps[0] / gaps[1] < 2.2 and 1.6 < gaps[1] / gaps[2] < 2.2


def test_no_loss_theory_without_a_mode_theory():
    problem = with_test(problem_from_correlations([[1.0, 0.9], [0.9, 1.0]], [[1.0, 0.5]], [[2.0]]),
                        problem_from_correlations(np.eye(2), [[1.0, 0.5]], [[2.0]]))
    traj = simulate(problem, initial_weights(problem, [3], "gaussian", scale=0.01), GradientDescent(0.05, 20),
                    RecordSchedule(points=3))
    assert traj.modes.theory is None and traj.loss_theory is None and traj.test_loss is not None
