"""A run's records as they are made (Hooks.records, live.LiveRecords) and the records a stopped run keeps.

Independent references: the same run without hooks (the records and the finished trajectory), compared bit for bit:
the hooks must change nothing, the live numbers must be the trajectory's own.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import presets
from service.dynamics.errors import StopRequested
from service.dynamics.init import initial_weights
from service.dynamics.live import LiveRecords, RecordProducts, record_products
from service.dynamics.methods import GradientDescent, GradientFlow, Hooks, StochasticGradientDescent
from service.dynamics.modes import mode_basis
from service.dynamics.network import fit_gap
from service.dynamics.problem import problem_from_correlations, problem_from_data
from service.dynamics.record import RecordSchedule
from service.dynamics.sequence import Phase, TaskSequence
from service.dynamics.simulate import simulate

METHODS = {
    "gd": GradientDescent(learning_rate=0.05, steps=600),
    "momentum": GradientDescent(learning_rate=0.02, steps=600, momentum=0.5),
    "flow": GradientFlow(t_max=30.0),
}


@pytest.fixture(scope="module")
def hierarchy():
    return presets.hierarchy(depth=3)


def weights0(problem, hidden=(8,)):
    return initial_weights(problem, list(hidden), "gaussian", scale=0.05, seed=1)


class Collector:
    """Hooks.records: keeps every call's start and records."""

    def __init__(self):
        self.calls = []

    def __call__(self, start, run):
        self.calls.append((start, run))

    def stacked(self, layer):
        return np.concatenate([run.weights[layer] for _, run in self.calls])

    def times(self):
        return np.concatenate([run.times for _, run in self.calls])


@pytest.mark.parametrize("name", METHODS)
def test_records_hook_gets_every_record_once_in_order(hierarchy, name):
    seen = Collector()
    simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40),
             hooks=Hooks(records=seen, interval=0.0))
    reference = simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40))
    starts = [start for start, _ in seen.calls]
    counts = [run.times.size for _, run in seen.calls]
    assert starts == list(np.cumsum([0, *counts[:-1]]))
    np.testing.assert_array_equal(seen.times(), reference.time)


@pytest.mark.parametrize("name", METHODS)
def test_records_hook_changes_no_bit_of_the_run(hierarchy, name):
    seen = Collector()
    live = simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40, weights=True),
                    hooks=Hooks(records=seen, interval=0.0))
    plain = simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40, weights=True))
    for a, b in zip(live.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seen.stacked(0), plain.weights[0])


def test_sgd_records_arrive_live_too():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 6))
    problem = problem_from_data(x, x @ rng.standard_normal((6, 4)))
    method = StochasticGradientDescent(learning_rate=0.02, steps=400, batch_size=16, seed=2)
    seen = Collector()
    traj = simulate(problem, weights0(problem, (5,)), method, RecordSchedule(points=30), hooks=Hooks(records=seen,
                                                                                                    interval=0.0))
    np.testing.assert_array_equal(seen.times(), traj.time)


@pytest.fixture(scope="module")
def noisy():
    return presets.noisy_teacher(n_in=8, n_out=6, n_samples=40, noise=0.5, seed=0)


def test_live_summaries_are_the_trajectorys_numbers(noisy):
    assert noisy.test is not None
    seen = Collector()
    method = GradientDescent(learning_rate=0.05, steps=800)
    traj = simulate(noisy, weights0(noisy, (6,)), method, RecordSchedule(points=50), hooks=Hooks(records=seen,
                                                                                                interval=0.0))
    live = LiveRecords(noisy, [6])
    rows = [row for start, run in seen.calls for row in live.summaries(start, run)]
    assert [r["index"] for r in rows] == list(range(len(traj.time)))
    assert [r["step"] for r in rows] == list(traj.step)
    np.testing.assert_array_equal([r["loss"] for r in rows], traj.loss)
    np.testing.assert_array_equal([r["excess_loss"] for r in rows], traj.excess_loss)
    np.testing.assert_array_equal([r["test_loss"] for r in rows], traj.test_loss)
    np.testing.assert_array_equal([r["strength"] for r in rows], traj.modes.strength)


def live_hooks(problem, hidden):
    """The hooks of a worker's live view: records summarised as they come, their products handed to the trajectory."""
    live = LiveRecords(problem, hidden)
    return Hooks(records=lambda start, run: live.summaries(start, run), computed=live.computed, interval=0.0)


@pytest.mark.parametrize("name", METHODS)
def test_a_trajectory_built_on_the_live_products_is_the_plain_trajectory(noisy, name):
    method = METHODS[name]
    live = simulate(noisy, weights0(noisy, (6,)), method, RecordSchedule(points=50), hooks=live_hooks(noisy, [6]))
    plain = simulate(noisy, weights0(noisy, (6,)), method, RecordSchedule(points=50))
    for field in ("time", "loss", "excess_loss", "test_loss", "product", "distance_to_optimum"):
        np.testing.assert_array_equal(getattr(live, field), getattr(plain, field), err_msg=field)
    np.testing.assert_array_equal(live.modes.strength, plain.modes.strength)
    np.testing.assert_array_equal(live.modes.learning_time, plain.modes.learning_time)


