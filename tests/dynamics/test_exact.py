"""Closed forms of service.dynamics.exact against independent test vectors and brute-force integration.

The theory each closed form implements is in docs/theory.md (anchors below). Brute force = scipy solve_ivp DOP853
at rtol 1e-11 on the matrix flow built from
service.dynamics.network.gradients, or plain matrix GD. Tolerances: ~1e-9 absolute against the ODE (its rtol
1e-11 accumulated over O(10–100) time units and amplified along sigmoidal transitions), 1e-10 relative against
the printed test vectors (they are printed to 10–16 digits), 1e-12 against matrix GD (same arithmetic, different
order of operations).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

from service.dynamics import exact as ex
from service.dynamics import network, presets
from service.dynamics.errors import ExactNotApplicableError
from service.dynamics.exact import riccati
from service.dynamics.init import initial_weights
from service.dynamics.problem import problem_from_correlations

# ------------------------------------------------------------------------------------------------
# helpers


def rand_orth(n: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def task(n_in: int, n_out: int, svals, rng, c: float = 1.0):
    """Problem with Σ11 = c I and Σ31 = U diag(svals) Vᵀ; returns (problem, U, V) with the exact frames."""
    u, v = rand_orth(n_out, rng), rand_orth(n_in, rng)
    s = np.zeros((n_out, n_in))
    s[:len(svals), :len(svals)] = np.diag(svals)
    return problem_from_correlations(c * np.eye(n_in), u @ s @ v.T), u, v


def aligned_two_layer(u, v, r, a, b):
    """W21 = R A Vᵀ, W32 = U B Rᵀ with A, B rectangular diagonal (docs/theory.md#saxe-two-layer)."""
    nh = r.shape[0]
    am = np.zeros((nh, v.shape[0]))
    bm = np.zeros((u.shape[0], nh))
    am[np.arange(len(a)), np.arange(len(a))] = a
    bm[np.arange(len(b)), np.arange(len(b))] = b
    return [r @ am @ v.T, u @ bm @ r.T]


def aligned_deep(u, v, frames, a, signs=None):
    """W_l = R_{l+1} diag(a_l) R_lᵀ with R_1 = V, R_{D+1} = U; ``frames`` the hidden R_l; balanced |a_l| = a."""
    rs = [v] + list(frames) + [u]
    d = len(rs) - 1
    signs = np.ones((d, len(a))) if signs is None else np.asarray(signs, dtype=float)
    out = []
    for l in range(d):
        m = np.zeros((rs[l + 1].shape[0], rs[l].shape[0]))
        m[np.arange(len(a)), np.arange(len(a))] = signs[l] * np.asarray(a)
        out.append(rs[l + 1] @ m @ rs[l].T)
    return out


def lambda_balanced_init(ni, nh, no, lam, scale, rng):
    """Random, task-unaligned W21 = R S1 Vᵀ, W32 = U S2 Rᵀ with s2² − s1² = λ (docs/theory.md#riccati)."""
    r, v, u = rand_orth(nh, rng), rand_orth(ni, rng), rand_orth(no, rng)
    if lam >= 0:
        s1 = np.zeros(nh)
        k = min(nh, ni, no) if lam == 0 else min(nh, ni)
        s1[:k] = scale * rng.uniform(0.5, 1.5, k)
        s2 = np.sqrt(s1 ** 2 + lam)
    else:
        s2 = np.zeros(nh)
        k = min(nh, no)
        s2[:k] = scale * rng.uniform(0.5, 1.5, k)
        s1 = np.sqrt(s2 ** 2 - lam)
    m1 = np.zeros((nh, ni))
    m1[np.arange(min(nh, ni)), np.arange(min(nh, ni))] = s1[:min(nh, ni)]
    m2 = np.zeros((no, nh))
    m2[np.arange(min(no, nh)), np.arange(min(no, nh))] = s2[:min(no, nh)]
    return [r @ m1 @ v.T, u @ m2 @ r.T]


def matrix_flow(problem, weights, times, weight_decay=0.0):
    """Brute-force gradient flow dW_l/dt = −∂L/∂W_l − γW_l (DOP853, rtol 1e-11); weights at each time."""
    shapes = [w.shape for w in weights]
    cuts = np.cumsum([w.size for w in weights])[:-1]

    def unpack(y):
        return [p.reshape(s) for p, s in zip(np.split(y, cuts), shapes)]

    def rhs(_, y):
        return -np.concatenate([g.ravel() for g in network.gradients(problem, unpack(y), weight_decay)])

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.concatenate([w.ravel() for w in weights]), t_eval=times,
                    method="DOP853", rtol=1e-11, atol=1e-13)
    assert sol.success
    return [unpack(sol.y[:, k]) for k in range(len(times))]


def matrix_gd(problem, weights, eta, steps, weight_decay=0.0):
    ws = [w.copy() for w in weights]
    for _ in range(steps):
        gs = network.gradients(problem, ws, weight_decay)
        ws = [w - eta * g for w, g in zip(ws, gs)]
    return ws


def scalar_ode(rhs, y0, times, rtol=1e-12, atol=1e-14):
    sol = solve_ivp(lambda t, y: rhs(y), (0.0, float(times[-1])), np.atleast_1d(y0), t_eval=times,
                    method="DOP853", rtol=rtol, atol=atol)
    assert sol.success
    return sol.y


# ------------------------------------------------------------------------------------------------
# test vectors A1–D2: values of the closed forms computed independently of this code (by ODE integration where
# no closed form was at hand), printed to 10–16 digits


