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

with W = W_D ⋯ W_1 the record's network map. The products behind them (W, the fit gap, the strengths of every mode,
the test loss: ``RecordProducts``) are kept, and ``simulate.build_trajectory`` takes them for the records they cover
instead of computing them again (``Hooks.computed``): the live view adds the messages, not the matrix products, to
a run, and its numbers are the trajectory's by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import network
from .generalization import test_loss
from .methods import Method, RunResult
from .modes import ModeBasis, excess_loss, mode_basis, mode_strengths, optimum
from .problem import Problem, least_squares
from .record import RecordSchedule
from .sequence import SequencePlan, TaskSequence, phase_of, plan_sequence


@dataclass(frozen=True)
class RecordProducts:
    """What a run's curves are computed from, for T consecutive records: the network map W = W_D ⋯ W_1 (T, o, i), the
    fit gap ‖W F − G‖² (T,), the strengths u_αᵀ W v_α of every mode (T, k) and the test loss (T,) or None; with the
    records' times and steps, which say which records these are."""

    times: np.ndarray
    steps: np.ndarray | None
    product: np.ndarray
    gap: np.ndarray
    strength: np.ndarray
    test: np.ndarray | None

    @staticmethod
    def of(problem: Problem, basis: ModeBasis, times: np.ndarray, steps: np.ndarray | None,
           product: np.ndarray) -> RecordProducts:
        """The products of records with network maps ``product`` (T, o, i)."""
        return RecordProducts(times, steps, product, np.atleast_1d(network.fit_gap(problem, product)),
                              mode_strengths(product, basis).reshape(len(times), -1), test_loss(problem, product))

    @staticmethod
    def joined(blocks: Sequence[RecordProducts]) -> RecordProducts:
        """Consecutive blocks as one (the first block itself when there is one)."""
        if len(blocks) == 1:
            return blocks[0]

        def joined(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in blocks]
            return None if parts[0] is None else np.concatenate(parts)

        return RecordProducts(*(joined(name) for name in ("times", "steps", "product", "gap", "strength", "test")))

    @staticmethod
    def drained(blocks: list[RecordProducts]) -> RecordProducts:
        """Consecutive blocks as one, emptying ``blocks``: each block is let go once copied, so the join holds one
        block beyond its result, not the records twice (a large net's maps are most of a run's memory)."""
        if len(blocks) == 1:
            return blocks.pop()
        count = sum(len(b.times) for b in blocks)
        first = blocks[0]
        out = {name: None if getattr(first, name) is None else
               np.empty((count, *getattr(first, name).shape[1:]), dtype=getattr(first, name).dtype)
               for name in ("times", "steps", "product", "gap", "strength", "test")}
        at = 0
        while blocks:
            block = blocks.pop(0)
            for name, array in out.items():
                if array is not None:
                    array[at:at + len(block.times)] = getattr(block, name)
            at += len(block.times)
        return RecordProducts(**out)

    def head(self, n: int) -> RecordProducts:
        """The first ``n`` records (these records themselves when there are no more)."""
        if n == len(self.times):
            return self
        return RecordProducts(*(None if a is None else a[:n] for a in (self.times, self.steps, self.product, self.gap,
                                                                       self.strength, self.test)))

    def covered(self, times: np.ndarray, steps: np.ndarray | None) -> int:
        """How many of the records with these ``times`` and ``steps``, from the first, are these records: a finished
        run keeps the records it reported, except that its last one may be moved (converged or diverged early)."""
        n = min(len(times), len(self.times))
        same = self.times[:n] == times[:n]
        if steps is not None:
            if self.steps is None:
                return 0
            same &= self.steps[:n] == steps[:n]
        return n if same.all() else int(np.argmin(same))


def record_products(problem: Problem, basis: ModeBasis, times: np.ndarray, steps: np.ndarray | None,
                    weights: Sequence[np.ndarray], known: RecordProducts | None = None) -> RecordProducts:
    """The products of a run's records from their float64 weight stacks; those of the first records that ``known``
    covers (``RecordProducts.covered``: the live view's, ``Hooks.computed``) are taken from it, not computed again."""
    n = 0 if known is None else known.covered(times, steps)
    if known is not None and n == len(times):
        return known.head(n)
    rest = RecordProducts.of(problem, basis, times[n:], None if steps is None else steps[n:],
                             network.network_map([w[n:] for w in weights]))
    return rest if n == 0 else RecordProducts.joined([known.head(n), rest])


