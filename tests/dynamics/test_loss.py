"""The loss as a sum of squares, L = L_ls + ‖W F − G‖² (problem.least_squares): never negative, and the MSE of the
recorded map sample by sample, also at a perfect fit where tr Σ33 − 2 tr(WΣ31ᵀ) + tr(WΣ11Wᵀ) cancels."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import init, network, presets
from service.dynamics.methods import Exact, GradientDescent
from service.dynamics.modes import optimum
from service.dynamics.problem import (
    least_squares,
    problem_from_correlations,
    problem_from_data,
)
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate


def _mse_of_maps(x: np.ndarray, y: np.ndarray, products: np.ndarray) -> np.ndarray:
    """(1/N) Σ_i ‖y_i − W x_i‖² for each map W of a stack, sample by sample (the loss's definition)."""
    return np.array([np.mean([np.sum((yi - w @ xi) ** 2) for xi, yi in zip(x, y)]) for w in products])


@pytest.fixture(scope="module")
def neuromatch_fit():
    """x = I₈, y = 10,000 ±1 features of the Neuromatch hierarchy (tr Σ33 = 10⁴), hidden [30], tiny init, GD
    η = 0.01 for 250 steps without stopping: the run fits the data to ~1e-20 while tr Σ33 = 10⁴. The textbook
    form reported L = −6.9e-10 at step 249 here."""
    y = presets.branching_diffusion_targets(3, 2, 0.15, 10_000, seed=0).T
    x = np.eye(8)
    problem = problem_from_data(x, y)
    rng = np.random.default_rng(5)
    w0 = [1e-3 * rng.standard_normal((30, 8)), 1e-3 * rng.standard_normal((10_000, 30))]
    traj = simulate(problem, w0, GradientDescent(0.01, 250, stop_at_convergence=False),
                    RecordSchedule(times=tuple(0.01 * k for k in (50, 100, 150, 200, 240, 249, 250))))
    return x, y, problem, traj


def test_loss_at_a_perfect_fit_is_never_negative(neuromatch_fit):
    _, _, _, traj = neuromatch_fit
    assert traj.step[-2] == 249
    assert np.all(traj.loss >= 0)
    assert np.all(traj.excess_loss >= 0)


def test_loss_at_a_perfect_fit_is_the_per_sample_mse_of_the_recorded_map(neuromatch_fit):
    x, y, problem, traj = neuromatch_fit
    mse = _mse_of_maps(x, y, traj.product)
    # the bar: 1e-12 · tr Σ33 absolute at every record
    np.testing.assert_allclose(traj.loss, mse, rtol=0, atol=1e-12 * problem.sigma33_trace)
    # and better: the residual of W x_i − y_i is formed from W, whose round-off is eps · ‖W‖ ≈ 2e-16 · 100 per
    # entry, so L agrees to that times ‖W F − G‖ (≈ 1e-10 at the end): 1e-22 absolute, far below L ≈ 1e-20
    assert mse[-1] < 1e-15
    np.testing.assert_allclose(traj.loss[-3:], mse[-3:], rtol=1e-4, atol=1e-22)


def test_excess_loss_at_a_perfect_fit_is_the_loss(neuromatch_fit):
    # x = I: L* = 0 (hidden 30 ≥ 8 items, every item fitted) up to W*'s round-off, so L − L* is L itself
    _, _, problem, traj = neuromatch_fit
    assert 0 <= optimum(problem, [30]).loss < 1e-24
    np.testing.assert_allclose(traj.excess_loss, traj.loss, rtol=1e-10, atol=1e-24)


def test_least_squares_residual_of_data_that_are_fitted_exactly_is_round_off_squared():
    y = presets.branching_diffusion_targets(3, 2, 0.15, 10_000, seed=0).T
    problem = problem_from_data(np.eye(8), y)
    # tr Σ33 − ‖G‖² would carry eps · 10⁴ ≈ 1e-12; the fit's own residual is ≈ (eps · 1)² per entry
    assert 0 <= least_squares(problem).residual < 1e-25


def test_least_squares_residual_of_correlations_is_the_schur_complement():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5))
    y = x @ rng.standard_normal((5, 3)) + 0.3 * rng.standard_normal((40, 3))
    data = problem_from_data(x, y)
    moments = problem_from_correlations(data.sigma11, data.sigma31, data.sigma33)
    schur = np.trace(data.sigma33 - data.sigma31 @ np.linalg.solve(data.sigma11, data.sigma31.T))
    w_ls = np.linalg.lstsq(x, y, rcond=None)[0].T
    direct = np.mean(np.sum((y - x @ w_ls.T) ** 2, axis=1))
    # well-conditioned (κ(Σ11) ≈ 3): both agree with lstsq's residual to ~κ·eps relative
    assert least_squares(moments).residual == pytest.approx(schur, rel=1e-12)
    assert least_squares(data).residual == pytest.approx(direct, rel=1e-12)
    np.testing.assert_allclose(least_squares(data).w_ls, w_ls, rtol=1e-12, atol=1e-14)