def test_balanced_mode_matches_test_vector_a1():
    u = ex.balanced_mode(np.array([0.5, 1.0, 2.0]), 2.0, 1e-3)
    np.testing.assert_allclose(u, [0.05317315856781722, 1.1971819821767304, 1.9995501855607454], rtol=1e-13)


def test_half_time_matches_test_vector_a2():
    a0 = np.sqrt(1e-3)
    assert ex.half_time_two_layer(2.0, a0, a0) == pytest.approx(0.95005029181255, rel=1e-13)


def test_gd_balanced_map_matches_test_vector_a3():
    u = ex.gd_balanced_mode(1e-3, 2.0, 0.01, [0, 100], depth=2)
    np.testing.assert_allclose(u[:, 0], [1e-3, 1.1454400852713853], rtol=1e-13)


def test_unbalanced_mode_matches_test_vector_b1():
    a, b = ex.two_layer_mode(0.5, 2.0, 0.05, 0.2)
    assert a * b == pytest.approx(0.6023903773104792, rel=1e-12)


def test_deep_mode_matches_test_vector_c1():
    # C1 was printed with 10 decimals (ODE at rtol 1e-12): half a unit of the last printed digit
    u = ex.deep_balanced_mode(np.array([0.5, 1.0, 2.0]), 2.0, 1e-3, 3)
    np.testing.assert_allclose(u, [0.0019520956, 0.0046193668, 0.1147373578], rtol=0, atol=5e-11)


ROT30 = np.array([[np.cos(np.pi / 6), -np.sin(np.pi / 6)], [np.sin(np.pi / 6), np.cos(np.pi / 6)]])


@pytest.mark.parametrize("w21, w32, expected", [
    (0.3 * ROT30, 0.3 * np.eye(2), [[1.4081856502, -0.0241634863], [0.0241634863, 0.4027928320]]),
    (0.2 * ROT30, np.sqrt(1.04) * np.eye(2), [[1.8628702136, -0.0141174814], [0.0141174814, 0.8178645254]]),
], ids=["D1_zero_balanced", "D2_lambda_1"])
def test_riccati_matches_test_vectors_d1_d2(w21, w32, expected):
    sol = ex.riccati_flow(np.diag([2.0, 1.0]), w21, w32, [0.5])
    np.testing.assert_allclose(sol.product[0], expected, atol=1e-10)  # printed to 10 decimals


# ------------------------------------------------------------------------------------------------
# two-layer modes (docs/theory.md#saxe-two-layer, docs/theory.md#whitening)


@pytest.mark.parametrize("c", [1.0, 1 / 6, 3.0])
def test_balanced_mode_matches_scaled_whitening_formula_and_ode(c):
    s, u0 = 1.3, 2e-3
    t = np.linspace(0, 4, 41)
    ref = (s / c) * np.exp(4 * s * t) / (np.exp(4 * s * t) - 1 + s / (c * u0))   # docs/theory.md#whitening
    np.testing.assert_allclose(ex.balanced_mode(t, s, u0, c), ref, rtol=1e-12)
    ode = scalar_ode(lambda y: 4 * y * (s - c * y), u0, t)[0]
    np.testing.assert_allclose(ex.balanced_mode(t, s, u0, c), ode, rtol=1e-9)


def test_antibalanced_mode_matches_the_closed_form_and_decays():
    s, u0 = 2.0, -0.3
    t = np.linspace(0, 3, 31)
    ref = s * u0 * np.exp(-4 * s * t) / (s - u0 + u0 * np.exp(-4 * s * t))   # docs/theory.md#saxe-anti-balanced
    u = ex.balanced_mode(t, s, u0)
    np.testing.assert_allclose(u, ref, rtol=1e-12)
    assert np.all(u < 0) and np.all(np.diff(u) > 0) and abs(u[-1]) < 1e-10   # decays to the saddle, never crosses


@pytest.mark.parametrize("a0, b0, s, c", [
    (0.05, 0.02, 2.0, 1.0), (0.02, 0.3, 2.0, 1.0), (0.3, -0.1, 2.0, 1.0), (1.5, 0.1, 2.0, 1.0),
    (0.01, -0.5, 2.0, 1.0), (0.05, 0.02, 2.0, 0.3), (0.3, -0.1, 0.0, 1.0), (0.0, 0.2, 1.0, 2.0),
    (0.05, 0.05 + 1e-9, 1.5, 1.0), (0.4, -0.4, 1.0, 0.5), (3.0, 2.5, 1.0, 1.0),
])
def test_two_layer_mode_matches_scalar_ode_for_any_signs(a0, b0, s, c):
    t = np.linspace(0, 5, 51)
    ode = scalar_ode(lambda y: np.array([2 * y[1] * (s - c * y[0] * y[1]), 2 * y[0] * (s - c * y[0] * y[1])]),
                     [a0, b0], t)
    a, b = ex.two_layer_mode(t, s, a0, b0, c)
    np.testing.assert_allclose(a, ode[0], atol=1e-10)
    np.testing.assert_allclose(b, ode[1], atol=1e-10)


@pytest.mark.parametrize("a0, b0, s, c, frac", [
    (0.05, 0.02, 2.0, 1.0, 0.9), (0.02, 0.3, 2.0, 0.5, 0.5), (0.3, -0.1, 2.0, 1.0, 0.5), (0.03, 0.03, 1.0, 2.0, 0.5),
])
def test_two_layer_learning_time_matches_ode_event(a0, b0, s, c, frac):
    uf = frac * s / c
    t_pred = float(ex.learning_time_two_layer(uf, s, a0, b0, c))
    ev = solve_ivp(lambda t, y: [2 * y[1] * (s - c * y[0] * y[1]), 2 * y[0] * (s - c * y[0] * y[1])],
                   (0, 3 * t_pred), [a0, b0], method="DOP853", rtol=1e-12, atol=1e-14,
                   events=lambda t, y: y[0] * y[1] - uf)
    assert t_pred == pytest.approx(ev.t_events[0][0], rel=1e-9)


