"""Batched simulations for sweeps (service.dynamics.batch) with ``lanes=False``: every point equals ``simulate``
on it bit for bit, in input order, with per-point outcomes, chunking for the hooks that changes nothing, and
cooperative stop.

Bitwise is the claim for GD on that path because the batch advances each point with the single-simulation
step loop itself (``gd_loop.gd_chunk``, whose checks sit at fixed steps) and fills it with ``simulate``'s own
``build_trajectory``; flow and exact points run through ``simulate`` itself. So every comparison here is
exact equality, NaNs included. The default path steps small two-layer groups in SIMD lanes, which agree with
``simulate`` to round-off only: tests/dynamics/test_lanes.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.dynamics import batch
from service.dynamics.batch import SweepPoint, group_key
from service.dynamics.errors import InvalidParameterError, StopRequested
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, Hooks
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

from .test_gd import nonwhite_problem, orthogonal, random_net, whitened_problem

REC = RecordSchedule(points=25)


def simulate_batch(points, **kwargs):
    """The batch on the one-by-one step loop (the bitwise path this file tests)."""
    return batch.simulate_batch(points, lanes=False, **kwargs)


def assert_identical(got, want, path="trajectory"):
    """Exact equality of two results, field by field (arrays: same dtype, shape and bits; NaN == NaN)."""
    if dataclasses.is_dataclass(want):
        assert type(got) is type(want), path
        for f in dataclasses.fields(want):
            assert_identical(getattr(got, f.name), getattr(want, f.name), f"{path}.{f.name}")
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, strict=True, err_msg=path)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for j, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{path}[{j}]")
    else:
        assert got == want, path


def assert_equals_simulate(points, trajectories):
    assert len(trajectories) == len(points)
    for j, (p, traj) in enumerate(zip(points, trajectories)):
        want = simulate(p.problem, p.weights0, p.method, p.record, dtype=p.dtype)
        assert_identical(traj, want, f"point {j}")


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20)


@pytest.fixture(scope="module")
def problems(rng):
    return nonwhite_problem(rng, 5, 4), nonwhite_problem(rng, 5, 4)


def gd_group(rng, problems, widths, steps=200, dtype="float64", record=REC):
    """One group: per-point learning rate, weight decay, problem (two different Σ11/Σ31) and init."""
    settings = [(0.01, 0.0, 0), (0.02, 0.05, 1), (0.005, 0.1, 0), (0.015, 0.0, 1)]
    return [SweepPoint(problems[q], random_net(rng, widths, 0.4), GradientDescent(eta, steps, decay), record, dtype)
            for eta, decay, q in settings]


# ------------------------------------------------------------------------------------------------
# equality with simulate


@pytest.mark.parametrize("widths", [[5, 4], [5, 6, 4], [5, 3, 4], [5, 3, 6, 4]], ids=["D1", "D2-o<h", "D2-o>h", "D3"])
def test_gd_group_equals_simulate_bit_for_bit(rng, problems, widths):
    # 200 steps: many CHECK_EVERY intervals, so fused and checked steps (which round differently when γ > 0) both occur
    points = gd_group(rng, problems, widths)
    assert len({group_key(p) for p in points}) == 1
    assert_equals_simulate(points, simulate_batch(points))


def test_float32_group_equals_simulate_bit_for_bit(rng, problems):
    points = gd_group(rng, problems, [5, 6, 4], dtype="float32")
    trajectories = simulate_batch(points)
    assert_equals_simulate(points, trajectories)


def test_points_that_step_on_after_convergence_equal_simulate(rng, problems):
    # a group mixing points that stop at convergence and points that step on to the end (a tolerance per point)
    points = [SweepPoint(problems[0], random_net(rng, [5, 4], 0.4),
                         GradientDescent(0.05, 3_000, stop_at_convergence=stop), REC) for stop in (True, False)]
    trajectories = simulate_batch(points)
    assert [t.outcome for t in trajectories] == ["converged", "completed"]
    assert_equals_simulate(points, trajectories)


def test_recorded_weights_and_similarity_equal_simulate(rng, problems):
    record = RecordSchedule(points=7, spacing="log", weights=True, similarity=True)
    points = gd_group(rng, problems, [5, 6, 4], record=record)
    trajectories = simulate_batch(points)
    assert all(t.weights is not None and t.similarity is not None for t in trajectories)
    assert_equals_simulate(points, trajectories)


def test_kept_weights_are_each_points_own_copy_not_the_groups_buffer(rng, problems):
    record = RecordSchedule(points=7, weights=True)
    trajectories = simulate_batch(gd_group(rng, problems, [5, 6, 4], record=record))
    for w in (w for t in trajectories for w in t.weights):
        root = w
        while root.base is not None:
            root = root.base
        assert root.nbytes == w.nbytes  # the memory a kept layer holds is that layer's, not the group's records


def test_mixed_shapes_and_methods_come_back_in_input_order(rng, problems):
    u, v = orthogonal(rng, 4), orthogonal(rng, 5)
    white = whitened_problem(u, np.array([3.0, 2.0, 1.0]), v)
    small = initial_weights(white, [4], "aligned", strength=1e-3)
    points = [
        SweepPoint(problems[0], random_net(rng, [5, 3, 4], 0.4), GradientDescent(0.01, 100), REC),
        SweepPoint(problems[1], random_net(rng, [5, 6, 4], 0.4), GradientFlow(1.0), REC),
        SweepPoint(problems[0], random_net(rng, [5, 6, 4], 0.4), GradientDescent(0.01, 100, 0.05), REC),
        SweepPoint(white, small, Exact(3.0), REC),
        SweepPoint(problems[1], random_net(rng, [5, 3, 4], 0.4), GradientDescent(0.02, 100), REC),
        SweepPoint(problems[1], random_net(rng, [5, 3, 4], 0.4), GradientDescent(0.02, 60), REC),  # other steps
        SweepPoint(problems[0], random_net(rng, [5, 3, 4], 0.4), GradientDescent(0.01, 100), REC, "float32"),
    ]
    # GD groups {0, 4}, {2}, {5}, {6}; flow and exact run alone (key None)
    assert len({group_key(p) for p in points}) == 5
    trajectories = simulate_batch(points)
    assert [t.method for t in trajectories] == ["gd", "flow", "gd", "exact", "gd", "gd", "gd"]
    assert_equals_simulate(points, trajectories)


def test_empty_batch_returns_empty_list():
    assert simulate_batch([]) == []


# ------------------------------------------------------------------------------------------------
# per-point outcomes


def test_diverging_point_stops_while_the_others_run_to_the_end(rng, problems):
    widths = [5, 6, 4]
    w0 = random_net(rng, widths, 0.4)
    steps = 300
    points = [SweepPoint(problems[0], w0, GradientDescent(eta, steps), REC) for eta in (0.01, 3.0, 0.02)]
    trajectories = simulate_batch(points)
    assert [t.outcome for t in trajectories] == ["completed", "diverged", "completed"]
    assert 0 < trajectories[1].diverged_at_step < steps
    assert trajectories[0].step[-1] == trajectories[2].step[-1] == steps
    assert_equals_simulate(points, trajectories)


def test_converging_point_stops_early_while_the_others_continue(rng):
    u, v = orthogonal(rng, 3), orthogonal(rng, 3)
    white = whitened_problem(u, np.array([2.0, 1.5, 1.0]), v)
    w0 = initial_weights(white, [3], "aligned", strength=0.5)
    steps = 1500
    # η = 0.1 on whitened s ≤ 2: each mode contracts by ≥ 0.6 per step near the optimum, so the gradient
    # drops below 1e-10‖Σ31‖ within a few hundred steps; η = 1e-4 moves the weights by ~1e-4 in total.
    points = [SweepPoint(white, w0, GradientDescent(eta, steps), REC) for eta in (1e-4, 0.1, 2e-4)]
    trajectories = simulate_batch(points)
    assert [t.outcome for t in trajectories] == ["completed", "converged", "completed"]
    assert trajectories[1].step[-1] < steps
    assert trajectories[0].step[-1] == trajectories[2].step[-1] == steps
    assert_equals_simulate(points, trajectories)


# ------------------------------------------------------------------------------------------------
# chunking, hooks, sub-batches


def test_hook_chunks_of_one_step_change_no_bit(rng, problems):
    """interval = 0 makes every chunk one step long, so checks, saved states and replays cross chunk
    boundaries all the time (with γ > 0 a misplaced check would round differently; the diverging point
    replays from a state saved in an earlier chunk)."""
    w0 = random_net(rng, [5, 6, 4], 0.4)
    points = [SweepPoint(problems[1], w0, GradientDescent(eta, 150, decay), REC)
              for eta, decay in ((0.01, 0.1), (3.0, 0.0), (0.02, 0.05))]
    trajectories = simulate_batch(points, hooks=Hooks(progress=lambda f: None, interval=0.0))
    assert trajectories[1].outcome == "diverged"
    assert_equals_simulate(points, trajectories)


def test_progress_covers_the_whole_batch_and_ends_at_one(rng, problems):
    seen = []
    points = gd_group(rng, problems, [5, 6, 4], steps=100)
    points.insert(2, SweepPoint(problems[0], random_net(rng, [5, 3, 4], 0.4), GradientFlow(0.5), REC))
    simulate_batch(points, hooks=Hooks(progress=seen.append, interval=0.0))
    assert len(seen) > 10
    assert all(0.0 <= f <= 1.0 for f in seen)
    assert seen == sorted(seen)  # the mean of per-point fractions only grows
    assert seen[-1] == 1.0


def test_should_stop_raises_stop_requested_mid_batch(rng, problems):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3

    points = gd_group(rng, problems, [5, 6, 4], steps=100)
    with pytest.raises(StopRequested):
        simulate_batch(points, hooks=Hooks(should_stop=should_stop, interval=0.0))
    assert len(calls) == 3  # stopped at the first check that asked, not at the end


def test_invalid_point_raises_with_its_index_before_anything_runs(rng, problems):
    seen = []
    points = gd_group(rng, problems, [5, 6, 4], steps=50)
    points.append(SweepPoint(problems[0], random_net(rng, [5, 6, 4], 0.4), GradientDescent(-0.1, 50), REC))
    with pytest.raises(InvalidParameterError) as err:
        simulate_batch(points, hooks=Hooks(progress=seen.append, interval=0.0))
    assert err.value.point_index == 4
    assert err.value.field == ("training", "learning_rate")
    assert seen == []


def test_sub_batches_change_nothing(rng, problems, monkeypatch):
    points = gd_group(rng, problems, [5, 6, 4], steps=100)
    whole = simulate_batch(points)
    monkeypatch.setattr(batch, "HEAP_SNAPSHOT_BYTES", 1)
    monkeypatch.setattr(batch, "MAX_SNAPSHOT_BYTES", 1)  # one point per sub-batch
    assert_identical(simulate_batch(points), whole)


def sub_batch_sizes(point, n):
    """The sizes of the sub-batches ``simulate_batch`` cuts a group of n copies of ``point`` into, and the record
    buffer's bytes per point."""
    layout = batch.layout_of(point.problem, point.weights0)
    n_rec = point.record.gd_steps(point.method.learning_rate, point.method.steps).size + 2
    slices = batch._sub_batches(list(range(n)), layout, point)
    assert [k for s in slices for k in s] == list(range(n))  # consecutive, in order, every point once
    return [len(s) for s in slices], n_rec * layout.size * 8


