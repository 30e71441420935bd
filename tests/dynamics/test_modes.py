"""The reduced-rank optimum W*, L* (docs/theory.md#optimum) and measured learning times
(docs/theory.md#learning-time)."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import network, presets
from service.dynamics.learning_time import record_learning_times
from service.dynamics.modes import (
    excess_loss,
    optimum,
    sigma11_inverse_sqrt,
)
from service.dynamics.problem import problem_from_correlations, problem_from_data


@pytest.fixture(scope="module")
def problem():
    """Non-whitened, full-rank Σ11 (condition number ≈ 40)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 5)) * np.array([2.0, 1.5, 1.0, 0.6, 0.3])
    y = x @ rng.standard_normal((5, 4)) + 0.5 * rng.standard_normal((200, 4))
    return problem_from_data(x, y)


def _loss_scale(problem):
    """tr Σ33: the size of the terms that cancel in L, so round-off in L is ~1e-15 of it."""
    return float(np.trace(problem.sigma33))


def _factor(w_star, r):
    """W* = A B with A (n_out × r), B (r × n_in) from its SVD."""
    u, s, vt = np.linalg.svd(w_star)
    return u[:, :r] * np.sqrt(s[:r]), np.sqrt(s[:r])[:, None] * vt[:r]


def test_optimum_two_expressions_for_w_star_agree(problem):
    # W* = [M]_h Σ11^{-1/2} = U_h U_hᵀ Σ31 Σ11⁻¹ (docs/theory.md#optimum). The forms invert Σ11
    # differently (eigh vs inv); with κ(Σ11) ≈ 40 the difference is ~κ·eps relative, so 1e-13.
    opt = optimum(problem, [2])
    m = problem.sigma31 @ sigma11_inverse_sqrt(problem)
    u_m = np.linalg.svd(m)[0][:, :2]
    other = u_m @ u_m.T @ problem.sigma31 @ np.linalg.inv(problem.sigma11)
    assert np.max(np.abs(opt.product - other)) <= 1e-13 * np.max(np.abs(other))
    assert opt.rank == 2 and np.linalg.matrix_rank(opt.product) == 2


def test_loss_at_w_star_equals_l_star(problem):
    opt = optimum(problem, [2])
    assert abs(network.loss(problem, opt.product) - opt.loss) <= 1e-13 * _loss_scale(problem)
    assert opt.loss == pytest.approx(np.trace(problem.sigma33) + opt.loss_without_sigma33, rel=1e-15)


def test_w_star_beats_random_rank_r_maps(problem):
    opt = optimum(problem, [2])
    rng = np.random.default_rng(0)
    scale = np.max(np.abs(opt.product))
    for _ in range(200):
        w = scale * rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))
        assert network.loss(problem, w) > opt.loss


def test_w_star_is_a_local_minimum_on_the_rank_r_manifold(problem):
    # Perturb the factors of W* = A B: every nearby rank-≤r map has loss ≥ L* (up to round-off).
    opt = optimum(problem, [2])
    a, b = _factor(opt.product, 2)
    rng = np.random.default_rng(1)
    for _ in range(100):
        da, db = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
        for eps in (1e-2, 1e-4):
            w = (a + eps * da) @ (b + eps * db)
            assert network.loss(problem, w) >= opt.loss - 1e-14 * _loss_scale(problem)


def test_factorised_w_star_is_a_critical_point_of_the_two_layer_loss(problem):
    # Baldi & Hornik: the global minimum of the bottlenecked network has zero layer gradients.
    # Relative to the gradient scale 2|Σ31||W| the residual is round-off (~κ(Σ11)·eps).
    opt = optimum(problem, [2])
    a, b = _factor(opt.product, 2)
    grads = network.gradients(problem, [b, a])
    scale = 2 * np.max(np.abs(problem.sigma31)) * max(np.max(np.abs(a)), np.max(np.abs(b)))
    assert max(np.max(np.abs(g)) for g in grads) <= 1e-13 * scale


def test_optimum_of_linear_regression_is_sigma31_sigma11_inverse(problem):
    opt = optimum(problem, [])
    w = problem.sigma31 @ np.linalg.inv(problem.sigma11)
    assert opt.rank == 4
    assert np.max(np.abs(opt.product - w)) <= 1e-13 * np.max(np.abs(w))


def test_hidden_wider_than_the_task_gives_the_unconstrained_optimum(problem):
    assert np.allclose(optimum(problem, [7, 9]).product, optimum(problem, []).product, rtol=0, atol=1e-14)
    assert optimum(problem, [7, 9]).rank == 4


def test_singular_sigma11_gives_the_minimum_norm_optimum():
    # 3 samples in 6 dimensions: Σ11 has rank 3. The min-norm least-squares map is Σ31 Σ11⁺.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6))
    y = rng.standard_normal((3, 2))
    problem = problem_from_data(x, y)
    opt = optimum(problem, [])
    pinv = problem.sigma31 @ np.linalg.pinv(problem.sigma11, rcond=1e-10, hermitian=True)
    # κ on the range of Σ11 is O(10): agreement ~1e-14 relative; 1e-12 leaves room for the pinv's own error.
    assert np.max(np.abs(opt.product - pinv)) <= 1e-12 * np.max(np.abs(pinv))
    # Rows in the range of Σ11: W* annihilates its null space (the part GD never moves).
    null = np.linalg.svd(x)[2][3:].T
    assert np.max(np.abs(opt.product @ null)) <= 1e-13 * np.max(np.abs(opt.product))
    # 3 samples, 6 inputs: the data are fit exactly, L* = 0 up to round-off of tr Σ33.
    assert abs(opt.loss) <= 1e-13 * _loss_scale(problem)
    assert abs(network.loss(problem, opt.product)) <= 1e-13 * _loss_scale(problem)