def test_learning_time_is_nan_where_the_mode_never_gets_there():
    assert np.isnan(ex.learning_time_two_layer(1.0, 2.0, 0.1, -0.1))     # anti-balanced: decays to 0
    assert np.isnan(ex.learning_time_two_layer(2.5, 2.0, 0.1, 0.1))      # beyond the fixed point s/c
    assert np.isnan(ex.half_time_deep(0.0, 0.1, 3))                      # s = 0 never learns


def test_balanced_mode_with_weight_decay_matches_matrix_flow():
    rng = np.random.default_rng(11)
    pb, u, v = task(3, 3, [2.0, 1.0, 0.3], rng, c=0.8)
    gamma = 0.9                      # s' = s − γ/2 < 0 for the last mode: it decays instead of learning
    ws = aligned_two_layer(u, v, rand_orth(3, rng), [0.05, 0.1, 0.2], [0.05, -0.1, 0.2])
    t = np.linspace(0, 3, 7)
    ode = matrix_flow(pb, ws, t, gamma)
    run = ex.exact_run(pb, ws, t, weight_decay=gamma)
    assert run.model == ex.MODEL_MODES
    for k in range(len(t)):
        for l in range(2):
            np.testing.assert_allclose(run.weights[l][k], ode[k][l], atol=1e-9)
        assert run.gradient_norm[k] == pytest.approx(network.gradient_norm(network.gradients(pb, ode[k], gamma)),
                                                     rel=1e-7, abs=1e-9)


def test_exact_run_unbalanced_aligned_init_matches_matrix_flow():
    # n_in = 4, n_h = 3, n_out = 5, c = 0.5; mixed signs, one mode with a = 0 (b ≠ 0) and one anti-balanced
    rng = np.random.default_rng(2)
    pb, u, v = task(4, 5, [2.5, 1.2, 0.7, 0.4], rng, c=0.5)
    ws = aligned_two_layer(u, v, rand_orth(3, rng), [0.05, 0.0, 0.02], [0.01, -0.3, -0.02])
    t = np.linspace(0, 5, 11)
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    assert run.model == ex.MODEL_MODES
    for k in range(len(t)):
        np.testing.assert_allclose(run.product[k], ode[k][1] @ ode[k][0], atol=1e-9)
        np.testing.assert_allclose(run.weights[0][k], ode[k][0], atol=1e-9)
        np.testing.assert_allclose(run.weights[1][k], ode[k][1], atol=1e-9)
        assert run.gradient_norm[k] == pytest.approx(network.gradient_norm(network.gradients(pb, ode[k])),
                                                     rel=1e-7, abs=1e-9)
    # the fourth mode has no hidden unit: it stays at 0
    assert np.max(np.abs(u[:, 3] @ run.product @ v[:, 3])) < 1e-14


def test_exact_run_with_degenerate_singular_values_and_rotated_init():
    # s = (2, 2, 1): an init diagonal only in a rotated basis of the degenerate block (distinct amplitudes there)
    rng = np.random.default_rng(4)
    pb, u, v = task(3, 3, [2.0, 2.0, 1.0], rng)
    rot = np.eye(3)
    rot[:2, :2] = [[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]]
    ws = aligned_two_layer(u @ rot, v @ rot, rand_orth(3, rng), [0.01, 0.2, 0.05], [0.01, 0.2, -0.05])
    t = np.linspace(0, 3, 7)
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    for k in range(len(t)):
        np.testing.assert_allclose(run.product[k], ode[k][1] @ ode[k][0], atol=1e-9)


def test_exact_run_with_rank_deficient_sigma31_and_null_directions():
    # Σ31 of rank 1 (3 → 4): null-space directions carry non-zero, unbalanced amplitudes that must decay
    rng = np.random.default_rng(6)
    pb, u, v = task(3, 4, [1.5], rng)
    r = rand_orth(3, rng)
    w21 = r @ np.diag([0.1, 0.2, 0.3]) @ v.T
    w32 = u[:, :3] @ np.diag([0.1, 0.4, 0.0]) @ r.T
    ws = [w21, w32]
    assert ex.check_exact(pb, ws) == ex.MODEL_MODES
    t = np.linspace(0, 4, 9)
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    for k in range(len(t)):
        np.testing.assert_allclose(run.weights[0][k], ode[k][0], atol=1e-9)
        np.testing.assert_allclose(run.weights[1][k], ode[k][1], atol=1e-9)


def test_zero_init_stays_at_the_saddle():
    rng = np.random.default_rng(1)
    pb, _, _ = task(3, 2, [1.0, 0.5], rng)
    run = ex.exact_run(pb, [np.zeros((4, 3)), np.zeros((2, 4))], np.array([0.0, 10.0]))
    assert np.all(run.product == 0)


# ------------------------------------------------------------------------------------------------
# deep balanced modes (docs/theory.md#saxe-deep)


@pytest.mark.parametrize("depth", [3, 4, 6])
@pytest.mark.parametrize("s, u0, c", [(2.0, 1e-3, 1.0), (1.0, 3.0, 1.0), (1.5, -0.2, 1.0), (2.0, 1e-3, 0.5),
                                      (0.0, 0.3, 2.0), (2.0, -1e-3, 1.0)])