def test_small_nets_sub_batches_fit_under_the_heap_limit_in_whole_blocks_of_lanes(rng):
    """A 128-point (8,16,8) chunk with 200 records (53 MB of records) runs as 48 + 48 + 32 points, each buffer under
    glibc's largest mmap threshold: reused from the heap rather than mapped and zeroed afresh."""
    problem = nonwhite_problem(rng, 8, 8)
    point = SweepPoint(problem, random_net(rng, [8, 16, 8], 0.3), GradientDescent(1e-3, 10_000), RecordSchedule())
    sizes, per_point = sub_batch_sizes(point, 128)
    assert sizes == [48, 48, 32]
    assert max(sizes) * per_point <= batch.HEAP_SNAPSHOT_BYTES < 32 * 2 ** 20
    assert sub_batch_sizes(point, 40)[0] == [40]  # a buffer that fits: one batch
    sizes = sub_batch_sizes(point, 1024)[0]  # 60 points fit: 56 a batch, no half-empty block but the last
    assert sizes == [56] * 18 + [16]


def test_large_nets_sub_batches_keep_the_memory_cap(rng):
    """(64,64,64) with 200 records: 13 MB of records a point, fewer than HEAP_MIN_POINTS under the heap limit, so
    sub-batches fill MAX_SNAPSHOT_BYTES (as even as may be)."""
    problem = nonwhite_problem(rng, 64, 64, n=200)
    point = SweepPoint(problem, random_net(rng, [64, 64, 64], 0.1), GradientDescent(1e-3, 1_000), RecordSchedule())
    sizes, per_point = sub_batch_sizes(point, 64)
    assert batch.HEAP_SNAPSHOT_BYTES // per_point < batch.HEAP_MIN_POINTS
    assert max(sizes) * per_point <= batch.MAX_SNAPSHOT_BYTES
    assert len(sizes) == -(-64 * per_point // batch.MAX_SNAPSHOT_BYTES) and max(sizes) - min(sizes) <= 8


# ------------------------------------------------------------------------------------------------
# grouping rules


def test_group_key_separates_shape_steps_record_and_dtype_only(rng, problems):
    w0 = random_net(rng, [5, 6, 4], 0.4)
    base = SweepPoint(problems[0], w0, GradientDescent(0.01, 100), REC)
    same = [SweepPoint(problems[1], random_net(rng, [5, 6, 4], 1.0), GradientDescent(0.5, 100, 0.1), REC)]
    other = [
        SweepPoint(problems[0], random_net(rng, [5, 3, 4], 0.4), GradientDescent(0.01, 100), REC),
        SweepPoint(problems[0], w0, GradientDescent(0.01, 101), REC),
        SweepPoint(problems[0], w0, GradientDescent(0.01, 100), RecordSchedule(points=26)),
        SweepPoint(problems[0], w0, GradientDescent(0.01, 100), REC, "float32"),
    ]
    assert all(group_key(p) == group_key(base) for p in same)
    assert len({group_key(p) for p in [base, *other]}) == 5
    assert group_key(SweepPoint(problems[0], w0, GradientFlow(1.0), REC)) is None
