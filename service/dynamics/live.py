"""A run's records as they are made: the per-record numbers of a live view (``Hooks.records`` → record events).

    live = LiveRecords(problem, hidden=[16])
    hooks = Hooks(records=lambda start, run: send(live.summaries(start, run)))

Each summary holds what a learning curve needs, computed exactly as ``simulate.build_trajectory`` computes the
same quantities (so a record's live numbers equal the finished trajectory's; bit for bit under the same BLAS
threads, else to round-off):

    loss         L = L_ls + ‖W F − G‖²  (null when tr Σ33 is unknown; docs/theory.md#loss-without-cancellation)
    excess_loss  L − L* = ‖W F − G‖² − ‖W* F − G‖²
    test_loss    L_test(W) on the problem's test data (null without)
    strength     u_α = u_αᵀ W v_α per mode α (docs/theory.md#modes)

with W = W_D ⋯ W_1 the record's network map. Cost per record: the product and three small matrix products,
against the tens of steps a record usually spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import network
from .generalization import test_loss
from .methods import RunResult
from .modes import excess_loss, mode_basis, mode_strengths, optimum
from .problem import Problem, least_squares


def _numbers(a: np.ndarray) -> list:
    """JSON numbers (nested lists), None where a value is not finite (a run blowing up)."""
    if np.isfinite(a).all():
        return a.tolist()
    return np.where(np.isfinite(a), a, None).tolist()


class LiveRecords:
    """The live summaries of one run's records (the problem's basis and optimum computed once)."""

    def __init__(self, problem: Problem, hidden: Sequence[int]) -> None:
        self.problem = problem
        self.basis = mode_basis(problem)
        self.optimum = optimum(problem, list(hidden))
        self.residual = least_squares(problem).residual

    def summaries(self, start: int, run: RunResult, modes: int | None = None) -> list[dict[str, Any]]:
        """One dict per record of ``run`` (records ``start``, ``start + 1``, …): index, time, step, loss,
        excess_loss, test_loss and strength (per mode: the first ``modes``, all when None), as JSON-ready numbers."""
        weights = [w.astype(np.float64, copy=False) for w in run.weights]
        product = network.network_map(weights)
        gap = np.atleast_1d(network.fit_gap(self.problem, product))
        count = len(run.times)
        basis = self.basis if modes is None else replace(self.basis, u=self.basis.u[:, :modes],
                                                             s=self.basis.s[:modes], v=self.basis.v[:, :modes])
        strength = mode_strengths(product, basis).reshape(count, -1)
        test = test_loss(self.problem, product)
        columns = {
            "index": list(range(start, start + count)),
            "time": _numbers(np.asarray(run.times, dtype=np.float64)),
            "step": [None] * count if run.steps is None else np.asarray(run.steps).tolist(),
            "loss": [None] * count if self.residual is None else _numbers(self.residual + gap),
            "excess_loss": _numbers(excess_loss(gap, self.optimum)),
            "test_loss": [None] * count if test is None else _numbers(np.asarray(test)),
            "strength": _numbers(strength),
        }
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
