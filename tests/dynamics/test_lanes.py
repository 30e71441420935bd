"""Small two-layer GD groups stepped in SIMD lanes (service.dynamics.gd_lanes, through ``simulate_batch``).

The lane kernel sums each product in plain k order with fused multiply-adds, BLAS in its own blocked order, so
a point's weights differ from ``simulate``'s by round-off, not bit for bit. The claim tested here:

* outcomes, stop steps and record steps equal ``simulate``'s exactly (the checks sit at the same steps and
  the stopping rules are the same; the cases are well-conditioned: no gradient norm within round-off of a
  threshold). Not tested, because no two summation orders agree there: a run at the edge of stability
  (η = 0.3 on the whitened problem below neither converges nor diverges in 3,000 steps) amplifies round-off
  to O(1) differences, as a different BLAS build or thread count would too;
* recorded weights and losses agree to ``RTOL`` relative over 10,000 steps (measured: 1e-15 to 3.2e-14 over
  10,000 steps; the bound leaves room for other CPUs' and BLAS builds' rounding; a run that steps on at its
  round-off floor after converging agrees to the floor's scale, 1e-8), float32 to ``RTOL32``;
* lanes are independent: a point's result does not depend on its neighbours, the group size (padding
  lanes) or the hook chunking: those comparisons are bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import batch, gd_lanes
from service.dynamics.batch import SweepPoint, simulate_batch
from service.dynamics.init import initial_weights
from service.dynamics.methods import GradientDescent, Hooks
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

from .test_batch import assert_identical
from .test_gd import nonwhite_problem, orthogonal, random_net, whitened_problem

# Relative agreement with simulate (max |ΔW| / max |W| per record and layer; |ΔL| / L per record, or the
# excess loss relative to its largest value where Σ33 is unknown). Measured
# over these tests' 10,000-step runs: ≤ 1e-13 (float64); float32 ≤ 1e-5 over 1,000 steps.
RTOL = 1e-11
RTOL32 = 1e-4
REC = RecordSchedule(points=40, weights=True)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(21)


@pytest.fixture(scope="module")
def problems(rng):
    return nonwhite_problem(rng, 5, 4), nonwhite_problem(rng, 5, 4)


def worst_difference(traj, want):
    """Largest relative difference of recorded weights, product, losses, gradient norms and balance drift between two
    trajectories of one point."""
    worst = float(np.max(np.abs(traj.product - want.product)) / np.max(np.abs(want.product)))
    for got_l, want_l in zip(traj.weights, want.weights, strict=True):
        for g, w in zip(got_l, want_l, strict=True):
            worst = max(worst, float(np.max(np.abs(g.astype(float) - w)) / max(np.max(np.abs(w)), 1e-300)))
    if want.loss is not None:  # relative to the loss itself
        finite = np.isfinite(want.loss)
        rel = np.abs(traj.loss[finite] - want.loss[finite]) / np.abs(want.loss[finite])
    else:  # Σ33 unknown: the excess loss, relative to its largest value (it goes to 0)
        finite = np.isfinite(want.excess_loss)
        rel = np.abs(traj.excess_loss[finite] - want.excess_loss[finite]) / np.max(np.abs(want.excess_loss[finite]))
    worst = max(worst, float(np.max(rel, initial=0.0)))
    # the records' gradient norm (it falls towards 0: relative to its largest value) and balance drift (a difference
    # of Grams: its round-off is that of the Grams, relative to the largest squared weight)
    norm = np.abs(traj.gradient_norm - want.gradient_norm) / np.max(want.gradient_norm)
    gram = max(float(np.max(np.abs(w))) ** 2 for w in want.weights)
    drift = np.abs(traj.balance_drift - want.balance_drift) / gram
    return max(worst, float(np.max(norm)), float(np.max(drift)))


def assert_close_to_simulate(points, trajectories, rtol=RTOL):
    """Same outcome, stop step and record steps as simulate; weights, product and losses within rtol. Returns
    the worst."""
    worst = 0.0
    for j, (p, traj) in enumerate(zip(points, trajectories, strict=True)):
        want = simulate(p.problem, p.weights0, p.method, p.record, dtype=p.dtype)
        assert traj.outcome == want.outcome, j
        assert traj.diverged_at_step == want.diverged_at_step, j
        np.testing.assert_array_equal(traj.step, want.step, err_msg=f"point {j}")
        diff = worst_difference(traj, want)
        assert diff <= rtol, (j, diff)
        worst = max(worst, diff)
    print(f"worst relative difference from simulate: {worst:.2e}")
    return worst


def sweep(problems, rng, widths, steps, n=6, dtype="float64", record=REC):
    """n points (a partial last block when n is not a multiple of LANES): per-point η, γ, Σ and init."""
    etas = [0.01, 0.02, 0.005, 0.015, 0.012, 0.008, 0.018]
    decays = [0.0, 0.05, 0.1, 0.0, 0.02, 0.0, 0.07]
    return [SweepPoint(problems[j % 2], random_net(rng, widths, 0.4),
                       GradientDescent(etas[j % 7], steps, decays[j % 7]), record, dtype) for j in range(n)]


def test_lanes_are_used_for_small_two_layer_nets_only():
    assert gd_lanes.lanes_for([8, 16, 8]) and gd_lanes.lanes_for([16, 16, 16])
    assert not gd_lanes.lanes_for([8, 17, 8]) and not gd_lanes.lanes_for([32, 32, 32])
    assert not gd_lanes.lanes_for([5, 4]) and not gd_lanes.lanes_for([5, 3, 6, 4])


@pytest.mark.parametrize("widths", [[5, 6, 4], [5, 3, 4], [8, 16, 8], [5, 7, 6]],
                         ids=["o<h", "o>h", "8-16-8", "odd-widths"])
def test_group_agrees_with_simulate_over_10000_steps(rng, problems, widths):
    if (widths[0], widths[-1]) != (5, 4):
        problems = (nonwhite_problem(rng, widths[0], widths[-1]), nonwhite_problem(rng, widths[0], widths[-1]))
    points = sweep(problems, rng, widths, 10_000, n=2 * gd_lanes.LANES - 1)
    assert_close_to_simulate(points, simulate_batch(points))


@pytest.mark.parametrize("widths", [[5, 6, 4], [5, 3, 4]], ids=["o<h", "o>h"])
def test_blocks_without_weight_decay_agree_with_simulate(rng, problems, widths):
    """Blocks whose lanes all have γ = 0 add the update without the factor 1 − ηγ (``_fused_step``'s other branch):
    the mixed blocks above never take it."""
    points = [SweepPoint(p.problem, p.weights0, GradientDescent(p.method.learning_rate, p.method.steps), p.record)
              for p in sweep(problems, rng, widths, 10_000, n=2 * gd_lanes.LANES - 1)]
    assert_close_to_simulate(points, simulate_batch(points))


def test_lane_arrays_start_on_a_cache_line():
    for shape, dtype in [((3, 256), np.float64), (17, np.float64), ((2, 4, 8), np.float32), ((1, 9), np.float32)]:
        for _ in range(20):  # numpy's own buffers start on 16 bytes: some draws would not be aligned by chance
            a = gd_lanes.empty_lanes(shape, dtype)
            assert a.ctypes.data % gd_lanes.ALIGN == 0 and a.shape == np.empty(shape).shape and a.dtype == dtype
    rows = np.arange(15 * 6, dtype=np.float64).reshape(15, 6)
    lanes = gd_lanes.to_lanes(rows, 2, fill=-1.0)
    assert lanes.ctypes.data % gd_lanes.ALIGN == 0
    np.testing.assert_array_equal(lanes.reshape(2, 6, gd_lanes.LANES).transpose(0, 2, 1).reshape(16, 6)[:15], rows)
    assert np.all(lanes.reshape(2, 6, gd_lanes.LANES)[1, :, 7] == -1.0)


def test_early_convergence_and_divergence_stop_at_simulates_steps(rng):
    # η = 0.1 on whitened s ≤ 2 converges within a few hundred steps; η = 1.5 diverges; η = 1e-4 runs to the end.
    # The stops fall between checks, so each stopping lane leaves its block and replays in gd_chunk.
    u, v = orthogonal(rng, 3), orthogonal(rng, 4)
    white = whitened_problem(u, np.array([2.0, 1.5, 1.0]), v)
    w0 = initial_weights(white, [5], "aligned", strength=0.5)
    etas = [1e-4, 0.1, 1.5, 0.05, 0.02, 1e-3]
    points = [SweepPoint(white, w0, GradientDescent(eta, 3_000, 0.01 if j == 3 else 0.0), REC)
              for j, eta in enumerate(etas)]
    trajectories = simulate_batch(points)
    outcomes = [t.outcome for t in trajectories]
    assert outcomes[0] == "completed" and outcomes[1] == "converged" and outcomes[2] == "diverged"
    assert_close_to_simulate(points, trajectories)
    # the replays again, in one-step hook chunks: the stopping lanes leave their block mid-chunk, bit for bit
    assert_identical(simulate_batch(points, hooks=Hooks(progress=lambda f: None, interval=0.0)), trajectories)


def test_points_that_step_on_after_convergence(problems):
    # its own generator: the module's shared one hands out nets by test order (xdist), and this one must converge
    rng = np.random.default_rng(5)
    points = [SweepPoint(problems[0], random_net(rng, [5, 6, 4], 0.4),
                         GradientDescent(0.05, 3_000, stop_at_convergence=stop), REC) for stop in (True, False)]
    trajectories = simulate_batch(points)
    assert [t.outcome for t in trajectories] == ["converged", "completed"]
    assert_close_to_simulate(points[:1], trajectories[:1])
    # Stepping on for ~2,900 steps after converging, the gradient sits at its round-off floor (~1e-10 ‖Σ31‖,
    # the convergence threshold) and each summation order walks its own way there: measured 7e-11 relative.
    assert_close_to_simulate(points[1:], trajectories[1:], rtol=1e-8)


def test_float32_group_agrees_with_simulate(problems):
    # 1,000 steps: none of these points comes near float32's convergence threshold (1.2e-5 ‖Σ31‖, at its
    # round-off floor), where a one-step difference in the stop is round-off, not a fault
    points = sweep(problems, np.random.default_rng(32), [5, 6, 4], 1_000, n=5, dtype="float32")
    trajectories = simulate_batch(points)
    assert_close_to_simulate(points, trajectories, rtol=RTOL32)


def test_lanes_off_is_simulate_bit_for_bit(rng, problems):
    points = sweep(problems, rng, [5, 6, 4], 300, n=3)
    for p, traj in zip(points, simulate_batch(points, lanes=False)):
        assert_identical(traj, simulate(p.problem, p.weights0, p.method, p.record))


def test_a_points_result_does_not_depend_on_its_neighbours_or_the_hook_chunks(rng, problems):
    """Bit for bit: alone (a block of padding), in a group, in another order, and in one-step hook chunks
    (checks, saved states and replays across chunk boundaries; one point diverges)."""
    points = sweep(problems, rng, [5, 6, 4], 400, n=6)
    points[4] = SweepPoint(problems[0], points[4].weights0, GradientDescent(3.0, 400), REC)
    whole = simulate_batch(points)
    assert whole[4].outcome == "diverged"
    for j in (0, 4, 5):
        assert_identical(simulate_batch([points[j]])[0], whole[j])
    assert_identical(simulate_batch(points[::-1])[::-1], whole)
    assert_identical(simulate_batch(points, hooks=Hooks(progress=lambda f: None, interval=0.0)), whole)


def test_sub_batches_of_lanes_change_nothing(rng, problems, monkeypatch):
    """Bit for bit: 20 points as one group (3 blocks) and as sub-batches of 8, 8 and 4 points."""
    points = sweep(problems, rng, [5, 6, 4], 300, n=20)
    whole = simulate_batch(points)
    monkeypatch.setattr(batch, "HEAP_MIN_POINTS", 1)
    monkeypatch.setattr(batch, "HEAP_SNAPSHOT_BYTES", 8 * (REC.gd_steps(0.01, 300).size + 2) * (5 * 6 + 6 * 4) * 8)
    layout = batch.layout_of(points[0].problem, points[0].weights0)
    assert [len(s) for s in batch._sub_batches(list(range(20)), layout, points[0])] == [8, 8, 4]
    assert_identical(simulate_batch(points), whole)


class KernelDouble:
    """Stands in for ``gd_lanes_steps`` in ``gd_lanes.steps``: records, at its compile and its run, numba's SLP
    setting and whether this thread holds numba's compiler lock."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.seen = []

    def _state(self):
        from numba.core import config
        from numba.core.compiler_lock import global_compiler_lock

        return config.SLP_VECTORIZE, global_compiler_lock.is_locked()

    def compile(self, signature):
        self.seen.append(("compile", *self._state()))
        if self.fail:
            raise RuntimeError("compile failed")

    def __call__(self, *args):
        self.seen.append(("run", *self._state()))


@pytest.mark.parametrize("fail", [False, True], ids=["compiled", "compile fails"])
def test_the_slp_vectoriser_is_on_only_while_the_lane_kernel_compiles_under_numbas_lock(monkeypatch, fail):
    from numba.core import config

    kernel = KernelDouble(fail)
    monkeypatch.setattr(gd_lanes, "gd_lanes_steps", kernel)
    monkeypatch.setattr(gd_lanes, "_READY", set())
    before = config.SLP_VECTORIZE
    if fail:
        with pytest.raises(RuntimeError):
            gd_lanes.steps(np.zeros(8), np.zeros(2))
    else:
        gd_lanes.steps(np.zeros(8), np.zeros(2))
    assert kernel.seen[0] == ("compile", 1, True)
    assert kernel.seen[1:] == ([] if fail else [("run", before, False)])
    assert config.SLP_VECTORIZE == before


@pytest.mark.parametrize("widths", [[8, 16, 8], [5, 7, 6], [5, 3, 4]], ids=["8-16-8", "odd-widths", "o>h"])
def test_lane_diagnostics_equal_record_diagnostics_to_round_off(rng, widths):
    """Gradient norm, balance drift and network map of 11 points' records (a partial second block), two problems,
    per-point γ, one record with a NaN: against ``simulate.record_diagnostics`` and ``network.network_map`` (one BLAS
    call per product) point by point; the map is the error's own product for o < h and one more product for o > h."""
    from service.dynamics import batch
    from service.dynamics.gd import layout_of, plan_order
    from service.dynamics.network import network_map
    from service.dynamics.simulate import record_diagnostics

    problems = (nonwhite_problem(rng, widths[0], widths[-1]), nonwhite_problem(rng, widths[0], widths[-1]))
    n, n_rec = 11, 7
    nets = [[random_net(rng, widths, 0.4) for _ in range(n_rec)] for _ in range(n)]
    layout = layout_of(problems[0], nets[0][0])
    snap = np.stack([np.stack([layout.pack(net, np.float64) for net in records]) for records in nets])
    snap[3, 5, 2] = np.nan
    counts = [n_rec - (j % 3) for j in range(n)]  # points that stopped early have fewer records
    pidx = np.array([j % 2 for j in range(n)])
    decay = np.array([0.0, 0.05, 0.1] * 4)[:n]
    s11 = np.stack([p.sigma11 for p in problems])
    s31 = np.stack([p.sigma31 for p in problems])
    got, maps = batch._lane_diagnostics(snap, counts, s11, s31, pidx, decay, layout, plan_order(layout.dims)[0])
    for j, (grad_norm, drift) in enumerate(got):
        weights = [layer[:counts[j]].astype(np.float64) for layer in layout.unpack_stack(snap[j], np.float64)]
        want_norm, want_drift = record_diagnostics(problems[pidx[j]], weights, decay[j])
        # plain-order sums with FMA against BLAS's order: round-off of the terms' scale (‖W‖² ~ 1 here)
        np.testing.assert_allclose(grad_norm, want_norm, rtol=1e-13, err_msg=f"point {j}")
        np.testing.assert_allclose(drift, want_drift, rtol=1e-12, atol=1e-14, err_msg=f"point {j}")
        np.testing.assert_allclose(maps[j, :counts[j]], network_map(weights), rtol=1e-13, atol=1e-15,
                                   err_msg=f"point {j}")
    assert np.isnan(got[3][1][5]) and np.isnan(got[3][0][5])