def _numbers(a: np.ndarray) -> list:
    """JSON numbers (nested lists), None where a value is not finite (a run blowing up)."""
    if np.isfinite(a).all():
        return a.tolist()
    return np.where(np.isfinite(a), a, None).tolist()


class LiveRecords:
    """The live summaries of one run's records (the problem's basis and optimum computed once), and the products they
    were computed from (``computed``). For a task sequence (``for_sequence``) each record's loss, excess and test loss
    are its own task's and its strengths the first task's modes, as in the sequence's trajectory; its products are not
    kept (the sequence's trajectory computes every task's at once)."""

    def __init__(self, problem: Problem, hidden: Sequence[int]) -> None:
        self.problem = problem
        self.basis = mode_basis(problem)
        self.optimum = optimum(problem, list(hidden))
        self.residual = least_squares(problem).residual
        self.blocks: list[RecordProducts] = []
        self.tasks: TaskNumbers | None = None

    @classmethod
    def for_sequence(cls, sequence: TaskSequence, hidden: Sequence[int], method: Method,
                     record: RecordSchedule) -> LiveRecords:
        """The live view of a task sequence's run (``sequence.simulate_sequence``)."""
        live = cls(sequence.problems[0], hidden)
        live.tasks = TaskNumbers(sequence.problems, [optimum(pb, list(hidden)) for pb in sequence.problems],
                                 plan_sequence(sequence, method, record))
        return live

    def summaries(self, start: int, run: RunResult, modes: int | None = None) -> list[dict[str, Any]]:
        """One dict per record of ``run`` (records ``start``, ``start + 1``, …): index, time, step, loss,
        excess_loss, test_loss and strength (per mode: the first ``modes``, all when None), as JSON-ready numbers."""
        weights = [w.astype(np.float64, copy=False) for w in run.weights]
        block = RecordProducts.of(self.problem, self.basis, np.asarray(run.times, dtype=np.float64), run.steps,
                                  network.network_map(weights))
        if self.tasks is not None:
            loss, excess, test = self.tasks.numbers(block)
        else:
            if start == sum(len(b.times) for b in self.blocks):  # the next records of this run (not a replay)
                self.blocks.append(block)
            loss = None if self.residual is None else self.residual + block.gap
            excess, test = excess_loss(block.gap, self.optimum), block.test
        count = len(block.times)
        columns = {
            "index": list(range(start, start + count)),
            "time": _numbers(block.times),
            "step": [None] * count if run.steps is None else np.asarray(run.steps).tolist(),
            "loss": [None] * count if loss is None else _numbers(loss),
            "excess_loss": _numbers(excess),
            "test_loss": [None] * count if test is None else _numbers(np.asarray(test)),
            "strength": _numbers(block.strength[:, :modes]),
        }
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def computed(self) -> RecordProducts | None:
        """The products of the records summarised so far, as one block (None before the first, and for a sequence);
        the blocks are joined once (``RecordProducts.drained``) and kept joined."""
        if not self.blocks:
            return None
        self.blocks = [RecordProducts.drained(self.blocks)]
        return self.blocks[0]


@dataclass(frozen=True)
class TaskNumbers:
    """A task sequence's per-record numbers, each record's on its own task (``sequence.build_sequence_trajectory``)."""

    problems: list[Problem]
    optima: list
    plan: SequencePlan

    def numbers(self, block: RecordProducts) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(loss, excess loss, test loss) of the records of ``block``: L_p = L_ls,p + ‖W F_p − G_p‖² of the record's
        phase p (None unless every task has tr Σ33), its excess L_p − L*_p, its test loss (None unless every task has
        test data)."""
        phase = phase_of(self.plan, block.steps, block.times)
        residuals = [least_squares(pb).residual for pb in self.problems]
        gap, excess = np.empty(len(phase)), np.empty(len(phase))
        test = np.empty(len(phase)) if all(pb.test is not None for pb in self.problems) else None
        for p, problem in enumerate(self.problems):
            sel = phase == p
            if sel.any():
                gap[sel] = network.fit_gap(problem, block.product[sel])
                excess[sel] = excess_loss(gap[sel], self.optima[p])
                if test is not None:
                    test[sel] = test_loss(problem, block.product[sel])
        if any(r is None for r in residuals):
            return None, excess, test
        return np.asarray(residuals)[phase] + gap, excess, test