def test_a_diverged_run_built_on_the_live_products_is_the_plain_trajectory(noisy):
    method = GradientDescent(learning_rate=5.0, steps=400)  # far above the stability bound: the run blows up
    live = simulate(noisy, weights0(noisy, (6,)), method, RecordSchedule(points=40), hooks=live_hooks(noisy, [6]))
    plain = simulate(noisy, weights0(noisy, (6,)), method, RecordSchedule(points=40))
    assert live.outcome == plain.outcome == "diverged"
    np.testing.assert_array_equal(live.step, plain.step)
    np.testing.assert_array_equal(live.loss, plain.loss)
    np.testing.assert_array_equal(live.modes.strength, plain.modes.strength)


def known_products(problem, traj, count):
    """The products of the first ``count`` records of ``traj``, with a fit gap no computation gives (−1), to see
    whether they are taken."""
    head = RecordProducts.of(problem, mode_basis(problem), traj.time[:count], traj.step[:count], traj.product[:count])
    return RecordProducts(head.times, head.steps, head.product, np.full(count, -1.0), head.strength, head.test)


def test_record_products_take_the_known_records_and_compute_the_rest(noisy):
    traj = simulate(noisy, weights0(noisy, (6,)), GradientDescent(learning_rate=0.05, steps=300),
                    RecordSchedule(points=20, weights=True))
    known = known_products(noisy, traj, 8)
    products = record_products(noisy, mode_basis(noisy), traj.time, traj.step, traj.weights, known)
    assert (products.gap[:8] == -1.0).all()
    np.testing.assert_array_equal(products.gap[8:], fit_gap(noisy, traj.product[8:]))
    np.testing.assert_array_equal(products.product, traj.product)


def test_record_products_take_no_record_whose_step_moved(noisy):
    traj = simulate(noisy, weights0(noisy, (6,)), GradientDescent(learning_rate=0.05, steps=300),
                    RecordSchedule(points=20, weights=True))
    known = known_products(noisy, traj, 8)
    moved = traj.step.copy()
    moved[5] += 1  # a run that ended early moves its last record to the step it ended at
    assert known.covered(traj.time, moved) == 5
    products = record_products(noisy, mode_basis(noisy), traj.time, moved, traj.weights, known)
    assert (products.gap[:5] == -1.0).all() and (products.gap[5:] >= 0).all()


def test_live_loss_is_null_without_sigma33(hierarchy):
    corr = problem_from_correlations(hierarchy.sigma11, hierarchy.sigma31)
    seen = Collector()
    simulate(corr, weights0(corr), GradientDescent(learning_rate=0.05, steps=100), RecordSchedule(points=5),
             hooks=Hooks(records=seen, interval=0.0))
    rows = [row for start, run in seen.calls for row in LiveRecords(corr, [8]).summaries(start, run)]
    assert all(r["loss"] is None and r["excess_loss"] is not None for r in rows)


class StopAfter:
    """should_stop: True from the n-th check on."""

    def __init__(self, n):
        self.n, self.count = n, 0

    def __call__(self):
        self.count += 1
        return self.count >= self.n


@pytest.mark.parametrize("name", ["gd", "flow"])
def test_a_stopped_run_keeps_its_records_as_a_trajectory(hierarchy, name):
    with pytest.raises(StopRequested) as stopped:
        simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40),
                 hooks=Hooks(should_stop=StopAfter(5), interval=0.0))
    kept = stopped.value.trajectory
    full = simulate(hierarchy, weights0(hierarchy), METHODS[name], RecordSchedule(points=40))
    n = len(kept.time)
    assert kept.outcome == "stopped"
    assert 0 < n < len(full.time)
    np.testing.assert_array_equal(kept.time, full.time[:n])
    np.testing.assert_array_equal(kept.loss, full.loss[:n])
    np.testing.assert_array_equal(kept.modes.strength, full.modes.strength[:n])


def test_a_run_stopped_at_its_first_check_keeps_its_initial_record(hierarchy):
    with pytest.raises(StopRequested) as stopped:
        simulate(hierarchy, weights0(hierarchy), GradientFlow(t_max=30.0), RecordSchedule(points=40, weights=True),
                 hooks=Hooks(should_stop=StopAfter(1), interval=0.0))
    kept = stopped.value.trajectory
    assert kept.time[0] == 0.0
    np.testing.assert_array_equal(kept.weights[0][0], weights0(hierarchy)[0])


