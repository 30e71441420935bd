"""Built-in problems: the hierarchy's spectrum (docs/theory.md#hierarchy-tree), branching diffusion statistics
(docs/theory.md#branching-diffusion),
the whitened and random-teacher constructions, and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import presets
from service.dynamics.errors import InvalidParameterError
from service.dynamics.modes import mode_basis, optimum
from service.dynamics.problem import Problem


def _lca_depth(i: int, j: int, depth: int, branches: int = 2) -> int:
    """Depth of the lowest common ancestor of leaves i and j (root = 0, a leaf = depth)."""
    d = 0
    for level in range(depth - 1, -1, -1):
        if i // branches ** level != j // branches ** level:
            break
        d += 1
    return d


def test_hierarchy_depth3_singular_values_are_the_closed_form_values():
    # docs/theory.md#hierarchy-tree: √15/8, √7/8, √3/8 (×2), 1/8 (×4). SVD of an exact 15×8 matrix: ~10 eps.
    s = mode_basis(presets.hierarchy(3)).s
    expected = np.array([np.sqrt(15), np.sqrt(7)] + [np.sqrt(3)] * 2 + [1.0] * 4) / 8
    np.testing.assert_allclose(s, expected, rtol=1e-14)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_hierarchy_item_gram_eigenvalues_follow_the_level_formula(depth):
    # Eigenvalues of YᵀY: 2^{D+1} − 1 (uniform), 2^{D−k} − 1 with multiplicity 2^k (level-k splits).
    y = presets.hierarchy_targets(depth)
    expected = [2 ** (depth + 1) - 1] + [2 ** (depth - k) - 1 for k in range(depth) for _ in range(2 ** k)]
    # Integer matrix with eigenvalues ≤ 31: eigvalsh is accurate to ~n·eps·31 ≈ 1e-13.
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(y.T @ y))[::-1], sorted(expected, reverse=True),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_hierarchy_item_gram_is_ultrametric(depth):
    gram = presets.hierarchy_targets(depth).T @ presets.hierarchy_targets(depth)
    p = 2 ** depth
    expected = np.array([[_lca_depth(i, j, depth) + 1 for j in range(p)] for i in range(p)])
    assert np.array_equal(gram, expected)


def test_hierarchy_correlations_are_mean_statistics_of_one_hot_items():
    problem = presets.hierarchy(3)
    y = presets.hierarchy_targets(3)
    assert np.array_equal(problem.sigma11, np.eye(8) / 8)
    assert np.array_equal(problem.sigma31, y / 8)
    assert np.array_equal(problem.sigma33, y @ y.T / 8)
    assert problem.n_samples == 8


def test_hierarchy_depth2_is_the_pnas_toy_spectrum():
    # PNAS Fig. 3 toy data (4 items): singular values of Y are √7, √3, 1, 1.
    np.testing.assert_allclose(mode_basis(presets.hierarchy(2)).s * 4, [np.sqrt(7), np.sqrt(3), 1, 1], rtol=1e-14)


def test_hierarchy_is_learned_exactly_by_a_wide_enough_network():
    # One-hot inputs: W* = Σ31Σ11⁻¹ = Y, L* = tr Σ33 − Σσ_i(M)² = 0 (docs/theory.md#whitening, the fixed point).
    problem = presets.hierarchy(3)
    opt = optimum(problem, [8])
    np.testing.assert_allclose(opt.product, presets.hierarchy_targets(3), rtol=0, atol=1e-14)
    assert abs(opt.loss) <= 1e-14 * np.trace(problem.sigma33)


def test_hierarchy_labels_name_leaves_and_nodes():
    labels = presets.hierarchy_labels(2)
    assert labels["items"] == ["00", "01", "10", "11"]
    assert labels["features"] == ["root", "0", "1", "00", "01", "10", "11"]


def test_branching_diffusion_item_correlations_match_the_ultrametric_expectation():
    # E[y_i y_j] = (1 − 2p)^{2(D − d_LCA)} (docs/theory.md#branching-diffusion). y_i y_j = ±1, so one pair's
    # empirical mean over n features has standard error sqrt((1 − ρ²)/n) ≤ 0.01 at n = 10 000; 5 SE per pair
    # (28 pairs: P(any |z| > 5) ≈ 2e-5) while the levels' ρ = 0.49, 0.24, 0.12 differ by ≥ 12 SE.
    levels, p, n = 3, 0.15, 10_000
    problem = presets.branching_diffusion(levels=levels, flip_prob=p, n_features=n, seed=0)
    y = problem.sigma31 * 8                                       # features × items, entries ±1
    empirical = y.T @ y / n
    for i in range(8):
        for j in range(8):
            rho = (1 - 2 * p) ** (2 * (levels - _lca_depth(i, j, levels)))
            se = np.sqrt((1 - rho ** 2) / n)
            assert abs(empirical[i, j] - rho) <= 5 * se + 1e-15


def test_branching_diffusion_with_three_branches_has_the_same_law():
    levels, branches, p, n = 2, 3, 0.1, 20_000
    problem = presets.branching_diffusion(levels=levels, branches=branches, flip_prob=p, n_features=n, seed=1)
    y = problem.sigma31 * 9
    empirical = y.T @ y / n
    for i in range(9):
        for j in range(9):
            rho = (1 - 2 * p) ** (2 * (levels - _lca_depth(i, j, levels, branches)))
            assert abs(empirical[i, j] - rho) <= 5 * np.sqrt((1 - rho ** 2) / n) + 1e-15


def test_branching_diffusion_root_sign_is_a_fair_coin():
    # Root flip 0.5: every feature's mean over items is symmetric around 0. With n = 10 000 the mean
    # of the item-average has SE ≤ 1/sqrt(n) = 0.01; 5 SE.
    y = presets.branching_diffusion(n_features=10_000, seed=2).sigma31 * 8
    assert abs(y.mean()) <= 0.05


def test_branching_diffusion_is_reproducible_by_seed():
    a = presets.branching_diffusion(n_features=500, seed=4)
    b = presets.branching_diffusion(n_features=500, seed=4)
    c = presets.branching_diffusion(n_features=500, seed=5)
    assert np.array_equal(a.sigma31, b.sigma31) and not np.array_equal(a.sigma31, c.sigma31)


def test_branching_diffusion_drops_dense_sigma33_only_past_the_size_limit():
    small = presets.branching_diffusion(n_features=100, seed=0)
    y = small.sigma31 * 8
    np.testing.assert_allclose(small.sigma33, y @ y.T / 8, rtol=0, atol=1e-15)
    wide = presets.branching_diffusion(n_features=presets.MAX_DENSE_SIGMA33_OUTPUTS + 1, seed=0)
    assert wide.sigma33 is None and wide.n_out == presets.MAX_DENSE_SIGMA33_OUTPUTS + 1


def test_whitened_problem_has_identity_sigma11_and_the_requested_spectrum():
    problem = presets.whitened([0.5, 3.0, 2.0], 5, 4, seed=1)
    assert np.array_equal(problem.sigma11, np.eye(5))
    np.testing.assert_allclose(mode_basis(problem).s, [3.0, 2.0, 0.5, 0.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(problem.sigma33, problem.sigma31 @ problem.sigma31.T, rtol=0, atol=1e-15)
    # Noise-free teacher: a full-rank network reaches zero loss (tr Σ33 = 13.25, round-off ~1e-15·13).
    assert abs(optimum(problem, [4]).loss) <= 1e-13


def test_random_teacher_without_noise_is_fit_exactly_at_the_teacher_rank():
    problem = presets.random_teacher(n_in=6, n_out=5, n_samples=40, noise=0.0, seed=3, rank=2)
    s = mode_basis(problem).s
    # Σ31 = T Σ11 has rank 2: the third singular value is round-off (≤ 1e-14 of the first).
    assert s[2] <= 1e-14 * s[0] and s[1] > 1e-3 * s[0]
    assert abs(optimum(problem, [2]).loss) <= 1e-13 * np.trace(problem.sigma33)


def test_random_teacher_with_noise_leaves_the_noise_floor():
    # L* (full rank) is the in-sample residual: ≈ noise² · n_out · (N − n_in)/N = 0.04·3·0.9 = 0.108,
    # within a chi-square spread of relative SE sqrt(2/((N − n_in)·n_out)) ≈ 0.05 (tolerance 5 SE).
    problem = presets.random_teacher(n_in=20, n_out=3, n_samples=200, noise=0.2, seed=0)
    assert optimum(problem, []).loss == pytest.approx(0.04 * 3 * 0.9, rel=0.25)


def test_random_teacher_is_reproducible_by_seed():
    a = presets.random_teacher(seed=11)
    b = presets.random_teacher(seed=11)
    assert np.array_equal(a.sigma31, b.sigma31) and np.array_equal(a.sigma11, b.sigma11)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_registered_preset_builds_with_its_defaults(name):
    problem = presets.build_preset(name)
    assert isinstance(problem, Problem)
    spec = presets.PRESETS[name]
    assert all(p.description for p in spec.params)


def test_build_preset_passes_parameters():
    assert presets.build_preset("hierarchy", {"depth": 2}).n_in == 4


def test_unknown_preset_is_an_error_on_the_preset_field():
    with pytest.raises(InvalidParameterError) as err:
        presets.build_preset("xor")
    assert err.value.field == ("data", "name")


def test_unknown_preset_parameter_is_an_error_on_that_parameter():
    with pytest.raises(InvalidParameterError) as err:
        presets.build_preset("hierarchy", {"levels": 3})
    assert err.value.field == ("data", "levels")


@pytest.mark.parametrize("name,params,field", [
    ("hierarchy", {"depth": 0}, "depth"),
    ("hierarchy", {"depth": 11}, "depth"),
    ("branching_diffusion", {"flip_prob": 0.7}, "flip_prob"),
    ("branching_diffusion", {"branches": 1}, "branches"),
    ("branching_diffusion", {"levels": 11}, "levels"),
    ("whitened", {"singular_values": [1, 2, 3, 4, 5]}, "singular_values"),
    ("whitened", {"singular_values": [1, -2]}, "singular_values"),
    ("random_teacher", {"rank": 9}, "rank"),
    ("random_teacher", {"noise": -0.1}, "noise"),
    ("random_teacher", {"seed": -1}, "seed"),
])
def test_out_of_range_parameters_name_their_field(name, params, field):
    with pytest.raises(InvalidParameterError) as err:
        presets.build_preset(name, params)
    assert err.value.field == ("data", field)


def test_build_preset_uses_the_callers_field_prefix():
    with pytest.raises(InvalidParameterError) as err:
        presets.build_preset("hierarchy", {"depth": 0}, field_prefix=("problem",))
    assert err.value.field == ("problem", "depth")


def test_preset_labels_exist_only_for_named_items():
    assert presets.preset_labels("hierarchy")["items"][0] == "000"
    assert presets.preset_labels("branching_diffusion", {"levels": 2, "branches": 3})["items"][-1] == "22"
    assert presets.preset_labels("whitened") is None
