"""Momentum and mini-batch SGD (service.dynamics.sgd, sgd_loop): PyTorch's torch.optim.SGD against hand-written
loops of its definition, SGD with the whole dataset as one batch against GD, the mean over seeds against gradient
flow, the sampling (epochs, seeds, remainder batches), validation, hooks and sweeps."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import network, presets, sgd_loop
from service.dynamics.batch import SweepPoint, group_key, simulate_batch
from service.dynamics.errors import InvalidParameterError, StopRequested
from service.dynamics.gd import run_gd
from service.dynamics.methods import (
    GradientDescent,
    GradientFlow,
    Hooks,
    StochasticGradientDescent,
)
from service.dynamics.problem import (
    problem_from_correlations,
    problem_from_data,
    with_test,
)
from service.dynamics.record import RecordSchedule
from service.dynamics.sgd import plan_source, run_momentum_gd, run_sgd, stability_factor
from service.dynamics.simulate import preflight, simulate
from tests.support.reference_loops import literal_momentum_gd, literal_sgd

from .test_gd import blas_pool_threads, nonwhite_problem, random_net

SOURCES = [sgd_loop.BATCH_CORRELATIONS, sgd_loop.BATCH_SAMPLES]
SOURCE_IDS = ["batch-correlations", "batch-samples"]


def dataset(rng, n=30, n_in=4, n_out=3, noise=0.3):
    x = rng.standard_normal((n, n_in)) * np.geomspace(1.5, 0.5, n_in)
    return problem_from_data(x, x @ rng.standard_normal((n_in, n_out)) + noise * rng.standard_normal((n, n_out)))


def assert_states_close(result, states, rtol):
    """Every record of ``result`` within rtol·max|W_l| of the literal state at its step (per layer)."""
    for i, k in enumerate(result.steps):
        for l, want in enumerate(states[k]):
            np.testing.assert_allclose(result.weights[l][i], want, rtol=0, atol=rtol * np.max(np.abs(want)))


# ------------------------------------------------------------------------------------------------
# the definitions


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("widths", [[4, 3], [4, 5, 3], [4, 5, 6, 3]], ids=["D1", "D2", "D3"])
def test_momentum_gd_equals_a_hand_written_loop_of_pytorchs_definition(nesterov, widths):
    rng = np.random.default_rng(1 + len(widths))
    problem = dataset(rng, n_in=widths[0], n_out=widths[-1])
    w0 = random_net(rng, widths, 0.4)
    eta, steps, mu, decay = 0.01, 120, 0.9, 0.03
    result = run_momentum_gd(problem, w0, GradientDescent(eta, steps, decay, stop_at_convergence=False, momentum=mu,
                                                          nesterov=nesterov), np.arange(steps + 1))
    assert result.outcome == "completed"
    # BLAS products against numpy's matmul: ~1e-16 per operation, and at η = 0.01 (far inside the stability
    # region, c(μ)·2/η ≫ the curvature here) nothing amplifies it: measured ≤ 9e-16; a wrong term shows at ≥ η·|g|.
    assert_states_close(result, literal_momentum_gd(problem, w0, eta, steps, mu, nesterov, decay), 1e-12)


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("widths", [[4, 3], [4, 5, 3], [4, 2, 6, 3]], ids=["D1", "D2", "D3"])
def test_sgd_equals_a_hand_written_loop_with_a_permutation_per_epoch_and_a_remainder_batch(source, nesterov, widths):
    rng = np.random.default_rng(7 + len(widths))
    problem = dataset(rng, n=23, n_in=widths[0], n_out=widths[-1])  # 23 = 3·7 + 2: every epoch ends on 2 rows
    w0 = random_net(rng, widths, 0.4)
    eta, batch, steps, seed, mu, decay = 0.02, 7, 50, 11, 0.5, 0.01  # 12.5 epochs: the run stops mid-epoch
    method = StochasticGradientDescent(eta, batch, steps=steps, seed=seed, weight_decay=decay, momentum=mu,
                                       nesterov=nesterov)
    result = run_sgd(problem, w0, method, np.arange(steps + 1), source=source)
    assert result.outcome == "completed" and result.steps.tolist() == list(range(steps + 1))
    # as for momentum GD: the same operations in another order, measured ≤ 7e-16
    assert_states_close(result, literal_sgd(problem, w0, eta, batch, steps, seed, mu, nesterov, decay), 1e-12)


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
@pytest.mark.parametrize("mu", [0.0, 0.9], ids=["plain", "momentum"])
def test_sgd_with_the_whole_dataset_as_one_batch_equals_gd(source, mu):
    rng = np.random.default_rng(21)
    problem = dataset(rng, n=40, n_in=5, n_out=3)
    w0 = random_net(rng, [5, 6, 3], 0.3)
    eta, steps = 0.02, 400
    rec = RecordSchedule(points=41).gd_steps(eta, steps)
    gd_method = GradientDescent(eta, steps, 0.01, stop_at_convergence=False, momentum=mu)
    gd = run_gd(problem, w0, gd_method, rec) if mu == 0 else run_momentum_gd(problem, w0, gd_method, rec)
    sgd = run_sgd(problem, w0, StochasticGradientDescent(eta, 40, steps=steps, seed=3, weight_decay=0.01, momentum=mu),
                  rec, source=source)
    # One batch of all rows in a new order every epoch: Σ11_b, Σ31_b are the problem's correlations up to the
    # summation order (~1e-16 relative), the rest is the same step. The run is a stable descent (a 1e-12
    # relative perturbation of W0 grows at most 7× here), so the records agree to ~1e-15 (measured ≤ 2.5e-15); 1e-12 is
    # the bound asked for.
    assert gd.outcome == sgd.outcome == "completed"
    np.testing.assert_array_equal(sgd.steps, gd.steps)
    for i in range(len(rec)):
        for l in range(2):
            want = gd.weights[l][i]
            np.testing.assert_allclose(sgd.weights[l][i], want, rtol=0, atol=1e-12 * np.max(np.abs(want)))


def test_both_gradient_sources_give_the_same_run_to_round_off():
    rng = np.random.default_rng(5)
    problem = dataset(rng, n=50, n_in=6, n_out=4)
    w0 = random_net(rng, [6, 5, 7, 4], 0.3)
    method = StochasticGradientDescent(0.01, 8, epochs=20, seed=4, momentum=0.8)
    rec = np.arange(0, 141, 7)
    a, b = (run_sgd(problem, w0, method, rec, source=s) for s in SOURCES)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-12 * np.max(np.abs(wb)))


def test_the_planned_source_is_the_cheaper_one():
    assert plan_source([784, 100, 10], 32) == sgd_loop.BATCH_SAMPLES      # wide inputs, small batch: backprop
    assert plan_source([32, 32, 32], 1024) == sgd_loop.BATCH_CORRELATIONS  # batch ≫ n_in: Σ11_b, then the GD step


# ------------------------------------------------------------------------------------------------
# the mean over seeds and gradient flow


def test_sgd_mean_over_seeds_approaches_gradient_flow_linearly_in_the_learning_rate():
    """E[W_SGD(T)] − W_flow(T) = b·η + O(η²): quartering η quarters the deviation of the mean over seeds.

    Measured (N = 32, B = 8, T = 1, 128 seeds): ‖mean − flow‖/η = 0.649, 0.664, 0.662 at η = 0.01, 0.005, 0.0025,
    with standard errors of the mean (sqrt(Σ var/128), from the spread over seeds) of 13 %, 8 %, 5 % of it. Sampling
    without replacement cancels the batch noise over each epoch, so the spread shrinks faster than sqrt(η) and the
    deviation is the O(η) bias, resolved at > 10 standard errors. Tolerance: the η-scaled prediction plus 4
    standard errors of both means (a 4σ band: the test fails by chance with probability < 1e-4).
    """
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 4))
    problem = problem_from_data(x, x @ rng.standard_normal((4, 3)) + 0.3 * rng.standard_normal((32, 3)))
    w0 = [0.3 * rng.standard_normal((4, 4)), 0.3 * rng.standard_normal((3, 4))]
    t_end, seeds = 1.0, 128
    rec = RecordSchedule(times=(t_end,))
    flow = simulate(problem, w0, GradientFlow(t_end, rtol=1e-12, atol=1e-14, stop_at_convergence=False),
                    rec).product[-1]

    def deviation(eta):
        steps = int(round(t_end / eta))
        runs = np.array([simulate(problem, w0, StochasticGradientDescent(eta, 8, steps=steps, seed=s), rec).product[-1]
                         for s in range(seeds)]) - flow
        return np.linalg.norm(runs.mean(axis=0)), np.sqrt(np.sum(runs.var(axis=0, ddof=1)) / seeds)

    (e_big, se_big), (e_small, se_small) = deviation(0.01), deviation(0.0025)
    assert e_small > 4 * se_small and e_big > 4 * se_big  # the bias is resolved, not noise
    assert abs(e_small - e_big / 4) <= 4 * (se_small + se_big / 4)
    assert e_small / np.linalg.norm(flow) < 1e-3


# ------------------------------------------------------------------------------------------------
# sampling


def test_epochs_count_ceil_n_over_batch_steps_each():
    rng = np.random.default_rng(8)
    problem = dataset(rng, n=23)
    w0 = random_net(rng, [4, 5, 3], 0.3)
    by_epochs = simulate(problem, w0, StochasticGradientDescent(0.02, 5, epochs=7, seed=2), RecordSchedule(points=11))
    by_steps = simulate(problem, w0, StochasticGradientDescent(0.02, 5, steps=35, seed=2), RecordSchedule(points=11))
    assert StochasticGradientDescent(0.02, 5, epochs=7).total_steps(23) == 35  # ⌈23/5⌉ = 5 steps per epoch
    assert by_epochs.step[-1] == 35
    np.testing.assert_array_equal(by_epochs.product, by_steps.product, strict=True)


def test_a_seed_gives_the_same_bits_and_another_seed_another_run():
    rng = np.random.default_rng(9)
    problem = dataset(rng)
    w0 = random_net(rng, [4, 5, 3], 0.3)
    runs = [simulate(problem, w0, StochasticGradientDescent(0.02, 4, epochs=10, seed=s, momentum=0.5),
                     RecordSchedule(points=5, weights=True)) for s in (1, 1, 2)]
    for a, b in zip(runs[0].weights, runs[1].weights):
        np.testing.assert_array_equal(a, b, strict=True)
    assert not np.array_equal(runs[0].weights[0][-1], runs[2].weights[0][-1])


def test_hooks_with_one_step_chunks_change_no_bit():
    rng = np.random.default_rng(10)
    problem = dataset(rng, n=9)  # epochs of 3 steps: the order is drawn in blocks, the chunks cut across them
    w0 = random_net(rng, [4, 5, 3], 0.3)
    method = StochasticGradientDescent(0.02, 4, steps=4000, seed=5, momentum=0.9, nesterov=True)
    rec = np.arange(0, 4001, 250)
    seen = []
    plain = run_sgd(problem, w0, method, rec)
    hooked = run_sgd(problem, w0, method, rec, hooks=Hooks(progress=seen.append, interval=0.0))
    assert len(seen) > 1000 and all(b >= a for a, b in zip(seen, seen[1:])) and seen[-1] == 1.0
    for a, b in zip(plain.weights, hooked.weights):
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("kind", ["sgd", "momentum-gd"])
def test_stop_request_raises_at_the_next_check(kind):
    rng = np.random.default_rng(14)
    problem = dataset(rng)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3

    hooks = Hooks(should_stop=should_stop, interval=0.0)
    w0 = random_net(rng, [4, 5, 3], 0.3)
    with pytest.raises(StopRequested):
        if kind == "sgd":
            run_sgd(problem, w0, StochasticGradientDescent(1e-3, 4, steps=10 ** 7), np.array([0, 10]), hooks=hooks)
        else:
            run_momentum_gd(problem, w0, GradientDescent(1e-3, 10 ** 7, momentum=0.5), np.array([0, 10]), hooks=hooks)
    assert len(calls) == 3


def test_blas_threads_hook_is_asked_at_the_start_and_at_every_check():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n = 160  # a step above gd.SINGLE_THREAD_MAX_FLOPS: the hook decides the threads
    x = rng.standard_normal((2 * n, n))
    problem = problem_from_data(x, x @ rng.standard_normal((n, n)) / np.sqrt(n))
    w0 = [0.01 * rng.standard_normal((n, n)) for _ in range(2)]
    asked, seen = [], []

    def blas_threads():
        asked.append(2 if len(asked) % 2 == 0 else 1)
        return asked[-1]

    with threadpool_limits(limits=1, user_api="blas"):
        run_momentum_gd(problem, w0, GradientDescent(0.01, 40, momentum=0.9), np.array([0, 40]),
                        hooks=Hooks(progress=lambda _: seen.append(blas_pool_threads()), blas_threads=blas_threads,
                                    interval=0.0))
        assert blas_pool_threads() == {1}
    assert len(asked) >= 3 and seen == [{k} for k in asked]


# ------------------------------------------------------------------------------------------------
# stability and stopping


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("factor, outcome", [(0.98, "converged"), (1.02, "diverged")])
def test_shallow_momentum_gd_is_stable_up_to_its_stability_factor(nesterov, factor, outcome):
    # D = 1: H = 2Σ11 exactly, so heavy ball is stable iff η·2λ_max(Σ11) < 2(1 + μ), Nesterov iff
    # η·2λ_max < 2(1 + μ)/(1 + 2μ) (the characteristic polynomials' Jury conditions, sgd.stability_factor)
    rng = np.random.default_rng(17)
    problem = nonwhite_problem(rng, 3, 2, n=40)
    mu = 0.7
    eta = factor * stability_factor(mu, nesterov) / np.linalg.eigvalsh(problem.sigma11)[-1]
    result = run_momentum_gd(problem, [rng.standard_normal((2, 3))],
                             GradientDescent(eta, 60_000, momentum=mu, nesterov=nesterov), np.array([0, 60_000]))
    assert result.outcome == outcome


def test_converged_momentum_gd_stops_with_gradient_and_buffer_below_the_tolerance():
    rng = np.random.default_rng(18)
    problem = nonwhite_problem(rng, 3, 2)
    w0 = random_net(rng, [3, 4, 2], 0.5)
    result = run_momentum_gd(problem, w0, GradientDescent(0.02, 100_000, momentum=0.9), np.array([0, 100_000]))
    assert result.outcome == "converged" and result.steps[-1] < 100_000
    last = [w[-1] for w in result.weights]
    g = network.gradient_norm(network.gradients(problem, last))
    assert g <= 1e-10 * np.linalg.norm(problem.sigma31)


def test_diverged_sgd_reports_the_bound_with_its_momentum_factor():
    problem = presets.hierarchy(2)
    w0 = [0.1 * np.ones((4, 4)), 0.1 * np.ones((7, 4))]
    traj = simulate(problem, w0, StochasticGradientDescent(30.0, 2, epochs=50, momentum=0.5), RecordSchedule(points=5))
    assert traj.outcome == "diverged" and traj.method == "sgd"
    assert traj.stability_hint.startswith("SGD diverged at step") and "1 + μ" in traj.stability_hint


def test_float32_sgd_agrees_with_float64_at_float32_precision():
    rng = np.random.default_rng(3)
    problem = dataset(rng, n=30, n_in=6, n_out=4)
    w0 = random_net(rng, [6, 8, 4], 0.5)
    method, rec = StochasticGradientDescent(0.02, 6, epochs=40, seed=1, momentum=0.5), np.array([0, 50, 200])
    r64 = run_sgd(problem, w0, method, rec)
    r32 = run_sgd(problem, w0, method, rec, dtype=np.float32)
    assert r32.weights[0].dtype == np.float32
    for a, b in zip(r32.weights, r64.weights):
        # 200 steps of float32 round-off (6e-8 per operation) on a stable descent: ~1e-5 relative
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.max(np.abs(b)))


# ------------------------------------------------------------------------------------------------
# samples on the problem, validation


def test_a_dataset_problem_keeps_its_samples_as_read_only_views():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    problem = problem_from_data(x, y)
    assert np.shares_memory(problem.samples.x, x) and np.shares_memory(problem.samples.y, y)
    assert not problem.samples.x.flags.writeable and x.flags.writeable
    held = with_test(problem, problem_from_data(x, y))
    assert held.samples is problem.samples


@pytest.mark.parametrize("name, params, n", [("hierarchy", {"depth": 2}, 4),
                                            ("branching_diffusion", {"n_features": 20, "levels": 2}, 4),
                                            ("random_teacher", {"n_samples": 30}, 30),
                                            ("noisy_teacher", {"n_samples": 20}, 20)])
def test_presets_built_from_data_keep_their_samples_and_reproduce_their_correlations(name, params, n):
    problem = presets.build_preset(name, params)
    x, y = problem.samples.x, problem.samples.y
    assert x.shape[0] == y.shape[0] == n
    np.testing.assert_allclose(x.T @ x / n, problem.sigma11, rtol=0, atol=1e-14)
    np.testing.assert_allclose(y.T @ x / n, problem.sigma31, rtol=0, atol=1e-14 * np.max(np.abs(problem.sigma31)))


def test_sgd_on_correlations_is_refused_naming_the_field():
    for problem in (problem_from_correlations(np.eye(2), [[1.0, 0.5]]), presets.whitened([2.0], 3, 3)):
        with pytest.raises(InvalidParameterError) as err:
            preflight(problem, [np.zeros((2, problem.n_in)), np.zeros((problem.n_out, 2))],
                      StochasticGradientDescent(0.1, 1, steps=10))
        assert err.value.field == ("training", "method")
        assert err.value.fix == ("give a dataset (data.kind: dataset) or a preset built from one; SGD samples "
                                 "mini-batches")


@pytest.mark.parametrize("method, field", [
    (StochasticGradientDescent(0.1, 0, steps=10), ("training", "batch_size")),
    (StochasticGradientDescent(0.1, 31, steps=10), ("training", "batch_size")),
    (StochasticGradientDescent(0.1, 4), ("training", "epochs")),
    (StochasticGradientDescent(0.1, 4, steps=10, epochs=2), ("training", "steps")),
    (StochasticGradientDescent(0.1, 4, steps=0), ("training", "steps")),
    (StochasticGradientDescent(0.1, 4, epochs=0), ("training", "epochs")),
    (StochasticGradientDescent(-0.1, 4, steps=10), ("training", "learning_rate")),
    (StochasticGradientDescent(0.1, 4, steps=10, seed=-1), ("training", "seed")),
    (StochasticGradientDescent(0.1, 4, steps=10, momentum=1.0), ("training", "momentum")),
    (StochasticGradientDescent(0.1, 4, steps=10, nesterov=True), ("training", "nesterov")),
    (StochasticGradientDescent(0.1, 4, steps=10, weight_decay=-1.0), ("training", "weight_decay")),
    (GradientDescent(0.1, 10, momentum=-0.1), ("training", "momentum")),
    (GradientDescent(0.1, 10, nesterov=True), ("training", "nesterov")),
])
def test_invalid_sgd_and_momentum_settings_are_refused_with_their_field(method, field):
    rng = np.random.default_rng(0)
    problem = dataset(rng, n=30)
    with pytest.raises(InvalidParameterError) as err:
        preflight(problem, random_net(rng, [4, 5, 3], 0.1), method)
    assert err.value.field == field


# ------------------------------------------------------------------------------------------------
# through simulate and sweeps


def test_sweeps_take_sgd_seeds_and_momentum_points_and_keep_grouping_plain_gd():
    rng = np.random.default_rng(12)
    problem = dataset(rng)
    w0 = random_net(rng, [4, 5, 3], 0.3)
    rec = RecordSchedule(points=6)
    methods = [StochasticGradientDescent(0.02, 4, epochs=5, seed=s) for s in range(3)]
    methods += [GradientDescent(0.02, 40, momentum=0.9), GradientDescent(0.02, 40), GradientDescent(0.03, 40)]
    points = [SweepPoint(problem, w0, m, rec) for m in methods]
    assert [group_key(p) is None for p in points] == [True] * 4 + [False] * 2
    for point, traj in zip(points, simulate_batch(points)):
        alone = simulate(point.problem, point.weights0, point.method, point.record)
        if group_key(point) is None:  # run alone, through simulate itself
            np.testing.assert_array_equal(traj.product, alone.product, strict=True)
        else:  # a plain GD group of two-layer nets steps in SIMD lanes: simulate to round-off (test_lanes.py)
            np.testing.assert_allclose(traj.product, alone.product, rtol=1e-12, atol=1e-15)
        assert traj.method == ("sgd" if isinstance(point.method, StochasticGradientDescent) else "gd")


def test_full_batch_sgd_keeps_the_exact_gd_theory_and_minibatch_sgd_marks_it_approximate():
    problem = presets.hierarchy(2)
    from service.dynamics import init

    w0 = init.initial_weights(problem, [4], "aligned", strength=1e-3)
    gd = simulate(problem, w0, GradientDescent(0.5, 400, stop_at_convergence=False), RecordSchedule(points=9))
    full = simulate(problem, w0, StochasticGradientDescent(0.5, 4, steps=400), RecordSchedule(points=9))
    mini = simulate(problem, w0, StochasticGradientDescent(0.5, 2, steps=400), RecordSchedule(points=9))
    assert gd.modes.theory_exact and full.modes.theory_exact and not mini.modes.theory_exact
    np.testing.assert_array_equal(full.modes.theory, gd.modes.theory, strict=True)
    assert "mini-batch noise is not modelled" in mini.modes.theory_assumptions


def test_momentum_theory_is_gradient_flow_at_the_rescaled_time():
    # small η: heavy ball ≈ gradient flow at t/(1 − μ) (sgd.theory_stand_in); the aligned balanced init has the
    # exact flow formula, so the overlay should track the run to O(η) plus the buffer's start-up transient
    problem = presets.whitened([3.0, 1.0], 3, 3)
    from service.dynamics import init

    w0 = init.initial_weights(problem, [3], "aligned", strength=0.05)
    mu, eta, steps = 0.9, 1e-4, 40_000
    traj = simulate(problem, w0, GradientDescent(eta, steps, stop_at_convergence=False, momentum=mu),
                    RecordSchedule(points=41))
    flow = simulate(problem, w0, GradientFlow(eta * steps / (1 - mu), stop_at_convergence=False),
                    RecordSchedule(points=41))
    assert not traj.modes.theory_exact and "t/(1 − μ)" in traj.modes.theory_assumptions
    np.testing.assert_allclose(traj.modes.theory, flow.modes.theory, rtol=1e-9, atol=1e-12)
    # The run lags the rescaled flow: the buffer starts at g, not g/(1 − μ), which costs ≈ μ/(1 − μ) = 9 steps, i.e.
    # 9η/(1 − μ) = 0.009 of flow time; the steepest sigmoid here climbs ≈ 0.85 per unit of flow time, so ≈ 0.008
    # of strength, plus O(η). Measured 0.0075; bound 0.015 (a wrong time factor, e.g. t instead of t/(1 − μ),
    # is off by O(1)).
    np.testing.assert_allclose(traj.modes.strength, traj.modes.theory, rtol=0, atol=0.015)