def test_deep_balanced_mode_matches_scalar_ode(depth, s, u0, c):
    t = np.linspace(0, 5, 51)
    # atol 1e-300: only relative error control, the strengths span 1e-3 … 4 (and decay towards 0)
    ode = scalar_ode(lambda y: 2 * depth * np.abs(y) ** (2 - 2 / depth) * (s - c * y), u0, t, rtol=1e-13,
                     atol=1e-300)[0]
    np.testing.assert_allclose(ex.deep_balanced_mode(t, s, u0, depth, c), ode, rtol=1e-10)


@pytest.mark.parametrize("depth", [3, 5, 10])
def test_deep_learning_time_matches_quadrature(depth):
    # docs/theory.md#saxe-deep: t = (τ/D) ∫ dv / (v^{2−2/D}(s − v)), by quadrature in w = ln v
    s, u0, uf = 2.0, 1e-3, 1.8
    val, _ = quad(lambda w: np.exp(w) / (np.exp(w) ** (2 - 2 / depth) * (s - np.exp(w))), np.log(u0), np.log(uf),
                  epsabs=0, epsrel=1e-13, limit=200)
    assert ex.learning_time_deep(uf, s, u0, depth) == pytest.approx(0.5 / depth * val, rel=1e-10)


def test_deep_learning_time_approaches_small_u0_asymptotics():
    # docs/theory.md#saxe-deep: t(u0 → s/2) / (τ/((D − 2) s u0^{(D−2)/D})) = 0.93668, 0.99457, 0.99947, 0.99995
    # for D = 4 (computed independently)
    s, d = 1.0, 4
    ratios = [float(ex.learning_time_deep(0.5 * s, s, u0, d)) / (0.5 / ((d - 2) * s * u0 ** ((d - 2) / d)))
              for u0 in (1e-2, 1e-4, 1e-6, 1e-8)]
    np.testing.assert_allclose(ratios, [0.93668, 0.99457, 0.99947, 0.99995], atol=5e-6)   # printed to 5 decimals


@pytest.mark.parametrize("depth, c", [(3, 1.0), (4, 0.4)])
def test_exact_run_deep_balanced_matches_matrix_flow(depth, c):
    rng = np.random.default_rng(depth)
    pb, u, v = task(3, 4, [2.0, 1.0, 0.6], rng, c=c)
    frames = [rand_orth(4, rng) for _ in range(depth - 1)]
    signs = np.ones((depth, 3))
    signs[0, 2] = -1.0                                  # one mode with u0 < 0: decays to the saddle
    ws = aligned_deep(u, v, frames, [0.3, 0.25, 0.3], signs)
    assert ex.check_exact(pb, ws) == ex.MODEL_DEEP
    t = np.linspace(0, 3, 7)
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    for k in range(len(t)):
        for l in range(depth):
            np.testing.assert_allclose(run.weights[l][k], ode[k][l], atol=1e-9)
        assert run.gradient_norm[k] == pytest.approx(network.gradient_norm(network.gradients(pb, ode[k])),
                                                     rel=1e-7, abs=1e-9)


def test_exact_run_deep_with_input_null_directions_and_narrow_layers():
    # 3 → 4 → 2 → 2: the input null direction of Σ31 maps to round-off in W21 and must not become a channel
    rng = np.random.default_rng(31)
    pb, u, v = task(3, 2, [1.5, 0.7], rng)
    ws = aligned_deep(u, v, [rand_orth(4, rng), rand_orth(2, rng)], [0.2, 0.15])
    assert ex.check_exact(pb, ws) == ex.MODEL_DEEP
    t = np.linspace(0, 3, 4)
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    for k in range(len(t)):
        np.testing.assert_allclose(run.product[k], ode[k][2] @ ode[k][1] @ ode[k][0], atol=1e-9)


def test_antibalanced_mode_factors_vanish_at_the_saddle():
    # a0 = −b0 up to round-off: both factors must go to 0 with u (a round-off imbalance Δ would leave √Δ ~ 1e-9)
    rng = np.random.default_rng(32)
    pb, u, v = task(2, 2, [1.0, 0.5], rng)
    r = rand_orth(2, rng)
    ws = aligned_two_layer(u, v, r, [0.1, 0.1], [0.1, -0.1])
    run = ex.exact_run(pb, ws, np.array([0.0, 200.0]))
    assert abs(r[:, 1] @ run.weights[0][-1] @ v[:, 1]) < 1e-15
    assert abs(u[:, 1] @ run.weights[1][-1] @ r[:, 1]) < 1e-15


# ------------------------------------------------------------------------------------------------
# exact GD (docs/theory.md#exact-gd)


