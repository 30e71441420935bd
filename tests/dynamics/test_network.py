"""Network map, loss, gradients, balance and the GD stability bound (docs/theory.md#gradient,
docs/theory.md#conservation, docs/theory.md#gd-stability)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dynamics import network, presets
from service.dynamics.errors import NonFiniteError, ShapeError
from service.dynamics.problem import problem_from_correlations, problem_from_data


def _data(rng, n, n_in, n_out):
    x = rng.standard_normal((n, n_in)) * rng.uniform(0.3, 2.0, n_in)  # non-whitened Σ11
    y = x @ rng.standard_normal((n_in, n_out)) + 0.5 * rng.standard_normal((n, n_out))
    return x, y


def _random_net(rng, n_in, hidden, n_out, scale=0.7):
    return [scale * rng.standard_normal(s) for s in network.layer_shapes(n_in, hidden, n_out)]


def _loss_terms_magnitude(problem, w):
    """C = tr Σ33 + 2|tr(WΣ31ᵀ)| + tr(WΣ11Wᵀ): the size of the terms whose cancellation sets the round-off of L."""
    return (np.trace(problem.sigma33) + 2 * abs(np.sum(w * problem.sigma31))
            + abs(np.sum((w @ problem.sigma11) * w)))


def _finite_difference_gradients(problem, weights, h=1e-6):
    grads = []
    for l, w in enumerate(weights):
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            plus = [x.copy() for x in weights]
            minus = [x.copy() for x in weights]
            plus[l][idx] += h
            minus[l][idx] -= h
            g[idx] = (network.loss(problem, network.network_map(plus))
                      - network.loss(problem, network.network_map(minus))) / (2 * h)
        grads.append(g)
    return grads


# Central differences with h = 1e-6: truncation error h²/6·|∂³L| ~ 1e-13 (the loss is a polynomial
# with O(1) coefficients here) and round-off error ~ eps·C/h ≈ 2.2e-10·C, where C bounds the
# magnitude of the cancelling terms of L. 1e-7·max(C, |g|) leaves a factor ≳ 100 over both while
# still catching any wrong term (a wrong factor or transpose changes g by O(|g|)).
FD_RTOL = 1e-7


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 5), widths=st.lists(st.integers(1, 4), min_size=6, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_gradients_match_central_finite_differences(depth, widths, seed):
    rng = np.random.default_rng(seed)
    n_in, n_out, hidden = widths[0], widths[1], widths[2:2 + depth - 1]
    x, y = _data(rng, 20, n_in, n_out)
    problem = problem_from_data(x, y)
    weights = _random_net(rng, n_in, hidden, n_out)
    analytic = network.gradients(problem, weights)
    numeric = _finite_difference_gradients(problem, weights)
    scale = max(_loss_terms_magnitude(problem, network.network_map(weights)),
                max(float(np.max(np.abs(g))) for g in analytic))
    for g_a, g_n in zip(analytic, numeric):
        assert np.max(np.abs(g_a - g_n)) <= FD_RTOL * scale


def _two_layer_case(seed=3):
    rng = np.random.default_rng(seed)
    x, y = _data(rng, 30, 4, 3)
    problem = problem_from_data(x, y)
    w21, w32 = _random_net(rng, 4, [5], 3)
    return problem, w21, w32


def test_two_layer_gradients_are_the_closed_forms():
    # docs/theory.md#gradient: −∂L/∂W32 = 2 (Σ31 − W32 W21 Σ11) W21ᵀ and −∂L/∂W21 = 2 W32ᵀ (Σ31 − W32 W21 Σ11).
    problem, w21, w32 = _two_layer_case()
    e = problem.sigma31 - w32 @ w21 @ problem.sigma11
    g21, g32 = network.gradients(problem, [w21, w32])
    # The same products, possibly associated differently: agreement to a few eps · (sum of |terms|),
    # bounded here by 1e-14 · |E| · |W| · width.
    scale = 2 * np.max(np.abs(e)) * max(np.max(np.abs(w21)), np.max(np.abs(w32))) * 5
    np.testing.assert_allclose(-g32, 2 * e @ w21.T, rtol=0, atol=1e-14 * scale)
    np.testing.assert_allclose(-g21, 2 * w32.T @ e, rtol=0, atol=1e-14 * scale)
    fd21, fd32 = _finite_difference_gradients(problem, [w21, w32])
    c = _loss_terms_magnitude(problem, w32 @ w21)
    assert np.max(np.abs(-2 * w32.T @ e - fd21)) <= FD_RTOL * c
    assert np.max(np.abs(-2 * e @ w21.T - fd32)) <= FD_RTOL * c


def test_sigma32_misprint_of_w21_gradient_disagrees_with_finite_differences():
    # Some texts print −∂L/∂W21 = 2 Σ32ᵀ(Σ31 − W32W21Σ11); W32ᵀ is right, see docs/theory.md#gradient-typo. With
    # Σ32 = (1/N) Y Hᵀ = Σ31 W21ᵀ (output–hidden correlation) the misprint has the right shape (h × n_in) but the
    # wrong value.
    problem, w21, w32 = _two_layer_case()
    e = problem.sigma31 - w32 @ w21 @ problem.sigma11
    sigma32 = problem.sigma31 @ w21.T
    typo = -2 * sigma32.T @ e
    fd21, _ = _finite_difference_gradients(problem, [w21, w32])
    assert typo.shape == fd21.shape
    # The discrepancy is O(|g|), 1e5× above the finite-difference accuracy used above.
    assert np.max(np.abs(typo - fd21)) > 1e-2 * np.max(np.abs(fd21))


def test_loss_from_correlations_equals_mean_squared_error_on_the_data():
    rng = np.random.default_rng(11)
    x, y = _data(rng, 200, 6, 4)
    problem = problem_from_data(x, y)
    weights = _random_net(rng, 6, [5, 3], 4, scale=0.5)
    w = network.network_map(weights)
    direct = np.mean(np.sum((y - x @ w.T) ** 2, axis=1))
    identity = np.trace(problem.sigma33) - 2 * np.trace(w @ problem.sigma31.T) + np.trace(w @ problem.sigma11 @ w.T)
    # Both sides are sums of O(N·d) terms of size O(C/N): round-off ≤ ~ d·eps·C ≈ 1e-14·C.
    c = _loss_terms_magnitude(problem, w)
    assert abs(network.loss(problem, w) - direct) <= 1e-13 * c
    assert abs(network.loss(problem, w) - identity) <= 1e-13 * c
    # Here C is within a small factor of L itself, so the agreement is also ~1e-13 relative to L.
    assert c < 20 * direct


def test_loss_is_none_without_sigma33_but_loss_without_sigma33_is_known():
    rng = np.random.default_rng(2)
    x, y = _data(rng, 50, 3, 2)
    full = problem_from_data(x, y)
    partial = problem_from_correlations(full.sigma11, full.sigma31)
    w = rng.standard_normal((2, 3))
    assert network.loss(partial, w) is None
    assert network.loss_without_sigma33(partial, w) == pytest.approx(
        network.loss(full, w) - np.trace(full.sigma33), rel=1e-13, abs=1e-13 * _loss_terms_magnitude(full, w))


def test_balance_is_the_difference_of_adjacent_grams():
    w1 = np.array([[1.0, 2.0]])          # 1 × 2
    w2 = np.array([[3.0], [4.0]])        # 2 × 1
    (b,) = network.balance([w1, w2])
    # W2ᵀW2 − W1W1ᵀ = (9 + 16) − (1 + 4) = 20, exactly.
    assert b.shape == (1, 1) and b[0, 0] == 20.0
    assert network.balance([w1]) == []
    assert network.balance_drift([w1], []) == 0.0


def test_compiled_record_diagnostics_match_the_numpy_gradient_norm_and_balance_drift():
    """simulate.record_diagnostics (one BLAS call per product) against network.gradients / balance on a
    depth-3 stack of 5 records. Both sum the same products in different orders: agreement to ~10 ulp of
    the largest term (entries O(1), sums of ≤ 7 products), so rtol 1e-13 with atol 1e-13 for the zero drift."""
    from service.dynamics.simulate import record_diagnostics

    rng = np.random.default_rng(21)
    x, y = _data(rng, 40, 4, 3)
    problem = problem_from_data(x, y)
    weights = [rng.standard_normal((5, *shape)) for shape in [(6, 4), (5, 6), (3, 5)]]
    grad_norm, drift = record_diagnostics(problem, weights, 0.1)
    grads = network.gradients(problem, weights, 0.1)
    expected_norm = np.sqrt(sum(np.einsum("tij,tij->t", g, g) for g in grads))
    expected_drift = np.max([np.max(np.abs(b - b[:1]), axis=(1, 2)) for b in network.balance(weights)], axis=0)
    np.testing.assert_allclose(grad_norm, expected_norm, rtol=1e-13)
    np.testing.assert_allclose(drift, expected_drift, rtol=1e-13, atol=1e-13)
    assert drift[0] == 0.0


def test_record_diagnostics_carry_a_non_finite_record_as_nan_or_inf():
    from service.dynamics.simulate import record_diagnostics

    rng = np.random.default_rng(22)
    problem = problem_from_data(*_data(rng, 40, 3, 2))
    weights = [rng.standard_normal((3, 4, 3)), rng.standard_normal((3, 2, 4))]
    weights[1][2, 0, 0] = np.nan
    grad_norm, drift = record_diagnostics(problem, weights, 0.0)
    assert np.all(np.isfinite(grad_norm[:2])) and np.all(np.isfinite(drift[:2]))
    assert not np.isfinite(grad_norm[2]) and not np.isfinite(drift[2])


def test_balance_is_conserved_by_the_gradient_field():
    # d/dt (W_{l+1}ᵀW_{l+1} − W_lW_lᵀ) along dW/dt = −∂L/∂W is W_{l+1}ᵀ Ġ_{l+1} + … = 0 identically
    # (docs/theory.md#conservation); the identity holds term by term, so the residual is round-off (~1e-15 · |W|²|G|).
    rng = np.random.default_rng(5)
    x, y = _data(rng, 40, 4, 3)
    problem = problem_from_data(x, y)
    weights = _random_net(rng, 4, [5, 2, 6], 3)
    grads = network.gradients(problem, weights)
    for l in range(len(weights) - 1):
        wl, wn, gl, gn = weights[l], weights[l + 1], -grads[l], -grads[l + 1]
        rate = (gn.T @ wn + wn.T @ gn) - (gl @ wl.T + wl @ gl.T)
        scale = max(np.max(np.abs(wn)) ** 2, np.max(np.abs(wl)) ** 2) * max(np.max(np.abs(gn)), np.max(np.abs(gl)))
        assert np.max(np.abs(rate)) <= 1e-13 * scale


def test_gd_stability_bound_for_linear_regression_is_inverse_largest_sigma11_eigenvalue():
    rng = np.random.default_rng(8)
    x, y = _data(rng, 60, 5, 2)
    problem = problem_from_data(x, y)
    assert network.gd_stability_bound(problem, 1) == pytest.approx(1 / np.linalg.eigvalsh(problem.sigma11)[-1],
                                                                     rel=1e-14)


def test_gd_stability_bound_for_whitened_two_layers_is_inverse_twice_top_singular_value():
    # docs/theory.md#gd-stability: η < 1/(D s_max^{2−2/D}) = 1/(2 s_max) for D = 2, Σ11 = I.
    problem = presets.whitened([2.5, 1.0, 0.25], 4, 3, seed=1)
    assert network.gd_stability_bound(problem, 2) == pytest.approx(1 / (2 * 2.5), rel=1e-13)


def test_check_weights_reports_ragged_and_non_finite_layers_with_their_index():
    shapes = network.layer_shapes(2, [2], 1)
    with pytest.raises(ShapeError) as ragged:
        network.check_weights([[[1.0, 2.0], [3.0]], [[1.0, 1.0]]], shapes)
    assert ragged.value.field == ("init", "weights", 0)
    with pytest.raises(NonFiniteError) as nan:
        network.check_weights([np.eye(2), np.array([[1.0, np.nan]])], shapes)
    assert nan.value.field == ("init", "weights", 1, 0, 1)
