"""Initial conditions: reproducibility, the defining identities of each scheme, and parameter errors."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import init, network, presets
from service.dynamics.errors import InvalidParameterError, ShapeError
from service.dynamics.modes import mode_basis, mode_strengths


@pytest.fixture(scope="module")
def problem():
    return presets.random_teacher(n_in=5, n_out=4, n_samples=60, noise=0.2, seed=3)


SCALED = ("gaussian", "orthogonal", "balanced")


@pytest.mark.parametrize("scheme", SCALED + ("lambda_balanced",))
def test_same_seed_gives_identical_weights_and_another_seed_different(problem, scheme):
    a = init.initial_weights(problem, [4], scheme, scale=0.3, seed=7)
    b = init.initial_weights(problem, [4], scheme, scale=0.3, seed=7)
    c = init.initial_weights(problem, [4], scheme, scale=0.3, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_aligned_with_seed_is_reproducible(problem):
    a = init.initial_weights(problem, [6, 3], "aligned", strength=0.1, seed=4)
    b = init.initial_weights(problem, [6, 3], "aligned", strength=0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("scheme", SCALED + ("lambda_balanced", "aligned"))
def test_every_scheme_returns_float64_matrices_of_the_layer_shapes(problem, scheme):
    weights = init.initial_weights(problem, [3], scheme)
    assert [w.shape for w in weights] == network.layer_shapes(5, [3], 4)
    assert all(w.dtype == np.float64 for w in weights)


def test_gaussian_entries_have_standard_deviation_scale():
    shapes = network.layer_shapes(200, [300], 100)
    weights = init.gaussian(shapes, 0.05, seed=0)
    entries = np.concatenate([w.ravel() for w in weights])
    # 90 000 draws: the sample std has relative standard error 1/sqrt(2·90000) = 0.24 %; 1 % is 4 SE.
    assert entries.std() == pytest.approx(0.05, rel=1e-2)
    assert abs(entries.mean()) < 4 * 0.05 / np.sqrt(entries.size)


@pytest.mark.parametrize("rows,cols", [(3, 7), (7, 3), (5, 5), (1, 4), (4, 1)])
def test_orthogonal_rectangular_layers_have_all_singular_values_equal_to_scale(rows, cols):
    (w,) = init.orthogonal([(rows, cols)], 0.4, seed=2)
    # QR in float64: orthonormality to ~n·eps.
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), 0.4, rtol=1e-14)
    gram = w @ w.T if rows <= cols else w.T @ w
    np.testing.assert_allclose(gram, 0.16 * np.eye(min(rows, cols)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("hidden", [[3], [6, 2, 7], [5, 5, 5, 5], [8]])
def test_balanced_init_is_exactly_balanced(hidden):
    shapes = network.layer_shapes(5, hidden, 4)
    weights = init.balanced(shapes, 0.8, seed=1)
    # W_{l+1}ᵀW_{l+1} and W_lW_lᵀ are both R diag(a²) Rᵀ computed from orthonormal R (error ~ n·eps·a²).
    for b in network.balance(weights):
        assert np.max(np.abs(b)) <= 1e-13
    r = min(5, 4, *hidden)
    for w in weights:
        sv = np.linalg.svd(w, compute_uv=False)
        np.testing.assert_allclose(sv[:r], 0.8, rtol=1e-14)
        assert np.all(sv[r:] <= 1e-14)


@pytest.mark.parametrize("dims,lam", [((3, 3, 5), 0.0), ((3, 6, 4), 0.0), ((3, 3, 5), 1.5), ((5, 4, 2), -0.8),
                                      ((4, 4, 4), 3.0), ((4, 4, 4), -3.0), ((2, 3, 3), 50.0)])
def test_lambda_balanced_init_has_w2tw2_minus_w1w1t_equal_lambda_identity(dims, lam):
    n_in, h, n_out = dims
    w1, w2 = init.lambda_balanced(network.layer_shapes(n_in, [h], n_out), lam, 0.5, seed=3)
    # Entries of the grams are O(|λ| + s) with s ≤ 1 here; forming them costs ~h·eps of that
    # (seen: ≤ 1.1e-14·(|λ| + 0.25) over 20 seeds), so 1e-13·(|λ| + 1) is ~450 eps with margin.
    np.testing.assert_allclose(w2.T @ w2 - w1 @ w1.T, lam * np.eye(h), rtol=0, atol=1e-13 * (abs(lam) + 1))


def test_lambda_balanced_network_map_equals_the_gaussian_product_it_rebalances():
    # Documented meaning of scale: W2W1 = G2G1 for G_l the Gaussian draws of the same seed.
    shapes = network.layer_shapes(4, [3], 5)
    w1, w2 = init.lambda_balanced(shapes, 2.0, 0.5, seed=9)
    rng = np.random.default_rng(9)
    g1 = 0.5 * rng.standard_normal((3, 4))
    g2 = 0.5 * rng.standard_normal((5, 3))
    # SVD reconstruction of a 5×4 product of O(1) entries: ~10 eps.
    np.testing.assert_allclose(w2 @ w1, g2 @ g1, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dims,lam", [((5, 4, 2), 1.0), ((3, 6, 4), -1.0), ((2, 3, 3), -0.1)])
def test_lambda_balanced_dimension_conditions_are_errors_on_lambda(dims, lam):
    n_in, h, n_out = dims
    with pytest.raises(InvalidParameterError) as err:
        init.lambda_balanced(network.layer_shapes(n_in, [h], n_out), lam, 0.5, seed=0)
    assert err.value.field == ("init", "lambda")


def test_lambda_balanced_with_hidden_wider_than_both_sides_is_allowed_for_zero_lambda():
    w1, w2 = init.lambda_balanced(network.layer_shapes(2, [6], 3), 0.0, 0.5, seed=0)
    assert np.max(np.abs(w2.T @ w2 - w1 @ w1.T)) <= 1e-15


@pytest.mark.parametrize("hidden", [[], [3, 3]])
def test_lambda_balanced_needs_exactly_one_hidden_layer(problem, hidden):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, hidden, "lambda_balanced", lam=0.5)
    assert err.value.field == ("network", "hidden")


@pytest.mark.parametrize("hidden", [[], [2], [6, 3], [6, 7, 5, 6]])
def test_aligned_init_gives_exactly_the_requested_mode_strengths(problem, hidden):
    shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
    basis = mode_basis(problem)
    r = min(problem.n_in, problem.n_out, *hidden)
    strength = np.array([0.3, 1e-3, 2.0, 0.05])[:r]
    for seed in (None, 5):
        weights = init.aligned(problem, shapes, strength, seed=seed)
        u = mode_strengths(network.network_map(weights), basis)
        # (u0^{1/D})^D and D products of orthonormal frames: ~D·n·eps relative to max u0 = 2
        # (seen: 2.2e-15 absolute), so 1e-14 · max u0 = 45 eps.
        tol = 1e-14 * np.max(strength)
        np.testing.assert_allclose(u[:r], strength, rtol=0, atol=tol)
        assert np.all(np.abs(u[r:]) <= tol)
        # The decoupled map has no off-diagonal mode couplings: UᵀWV = diag(u).
        full = basis.u.T @ network.network_map(weights) @ basis.v
        assert np.max(np.abs(full - np.diag(np.diag(full)))) <= tol


def test_aligned_init_is_balanced_and_a_negative_strength_is_anti_aligned_on_the_last_layer(problem):
    shapes = network.layer_shapes(problem.n_in, [4, 4], problem.n_out)
    basis = mode_basis(problem)
    weights = init.aligned(problem, shapes, [0.5, -0.2, 0.1, -1e-3], seed=2)
    for b in network.balance(weights):
        assert np.max(np.abs(b)) <= 1e-15
    np.testing.assert_allclose(mode_strengths(network.network_map(weights), basis), [0.5, -0.2, 0.1, -1e-3],
                               rtol=0, atol=1e-15)
    # D = 2 form of the sign placement: a0 = −b0, Saxe's anti-balanced case (docs/theory.md#saxe-anti-balanced).
    w1, w2 = init.aligned(problem, network.layer_shapes(problem.n_in, [4], problem.n_out), -0.25)
    a0 = basis.v[:, 0] @ w1.T @ np.eye(4)[:, 0]
    b0 = basis.u[:, 0] @ w2 @ np.eye(4)[:, 0]
    assert a0 == pytest.approx(0.5, rel=1e-14) and b0 == pytest.approx(-0.5, rel=1e-14)


def test_aligned_strength_list_of_wrong_length_is_an_error(problem):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "aligned", strength=[0.1, 0.2])
    assert err.value.field == ("init", "strength")


def test_aligned_non_finite_strength_is_an_error_at_its_index(problem):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "aligned", strength=[0.1, float("nan"), 0.2])
    assert err.value.field == ("init", "strength", 1)


def test_given_weights_are_returned_as_float64_copies(problem):
    weights = [np.ones((3, 5), dtype=np.int64), np.zeros((4, 3))]
    out = init.initial_weights(problem, [3], "given", weights=weights)
    assert out[0].dtype == np.float64 and out[0] is not weights[0]


def test_given_weights_with_wrong_shape_name_the_layer(problem):
    with pytest.raises(ShapeError) as err:
        init.initial_weights(problem, [3], "given", weights=[np.ones((3, 5)), np.ones((3, 4))])
    assert err.value.field == ("init", "weights", 1)


def test_given_weights_with_wrong_layer_count_are_a_shape_error(problem):
    with pytest.raises(ShapeError) as err:
        init.initial_weights(problem, [3], "given", weights=[np.ones((3, 5))])
    assert err.value.field == ("init", "weights")


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), "big", True])
def test_scale_must_be_positive_and_finite(problem, scale):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "gaussian", scale=scale)
    assert err.value.field == ("init", "scale")


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_must_be_a_non_negative_integer(problem, seed):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "orthogonal", seed=seed)
    assert err.value.field == ("init", "seed")


def test_lambda_must_be_finite_under_either_name(problem):
    for params in ({"lam": float("inf")}, {"lambda": float("nan")}):
        with pytest.raises(InvalidParameterError) as err:
            init.initial_weights(problem, [3], "lambda_balanced", **params)
        assert err.value.field == ("init", "lambda")


def test_lambda_given_as_lambda_key_is_used(problem):
    w1, w2 = init.initial_weights(problem, [4], "lambda_balanced", **{"lambda": 0.7, "scale": 0.1})
    np.testing.assert_allclose(w2.T @ w2 - w1 @ w1.T, 0.7 * np.eye(4), rtol=0, atol=1e-14)


def test_unknown_scheme_is_an_error(problem):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "xavier")
    assert err.value.field == ("init", "scheme")


def test_parameter_the_scheme_does_not_read_is_an_error_but_none_is_ignored(problem):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3], "aligned", scale=0.1)
    assert err.value.field == ("init", "scale")
    init.initial_weights(problem, [3], "aligned", scale=None, strength=0.1)


def test_zero_hidden_width_is_an_error_on_the_network(problem):
    with pytest.raises(InvalidParameterError) as err:
        init.initial_weights(problem, [3, 0], "gaussian")
    assert err.value.field == ("network", "hidden", 1)
