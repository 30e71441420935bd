"""The Trajectory: what a run recorded, as one table of fields (``TRAJECTORY_FIELDS``) and the JSON document's schema.

The table is the one place a trajectory's contents are listed. Each field is a named array (or a scalar) with its
place in the JSON document, whether it has one entry per record, its dtype, its dimensions and a description;
``service.codec`` makes every representation from it (the stored arrays, the JSON document, the .npz), and
the pydantic models below take their descriptions from it, so the OpenAPI document says what the table says.

Per-record fields have the record axis ``time`` first; "layered" fields are one array per layer (``weights_0`` …
``weights_{D-1}``, input→output), which the JSON document nests per time, per layer (a per-run layered field, e.g.
``final_weights``, is a list of the layers). A per-run field of dtype "str" is a list of strings (``task_loss_kind``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.dynamics.methods import Outcome
from service.dynamics.sources import theory_source

from .common import Num, NumMatrix

Kind = Literal["record", "run", "scalar"]


@dataclass(frozen=True)
class TrajectoryField:
    """One recorded quantity.

    ``name``: the array's name in storage and in the .npz (``modes_strength``; layered fields add ``_{l}``).
    ``path``: its place in the JSON document (("modes", "strength")). ``kind``: "record" (axis 0 is the record,
    thinned by ``every``), "run" (an array for the whole run) or "scalar" (a number, string or flag). ``dims``: the
    dimensions after ``time``; "{l}" and "{l+1}" stand for a layer's index. ``source``: the value in a core
    ``service.dynamics.trajectory.Trajectory`` (None where it has none).
    """

    name: str
    path: tuple[str, ...]
    kind: Kind
    dtype: Literal["float64", "int64", "bool", "str"]
    dims: tuple[str, ...]
    description: str
    source: Callable[[Any], Any]
    layered: bool = False

    @property
    def member(self) -> str:
        """The top-level member of the JSON document that holds it (what ``?fields=`` names)."""
        return self.path[0]


def _opt(obj: Any, *names: str) -> Any:
    """getattr along ``names``; None as soon as a link is None."""
    for name in names:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


# The one definition of the learning time, in the same words in the README, the schemas and the plots' axis labels.
LEARNING_TIME_DEFINITION = "the time a mode's strength first reaches half its strength at the optimum"

F = TrajectoryField
TRAJECTORY_FIELDS: tuple[TrajectoryField, ...] = (
    F("time", ("time",), "record", "float64", (), "t at each record (t = η·step for GD).", lambda t: t.time),
    F("step", ("step",), "record", "int64", (), "The GD step of each record; null for flow and exact.",
      lambda t: t.step),
    F("loss", ("loss",), "record", "float64", (), "L at each time; null when Σ33 is unknown.", lambda t: t.loss),
    F("excess_loss", ("excess_loss",), "record", "float64", (), "L − L*, always computable.",
      lambda t: t.excess_loss),
    F("product", ("product",), "record", "float64", ("output", "input"),
      "W = W_D⋯W_1 at each time (n_out × n_in).", lambda t: t.product),
    F("weights", ("weights",), "record", "float64", ("unit_{l+1}", "unit_{l}"),
      "Per time, per layer (input→output): W_(l+1) is unit_(l+1) × unit_l with unit_0 = n_in and unit_D = n_out; "
      "null unless record.weights.", lambda t: t.weights, layered=True),
    F("modes_singular_values", ("modes", "singular_values"), "run", "float64", ("mode",),
      "The singular values s_α of Σ31, descending: what each mode's strength grows towards (with Σ11 = c·I, "
      "to s_α/c).", lambda t: t.modes.singular_values),
    F("modes_strength", ("modes", "strength"), "record", "float64", ("mode",),
      "Per record time, per mode.", lambda t: t.modes.strength),
    F("modes_theory", ("modes", "theory"), "record", "float64", ("mode",),
      "Prediction at the same times, null without a formula.", lambda t: t.modes.theory),
    F("modes_theory_model", ("modes", "theory_model"), "scalar", "str", (),
      "The name of the theory that predicts the strengths (null without one).", lambda t: t.modes.theory_model),
    F("modes_theory_exact", ("modes", "theory_exact"), "scalar", "bool", (),
      "Whether the theory's assumptions hold exactly (else it is an approximation, e.g. for a small random init).",
      lambda t: bool(t.modes.theory_exact)),
    F("modes_theory_assumptions", ("modes", "theory_assumptions"), "scalar", "str", (),
      "The theory's assumptions in words, with how far this run is from them.",
      lambda t: t.modes.theory_assumptions),
    F("modes_theory_source", ("modes", "theory_source"), "scalar", "str", (),
      "The paper the theory comes from, with its DOI, and the section of docs/theory.md that states it (null "
      "without a theory).", lambda t: theory_source(t.modes.theory_model)),
    F("modes_optimum_strength", ("modes", "optimum_strength"), "run", "float64", ("mode",),
      "u*_α = u_αᵀ W* v_α, each mode's strength at the optimum W*: the level its strength tends to (s_α/c for "
      "Σ11 = c·I within the bottleneck rank, 0 beyond it).", lambda t: t.modes.optimum_strength),
    F("modes_learning_time", ("modes", "learning_time"), "run", "float64", ("mode",),
      f"Per mode, the learning time: {LEARNING_TIME_DEFINITION} (null: not within the run, or u*_α ≈ 0). "
      "Measured from the closed form's root for exact runs, on the integrator's dense output for flow, as η × "
      "the first step at it for gd, at the first record at it for sgd and momentum.",
      lambda t: t.modes.learning_time),
    F("modes_learning_time_theory", ("modes", "learning_time_theory"), "run", "float64", ("mode",),
      "The same, predicted by the theory (null without one).", lambda t: t.modes.learning_time_theory),
    F("balance_drift", ("balance_drift",), "record", "float64", (),
      "max over layers and entries of |B_l(t) − B_l(0)|, B_l = W_(l+1)ᵀW_(l+1) − W_lW_lᵀ: 0 under gradient flow "
      "(a conservation law), O(η) for GD.", lambda t: t.balance_drift),
    F("gradient_norm", ("gradient_norm",), "record", "float64", (),
      "sqrt(Σ_l ‖∂L/∂W_l + γW_l‖²_F) at each time (the convergence criterion).", lambda t: t.gradient_norm),
    F("distance_to_optimum", ("distance_to_optimum",), "record", "float64", (),
      "‖W(t) − W*‖_F, W* the optimum of the network's rank.", lambda t: t.distance_to_optimum),
    F("outcome", ("outcome",), "scalar", "str", (),
      "converged (gradient norm ≤ 1e-10·‖Σ31‖_F), completed, or diverged; stopped for a simulation cancelled while "
      "it ran (the records up to there), running for the records so far of one still running.",
      lambda t: str(t.outcome)),
    F("partial", ("partial",), "scalar", "bool", (),
      "True when the trajectory holds only part of the run: the records so far of a running simulation (time, step, "
      "loss, excess_loss, test_loss, modes.strength of the first 64 modes; the other members null until it ends), "
      "or the records up to the cancellation of a cancelled one (every member, over those records).",
      lambda t: t.outcome == "stopped"),
    F("diverged_at_step", ("diverged_at_step",), "scalar", "int64", (),
      "The GD step at which the run blew up (null unless diverged).", lambda t: t.diverged_at_step),
    F("optimum_product", ("optimum", "product"), "run", "float64", ("output", "input"),
      "W*, the best network map of the network's rank r (n_out × n_in).", lambda t: t.optimum.product),
    F("optimum_loss", ("optimum", "loss"), "scalar", "float64", (),
      "L* = L(W*); null when Σ33 is unknown.", lambda t: t.optimum.loss),
    F("optimum_loss_without_sigma33", ("optimum", "loss_without_sigma33"), "scalar", "float64", (),
      "L* − tr Σ33, always known.", lambda t: t.optimum.loss_without_sigma33),
    F("optimum_rank", ("optimum", "rank"), "scalar", "int64", (),
      "r = min(n_in, n_out, smallest hidden width): the largest rank the network map can have.",
      lambda t: int(t.optimum.rank)),
    F("method", ("method",), "scalar", "str", (), "The method that produced the run: gd, sgd, flow or exact.",
      lambda t: str(t.method)),
    F("stability_hint", ("stability_hint",), "scalar", "str", (),
      "For a diverged gd or sgd run: the learning-rate bound it exceeded, in words (null otherwise).",
      lambda t: t.stability_hint),
    F("test_loss", ("test_loss",), "record", "float64", (),
      "L_test at each time: tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ), the MSE of the recorded network map on "
      "data.test (no ½); null without test data.", lambda t: t.test_loss),
    F("early_stopping_time", ("early_stopping", "time"), "scalar", "float64", (),
      "t of that record (t = η·step for GD).", lambda t: _opt(t, "early_stopping", "time")),
    F("early_stopping_step", ("early_stopping", "step"), "scalar", "int64", (),
      "Its GD step (null for flow and exact).", lambda t: _opt(t, "early_stopping", "step")),
    F("early_stopping_test_loss", ("early_stopping", "test_loss"), "scalar", "float64", (),
      "The smallest recorded test loss.", lambda t: _opt(t, "early_stopping", "test_loss")),
    F("loss_theory_loss", ("loss_theory", "loss"), "record", "float64", (),
      "Predicted L at each time; null when Σ33 is unknown.", lambda t: _opt(t, "loss_theory", "loss")),
    F("loss_theory_test_loss", ("loss_theory", "test_loss"), "record", "float64", (),
      "Predicted L_test at each time; null without test data.", lambda t: _opt(t, "loss_theory", "test_loss")),
    F("loss_theory_model", ("loss_theory", "model"), "scalar", "str", (),
      "The model's name (modes_generalization).", lambda t: _opt(t, "loss_theory", "model")),
    F("loss_theory_exact", ("loss_theory", "exact"), "scalar", "bool", (),
      "Whether its assumptions hold exactly (an exact mode theory, Σ11 = c·I, an init in the span of the mode "
      "pairs) or only approximately.", lambda t: None if t.loss_theory is None else bool(t.loss_theory.exact)),
    F("loss_theory_assumptions", ("loss_theory", "assumptions"), "scalar", "str", (),
      "The assumptions in words.", lambda t: _opt(t, "loss_theory", "assumptions")),
    F("loss_theory_source", ("loss_theory", "source"), "scalar", "str", (),
      "The paper the loss theory comes from, with its DOI, and the section of docs/theory.md that states it.",
      lambda t: theory_source(_opt(t, "loss_theory", "model"))),
    F("kernel_input_grams", ("kernel", "input_grams"), "record", "float64", ("input", "input_"),
      "Per time, per hidden layer h = 1 … D−1: P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1), n_in × n_in (P_1 = W21ᵀW21).",
      lambda t: _opt(t, "kernel", "input_grams"), layered=True),
    F("kernel_output_grams", ("kernel", "output_grams"), "record", "float64", ("output", "output_"),
      "Per time, per hidden layer h = 1 … D−1: Q_h = (W_D⋯W_(h+1))(W_D⋯W_(h+1))ᵀ, n_out × n_out "
      "(two layers: Q_1 = W32W32ᵀ).", lambda t: _opt(t, "kernel", "output_grams"), layered=True),
    F("kernel_distance", ("kernel_distance",), "record", "float64", (),
      "1 − ⟨K(0), K(t)⟩_F/(‖K(0)‖_F ‖K(t)‖_F) at each time: 0 while the kernel keeps its direction (lazy), "
      "towards 1 as it is rebuilt (rich); null unless record.kernel.", lambda t: _opt(t, "kernel", "distance")),
    F("similarity", ("similarity",), "record", "float64", ("input", "input_"),
      "Per time, the hidden-layer item similarity RSM = W21ᵀW21 (n_in × n_in: RSM_ij = h_i·h_j with h_i = W21 e_i "
      "the hidden representation of input basis vector (one-hot item) i; Neuromatch's net_rsm). Null unless "
      "record.similarity.", lambda t: t.similarity),
    F("sharpness", ("sharpness",), "record", "float64", ("eigenvalue",),
      "Per time, the record.sharpness_k largest eigenvalues of the Hessian of the training loss L with respect to "
      "all weights, descending (the first is the sharpness; Lanczos on exact Hessian-vector products from a fixed "
      "start, docs/theory.md#sharpness). Null unless record.sharpness.", lambda t: t.sharpness),
    F("sharpness_threshold", ("sharpness_threshold",), "scalar", "float64", (),
      "The largest sharpness at which the method is stable near a minimum: 2/η for gd and sgd (Cohen et al. 2021's "
      "edge of stability), 2(1 + μ)/η with heavy-ball momentum μ, 2(1 + μ)/((1 + 2μ)η) with Nesterov's, minus the "
      "weight decay γ; null for flow and exact (no step size).", lambda t: t.sharpness_threshold),
    F("linearized_loss", ("linearized_loss",), "record", "float64", (),
      "L at each time of the network linearised at its initialisation (the NTK frozen at K(0), the lazy limit), "
      "trained by the same method (docs/theory.md#linearized): the loss follows it where learning is lazy. Null "
      "unless record.linearized, or when Σ33 is unknown.", lambda t: t.linearized_loss),
    F("linearized_excess_loss", ("linearized_excess_loss",), "record", "float64", (),
      "L_lin − L* at each time (always known with record.linearized; may be negative: the linearised model is not "
      "bound by the network's rank). Null unless record.linearized.", lambda t: t.linearized_excess_loss),
    F("loss_theory_random_matrix_loss", ("loss_theory_random_matrix", "loss"), "record", "float64", (),
      "Predicted L at each time.", lambda t: _opt(t, "loss_theory_random_matrix", "loss")),
    F("loss_theory_random_matrix_test_loss", ("loss_theory_random_matrix", "test_loss"), "record", "float64", (),
      "Predicted L_test at each time.", lambda t: _opt(t, "loss_theory_random_matrix", "test_loss")),
    F("loss_theory_random_matrix_model", ("loss_theory_random_matrix", "model"), "scalar", "str", (),
      "The model's name (random_matrix).", lambda t: _opt(t, "loss_theory_random_matrix", "model")),
    F("loss_theory_random_matrix_exact", ("loss_theory_random_matrix", "exact"), "scalar", "bool", (),
      "Always false: the theory is asymptotic in the sizes.",
      lambda t: None if t.loss_theory_random_matrix is None else bool(t.loss_theory_random_matrix.exact)),
    F("loss_theory_random_matrix_assumptions", ("loss_theory_random_matrix", "assumptions"), "scalar", "str", (),
      "The assumptions in words, with the predicted spectrum.",
      lambda t: _opt(t, "loss_theory_random_matrix", "assumptions")),
    F("loss_theory_random_matrix_source", ("loss_theory_random_matrix", "source"), "scalar", "str", (),
      "The paper the theory comes from, with its DOI, and the section of docs/theory.md that states it.",
      lambda t: theory_source(_opt(t, "loss_theory_random_matrix", "model"))),
    F("task_loss", ("task_loss",), "record", "float64", ("task",),
      "For a task sequence (data kind sequence): per time, every phase's task loss L_p(W(t)) (or, for a task without "
      "Σ33, its excess loss: see task_loss_kind), so forgetting and transfer are read off directly; null for a single "
      "task.", lambda t: t.task_loss),
    F("task_excess_loss", ("task_excess_loss",), "record", "float64", ("task",),
      "For a task sequence: per time, every phase's L_p − L*_p (always known); null for a single task.",
      lambda t: t.task_excess_loss),
    F("task_loss_kind", ("task_loss_kind",), "run", "str", ("task",),
      "For a task sequence: per phase, what its task_loss column holds, \"loss\" or \"excess_loss\" (a task "
      "without Σ33); null for a single task.", lambda t: t.task_loss_kind),
    F("phase", ("phase",), "record", "int64", (),
      "For a task sequence: the phase whose task drives the dynamics at each record (a record at a switch belongs to "
      "the phase that starts there); null for a single task.", lambda t: t.phase),
    F("phase_starts", ("phase_starts",), "run", "float64", ("task",),
      "For a task sequence: the time each phase starts, 0 first (gd: learning_rate × the switch step, the first "
      "with learning_rate·step ≥ until); null for a single task.", lambda t: t.phase_starts),
    F("final_weights", ("final_weights",), "run", "float64", ("unit_{l+1}", "unit_{l}"),
      "The weights at the last record, per layer input→output (W_(l+1) is unit_(l+1) × unit_l), in float64: where "
      "another run can continue from (init scheme from_simulation). For an exact Riccati run (which determines "
      "W32W21 and the Grams, not the layers) a factorisation consistent with its final state; null when the run has "
      "none.", lambda t: t.final_weights, layered=True),
)
del F

FIELD_BY_NAME: dict[str, TrajectoryField] = {f.name: f for f in TRAJECTORY_FIELDS}
# The document's top-level members in order (what ``?fields=`` selects), and its objects' descriptions.
MEMBERS: tuple[str, ...] = tuple(dict.fromkeys(f.member for f in TRAJECTORY_FIELDS))
OBJECTS: dict[str, str] = {
    "modes": "Mode strengths u_α(t) = u_αᵀ W(t) v_α on Σ31 = U S Vᵀ, with the analytic prediction where one exists.",
    "optimum": "The best network map for the network's rank r (reduced-rank regression).",
    "early_stopping": "The record of least test loss (the first, if tied); null without test data.",
    "loss_theory": "Train and test loss predicted from the mode theory (modes.theory): W(t) = Σ_α u_α(t) û_α v̂_αᵀ on "
                   "the training SVD with Σ11 = c·I (Lampinen & Ganguli 2019). Offered where a mode theory applies "
                   "with Σ11 ≈ c·I; null otherwise.",
    "kernel": "The NTK's Grams per record; null unless record.kernel.",
    "loss_theory_random_matrix": "Train and test loss predicted by Lampinen & Ganguli's sample-free random-matrix "
                                 "theory (model random_matrix), from the teacher's singular values, the noise and the "
                                 "sizes alone (not the sample): for the noisy_teacher preset (docs/theory.md"
                                 "#random-matrix); null otherwise. In a task sequence, for the first phase only.",
}


def describe(*path: str) -> str:
    """The description of the field at ``path`` in the JSON document (a member or an object's)."""
    if len(path) == 1 and path[0] in OBJECTS:
        return OBJECTS[path[0]]
    return next(f.description for f in TRAJECTORY_FIELDS if f.path == path)


# ------------------------------------------------------------------------------------------------
# the JSON document's schema (its descriptions from the table)


# what a partial trajectory of a running simulation lacks (see "partial")
_LATER = " Null in the partial trajectory of a running simulation."


class Modes(BaseModel):
    """Mode strengths u_α(t) = u_αᵀ W(t) v_α on Σ31 = U S Vᵀ, with the analytic prediction where one exists."""

    singular_values: list[Num] = Field(description=describe("modes", "singular_values"))
    strength: list[list[Num]] = Field(description=describe("modes", "strength"))
    theory: list[list[Num]] | None = Field(None, description=describe("modes", "theory"))
    theory_model: str | None = Field(None, description=describe("modes", "theory_model"))
    theory_exact: bool = Field(False, description=describe("modes", "theory_exact"))
    theory_assumptions: str | None = Field(None, description=describe("modes", "theory_assumptions"))
    theory_source: str | None = Field(None, description=describe("modes", "theory_source"))
    optimum_strength: list[Num] | None = Field(None, description=describe("modes", "optimum_strength") + _LATER)
    learning_time: list[Num] | None = Field(None, description=describe("modes", "learning_time") + _LATER)
    learning_time_theory: list[Num] | None = Field(None, description=describe("modes", "learning_time_theory"))


class OptimumReport(BaseModel):
    """The best network map for the network's rank r (reduced-rank regression)."""

    product: NumMatrix = Field(description=describe("optimum", "product"))
    loss: Num = Field(None, description=describe("optimum", "loss"))
    loss_without_sigma33: Num = Field(description=describe("optimum", "loss_without_sigma33"))
    rank: int = Field(description=describe("optimum", "rank"))


class EarlyStoppingReport(BaseModel):
    """Where to stop: the record with the smallest test loss."""

    time: Num = Field(description=describe("early_stopping", "time"))
    step: int | None = Field(None, description=describe("early_stopping", "step"))
    test_loss: Num = Field(description=describe("early_stopping", "test_loss"))


class LossTheoryReport(BaseModel):
    """Train and test loss predicted from the mode theory (modes.theory): W(t) = Σ_α u_α(t) û_α v̂_αᵀ on the
    training SVD with Σ11 = c·I (Lampinen & Ganguli 2019). Offered where a mode theory applies with Σ11 ≈ c·I."""

    loss: list[Num] | None = Field(None, description=describe("loss_theory", "loss"))
    test_loss: list[Num] | None = Field(None, description=describe("loss_theory", "test_loss"))
    model: str = Field(description=describe("loss_theory", "model"))
    exact: bool = Field(description=describe("loss_theory", "exact"))
    assumptions: str = Field(description=describe("loss_theory", "assumptions"))
    source: str | None = Field(None, description=describe("loss_theory", "source"))


class RandomMatrixTheoryReport(BaseModel):
    """Train and test loss predicted by Lampinen & Ganguli's sample-free random-matrix theory (model random_matrix),
    from the teacher's singular values, the noise and the sizes alone: for the noisy_teacher preset."""

    loss: list[Num] | None = Field(None, description=describe("loss_theory_random_matrix", "loss"))
    test_loss: list[Num] | None = Field(None, description=describe("loss_theory_random_matrix", "test_loss"))
    model: str = Field(description=describe("loss_theory_random_matrix", "model"))
    exact: bool = Field(description=describe("loss_theory_random_matrix", "exact"))
    assumptions: str = Field(description=describe("loss_theory_random_matrix", "assumptions"))
    source: str | None = Field(None, description=describe("loss_theory_random_matrix", "source"))


class KernelReport(BaseModel):
    """The neural tangent kernel on the input basis, held by the hidden layers' Grams: with P_0 = I_in, Q_D = I_out,
    K = Σ_(l=1..D) Q_l ⊗ P_(l−1), (n_out·n_in)², row i·n_in + a ↔ output i of input e_a; Θ(x, x') =
    Σ_l (xᵀP_(l−1)x') Q_l. Two layers: K = W32W32ᵀ ⊗ I_in + I_out ⊗ W21ᵀW21."""

    input_grams: list[list[NumMatrix]] = Field(description=describe("kernel", "input_grams"))
    output_grams: list[list[NumMatrix]] = Field(description=describe("kernel", "output_grams"))


class Trajectory(BaseModel):
    """The recorded run. Times are t = η·step for GD."""

    time: list[Num] = Field(description=describe("time"))
    step: list[int] | None = Field(None, description=describe("step"))
    loss: list[Num] | None = Field(None, description=describe("loss"))
    excess_loss: list[Num] = Field(description=describe("excess_loss"))
    product: list[NumMatrix] | None = Field(None, description=describe("product") + _LATER)
    weights: list[list[NumMatrix]] | None = Field(None, description=describe("weights"))
    modes: Modes = Field(description=describe("modes"))
    balance_drift: list[Num] | None = Field(None, description=describe("balance_drift") + _LATER)
    gradient_norm: list[Num] | None = Field(None, description=describe("gradient_norm") + _LATER)
    distance_to_optimum: list[Num] | None = Field(None, description=describe("distance_to_optimum") + _LATER)
    outcome: Outcome = Field(description=describe("outcome"))
    partial: bool = Field(False, description=describe("partial"))
    diverged_at_step: int | None = Field(None, description=describe("diverged_at_step"))
    optimum: OptimumReport | None = Field(None, description=describe("optimum") + _LATER)
    method: str = Field(description=describe("method"))
    stability_hint: str | None = Field(None, description=describe("stability_hint"))
    test_loss: list[Num] | None = Field(None, description=describe("test_loss"))
    early_stopping: EarlyStoppingReport | None = Field(None, description=describe("early_stopping"))
    loss_theory: LossTheoryReport | None = Field(None, description=describe("loss_theory"))
    kernel: KernelReport | None = Field(None, description=describe("kernel"))
    kernel_distance: list[Num] | None = Field(None, description=describe("kernel_distance"))
    similarity: list[NumMatrix] | None = Field(None, description=describe("similarity"))
    sharpness: list[list[Num]] | None = Field(None, description=describe("sharpness"))
    sharpness_threshold: Num = Field(None, description=describe("sharpness_threshold"))
    linearized_loss: list[Num] | None = Field(None, description=describe("linearized_loss"))
    linearized_excess_loss: list[Num] | None = Field(None, description=describe("linearized_excess_loss"))
    loss_theory_random_matrix: RandomMatrixTheoryReport | None = Field(
        None, description=describe("loss_theory_random_matrix"))
    task_loss: list[list[Num]] | None = Field(None, description=describe("task_loss"))
    task_excess_loss: list[list[Num]] | None = Field(None, description=describe("task_excess_loss"))
    task_loss_kind: list[Literal["loss", "excess_loss"]] | None = Field(None, description=describe("task_loss_kind"))
    phase: list[int] | None = Field(None, description=describe("phase"))
    phase_starts: list[Num] | None = Field(None, description=describe("phase_starts"))
    final_weights: list[NumMatrix] | None = Field(None, description=describe("final_weights"))
