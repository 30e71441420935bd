"""Settings of the methods (gd, sgd, flow, exact) and the raw result of a simulated run (shared by gd, sgd, flow, exact)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .live import RecordProducts

# Gradient-norm tolerance for ``converged``: stop when sqrt(Σ_l ‖∂L/∂W_l‖²) ≤ CONVERGENCE_RTOL · ‖Σ31‖_F,
# i.e. relative to the scale of the initial gradient of a small init. 1e-10 lets float64 runs reach
# the optimum to ~1e-10 relative while never stopping on a plateau (saddle gradients are ≫ 1e-10 there
# unless the init is exactly at the saddle).
CONVERGENCE_RTOL = 1e-10

# "stopped": a run cancelled before its end, of which the records up to there were kept; "running": the records so
# far of a run still going (what a live view shows)
Outcome = Literal["converged", "completed", "diverged", "stopped", "running"]


@dataclass(frozen=True)
class GradientDescent:
    """Full-batch GD: W_l ← W_l − η (∂L/∂W_l + γ W_l), for ``steps`` steps; t = η·step.

    With ``momentum`` μ > 0 (and optionally ``nesterov``), PyTorch's ``torch.optim.SGD`` with dampening 0 on the
    full batch (``sgd.momentum_direction``): g = ∂L/∂W + γW; v ← μv + g (v = g at the first step); W ← W − η d
    with d = g + μv (nesterov) or d = v. μ = 0 is plain GD, bit for bit (the compiled GD loop).
    """

    learning_rate: float
    steps: int
    weight_decay: float = 0.0
    # False: step on after the gradient falls below the convergence tolerance, so the records cover the whole
    # time axis (the run then ends "completed"); True: stop there (outcome "converged", later records dropped)
    stop_at_convergence: bool = True
    momentum: float = 0.0    # μ in [0, 1)
    nesterov: bool = False   # needs μ > 0 (as in PyTorch)

    @property
    def t_end(self) -> float:
        return self.learning_rate * self.steps


@dataclass(frozen=True)
class StochasticGradientDescent:
    """Mini-batch SGD on a dataset (method "sgd"), PyTorch's ``torch.optim.SGD`` (dampening 0) fed by a
    ``DataLoader(shuffle=True, drop_last=False)``:

        epoch e: a permutation π_e of the N samples (the e-th ``Generator.permutation(N)`` of
                 ``numpy.random.default_rng(seed)``), cut into ⌈N/B⌉ batches of B rows, the last one the remainder;
        step k:  batch b = batch k mod ⌈N/B⌉ of epoch ⌊k / ⌈N/B⌉⌋, its correlations Σ11_b = X_bᵀX_b/|b|,
                 Σ31_b = Y_bᵀX_b/|b| (means over the batch), g = ∂L_b/∂W + γW with
                 −∂L_b/∂W_l = 2 (W_D⋯W_{l+1})ᵀ (Σ31_b − W Σ11_b) (W_{l−1}⋯W_1)ᵀ, then the momentum update of
                 ``GradientDescent`` (μ = 0: W ← W − η g); t = η·step.

    Exactly one of ``steps`` and ``epochs`` (an epoch is ⌈N/B⌉ steps). The run goes through all its steps
    (outcome "completed" or "diverged"): there is no convergence stop, see ``sgd`` (module docstring).
    """

    learning_rate: float
    batch_size: int
    steps: int | None = None
    epochs: int | None = None
    seed: int = 0
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False

    def steps_per_epoch(self, n_samples: int) -> int:
        """⌈N / B⌉: the batches of one pass over the data, the last one the remainder."""
        return -(-int(n_samples) // int(self.batch_size))

    def total_steps(self, n_samples: int) -> int:
        """``steps``, or ``epochs`` × ⌈N / B⌉."""
        return int(self.steps) if self.steps is not None else int(self.epochs) * self.steps_per_epoch(n_samples)


@dataclass(frozen=True)
class GradientFlow:
    """Gradient flow dW_l/dt = −∂L/∂W_l − γ W_l on [0, t_max], adaptive DOP853 with rtol/atol.

    ``max_steps``: most accepted integrator steps before the run stops with ``WorkLimitError``; None = no
    cap. (A service bounds a worker's time with it: near a minimum an explicit integrator's step is held
    at ~3/λ_max of the Hessian, so a stiff problem over a long t_max needs ~t_max·λ_max/3 steps.)
    """

    t_max: float
    rtol: float = 1e-8
    atol: float = 1e-10
    weight_decay: float = 0.0
    max_steps: int | None = None
    stop_at_convergence: bool = True  # as GradientDescent's

    @property
    def t_end(self) -> float:
        return self.t_max


@dataclass(frozen=True)
class Exact:
    """Closed-form gradient-flow solution on [0, t_max] (no stepping), where one applies."""

    t_max: float
    weight_decay: float = 0.0

    @property
    def t_end(self) -> float:
        return self.t_max


Method = GradientDescent | GradientFlow | Exact | StochasticGradientDescent


@dataclass
class Hooks:
    """Worker hooks, called every ``interval`` seconds of compute at most (cheap either way).

    ``progress(fraction)`` gets a number in [0, 1]; ``should_stop()`` returning True makes the run
    raise ``StopRequested`` at the next check. ``blas_threads()`` returns how many BLAS threads the run
    may use from now on: asked when a run's stepping starts and at every check, so a caller can hand a
    run the cores other runs leave free (steps below ``gd.SINGLE_THREAD_MAX_FLOPS`` stay on one thread).
    ``records(start, run)`` gets, at every check and once at the end of the stepping, the records made since the
    last call: ``run`` holds records ``start``, ``start + 1``, … (outcome "stopped": a run in progress), for a live
    view of the run (gd, sgd and flow; the exact method evaluates all its records at once). ``computed()`` returns
    the products that view already computed for the records it got (``live.LiveRecords.computed``), which
    ``simulate.build_trajectory`` takes instead of computing them again.
    """

    progress: Callable[[float], None] | None = None
    should_stop: Callable[[], bool] | None = None
    interval: float = 0.2
    blas_threads: Callable[[], int] | None = None
    records: Callable[[int, RunResult], None] | None = None
    computed: Callable[[], RecordProducts | None] | None = None


@dataclass
class RunResult:
    """What a stepping method returns: the weights at the record points, and how the run ended.

    ``weights[l]`` has shape (T, rows_l, cols_l): layer l at each of the T records. When the run
    converges or diverges early, records after that point are dropped and the last record is the
    state at that step (for divergence: the last finite state before the blow-up).
    """

    times: np.ndarray
    steps: np.ndarray | None
    weights: list[np.ndarray]
    outcome: Outcome
    diverged_at_step: int | None = None
    diverged_at_time: float | None = None
    # flow: per mode, the time its strength first reaches half its strength at the optimum, found on the dense
    # output (``learning_time.ModeWatch``); None when not tracked, NaN for a mode that did not get there
    learning_times: np.ndarray | None = None