def test_loss_of_correlations_whose_fit_is_perfect_is_never_negative():
    # Σ33 = Σ31Σ31ᵀ with Σ11 = I: L_ls = 0 exactly, but tr Σ33 − ‖G‖² is ± round-off; clipped at 0
    problem = problem_from_correlations(np.eye(6), (s31 := np.random.default_rng(4).standard_normal((4, 6))),
                                        s31 @ s31.T)
    ws = s31 + np.array([0.0, 1e-12, 1e-9])[:, None, None] * np.ones_like(s31)
    losses = network.loss(problem, ws)
    assert np.all(losses >= 0)
    np.testing.assert_allclose(losses[1:], [24e-24, 24e-18], rtol=1e-3)


def test_loss_equals_the_textbook_form_away_from_the_fit():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((200, 6)) * rng.uniform(0.3, 2.0, 6)
    y = x @ rng.standard_normal((6, 4)) + 0.5 * rng.standard_normal((200, 4))
    problem = problem_from_data(x, y)
    ws = rng.standard_normal((5, 4, 6))
    textbook = [np.trace(problem.sigma33) - 2 * np.sum(w * problem.sigma31) + np.sum((w @ problem.sigma11) * w)
                for w in ws]
    np.testing.assert_allclose(network.loss(problem, ws), textbook, rtol=1e-12)
    np.testing.assert_allclose(network.loss_without_sigma33(problem, ws), np.array(textbook) - np.trace(problem.sigma33),
                               rtol=1e-12)


def test_loss_with_a_singular_sigma11_is_the_data_mse():
    # 3 samples, 6 inputs: Σ11 has rank 3 and round-off eigenvalues in its null space
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6))
    y = rng.standard_normal((3, 2))
    problem = problem_from_data(x, y)
    ws = rng.standard_normal((4, 2, 6))
    np.testing.assert_allclose(network.loss(problem, ws), _mse_of_maps(x, y, ws), rtol=1e-12)
    assert least_squares(problem).residual < 1e-28   # 3 samples, 6 inputs: fitted exactly


def test_test_loss_of_a_noise_free_teacher_is_the_distance_to_the_teacher():
    # L_test(W) = ‖W − W̄‖² + n_out·noise² (the preset's exact test distribution), here with noise 0: down to the
    # 1e-20 the two learned modes reach (the four unlearned ones keep the init's 1e-10 each)
    problem = presets.noisy_teacher(n_in=6, n_out=6, n_samples=6, noise=0.0, singular_values=[3.0, 2.0], seed=1)
    w0 = init.initial_weights(problem, [6], "aligned", strength=1e-10)
    traj = simulate(problem, w0, Exact(t_max=40.0), RecordSchedule(points=50))
    distance = np.sum((traj.product - problem.test.sigma31) ** 2, axis=(1, 2))
    assert np.all(traj.test_loss >= 0) and traj.test_loss[-1] < 1e-18
    np.testing.assert_allclose(traj.test_loss, distance, rtol=1e-9, atol=1e-30)


def test_mode_theory_of_the_loss_is_never_negative_at_convergence():
    problem = presets.noisy_teacher(n_in=6, n_out=6, n_samples=6, noise=0.0, singular_values=[3.0, 2.0], seed=1)
    w0 = init.initial_weights(problem, [6], "aligned", strength=1e-10)
    traj = simulate(problem, w0, Exact(t_max=40.0), RecordSchedule(points=50))
    assert np.all(traj.loss_theory.loss >= 0) and np.all(traj.loss_theory.test_loss >= 0)
    # exact theory (aligned init, Σ11 = I): the predicted losses are the simulated ones, to 1e-9 relative and, near
    # 0, to the round-off of the recorded W (eps·‖W‖ per entry) times ‖W F − G‖: ≤ 1e-20 absolute
    np.testing.assert_allclose(traj.loss_theory.loss, traj.loss, rtol=1e-9, atol=1e-20)
    np.testing.assert_allclose(traj.loss_theory.test_loss, traj.test_loss, rtol=1e-9, atol=1e-20)
