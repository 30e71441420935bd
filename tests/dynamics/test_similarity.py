"""Hidden-layer item similarity RSM = W21ᵀW21 (service.dynamics.similarity) and its recording by simulate.

Brute force = scipy solve_ivp DOP853 at rtol 1e-11 on the two-layer flow dW21/dt = 2 W32ᵀE, dW32/dt = 2 E W21ᵀ,
E = Σ31 − W32W21Σ11 (our τ = 1/2), written out here independently of service.dynamics.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from service.dynamics.errors import InvalidParameterError
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow
from service.dynamics.presets import hierarchy, whitened
from service.dynamics.record import RecordSchedule
from service.dynamics.similarity import item_similarity
from service.dynamics.simulate import simulate


def brute_force_w21(problem, w21, w32, times):
    """W21(t) of the two-layer gradient flow at ``times`` (DOP853, rtol 1e-11, atol 1e-13)."""
    nh, ni = w21.shape

    def rhs(_, y):
        a, b = y[:nh * ni].reshape(nh, ni), y[nh * ni:].reshape(-1, nh)
        e = problem.sigma31 - b @ a @ problem.sigma11
        return np.concatenate([(2 * b.T @ e).ravel(), (2 * e @ a.T).ravel()])

    sol = solve_ivp(rhs, (0, times[-1]), np.concatenate([w21.ravel(), w32.ravel()]), method="DOP853",
                    t_eval=times, rtol=1e-11, atol=1e-13)
    return sol.y[:nh * ni].T.reshape(len(times), nh, ni)


def test_similarity_is_the_gram_of_the_one_hot_items_hidden_representations():
    # Neuromatch net_rsm: h = hidden activity of each one-hot item (rows), rsm = h @ h.T.
    rng = np.random.default_rng(0)
    w21 = rng.standard_normal((5, 4))
    h = np.stack([w21 @ item for item in np.eye(4)])
    np.testing.assert_allclose(item_similarity(w21), h @ h.T, rtol=1e-14, atol=1e-14)  # same sums, reordered


def test_similarity_of_a_stack_is_the_similarity_of_each_record():
    rng = np.random.default_rng(1)
    stack = rng.standard_normal((3, 6, 5))
    rsm = item_similarity(stack)
    assert rsm.shape == (3, 5, 5)
    for t in range(3):
        np.testing.assert_allclose(rsm[t], stack[t].T @ stack[t], rtol=1e-14, atol=1e-14)
        assert np.array_equal(rsm[t], rsm[t].T)  # symmetrised exactly


def test_gd_records_the_similarity_of_its_recorded_first_layer():
    problem = hierarchy(2)
    w0 = initial_weights(problem, [6], "gaussian", scale=0.1, seed=3)
    traj = simulate(problem, w0, GradientDescent(learning_rate=0.5, steps=300),
                    RecordSchedule(points=7, weights=True, similarity=True))
    assert traj.similarity.shape == (len(traj.time), 4, 4)
    expected = np.swapaxes(traj.weights[0], 1, 2) @ traj.weights[0]
    np.testing.assert_allclose(traj.similarity, expected, rtol=1e-15, atol=1e-15)  # same product, symmetrised


def test_similarity_is_not_recorded_unless_asked():
    problem = hierarchy(2)
    w0 = initial_weights(problem, [6], "gaussian", scale=0.1, seed=3)
    traj = simulate(problem, w0, GradientFlow(t_max=1.0), RecordSchedule(points=3))
    assert traj.similarity is None


def test_flow_similarity_matches_brute_force_integration():
    problem = hierarchy(2)
    w0 = initial_weights(problem, [5], "gaussian", scale=0.05, seed=2)
    traj = simulate(problem, w0, GradientFlow(t_max=40.0, rtol=1e-11, atol=1e-13),
                    RecordSchedule(points=9, similarity=True))
    w21 = brute_force_w21(problem, w0[0], w0[1], traj.time)
    # Both are DOP853 at rtol 1e-11; the right-hand sides differ only in the order of operations, so the
    # runs agree far below the 1e-9 that the tolerance allows over 40 time units of sigmoidal transitions.
    np.testing.assert_allclose(traj.similarity, np.swapaxes(w21, 1, 2) @ w21, rtol=0, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_riccati_exact_similarity_matches_brute_force_flow(lam):
    # A λ-balanced random init on a non-whitened (Σ11 = I/P) task: the exact method is the Riccati solution,
    # which has no weights; its similarity comes from the Gram block W21ᵀW21 of P(t).
    problem = hierarchy(2)
    w0 = initial_weights(problem, [3], "lambda_balanced", lam=lam, scale=0.05, seed=4)
    traj = simulate(problem, w0, Exact(t_max=60.0), RecordSchedule(points=13, similarity=True))
    assert traj.modes.theory_model == "riccati_lambda_balanced" and traj.weights is None
    w21 = brute_force_w21(problem, w0[0], w0[1], traj.time)
    # The chunked Riccati solution is exact to ~1e-13; the ODE's rtol 1e-11 over 60 time units dominates
    # (measured 5e-11 on entries of order 1; 1e-9 as in tests/dynamics/test_exact.py).
    np.testing.assert_allclose(traj.similarity, np.swapaxes(w21, 1, 2) @ w21, rtol=0, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 1.5])
def test_riccati_similarity_converges_to_the_closed_form_limit(lam):
    # docs/theory.md#riccati-limits (whitened, square, full rank): W21ᵀW21 → Ṽ diag((√(λ² + 4s²) − λ)/2) Ṽᵀ.
    s = np.array([3.0, 2.0, 1.0])
    problem = whitened(s.tolist(), 3, 3, seed=5)
    w0 = initial_weights(problem, [3], "lambda_balanced", lam=lam, scale=0.3, seed=6)
    traj = simulate(problem, w0, Exact(t_max=30.0), RecordSchedule(points=2, similarity=True))
    _, sv, vt = np.linalg.svd(problem.sigma31)
    limit = vt.T @ np.diag((np.sqrt(lam**2 + 4 * sv**2) - lam) / 2) @ vt
    # At t = 30 the slowest mode (s = 1) is e^{-2·2s·t}-close to its limit: far below round-off.
    np.testing.assert_allclose(traj.similarity[-1], limit, rtol=0, atol=1e-10)


def test_aligned_exact_similarity_matches_brute_force_flow():
    problem = hierarchy(2)
    w0 = initial_weights(problem, [4], "aligned", strength=1e-3)
    traj = simulate(problem, w0, Exact(t_max=60.0), RecordSchedule(points=11, similarity=True))
    assert traj.modes.theory_model == "saxe_decoupled_modes"
    w21 = brute_force_w21(problem, w0[0], w0[1], traj.time)
    # As above: the closed form is exact, the ODE's rtol 1e-11 through the transitions limits agreement
    # (measured 4e-10: the small init u0 = 1e-3 sits on the saddle longer, amplifying the ODE's error).
    np.testing.assert_allclose(traj.similarity, np.swapaxes(w21, 1, 2) @ w21, rtol=0, atol=1e-9)


def test_learned_hierarchy_similarity_is_ultrametric():
    # PNAS 2019: after learning, the item similarity depends only on the depth of the items' lowest common
    # ancestor (items 0,1 share a parent; 0,2 only the root).
    problem = hierarchy(2)
    w0 = initial_weights(problem, [4], "aligned", strength=1e-3)
    rsm = simulate(problem, w0, Exact(t_max=200.0), RecordSchedule(points=2, similarity=True)).similarity[-1]
    # Converged to the balanced limit Ṽ diag(s/c) Ṽᵀ to round-off (1e-12 on entries of order 1).
    assert rsm[0, 1] == pytest.approx(rsm[2, 3], abs=1e-12)
    assert rsm[0, 2] == pytest.approx(rsm[1, 3], abs=1e-12) == pytest.approx(rsm[0, 3], abs=1e-12)
    assert rsm[0, 0] > rsm[0, 1] > rsm[0, 2] > 0


def test_similarity_without_a_hidden_layer_is_refused_naming_the_field():
    problem = hierarchy(2)
    w0 = initial_weights(problem, [], "gaussian", scale=0.1, seed=0)
    with pytest.raises(InvalidParameterError) as info:
        simulate(problem, w0, GradientFlow(t_max=1.0), RecordSchedule(points=3, similarity=True))
    assert info.value.field == ("record", "similarity")
    assert "hidden" in info.value.fix


def test_diverged_run_keeps_one_similarity_per_record():
    problem = whitened([3.0, 2.0], 2, 2, seed=0)
    w0 = initial_weights(problem, [2], "gaussian", scale=0.5, seed=0)
    traj = simulate(problem, w0, GradientDescent(learning_rate=1.0, steps=200),
                    RecordSchedule(points=50, similarity=True))
    assert traj.outcome == "diverged"
    assert traj.similarity.shape[0] == len(traj.time)
    assert np.all(np.isfinite(traj.similarity))
