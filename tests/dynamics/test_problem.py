"""Σ11, Σ31, Σ33 from data or given, and every documented input error with its field path."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics.errors import (
    InvalidParameterError,
    NonFiniteError,
    NotPositiveSemidefiniteError,
    NotSymmetricError,
    ShapeError,
)
from service.dynamics.problem import (
    correlations_from_chunks,
    problem_from_correlations,
    problem_from_data,
)


def _xy(seed=0, n=37, n_in=4, n_out=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)) + 0.3
    y = x @ rng.standard_normal((n_in, n_out)) + rng.standard_normal((n, n_out))
    return x, y


def test_correlations_from_data_are_the_means_of_outer_products():
    x, y = _xy()
    p = problem_from_data(x, y)
    n = x.shape[0]
    # One matrix product each, summed in a possibly different order: ~n·eps relative to Σ|x_i x_j|.
    scale = np.max(np.abs(x)) ** 2 + np.max(np.abs(y)) ** 2
    np.testing.assert_allclose(p.sigma11, x.T @ x / n, rtol=0, atol=1e-14 * scale)
    np.testing.assert_allclose(p.sigma31, y.T @ x / n, rtol=0, atol=1e-14 * scale)
    np.testing.assert_allclose(p.sigma33, y.T @ y / n, rtol=0, atol=1e-14 * scale)
    assert p.n_samples == n and p.n_in == 4 and p.n_out == 3


def test_correlations_are_exactly_symmetric():
    p = problem_from_data(*_xy(1))
    assert np.array_equal(p.sigma11, p.sigma11.T) and np.array_equal(p.sigma33, p.sigma33.T)


def test_chunked_accumulation_equals_one_shot_to_round_off():
    x, y = _xy(2, n=101)
    one = problem_from_data(x, y, chunk_rows=10_000)
    chunked = problem_from_data(x, y, chunk_rows=7)   # 15 chunks, the last one short
    # Summation order differs: the error is ≤ n·eps·max|x|² ≈ 2e-14 · scale; 1e-13 leaves room.
    scale = np.max(np.abs(x)) ** 2 + np.max(np.abs(y)) ** 2
    for a, b in [(one.sigma11, chunked.sigma11), (one.sigma31, chunked.sigma31), (one.sigma33, chunked.sigma33)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * scale)
    assert chunked.n_samples == 101


def test_correlations_from_no_chunks_is_an_error():
    with pytest.raises(InvalidParameterError) as err:
        correlations_from_chunks(iter([]))
    assert err.value.field == ("data", "x")


def test_ragged_rows_are_a_shape_error_on_x():
    with pytest.raises(ShapeError) as err:
        problem_from_data([[1.0, 2.0], [3.0]], [[1.0], [2.0]])
    assert err.value.field == ("data", "x")


def test_empty_data_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        problem_from_data(np.zeros((0, 3)), np.zeros((0, 2)))
    assert err.value.field == ("data", "x")
    with pytest.raises(ShapeError) as err2:
        problem_from_correlations([], [[1.0]])
    assert err2.value.field == ("data", "sigma11")


def test_one_dimensional_x_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        problem_from_data([1.0, 2.0, 3.0], [[1.0], [2.0], [3.0]])
    assert err.value.field == ("data", "x")


def test_x_and_y_with_different_sample_counts_are_a_shape_error_on_y():
    x, y = _xy()
    with pytest.raises(ShapeError) as err:
        problem_from_data(x, y[:-1])
    assert err.value.field == ("data", "y")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_entry_is_reported_with_its_index(bad):
    x, y = _xy()
    y = y.copy()
    y[5, 2] = bad
    with pytest.raises(NonFiniteError) as err:
        problem_from_data(x, y)
    assert err.value.field == ("data", "y", 5, 2)


def test_non_finite_sigma11_entry_is_reported_with_its_index():
    s11 = np.eye(3)
    s11[1, 0] = np.nan
    with pytest.raises(NonFiniteError) as err:
        problem_from_correlations(s11, np.ones((2, 3)))
    assert err.value.field == ("data", "sigma11", 1, 0)


def test_sigma31_with_wrong_input_dimension_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        problem_from_correlations(np.eye(3), np.ones((2, 4)))
    assert err.value.field == ("data", "sigma31")


def test_sigma33_with_wrong_output_dimension_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        problem_from_correlations(np.eye(3), np.zeros((2, 3)), np.eye(3))
    assert err.value.field == ("data", "sigma33")


def test_non_square_sigma11_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        problem_from_correlations(np.ones((3, 2)), np.ones((2, 2)))
    assert err.value.field == ("data", "sigma11")


def test_non_symmetric_sigma11_is_rejected():
    s11 = np.eye(3)
    s11[0, 1] = 0.1
    with pytest.raises(NotSymmetricError) as err:
        problem_from_correlations(s11, np.zeros((2, 3)))
    assert err.value.field == ("data", "sigma11")


def test_non_symmetric_sigma33_is_rejected():
    s33 = np.eye(2)
    s33[1, 0] = 0.1
    with pytest.raises(NotSymmetricError) as err:
        problem_from_correlations(np.eye(3), np.zeros((2, 3)), s33)
    assert err.value.field == ("data", "sigma33")


def test_round_off_asymmetry_is_accepted_and_symmetrised():
    s11 = np.array([[2.0, 0.5], [0.5 + 1e-15, 1.0]])
    p = problem_from_correlations(s11, np.ones((1, 2)))
    assert np.array_equal(p.sigma11, p.sigma11.T)


def test_indefinite_sigma11_is_rejected():
    with pytest.raises(NotPositiveSemidefiniteError) as err:
        problem_from_correlations(np.array([[1.0, 2.0], [2.0, 1.0]]), np.zeros((1, 2)))  # eigenvalues 3, −1
    assert err.value.field == ("data", "sigma11")


def test_indefinite_sigma33_is_rejected():
    with pytest.raises(NotPositiveSemidefiniteError) as err:
        problem_from_correlations(np.eye(2), np.zeros((2, 2)), np.diag([1.0, -0.5]))
    assert err.value.field == ("data", "sigma33")


def test_correlations_no_dataset_can_have_are_rejected():
    # Σ11 = I, Σ33 = I (each PSD) but |Σ31| = 2 > sqrt(Σ11 Σ33): the joint matrix has eigenvalue 1 − 2 < 0.
    with pytest.raises(NotPositiveSemidefiniteError) as err:
        problem_from_correlations(np.eye(1), np.array([[2.0]]), np.eye(1))
    assert err.value.field == ("data", "sigma33")


def test_consistent_correlations_from_data_pass_the_joint_check():
    full = problem_from_data(*_xy(4))
    again = problem_from_correlations(full.sigma11, full.sigma31, full.sigma33)
    assert np.array_equal(again.sigma31, full.sigma31)


def test_rank_deficient_data_is_accepted():
    # Fewer samples than inputs: Σ11 singular (PSD, not PD) is a valid problem.
    x, y = _xy(5, n=2, n_in=4)
    q = problem_from_data(x, y)
    p = problem_from_correlations(q.sigma11, q.sigma31, q.sigma33)
    assert np.linalg.matrix_rank(p.sigma11) == 2


def test_wide_outputs_keep_the_trace_of_sigma33_without_forming_it(monkeypatch):
    # Past MAX_DENSE_SIGMA33 outputs only tr Σ33 = (1/N) Σ ‖y‖² is accumulated; the loss stays exact.
    monkeypatch.setattr("service.dynamics.problem.MAX_DENSE_SIGMA33", 1)
    x, y = _xy(5)
    p = problem_from_data(x, y)
    assert p.sigma33 is None
    assert p.sigma33_trace == pytest.approx(np.sum(y * y) / len(y), rel=1e-14)


def test_sigma31_outside_the_range_of_a_singular_sigma11_is_rejected():
    # Σ11 = diag(1, 0): no dataset has a Σ31 with a component along the second input.
    with pytest.raises(NotPositiveSemidefiniteError) as err:
        problem_from_correlations([[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.3]])
    assert err.value.field == ("data", "sigma31")


def test_sigma31_inside_the_range_of_a_singular_sigma11_is_accepted():
    p = problem_from_correlations([[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.0]])
    assert p.n_in == 2