def test_optimum_without_sigma33_has_no_loss_but_knows_the_loss_up_to_the_constant(problem):
    partial = problem_from_correlations(problem.sigma11, problem.sigma31)
    opt, full = optimum(partial, [2]), optimum(problem, [2])
    assert opt.loss is None
    assert opt.loss_without_sigma33 == pytest.approx(full.loss_without_sigma33, rel=1e-14)


def test_excess_loss_is_zero_at_the_optimum_and_positive_elsewhere(problem):
    opt = optimum(problem, [2])
    values = [network.fit_gap(problem, w) for w in (opt.product, 0 * opt.product)]
    exc = excess_loss(values, opt)
    assert abs(exc[0]) <= 1e-13 * _loss_scale(problem)
    assert exc[1] == pytest.approx(-opt.loss_without_sigma33, rel=1e-15)


def test_whitened_optimum_keeps_the_top_r_singular_values():
    problem = presets.whitened([3.0, 2.0, 1.0], 4, 5, seed=2)
    opt = optimum(problem, [2])
    np.testing.assert_allclose(np.linalg.svd(opt.product, compute_uv=False)[:3], [3.0, 2.0, 0.0], atol=1e-14)
    # L* = tr Σ33 − (9 + 4) = 14 − 13 = 1: exactly the unlearned mode's s².
    assert opt.loss == pytest.approx(1.0, rel=1e-13)


# ------------------------------------------------------------------------------------------------
# learning times


def _saxe(t, s, u0):
    """Balanced two-layer mode, our units (docs/theory.md#saxe-balanced): u(t) = s e^{4st} / (e^{4st} − 1 + s/u0)."""
    e = np.exp(4 * s * t)
    return s * e / (e - 1 + s / u0)


def _half_time(s, u0):
    """t½ = ln(s/u0 − 1)/(4s) (docs/theory.md#saxe-learning-time, τ = 1/2)."""
    return np.log(s / u0 - 1) / (4 * s)


S = np.array([3.0, 2.0, 0.5])
U0 = 1e-3


def test_record_learning_time_is_the_first_record_at_or_past_half_the_optimum_strength():
    t = np.linspace(0, 12, 1201)                      # Δt = 0.01
    u = _saxe(t[:, None], S, U0)
    measured = record_learning_times(t, u, final=S)
    half = _half_time(S, U0)
    # the first record at or after the crossing: within one record interval above it
    assert np.all(measured >= half) and np.all(measured < half + 0.01 + 1e-12)
    np.testing.assert_allclose(measured, np.ceil(half / 0.01) * 0.01, rtol=0, atol=1e-12)


def test_record_learning_times_default_to_the_last_record_as_final():
    t = np.linspace(0, 20, 2001)                      # s = 0.5 reaches s(1 − 1e-11) by t = 20
    u = _saxe(t[:, None], S, U0)
    np.testing.assert_allclose(record_learning_times(t, u), record_learning_times(t, u, final=S), atol=1e-9)


def test_mode_that_never_reaches_half_its_final_value_has_nan_learning_time():
    t = np.linspace(0, 1.0, 101)                      # t½(s = 0.5) = 3.1: not reached by t = 1
    u = _saxe(t[:, None], S, U0)
    measured = record_learning_times(t, u, final=S)
    assert np.isnan(measured[2]) and np.all(np.isfinite(measured[:2]))


def test_mode_with_zero_strength_at_the_optimum_has_nan_learning_time():
    t = np.linspace(0, 1, 11)
    u = np.column_stack([np.linspace(0, 1, 11), np.zeros(11), 1e-3 * np.exp(-5 * t)])
    measured = record_learning_times(t, u, final=[1.0, 0.0, 1e-12])
    assert measured[0] == pytest.approx(0.5, abs=1e-15)
    assert np.isnan(measured[1]) and np.isnan(measured[2])


def test_learning_time_of_a_mode_moving_to_a_negative_value_uses_the_downward_crossing():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    u = np.array([0.0, -0.5, -1.5, -2.0])
    # Target −1 is first reached at the record t = 2 (−1.5).
    assert record_learning_times(t, u)[0] == 2.0


def test_mode_already_past_half_its_final_value_at_the_start_has_the_first_record_time():
    t = np.array([0.5, 1.0, 2.0])
    u = np.array([[0.8], [0.9], [1.0]])
    assert record_learning_times(t, u)[0] == 0.5


def test_non_finite_records_never_count_as_reached():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    u = np.array([[0.0], [np.nan], [np.inf], [1.0]])
    # +inf would pass "u ≥ 0.5" but is not a reached value of a finite final; NaN compares False.
    assert record_learning_times(t, u, final=[1.0])[0] == 3.0