@pytest.mark.parametrize("depth", [2, 3])
def test_gd_mode_map_matches_matrix_gd_with_scaled_whitening_and_decay(depth):
    rng = np.random.default_rng(9)
    c, eta, gamma, steps = 0.5, 0.02, 0.1, 150
    pb, u, v = task(3, 3, [2.0, 1.0, 0.5], rng, c=c)
    amps = np.array([[0.2, 0.05, 0.3], [0.1, -0.4, 0.3], [0.3, 0.2, 0.1]])[:depth].T   # unbalanced per layer
    rs = [v] + [rand_orth(3, rng) for _ in range(depth - 1)] + [u]
    ws = [rs[l + 1] @ np.diag(amps[:, l]) @ rs[l].T for l in range(depth)]
    gd = matrix_gd(pb, ws, eta, steps, gamma)
    res = ex.gd_mode_map(amps, [2.0, 1.0, 0.5], eta, [steps], c=c, weight_decay=gamma)[0]
    for l in range(depth):
        np.testing.assert_allclose(rs[l + 1] @ np.diag(res[:, l]) @ rs[l].T, gd[l], atol=1e-13)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_shallow_flow_matches_matrix_flow_for_singular_sigma11(gamma):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4))                 # rank-2 Σ11 on 4 inputs
    s11 = x.T @ x / 2
    s31 = rng.standard_normal((3, 2)) @ x / 2       # Σ31 in the range of Σ11, as for real data
    pb = problem_from_correlations(s11, s31)
    w0 = [0.1 * rng.standard_normal((3, 4))]
    t = np.linspace(0, 2, 5)
    ode = matrix_flow(pb, w0, t, gamma)
    run = ex.exact_run(pb, w0, t, weight_decay=gamma)
    assert run.model == ex.MODEL_SHALLOW
    for k in range(len(t)):
        np.testing.assert_allclose(run.product[k], ode[k][0], atol=1e-10)


