"""The trajectory of a run: everything recorded, as numpy arrays (converted to JSON only at the border)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .methods import Outcome
from .ntk import KernelRecord


@dataclass(frozen=True)
class EarlyStopping:
    """The record with the smallest test loss: its index, time t, GD step (None for flow and exact), L_test."""

    index: int
    time: float
    step: int | None
    test_loss: float


@dataclass(frozen=True)
class LossTheory:
    """Train and test loss predicted from the mode strengths' theory at the run's records (T,), with the model's
    name, whether it is exact, and its assumptions in words; ``test_loss`` is None without test data."""

    loss: np.ndarray
    test_loss: np.ndarray | None
    model: str
    exact: bool
    assumptions: str


@dataclass
class ModeReport:
    """Mode strengths u_α(t) = u_αᵀ W(t) v_α on the SVD Σ31 = U S Vᵀ (docs/theory.md#modes),
    k = min(n_out, n_in).

    ``theory`` is the prediction at the same times where a formula applies (None otherwise), named by
    ``theory_model`` with ``theory_exact`` telling whether its assumptions hold exactly or only
    approximately (e.g. small random init). ``optimum_strength`` is u*_α = u_αᵀ W* v_α, what each mode grows
    towards; a mode's learning time is the time its strength first reaches half its strength at the optimum
    (``learning_time``: how each method measures it; NaN where never reached or u*_α ≈ 0).
    """

    singular_values: np.ndarray            # (k,)
    strength: np.ndarray                   # (T, k)
    theory: np.ndarray | None              # (T, k)
    theory_model: str | None
    theory_exact: bool
    theory_assumptions: str | None
    learning_time: np.ndarray              # (k,), NaN where not reached
    learning_time_theory: np.ndarray | None  # (k,), NaN where undefined
    optimum_strength: np.ndarray | None = None  # (k,) u*_α = u_αᵀ W* v_α


@dataclass
class Optimum:
    """Reduced-rank regression optimum for the network's bottleneck r (docs/theory.md#optimum).

    W* = [M]_r Σ11^{-1/2} with M = Σ31 Σ11^{-1/2}; L* = tr Σ33 − Σ_{i≤r} σ_i(M)² (None without Σ33).
    ``loss_without_sigma33`` = L* − tr Σ33 is always known. ``fit_gap`` = L* − L_ls = ‖W* F − G‖² (= Σ_{i>r}
    σ_i(M)², 0 at full rank): the excess loss of W is its own fit gap minus this one.
    """

    product: np.ndarray
    loss: float | None
    loss_without_sigma33: float
    rank: int
    fit_gap: float


@dataclass
class Trajectory:
    time: np.ndarray                       # (T,)
    step: np.ndarray | None                # (T,) ints for GD, None otherwise
    loss: np.ndarray | None                # (T,), None when Σ33 is unknown
    excess_loss: np.ndarray                # (T,) L − L*
    product: np.ndarray                    # (T, n_out, n_in)
    weights: list[np.ndarray] | None       # per layer (T, rows, cols) when recorded
    modes: ModeReport
    balance_drift: np.ndarray              # (T,)
    gradient_norm: np.ndarray              # (T,)
    distance_to_optimum: np.ndarray        # (T,) ‖W(t) − W*‖_F
    outcome: Outcome
    diverged_at_step: int | None
    optimum: Optimum
    method: str
    stability_hint: str | None = None      # for a diverged GD/SGD run: the η bound (docs/theory.md#gd-stability)
    similarity: np.ndarray | None = None   # (T, n_in, n_in) hidden-layer item RSM W21ᵀW21, when recorded
    test_loss: np.ndarray | None = None    # (T,) L_test of W(t) on the problem's test data, when it has some
    early_stopping: EarlyStopping | None = None  # the record of least test loss
    loss_theory: LossTheory | None = None  # train/test loss from the mode theory, where it applies
    kernel: KernelRecord | None = None     # the NTK's hidden-layer Grams and kernel distance, when recorded
    sharpness: np.ndarray | None = None    # (T, k) top-k Hessian eigenvalues of L, descending, when recorded
    sharpness_threshold: float | None = None  # the stability limit of the sharpness: 2/η for gd/sgd (sharpness.py)
    # the weights at the last record, input→output (float64): where another run can start from (init "given"). For an
    # exact Riccati run a factorisation of its state (exact.factorise): product and Grams equal the state's
    final_weights: list[np.ndarray] | None = None
    # the loss of the network linearised at its initialisation (NTK frozen at K(0)), at the same times / GD steps, when
    # recorded (record.linearized; see linearized.py); None without tr Σ33, like ``loss``
    linearized_loss: np.ndarray | None = None         # (T,)
    linearized_excess_loss: np.ndarray | None = None  # (T,) L_lin − L*, always known when recorded
    # Lampinen & Ganguli's sample-free prediction of train and test loss (model "random_matrix"), for problems that
    # carry their teacher's description (presets.noisy_teacher); see random_matrix.py
    loss_theory_random_matrix: LossTheory | None = None
    # task sequences (sequence.simulate_sequence), None for a single task: P phases, each a task with its own Σ's
    task_loss: np.ndarray | None = None               # (T, P) every phase's task loss at every record
    task_loss_kind: tuple[str, ...] | None = None      # (P,) "loss", or "excess_loss" for a task without tr Σ33
    task_excess_loss: np.ndarray | None = None        # (T, P) L_p − L*_p, always known
    phase: np.ndarray | None = None                   # (T,) ints: the phase whose task drives the record's dynamics
    phase_starts: np.ndarray | None = None            # (P,) the time each phase starts (0 first; GD: η·switch step)