# -- task sequences: records on the whole run's clock, each on its own task ----------------------------------------

SEQUENCE_METHODS = {"gd": GradientDescent(learning_rate=0.05, steps=800), "flow": GradientFlow(t_max=40.0)}


@pytest.fixture(scope="module")
def two_tasks():
    """A switch at t = 15 from one noisy teacher to another (both with test data)."""
    first = presets.noisy_teacher(n_in=8, n_out=6, n_samples=40, noise=0.5, seed=0)
    second = presets.noisy_teacher(n_in=8, n_out=6, n_samples=40, noise=0.5, seed=1)
    return TaskSequence([Phase(first, 15.0), Phase(second)])


@pytest.mark.parametrize("name", SEQUENCE_METHODS)
def test_a_sequences_records_arrive_once_in_order_on_the_runs_clock(two_tasks, name):
    seen = Collector()
    traj = simulate(two_tasks, weights0(two_tasks.problems[0], (6,)), SEQUENCE_METHODS[name],
                    RecordSchedule(points=30), hooks=Hooks(records=seen, interval=0.0))
    starts = [start for start, _ in seen.calls]
    counts = [run.times.size for _, run in seen.calls]
    assert starts == list(np.cumsum([0, *counts[:-1]]))
    assert (traj.phase == 1).any()
    np.testing.assert_array_equal(seen.times(), traj.time)
    if traj.step is not None:
        np.testing.assert_array_equal(np.concatenate([run.steps for _, run in seen.calls]), traj.step)


@pytest.mark.parametrize("name", SEQUENCE_METHODS)
def test_live_summaries_of_a_sequence_are_its_trajectorys_numbers(two_tasks, name):
    method, record = SEQUENCE_METHODS[name], RecordSchedule(points=30)
    seen = Collector()
    traj = simulate(two_tasks, weights0(two_tasks.problems[0], (6,)), method, record,
                    hooks=Hooks(records=seen, interval=0.0))
    live = LiveRecords.for_sequence(two_tasks, [6], method, record)
    rows = [row for start, run in seen.calls for row in live.summaries(start, run)]
    assert [r["index"] for r in rows] == list(range(len(traj.time)))
    np.testing.assert_array_equal([r["loss"] for r in rows], traj.loss)
    np.testing.assert_array_equal([r["excess_loss"] for r in rows], traj.excess_loss)
    np.testing.assert_array_equal([r["test_loss"] for r in rows], traj.test_loss)
    np.testing.assert_array_equal([r["strength"] for r in rows], traj.modes.strength)


@pytest.mark.parametrize("name", SEQUENCE_METHODS)
def test_a_sequence_stopped_after_its_switch_keeps_every_phases_records(two_tasks, name):
    w0 = weights0(two_tasks.problems[0], (6,))
    full = simulate(two_tasks, w0, SEQUENCE_METHODS[name], RecordSchedule(points=30))
    stop = StopWhen(lambda: stop.seen >= 0.6 * len(full.time))
    hooks = Hooks(records=stop.count, should_stop=stop, interval=0.0)
    with pytest.raises(StopRequested) as stopped:
        simulate(two_tasks, w0, SEQUENCE_METHODS[name], RecordSchedule(points=30), hooks=hooks)
    kept = stopped.value.trajectory
    n = len(kept.time)
    assert kept.outcome == "stopped"
    assert (kept.phase == 1).any() and n < len(full.time)
    np.testing.assert_array_equal(kept.time, full.time[:n])
    np.testing.assert_array_equal(kept.phase, full.phase[:n])
    np.testing.assert_array_equal(kept.loss, full.loss[:n])
    np.testing.assert_array_equal(kept.task_loss, full.task_loss[:n])


class StopWhen:
    """should_stop: True once ``when()`` holds; ``count`` is a records hook counting the records seen."""

    def __init__(self, when):
        self.when, self.seen = when, 0

    def count(self, start, run):
        self.seen = start + run.times.size

    def __call__(self):
        return self.when()


def test_drained_blocks_are_the_joined_blocks_and_the_list_is_emptied(noisy):
    traj = simulate(noisy, weights0(noisy, (6,)), GradientDescent(learning_rate=0.05, steps=300),
                    RecordSchedule(points=20))
    whole = RecordProducts.of(noisy, mode_basis(noisy), traj.time, traj.step, traj.product)
    blocks = [whole.head(7), RecordProducts(*(None if a is None else a[7:] for a in (
        whole.times, whole.steps, whole.product, whole.gap, whole.strength, whole.test)))]
    joined = RecordProducts.joined(blocks)
    drained = RecordProducts.drained(blocks)
    assert blocks == []
    for name in ("times", "steps", "product", "gap", "strength", "test"):
        np.testing.assert_array_equal(getattr(drained, name), getattr(whole, name), err_msg=name)
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
