"""Lampinen & Ganguli's sample-free theory (service.dynamics.random_matrix, model "random_matrix") and the noisy teacher
with fewer samples than inputs.

Independent references: the paper's formulas transcribed here from the authors' statement (arXiv:1809.10374; their
repository's poster source and theory code, see the module docstring), including the below-threshold case; Monte Carlo
spiked matrices (their SVD); the Marchenko–Pastur density integrated by scipy quad in y (the module integrates in an
angle); simulations of the noisy teacher, averaged over samples (the theory predicts the typical run).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from service.dynamics import init, presets
from service.dynamics.methods import GradientDescent, GradientFlow
from service.dynamics.random_matrix import (
    MODEL,
    NoisyTeacher,
    _mp_angle_nodes,
    mp_density,
    mp_top_angle,
    predicted_spectrum,
    spike_overlap,
    spike_singular_value,
)
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate


def paper_s_hat(s, a):
    """ŝ(s̄) = s̄⁻¹ √((1 + s̄²)(A + s̄²)) if s̄ > A^{1/4}, 1 + √A otherwise (their eq. shatsbar, σ_z = 1)."""
    return np.sqrt((1 + s * s) * (a + s * s)) / s if s > a ** 0.25 else 1 + np.sqrt(a)


def paper_overlap(s, a):
    """O(s̄) = [1 − A(1 + s̄²)/(s̄²(A + s̄²))]^{1/2} [1 − (A + s̄²)/(s̄²(1 + s̄²))]^{1/2} above A^{1/4}, 0 otherwise."""
    if not s > a ** 0.25:
        return 0.0
    return np.sqrt(1 - a * (1 + s * s) / (s * s * (a + s * s))) * np.sqrt(1 - (a + s * s) / (s * s * (1 + s * s)))


@pytest.mark.parametrize("aspect", [0.25, 0.5, 1.0])
def test_spike_formulas_are_the_papers_including_below_the_transition(aspect):
    xs = np.concatenate([np.linspace(0.05, 3.0, 60), [aspect ** 0.25, 10.0, 100.0]])
    np.testing.assert_allclose(spike_singular_value(xs, aspect), [paper_s_hat(x, aspect) for x in xs], rtol=1e-14)
    np.testing.assert_allclose(spike_overlap(xs, aspect), [paper_overlap(x, aspect) for x in xs], rtol=1e-14,
                               atol=1e-15)
    below = xs <= aspect ** 0.25
    assert np.all(spike_singular_value(xs[below], aspect) == 1 + np.sqrt(aspect))   # lost in the sea: the bulk edge
    assert np.all(spike_overlap(xs[below], aspect) == 0.0)
    # continuous at the transition, overlap → 1 for strong modes
    eps = 1e-9
    assert spike_singular_value(aspect ** 0.25 + eps, aspect) == pytest.approx(1 + np.sqrt(aspect), abs=1e-6)
    assert spike_overlap(100.0, aspect) > 0.999


@pytest.mark.parametrize("aspect", [0.3, 1.0])
def test_marchenko_pastur_integrals_agree_with_quadrature_in_y(aspect):
    lo, hi = 1 - np.sqrt(aspect), 1 + np.sqrt(aspect)
    for g in (lambda y: 1.0, lambda y: y * y, lambda y: np.exp(-3 * y)):
        direct = quad(lambda y: mp_density(y, aspect) * g(y), lo, hi, limit=200, epsabs=1e-13)[0]
        y, w = _mp_angle_nodes(aspect, 0.0, np.pi)
        assert np.sum(w * np.vectorize(g)(y)) == pytest.approx(direct, rel=1e-9)
    assert quad(lambda y: mp_density(y, aspect), lo, hi, limit=200)[0] == pytest.approx(1.0, rel=1e-9)
    assert quad(lambda y: mp_density(y, aspect) * y * y, lo, hi, limit=200)[0] == pytest.approx(1.0, rel=1e-9)
    theta = mp_top_angle(aspect, 0.3)                          # the top 30 % of the mass
    y_q = np.sqrt(1 + aspect + 2 * np.sqrt(aspect) * np.cos(theta))
    assert quad(lambda y: mp_density(y, aspect), y_q, hi, limit=200)[0] == pytest.approx(0.3, rel=1e-9)


def test_spiked_matrices_follow_the_predicted_singular_values_and_overlaps():
    """Monte Carlo, m × M = 600 × 1200 (A = 1/2), noise of variance 1/M: the spike above the transition at its
    t̂ and O, one below it at the bulk edge with no overlap, the bulk's top at 1 + √A. Finite-size deviations are
    O(M^{−1/2}) ≈ 0.03: measured 0.4 % (t̂), 0.008 (O), 0.6 % (edge)."""
    rng = np.random.default_rng(11)
    m, big = 600, 1200
    aspect = m / big
    u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((big, 2)))[0]
    strong, weak = 2.0, 0.6                                     # transition at A^{1/4} = 0.84
    t = strong * np.outer(u[:, 0], v[:, 0]) + weak * np.outer(u[:, 1], v[:, 1])
    t += rng.standard_normal((m, big)) / np.sqrt(big)
    uu, ss, vt = np.linalg.svd(t, full_matrices=False)
    assert ss[0] == pytest.approx(paper_s_hat(strong, aspect), rel=0.02)
    assert abs(uu[:, 0] @ u[:, 0]) * abs(vt[0] @ v[:, 0]) == pytest.approx(paper_overlap(strong, aspect), abs=0.03)
    assert ss[1] == pytest.approx(1 + np.sqrt(aspect), rel=0.02)
    assert abs(uu[:, 1] @ u[:, 1]) * abs(vt[1] @ v[:, 1]) < 0.1
    assert np.mean(ss[2:] ** 2) == pytest.approx(1.0, rel=0.02)   # the MP mean of y²


def test_noisy_teacher_predicted_spectrum_matches_its_sample_in_both_regimes():
    """N ≥ n_in: Σ31 = W̄ + noise (σ²/N); N < n_in: Σ31 = c(W̄Π + noise), c = n_in/N. Averaged over 8 samples at
    n = 100: the spikes of Σ31 within 3 % of the prediction (measured ≤ 1.5 %), the bulk's mean square within 5 % of
    (c σ_e)² (the MP mean of y² is 1; measured −3 % at N = 40: the spikes take ~r̄(1 + A)/m of the noise energy, a
    finite-rank correction the theory drops), its largest value within 10 % of the edge (it approaches the edge
    from below at the Tracy–Widom rate M^(−2/3): measured 7.5 % at M = 50)."""
    for n_in, n_out, n in [(100, 50, 100), (100, 50, 40)]:
        tops, bulk = [], []
        for seed in range(8):
            pb = presets.noisy_teacher(n_in=n_in, n_out=n_out, n_samples=n, noise=1.0, singular_values=[5.0, 3.0],
                                       seed=seed)
            ss = np.linalg.svd(pb.sigma31, compute_uv=False)
            spec = predicted_spectrum(pb.teacher)
            tops.append(ss[:3])
            bulk.append(np.mean(ss[2:spec.n_modes] ** 2))
        measured = np.mean(tops, axis=0)
        np.testing.assert_allclose(measured[:2], spec.s_hat, rtol=0.03)
        assert np.mean(bulk) == pytest.approx((spec.c * spec.noise_scale) ** 2, rel=0.05)
        assert measured[2] == pytest.approx(spec.bulk_edges[1], rel=0.1)


def test_noisy_teacher_with_fewer_samples_than_inputs():
    """N < n_in: N orthogonal inputs of norm √n_in, Σ11 = (n_in/N)·Π, fitted exactly, the same test distribution."""
    pb = presets.noisy_teacher(n_in=8, n_out=5, n_samples=4, noise=0.5, singular_values=[3.0, 1.0], seed=2)
    eig = np.linalg.eigvalsh(pb.sigma11)
    np.testing.assert_allclose(eig, [0.0] * 4 + [2.0] * 4, atol=1e-14)
    assert pb.residual_loss == pytest.approx(0.0, abs=1e-28)
    proj = pb.sigma11 / 2.0
    teacher = pb.test.sigma31
    noise_part = pb.sigma31 / 2.0 - teacher @ proj             # Σ31/c − W̄Π lies in the span
    np.testing.assert_allclose(noise_part @ proj, noise_part, atol=1e-14)
    assert pb.teacher == NoisyTeacher((3.0, 1.0), 0.5, 8, 5, 4)
    whitened = presets.noisy_teacher(n_in=8, n_out=5, n_samples=9, noise=0.5, singular_values=[3.0, 1.0], seed=2)
    np.testing.assert_allclose(whitened.sigma11, np.eye(8), atol=1e-15)


# The theory against the simulations it describes: a training-aligned student (aligned init, ε = 1e-5), GD, the test
# loss averaged over 6 samples, compared up to the simulated optimal stopping time, in Lampinen & Ganguli's units
# (‖W − W̄‖² / ‖W̄‖²: differences of L_test divided by Σ s̄²). Their own loop agreed with their theory to 0.027 there.
# Measured: 0.023 (n_in = n_out = N = 100), 0.039 (n_in = 100, n_out = 50, N = 30 < n_in); single samples 0.02–0.17.
# Optimal stopping time within 0.04 of the simulated one, optimal test loss within 0.4 %.
AVERAGED_GAP = 0.05


@pytest.mark.parametrize("n_in,n_out,n,svals", [(100, 100, 100, [4.0, 2.0, 1.0]), (100, 50, 30, [4.0, 2.0])],
                         ids=["square", "fewer_samples_than_inputs"])
def test_theory_predicts_the_average_generalization_curve(n_in, n_out, n, svals):
    runs = []
    for seed in range(6):
        pb = presets.noisy_teacher(n_in=n_in, n_out=n_out, n_samples=n, noise=1.0, singular_values=svals, seed=seed)
        w0 = init.initial_weights(pb, [n_out], "aligned", strength=1e-5)
        runs.append(simulate(pb, w0, GradientDescent(0.01, 400), RecordSchedule(points=101)))
    theory = runs[0].loss_theory_random_matrix
    assert theory.model == MODEL and not theory.exact
    for tr in runs[1:]:                                        # sample-free: the same prediction for every sample
        np.testing.assert_allclose(tr.loss_theory_random_matrix.test_loss, theory.test_loss, rtol=1e-13)
    test = np.mean([tr.test_loss for tr in runs], axis=0)
    train = np.mean([tr.loss for tr in runs], axis=0)
    stop = int(np.argmin(test))
    norm = float(np.sum(np.square(svals)))
    assert np.max(np.abs(theory.test_loss - test)[:stop + 1]) / norm < AVERAGED_GAP
    assert np.max(np.abs(theory.loss - train)[:stop + 1]) / train[0] < 0.1          # measured 0.047, 0.061
    time = runs[0].time
    assert abs(time[int(np.argmin(theory.test_loss))] - time[stop]) <= 0.08
    assert theory.test_loss.min() == pytest.approx(test[stop], rel=0.01)


def test_theory_is_attached_to_noisy_teacher_runs_only_and_handles_depth_and_flow():
    pb = presets.noisy_teacher(n_in=20, n_out=20, n_samples=20, noise=1.0, singular_values=[4.0], seed=0)
    other = presets.whitened([4.0], n_in=20, n_out=20)
    w0 = init.initial_weights(pb, [20], "aligned", strength=1e-4)
    assert simulate(other, w0, GradientFlow(t_max=1.0)).loss_theory_random_matrix is None
    flow = simulate(pb, w0, GradientFlow(t_max=3.0), RecordSchedule(points=31)).loss_theory_random_matrix
    gd = simulate(pb, w0, GradientDescent(0.001, 3000), RecordSchedule(points=31)).loss_theory_random_matrix
    # the GD map at η = 0.001 is the flow to O(η): within 1 % here
    np.testing.assert_allclose(gd.test_loss, flow.test_loss, rtol=0.01)
    assert "exact per-mode GD maps" in gd.assumptions
    # a long GD run gets the flow's curves at t = η·step (the GD maps' cost grows with the steps)
    long = simulate(pb, w0, GradientDescent(1e-4, 30_000), RecordSchedule(points=31)).loss_theory_random_matrix
    assert "flow at t = η·step" in long.assumptions
    np.testing.assert_allclose(long.test_loss, flow.test_loss, rtol=1e-12)
    deep = init.initial_weights(pb, [20, 20], "aligned", strength=1e-3)
    th = simulate(pb, deep, GradientFlow(t_max=3.0), RecordSchedule(points=31)).loss_theory_random_matrix
    assert th is not None and "depth 3" in th.assumptions
    spec = predicted_spectrum(pb.teacher)
    # at t = 0 every mode is at ε: L_test(0) = n_out σ² + ‖W̄‖² + r ε² − 2ε √D s̄ O (full-rank student)
    eps = 1e-4
    expected = 20 + 16 + 20 * eps ** 2 - 2 * eps * 4.0 * spec.overlap[0]
    assert flow.test_loss[0] == pytest.approx(expected, rel=1e-9)


def test_a_teacher_that_fills_every_mode_has_no_sea_and_no_theory():
    pb = presets.noisy_teacher(n_in=8, n_out=3, n_samples=2, noise=1.0, singular_values=[3.0, 2.0], seed=0)
    w0 = init.initial_weights(pb, [3], "gaussian", scale=0.1, seed=0)
    assert simulate(pb, w0, GradientFlow(t_max=1.0)).loss_theory_random_matrix is None