def test_shallow_gd_matches_matrix_gd_and_the_closed_form():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 4))
    pb = problem_from_correlations(a @ a.T / 4 + 0.1 * np.eye(4), rng.standard_normal((2, 4)))
    w0 = rng.standard_normal((2, 4))
    eta, gamma, k = 0.05, 0.2, 37
    gd = matrix_gd(pb, [w0], eta, k, gamma)[0]
    w = ex.shallow_solution(pb, w0, learning_rate=eta, steps=[k], weight_decay=gamma)[0]
    np.testing.assert_allclose(w, gd, atol=1e-13)
    # docs/theory.md#exact-gd-shallow with γ = 0: W_k = W* + (W0 − W*)(I − 2ηΣ11)^k
    ws = pb.sigma31 @ np.linalg.inv(pb.sigma11)
    ref = ws + (w0 - ws) @ np.linalg.matrix_power(np.eye(4) - 2 * eta * pb.sigma11, k)
    np.testing.assert_allclose(ex.shallow_solution(pb, w0, learning_rate=eta, steps=[k])[0], ref, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Riccati (docs/theory.md#riccati)


@pytest.mark.parametrize("ni, nh, no, lam", [(3, 3, 3, 0.0), (3, 3, 5, 0.0), (3, 6, 4, 0.0), (3, 3, 5, 1.5),
                                             (5, 4, 2, -0.8), (4, 4, 4, 3.0), (4, 4, 4, -3.0)])
def test_riccati_matches_matrix_flow(ni, nh, no, lam):
    rng = np.random.default_rng(10 * ni + nh + no)
    pb = problem_from_correlations(np.eye(ni), rng.standard_normal((no, ni)))
    ws = lambda_balanced_init(ni, nh, no, lam, 0.4, rng)
    assert ex.check_exact(pb, ws) in (ex.MODEL_RICCATI, ex.MODEL_MODES)
    t = np.array([0.0, 0.5, 1.5, 4.0])
    ode = matrix_flow(pb, ws, t)
    sol = ex.riccati_flow(pb.sigma31, ws[0], ws[1], t)
    assert sol.lam == pytest.approx(lam, abs=1e-12)
    for k in range(len(t)):
        w21, w32 = ode[k]
        np.testing.assert_allclose(sol.product[k], w32 @ w21, atol=1e-9)
        np.testing.assert_allclose(sol.w21_gram[k], w21.T @ w21, atol=1e-9)
        np.testing.assert_allclose(sol.w32_gram[k], w32 @ w32.T, atol=1e-9)
    run = ex.exact_run(pb, ws, t)
    grad = [network.gradient_norm(network.gradients(pb, o)) for o in ode]
    np.testing.assert_allclose(run.gradient_norm, grad, rtol=1e-7, atol=1e-9)


def test_riccati_with_scaled_whitening_matches_matrix_flow():
    rng = np.random.default_rng(21)
    c = 0.25
    pb = problem_from_correlations(c * np.eye(3), rng.standard_normal((4, 3)))
    ws = lambda_balanced_init(3, 3, 4, 0.7, 0.5, rng)
    t = np.array([0.0, 1.0, 3.0])
    ode = matrix_flow(pb, ws, t)
    run = ex.exact_run(pb, ws, t)
    assert run.model == ex.MODEL_RICCATI and run.weights is None
    for k in range(len(t)):
        np.testing.assert_allclose(run.product[k], ode[k][1] @ ode[k][0], atol=1e-9)


def _one_shot(p0, f, x):
    mu, o = np.linalg.eigh(f)
    e = o @ np.diag(np.exp(mu * x)) @ o.T
    kd = o @ np.diag(np.where(np.abs(mu) > 1e-14, np.expm1(2 * mu * x) / (2 * np.where(mu != 0, mu, 1)), x)) @ o.T
    return e @ p0 @ np.linalg.solve(np.eye(len(mu)) + kd @ p0, e)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_chunked_riccati_matches_ode_at_x60_where_one_shot_fails(lam):
    rng = np.random.default_rng(5)
    pb, _, _ = task(4, 4, [2.0, 1.3, 0.8, 0.4], rng)
    ws = lambda_balanced_init(4, 4, 4, lam, 0.4, rng)
    ode = matrix_flow(pb, ws, np.array([0.0, 30.0]))[-1]                 # x = 2t = 60
    sol = ex.riccati_flow(pb.sigma31, ws[0], ws[1], [30.0])
    np.testing.assert_allclose(sol.product[0], ode[1] @ ode[0], atol=1e-10)
    q0 = np.vstack([ws[0].T, ws[1]])
    f = np.block([[-(lam / 2) * np.eye(4), pb.sigma31.T], [pb.sigma31, (lam / 2) * np.eye(4)]])
    with np.errstate(all="ignore"):
        try:
            bad = _one_shot(q0 @ q0.T, f, 60.0)[4:, :4]
            err = np.max(np.abs(bad - ode[1] @ ode[0]))
        except np.linalg.LinAlgError:
            err = np.inf
    assert not err < 1e-3        # docs/theory.md#riccati-evaluation: in one step it is O(1) off, or singular


@pytest.mark.parametrize("lam", [0.0, 2.0, -1.0])
def test_riccati_limits_of_the_gram_blocks(lam):
    # docs/theory.md#riccati-limits: W21ᵀW21 → Ṽ diag((√(λ² + 4s²) − λ)/2) Ṽᵀ, W32W32ᵀ → Ũ diag((√(λ² + 4s²) + λ)/2) Ũᵀ
    rng = np.random.default_rng(8)
    s = np.array([2.0, 1.3, 0.8])
    pb, u, v = task(3, 3, s, rng)
    ws = lambda_balanced_init(3, 3, 3, lam, 0.4, rng)
    sol = ex.riccati_flow(pb.sigma31, ws[0], ws[1], [200.0])
    root = np.sqrt(lam ** 2 + 4 * s ** 2)
    np.testing.assert_allclose(sol.product[0], pb.sigma31, atol=1e-12)
    np.testing.assert_allclose(sol.w21_gram[0], v @ np.diag((root - lam) / 2) @ v.T, atol=1e-12)
    np.testing.assert_allclose(sol.w32_gram[0], u @ np.diag((root + lam) / 2) @ u.T, atol=1e-12)


@pytest.mark.parametrize("ni, no, lam", [(4, 4, 0.0), (4, 4, 2.0), (3, 5, 0.0), (5, 3, -0.5)])
def test_riccati_cost_does_not_grow_with_t_max(ni, no, lam):
    rng = np.random.default_rng(ni + 3 * no)
    pb, _, _ = task(ni, no, [2.0, 1.0, 0.5], rng)
    nh = 3
    ws = lambda_balanced_init(ni, nh, no, lam, 0.3, rng)
    short = ex.riccati_flow(pb.sigma31, ws[0], ws[1], np.linspace(0, 1e2, 50))
    long = ex.riccati_flow(pb.sigma31, ws[0], ws[1], np.linspace(0, 1e6, 50))
    assert long.chunk_evaluations <= 1.2 * short.chunk_evaluations + 5
    # and it is still exact: at the end, the limit (λ = 0 with Ni ≠ No: the null directions decay like 1/t)
    ode = matrix_flow(pb, ws, np.array([0.0, 60.0]))[-1]
    mid = ex.riccati_flow(pb.sigma31, ws[0], ws[1], [60.0])
    np.testing.assert_allclose(mid.w21_gram[0], ode[0].T @ ode[0], atol=1e-9)
    np.testing.assert_allclose(long.product[-1], pb.sigma31, atol=1e-12)


def test_riccati_slow_block_decays_algebraically_for_zero_lambda():
    # λ = 0, Σ31 of rank 2 on 4 → 3 with 3 hidden units: one hidden unit is left over and lives on the null spaces,
    # where μ = 0: its s = 0 balanced mode has a² = 1/(4t + 1/a_c²) → 1/(4t) in W21ᵀW21, long after everything
    # else has converged. The evaluation must follow this algebraic decay at a bounded number of chunks.
    rng = np.random.default_rng(12)
    pb, _, v = task(4, 3, [1.0, 0.5], rng)
    ws = lambda_balanced_init(4, 3, 3, 0.0, 0.3, rng)
    t = np.array([0.0, 50.0, 1000.0])
    ode = matrix_flow(pb, ws, t)
    sol = ex.riccati_flow(pb.sigma31, ws[0], ws[1], np.concatenate([t, [1e5]]))
    for k in range(len(t)):
        np.testing.assert_allclose(sol.w21_gram[k], ode[k][0].T @ ode[k][0], atol=1e-9)
    null = v[:, 2:] @ v[:, 2:].T
    # at t = 1e5 the 1/a_c² offset is ~1e-4 of 4t (it was ~1 at t ~ 1)
    assert np.trace(null @ sol.w21_gram[-1]) * 4e5 == pytest.approx(1.0, rel=1e-3)
    assert sol.chunk_evaluations < 300


# ------------------------------------------------------------------------------------------------
# which closed form, and why not


def test_check_exact_names_the_model():
    rng = np.random.default_rng(0)
    pb, u, v = task(3, 3, [2.0, 1.0, 0.5], rng)
    assert ex.check_exact(pb, [rng.standard_normal((3, 3))]) == ex.MODEL_SHALLOW
    assert ex.check_exact(pb, aligned_two_layer(u, v, np.eye(2), [0.1, 0.2], [0.3, 0.1])) == ex.MODEL_MODES
    assert ex.check_exact(pb, aligned_deep(u, v, [np.eye(3), np.eye(3)], [0.1, 0.1, 0.1])) == ex.MODEL_DEEP
    assert ex.check_exact(pb, lambda_balanced_init(3, 3, 3, 0.5, 0.3, rng)) == ex.MODEL_RICCATI


def _raises(pb, ws, weight_decay=0.0):
    with pytest.raises(ExactNotApplicableError) as info:
        ex.check_exact(pb, ws, weight_decay)
    assert "flow" in info.value.fix
    return info.value


def test_exact_refuses_non_whitened_inputs_and_names_the_deviation():
    rng = np.random.default_rng(0)
    pb = problem_from_correlations(np.diag([1.0, 1.3, 1.0]), rng.standard_normal((2, 3)))
    err = _raises(pb, [0.1 * rng.standard_normal((2, 3)), 0.1 * rng.standard_normal((2, 2))])
    assert err.field == ("data", "sigma11") and "Σ11 = c·I" in err.message and "0.2" in err.message


def test_exact_refuses_two_layers_neither_aligned_nor_lambda_balanced():
    rng = np.random.default_rng(0)
    pb, _, _ = task(3, 3, [2.0, 1.0, 0.5], rng)
    err = _raises(pb, [0.1 * rng.standard_normal((4, 3)), 0.1 * rng.standard_normal((3, 4))])
    assert err.field == ("init",) and "aligned" in err.message and "λ-balanced" in err.message


def test_exact_refuses_unbalanced_deep_init():
    rng = np.random.default_rng(0)
    pb, u, v = task(3, 3, [2.0, 1.0, 0.5], rng)
    ws = aligned_deep(u, v, [np.eye(3), np.eye(3)], [0.1, 0.1, 0.1])
    ws[0] = 2.0 * ws[0]                                   # aligned but not balanced
    assert "imbalance" in _raises(pb, ws).message


def test_exact_refuses_misaligned_balanced_deep_init():
    rng = np.random.default_rng(0)
    pb, _, v = task(3, 3, [2.0, 1.0, 0.5], rng)
    ws = aligned_deep(rand_orth(3, rng), v, [np.eye(3), np.eye(3)], [0.1, 0.2, 0.3])   # wrong output frame
    assert "misaligned" in _raises(pb, ws).message


def test_exact_refuses_weight_decay_beyond_balanced_two_layer_modes():
    rng = np.random.default_rng(0)
    pb, u, v = task(3, 3, [2.0, 1.0, 0.5], rng)
    deep = aligned_deep(u, v, [np.eye(3), np.eye(3)], [0.1, 0.1, 0.1])
    assert _raises(pb, deep, 0.1).field == ("training", "weight_decay")
    unbalanced = aligned_two_layer(u, v, np.eye(3), [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert "balanced modes" in _raises(pb, unbalanced, 0.1).message
    lam_bal = lambda_balanced_init(3, 3, 3, 0.0, 0.3, rng)
    assert "aligned" in _raises(pb, lam_bal, 0.1).message


# ------------------------------------------------------------------------------------------------
# tall tasks: thin frames and the reduced Riccati space (no n_out × n_out work)


def embedded_task(n_in: int, n_small: int, n_big: int, svals, rng):
    """A small task (n_in → n_small, Σ11 = I) and the same task isometrically embedded in n_big outputs:
    Σ31_big = E Σ31_small with E (n_big × n_small) orthonormal. Gradient flow from W32_big = E W32_small keeps W32 in
    span E (its gradient is 2(Σ31 − W32W21)W21ᵀ), so the big run is E times the small one exactly."""
    small, u, v = task(n_in, n_small, svals, rng)
    e, _ = np.linalg.qr(rng.standard_normal((n_big, n_small)))
    big = problem_from_correlations(np.eye(n_in), e @ small.sigma31)
    return small, big, e, u, v


def tall_init(kind: str, u, v, nh: int, rng):
    """Inits on the small task: aligned plus one output-only null channel, λ-balanced (unaligned), or random."""
    n_out, n_in = u.shape[0], v.shape[0]
    if kind == "aligned":
        ws = aligned_two_layer(u, v, rand_orth(nh, rng), rng.uniform(0.01, 0.1, n_in), rng.uniform(0.01, 0.1, n_in))
        # hidden unit n_in (unused by the modes) carries an output-only channel along the null direction u[:, n_in]
        w21, w32 = ws
        hid = np.linalg.svd(w21)[0][:, n_in:]         # hidden directions W21 does not reach
        return [w21, w32 + 0.07 * np.outer(u[:, n_in], hid[:, 0])]
    if kind == "lambda_balanced":
        return lambda_balanced_init(n_in, nh, n_out, 0.4, 0.2, rng)
    return [0.01 * rng.standard_normal((nh, n_in)), 0.01 * rng.standard_normal((n_out, nh))]


TALL_SVALS = [3.0, 2.5, 2.0, 1.6, 1.2, 0.9, 0.6, 0.3]


@pytest.mark.parametrize("kind", ["aligned", "lambda_balanced", "random"])
def test_tall_task_exact_run_equals_its_small_embedding(kind):
    # 8 inputs → 3000 outputs (rank-8 Σ31) against the same task on 12 outputs. The small run is checked against
    # brute force (aligned: matrix ODE, 1e-9) or the full-space Riccati (the (Ni + No)² form, round-off). The
    # embedding is exact, so big and small differ by round-off only: 1e-12 on O(1) maps, 1e-9 relative on the
    # gradient norm (a difference of O(1) terms, ~1e-3 at t = 1.5 here).
    rng = np.random.default_rng(40)
    small, big, e, u, v = embedded_task(8, 12, 3000, TALL_SVALS, rng)
    ws = tall_init(kind, u, v, 10, rng)
    wb = [ws[0], e @ ws[1]]
    dec_s, dec_b = ex.decouple(small, ws), ex.decouple(big, wb)
    assert dec_b.s.size <= 8 + 3 * 10                                   # thin: no channel per output direction
    if kind == "random":
        assert dec_b.deviation == pytest.approx(dec_s.deviation, rel=1e-9) and dec_b.deviation > 1e-3
        with pytest.raises(ExactNotApplicableError):
            ex.check_exact(big, wb)
        return
    assert ex.check_exact(big, wb) == ex.check_exact(small, ws)
    t = np.array([0.0, 0.5, 1.5])
    run_s, run_b = ex.exact_run(small, ws, t), ex.exact_run(big, wb, t)
    assert run_b.model == (ex.MODEL_MODES if kind == "aligned" else ex.MODEL_RICCATI)
    if kind == "aligned":
        assert dec_b.deviation < 1e-13 and dec_s.deviation < 1e-13
        ode = matrix_flow(small, ws, t)
        for k in range(len(t)):
            np.testing.assert_allclose(run_s.product[k], ode[k][1] @ ode[k][0], atol=1e-9)
            np.testing.assert_allclose(run_b.weights[1][k], e @ run_s.weights[1][k], atol=1e-12)
            np.testing.assert_allclose(run_b.weights[0][k], run_s.weights[0][k], atol=1e-12)
    else:
        full = ex.riccati_flow(small.sigma31, ws[0], ws[1], t, reduce=False)
        np.testing.assert_allclose(run_s.product, full.product, atol=1e-12)
        np.testing.assert_allclose(run_b.w21_gram, full.w21_gram, atol=1e-12)
    np.testing.assert_allclose(run_b.product, e[None] @ run_s.product, atol=1e-12)
    np.testing.assert_allclose(run_b.gradient_norm, run_s.gradient_norm, rtol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 0.8, -0.5])
def test_reduced_riccati_equals_the_full_space_riccati_to_round_off(lam):
    # 3 → 2 → 40 with W32 spread over all 40 outputs: the reduced space has 2·rank + hidden directions (≤ 10 of 43).
    # Both evaluate the same semigroup in different orthonormal bases: round-off (1e-12 on O(1) blocks).
    rng = np.random.default_rng(41)
    pb = problem_from_correlations(np.eye(3), rng.standard_normal((40, 3)))
    ws = lambda_balanced_init(3, 2, 40, lam, 0.3, rng)
    t = np.array([0.0, 0.7, 2.0, 6.0, 50.0])
    red = ex.riccati_flow(pb.sigma31, ws[0], ws[1], t)
    full = ex.riccati_flow(pb.sigma31, ws[0], ws[1], t, reduce=False)
    assert red.o.shape == (43, 3 + 5) and full.o.shape == (43, 43)     # Z_in = R³, Z_out = span[U, W32]
    np.testing.assert_allclose(red.product, full.product, atol=1e-12)
    np.testing.assert_allclose(red.w21_gram, full.w21_gram, atol=1e-12)
    np.testing.assert_allclose(red.w32_gram, full.w32_gram, atol=1e-12)
    np.testing.assert_allclose(ex.riccati_gradient_norm(pb, red)[:4], ex.riccati_gradient_norm(pb, full)[:4],
                               rtol=1e-9)


def test_riccati_past_the_size_limit_is_refused_naming_the_size(monkeypatch):
    rng = np.random.default_rng(42)
    pb, _, _ = task(3, 3, [2.0, 1.0, 0.5], rng)
    ws = lambda_balanced_init(3, 3, 3, 0.5, 0.3, rng)
    monkeypatch.setattr(riccati, "RICCATI_MAX_DIM", 5)                   # this init needs 6 dimensions
    err = _raises(pb, ws)
    assert "6 dimensions" in err.message and "more than 5" in err.message


def _peak_bytes(fn) -> int:
    """Peak memory traced while fn() runs (numpy reports its array buffers, LAPACK outputs included)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def thin_lambda_balanced(ni, nh, no, lam, scale, rng):
    """λ-balanced W21 = R S1 Vᵀ, W32 = U S2 Rᵀ (as ``lambda_balanced_init``) with U only n_out × n_h (thin QR)."""
    u = np.linalg.qr(rng.standard_normal((no, nh)))[0]
    s1 = np.zeros(nh)
    s1[:min(nh, ni)] = scale * rng.uniform(0.5, 1.5, min(nh, ni))
    m1 = np.zeros((nh, ni))
    m1[np.arange(min(nh, ni)), np.arange(min(nh, ni))] = s1[:min(nh, ni)]
    r = rand_orth(nh, rng)
    return [r @ m1 @ rand_orth(ni, rng).T, u @ np.diag(np.sqrt(s1 ** 2 + lam)) @ r.T]


@pytest.mark.parametrize("scheme", ["gaussian", "aligned", "lambda_balanced"])
def test_exact_on_the_10000_feature_preset_never_forms_an_output_by_output_matrix(scheme):
    # branching_diffusion defaults: 8 one-hot items → 10,000 features. One 10⁴ × 10⁴ float64 matrix is 800 MB (the
    # old completed output basis); the thin path peaks at a few MB (the returned maps are 3 × 10⁴ × 8).
    pb = presets.branching_diffusion()
    rng = np.random.default_rng(43)
    ws = (thin_lambda_balanced(8, 16, pb.n_out, 0.3, 0.05, rng) if scheme == "lambda_balanced" else
          initial_weights(pb, [16], scheme, **({"seed": 1} if scheme == "gaussian" else {})))
    t = np.array([0.0, 1.0, 5.0])
    models = []

    def run():
        try:
            models.append(ex.exact_run(pb, ws, t).model)
        except ExactNotApplicableError:
            models.append(None)

    assert _peak_bytes(run) < 8 * pb.n_out ** 2 / 16
    assert models == [{"gaussian": None, "aligned": ex.MODEL_MODES, "lambda_balanced": ex.MODEL_RICCATI}[scheme]]
