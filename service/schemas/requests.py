"""The SimulationRequest: the task (data), the network, the initial weights, the training method, what to record.

Tagged unions are discriminated on ``data.kind``, ``data.name`` (presets), ``init.scheme`` and ``training.method``
so that an error names the one variant the caller meant. Preset models are generated from the core's registry
(``service.dynamics.presets.PRESETS``), so the documented parameters, defaults and bounds are the ones the core
applies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from service.dynamics.init import DEFAULTS as INIT_DEFAULTS
from service.dynamics.presets import PRESETS, PresetParam

from .common import (
    MAX_SEED,
    MAX_TAGS,
    NAME_DESCRIPTION,
    STRICT,
    TAGS_DESCRIPTION,
    Matrix,
    Name,
    StrictModel,
    Tag,
    is_none,
)

# ------------------------------------------------------------------------------------------------
# data


class HeldOutDataset(StrictModel):
    """Held-out samples as rows (x: N_test × n_in, y: N_test × n_out), scored, never trained on."""

    kind: Literal["dataset"]
    x: Matrix = Field(description="Test inputs, N_test × n_in (one sample per row).")
    y: Matrix = Field(description="Test targets, N_test × n_out (one sample per row).")


class HeldOutCorrelations(StrictModel):
    """Statistics of the test distribution as means: Σ11ᵗ, Σ31ᵗ and Σ33ᵗ (required: the test loss is an MSE)."""

    kind: Literal["correlations"]
    sigma11: Matrix = Field(description="Σ11ᵗ = E xxᵀ over the test distribution, n_in × n_in, symmetric PSD.")
    sigma31: Matrix = Field(description="Σ31ᵗ = E yxᵀ, n_out × n_in.")
    sigma33: Matrix = Field(description="Σ33ᵗ = E yyᵀ, n_out × n_out.")


HeldOutData = Annotated[Union[HeldOutDataset, HeldOutCorrelations], Field(discriminator="kind")]  # noqa: UP007
TEST_DESCRIPTION = (
    "Held-out data (a dataset, or the test distribution's Σ11, Σ31, Σ33; same n_in and n_out): every method then "
    "records trajectory.test_loss = tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ), the MSE of the network map on it "
    "(no ½, like the loss), and trajectory.early_stopping, the record of least test loss.")


class DatasetData(StrictModel):
    """Samples as rows: x is N × n_in, y is N × n_out. The core uses their means
    Σ11 = XᵀX/N, Σ31 = YᵀX/N, Σ33 = YᵀY/N."""

    kind: Literal["dataset"]
    x: Matrix = Field(description="Inputs, N × n_in (one sample per row).")
    y: Matrix = Field(description="Targets, N × n_out (one sample per row).")
    test: HeldOutData | None = Field(None, description=TEST_DESCRIPTION, exclude_if=is_none)


class CorrelationsData(StrictModel):
    """Input–output statistics as means (1/N)·Σ over samples: Σ11 (n_in × n_in, symmetric PSD),
    Σ31 (n_out × n_in) and optionally Σ33 (n_out × n_out). Without Σ33 the loss is reported as null and
    only the excess loss L − L* is given."""

    kind: Literal["correlations"]
    sigma11: Matrix = Field(description="Σ11 = (1/N) Σ x xᵀ, n_in × n_in, symmetric positive semi-definite.")
    sigma31: Matrix = Field(description="Σ31 = (1/N) Σ y xᵀ, n_out × n_in.")
    sigma33: Matrix | None = Field(None, description="Σ33 = (1/N) Σ y yᵀ, n_out × n_out (optional).")
    test: HeldOutData | None = Field(None, description=TEST_DESCRIPTION, exclude_if=is_none)


def _param_annotation(p: PresetParam) -> Any:
    bounds: dict[str, Any] = {}
    if p.minimum is not None:
        bounds["ge"] = int(p.minimum) if p.kind in ("int", "int_or_null") else float(p.minimum)
    if p.maximum is not None:
        bounds["le"] = int(p.maximum) if p.kind in ("int", "int_or_null") else float(p.maximum)
    if p.kind == "int":
        return Annotated[int, Field(**bounds)]
    if p.kind == "float":
        return Annotated[float, Field(**bounds)]
    if p.kind == "float_list":
        return Annotated[list[Annotated[float, Field(**bounds)]], Field(min_length=1)]
    if p.kind == "int_or_null":
        return Annotated[int, Field(**bounds)] | None
    raise TypeError(f"preset parameter kind {p.kind!r} has no schema")  # a new kind in the core


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _preset_model(name: str) -> type[BaseModel]:
    preset = PRESETS[name]
    fields: dict[str, Any] = {
        "kind": (Literal["preset"], ...),
        "name": (Literal[name], ...),  # type: ignore[valid-type]
    }
    for p in preset.params:
        default = list(p.default) if isinstance(p.default, list) else p.default
        fields[p.name] = (_param_annotation(p), Field(default, description=p.description))
    if not preset.builtin_test:  # a preset with its own test distribution takes none from the request
        fields["test"] = (HeldOutData | None, Field(None, description=TEST_DESCRIPTION, exclude_if=is_none))
    return create_model(f"{_camel(name)}Preset", __base__=StrictModel, __doc__=preset.description, **fields)


class _OpenAPIDiscriminator:
    """Drop a discriminator whose mapping points at an inline schema.

    pydantic writes the outer mapping of a nested discriminated union (kind -> preset -> name) as an
    inline schema, which OpenAPI forbids (mapping values are references). Without the outer keyword
    the schema says the same thing: a oneOf whose preset member is itself discriminated on ``name``.
    """

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        js = handler(core_schema)
        mapping = js.get("discriminator", {}).get("mapping", {})
        if any(not isinstance(v, str) for v in mapping.values()):
            js.pop("discriminator")
        return js


PRESET_MODELS: dict[str, type[BaseModel]] = {name: _preset_model(name) for name in PRESETS}
PresetData = Annotated[Union[tuple(PRESET_MODELS.values())], Field(discriminator="name")]  # noqa: UP007
# One task: a dataset, correlations or a preset (what a task sequence's phases and POST /v1/gradients take).
TaskData = Annotated[Union[DatasetData, CorrelationsData, PresetData],  # noqa: UP007
                     Field(discriminator="kind"), _OpenAPIDiscriminator()]

# A bound on the phases of one sequence: each is a task with its own Σ's (and one more record per switch).
MAX_PHASES = 100


class SequencePhase(StrictModel):
    """One task of a sequence and the time it ends."""

    data: TaskData = Field(description="The task of this phase: any data kind but a sequence (dataset, correlations "
                                       "or preset, with its own test data if wanted); every phase has the same n_in "
                                       "and n_out.")
    until: float | None = Field(
        None, description="The time t (t = learning_rate·step for gd, as t_max for flow and exact) at which this phase "
                          "ends and the next one starts; null for the last phase, which runs to the end of the run. "
                          "Strictly increasing, and below the run's end. gd switches at the first step with "
                          "learning_rate·step ≥ until.", examples=[5.0])


class SequenceData(StrictModel):
    """A task sequence (continual learning, transfer; docs/theory.md#task-sequences): the network trains on each
    phase's task in turn, from the state the previous phase left. Runs with gd (without momentum), flow or exact
    (exact continues from the state at each switch where a closed form holds, else a 422 that suggests flow). The
    trajectory then has task_loss (every task's loss at every record), task_excess_loss, phase and phase_starts;
    loss, excess_loss, gradient_norm and test_loss are those of the current phase's task."""

    kind: Literal["sequence"]
    phases: Annotated[list[SequencePhase], Field(min_length=1, max_length=MAX_PHASES)] = Field(
        description="The tasks in order: every phase but the last with its until; the last without.",
        examples=[[{"data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0], "n_in": 3,
                             "n_out": 3, "seed": 1}, "until": 5.0},
                   {"data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0], "n_in": 3,
                             "n_out": 3, "seed": 2}}]])


Data = Annotated[Union[DatasetData, CorrelationsData, PresetData, SequenceData],  # noqa: UP007
                 Field(discriminator="kind"), _OpenAPIDiscriminator()]

# ------------------------------------------------------------------------------------------------
# network, init, training, record

Width = Annotated[int, Field(ge=1)]


class Network(StrictModel):
    """Hidden layer widths from input to output; [] is linear regression (one weight matrix)."""

    hidden: list[Width] = Field(description="Hidden widths, input→output, e.g. [16] for one hidden layer.")


Scale = Annotated[float, Field(gt=0, description="Scale of the random init (see the scheme).")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Random seed: one seed, one set of initial weights.")]


class GaussianInit(StrictModel):
    """I.i.d. entries N(0, scale²)."""

    scheme: Literal["gaussian"]
    scale: Scale = INIT_DEFAULTS["scale"]
    seed: Seed = INIT_DEFAULTS["seed"]


class OrthogonalInit(StrictModel):
    """scale × a random (semi-)orthogonal matrix per layer."""

    scheme: Literal["orthogonal"]
    scale: Scale = INIT_DEFAULTS["scale"]
    seed: Seed = INIT_DEFAULTS["seed"]


class BalancedInit(StrictModel):
    """Exactly balanced layers (W_{l+1}ᵀW_{l+1} = W_lW_lᵀ), each with singular values scale."""

    scheme: Literal["balanced"]
    scale: Scale = INIT_DEFAULTS["scale"]
    seed: Seed = INIT_DEFAULTS["seed"]


class LambdaBalancedInit(StrictModel):
    """Two layers with W2ᵀW2 − W1W1ᵀ = λI (one hidden layer); the product is a Gaussian init's."""

    scheme: Literal["lambda_balanced"]
    lam: float = Field(INIT_DEFAULTS["lam"], alias="lambda", description="λ of W2ᵀW2 − W1W1ᵀ = λI.")
    scale: Scale = INIT_DEFAULTS["scale"]
    seed: Seed = INIT_DEFAULTS["seed"]


class AlignedInit(StrictModel):
    """Saxe's decoupled init on the SVD of Σ31: every mode starts at mode strength ``strength``."""

    scheme: Literal["aligned"]
    strength: float | Annotated[list[float], Field(min_length=1)] = Field(
        INIT_DEFAULTS["strength"],
        description="Initial mode strength u0: one number for all modes, or one per mode.")
    seed: Seed | None = Field(None, description="Seed of the hidden-layer rotation; null = identity embedding.")


class GivenInit(StrictModel):
    """Your own initial weights, input→output: weights[0] is W21 (hidden[0] × n_in)."""

    scheme: Literal["given"]
    weights: Annotated[list[Matrix], Field(min_length=1)]


JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class FromSimulationInit(StrictModel):
    """Continue from where a finished simulation ended: its final weights (trajectory.final_weights; for an exact
    Riccati run a factorisation of its final state) are the initial weights. The simulation must have succeeded,
    belong to the same API key, and have the same widths (n_in, network.hidden, n_out). At admission the service
    copies its final weights into this request's init.weights, so the stored request says exactly what ran."""

    scheme: Literal["from_simulation"]
    id: JobId = Field(description="The id of a succeeded simulation (GET /v1/simulations/{job_id}) of the same API "
                                  "key and widths.", examples=["0190f3c2a1b24c5d8e9f0a1b2c3d4e5f"])
    weights: Annotated[list[Matrix], Field(min_length=1)] | None = Field(
        None, exclude_if=is_none,
        description="Filled in by the service when it admits the request: simulation id's final weights, "
                    "input→output (what the run starts from). Leave it out; if given, it must equal them "
                    "(as in a request read back from GET /v1/simulations/{job_id} and sent again).")


Init = Annotated[Union[GaussianInit, OrthogonalInit, BalancedInit, LambdaBalancedInit,  # noqa: UP007
                       AlignedInit, GivenInit, FromSimulationInit], Field(discriminator="scheme")]

WeightDecay = Annotated[float, Field(ge=0, description="γ: adds (γ/2) Σ_l ‖W_l‖² to the loss.")]


MOMENTUM_DESCRIPTION = (
    "μ in [0, 1): heavy-ball momentum as PyTorch's torch.optim.SGD defines it (dampening 0; optax.sgd gives the same "
    "iterates): g = ∂L/∂W + γW, v ← μv + g (v = g at the first step), W ← W − η·v (W ← W − η(g + μv) with nesterov). "
    "0: no momentum. Momentum raises the stability bound by 1 + μ (Nesterov: (1 + μ)/(1 + 2μ)); the mode theory is "
    "then the gradient flow at time t/(1 − μ), an approximation (docs/theory.md#optimizers).")
NESTEROV_DESCRIPTION = "Nesterov momentum as PyTorch's (d = g + μv); needs momentum > 0."
ALLOW_UNSTABLE_DESCRIPTION = (
    "Run even when learning_rate exceeds the stability bound: divergence is then a reported outcome (status "
    "succeeded, outcome diverged), not an error.")


class GradientDescentTraining(StrictModel):
    """Full-batch gradient descent, optionally with momentum; time is t = learning_rate × step."""

    method: Literal["gd"]
    learning_rate: float = Field(gt=0, description="η. Must be below the stability bound unless allow_unstable.")
    steps: int = Field(ge=1, description="Number of GD steps.")
    weight_decay: WeightDecay = 0.0
    momentum: float = Field(0.0, ge=0, lt=1, description=MOMENTUM_DESCRIPTION, examples=[0.9])
    nesterov: bool = Field(False, description=NESTEROV_DESCRIPTION)
    allow_unstable: bool = Field(False, description=ALLOW_UNSTABLE_DESCRIPTION)
    stop_at_convergence: bool = Field(
        True, description="true: the run stops at the first step whose gradient norm is ≤ 1e-10·‖Σ31‖_F "
                          "(outcome converged); the trajectory then ends at that time, and record points after "
                          "it are not in it. false: GD steps on to the last step, so the records cover the whole "
                          "time axis [0, learning_rate·steps] (outcome completed).")


class StochasticGradientDescentTraining(StrictModel):
    """Mini-batch SGD on a dataset (data kind dataset, or a preset built from samples), as PyTorch's torch.optim.SGD
    (dampening 0) fed by a DataLoader(shuffle=True, drop_last=False): every epoch a new permutation of the N samples
    (numpy.random.default_rng(seed)), cut into ⌈N/batch_size⌉ batches, the last one the remainder (sampling without
    replacement within an epoch); each step the gradient of the batch's mean squared error, plus γW, then the
    momentum update of gd. Time is t = learning_rate × step. An SGD run takes all its steps (no convergence stop:
    the batch gradients do not vanish at the minimum). Correlations carry no samples: sgd on them is a 422."""

    method: Literal["sgd"]
    learning_rate: float = Field(gt=0, description="η. Must be below the (full-batch) stability bound unless "
                                                   "allow_unstable.")
    batch_size: int = Field(ge=1, description="B, the samples per step (1 ≤ B ≤ N; B = N is gd).", examples=[8])
    steps: int | None = Field(None, ge=1, description="Number of SGD steps (give exactly one of steps and epochs).")
    epochs: int | None = Field(None, ge=1, description="Number of passes over the data, ⌈N/batch_size⌉ steps each "
                                                       "(give exactly one of steps and epochs).", examples=[50])
    seed: Seed = Field(0, description="Seed of the sample order: one seed, one sequence of batches.")
    weight_decay: WeightDecay = 0.0
    momentum: float = Field(0.0, ge=0, lt=1, description=MOMENTUM_DESCRIPTION, examples=[0.9])
    nesterov: bool = Field(False, description=NESTEROV_DESCRIPTION)
    allow_unstable: bool = Field(False, description=ALLOW_UNSTABLE_DESCRIPTION)


class GradientFlowTraining(StrictModel):
    """Gradient flow dW/dt = −∂L/∂W integrated with an adaptive DOP853 solver on [0, t_max]."""

    method: Literal["flow"]
    t_max: float = Field(gt=0, description="End time.")
    rtol: float = Field(1e-8, ge=1e-13, lt=1, description="Relative tolerance of the integrator.")
    atol: float = Field(1e-10, gt=0, description="Absolute tolerance of the integrator.")
    weight_decay: WeightDecay = 0.0
    stop_at_convergence: bool = Field(
        True, description="true: the run stops once the gradient norm is ≤ max(1e-10, 1e3·rtol)·‖Σ31‖_F "
                          "(outcome converged) and the trajectory ends there, without the later record points. "
                          "false: integrate to t_max, so the records cover [0, t_max] (near the minimum an "
                          "explicit integrator needs many small steps: a long t_max may reach the step limit).")


class ExactTraining(StrictModel):
    """The closed-form gradient-flow solution (where one applies: whitened or aligned/balanced cases)."""

    method: Literal["exact"]
    t_max: float = Field(gt=0, description="End time.")
    weight_decay: WeightDecay = 0.0


Training = Annotated[Union[GradientDescentTraining, StochasticGradientDescentTraining,  # noqa: UP007
                           GradientFlowTraining, ExactTraining], Field(discriminator="method")]


class Record(StrictModel):
    """When to sample the trajectory: ``points`` times spaced linearly or logarithmically over the run,
    or explicit ``times`` (which then take precedence). A gd or flow run that converges stops there by
    default, and its trajectory ends at that time: set ``training.stop_at_convergence`` to false to get
    every record time."""

    points: int = Field(200, ge=2, description="Number of record points.")
    spacing: Literal["linear", "log"] = "linear"
    times: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] | None = Field(
        None, description="Explicit record times in [0, t_end]; t = 0 is always recorded.")
    weights: bool = Field(False, description="Also record every layer's weights at every record point.")
    similarity: bool = Field(
        False, description="Also record the hidden-layer representational similarity of the items, "
                           "RSM = W21ᵀW21 (n_in × n_in; items = the input basis vectors, i.e. the one-hot "
                           "items of the hierarchy presets), at every record point. Needs a hidden layer.")
    kernel: bool = Field(
        False, description="Also record the neural tangent kernel on the input basis, K = Σ_l Q_l ⊗ P_(l−1) "
                           "(two layers: W32W32ᵀ ⊗ I + I ⊗ W21ᵀW21), as the Grams of every hidden layer h "
                           "(P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1), Q_h = (W_D⋯W_(h+1))(W_D⋯W_(h+1))ᵀ), and kernel_distance "
                           "1 − ⟨K(0), K(t)⟩/(‖K(0)‖‖K(t)‖) at every record point (for exact Riccati runs from "
                           "the blocks of P(t)). Needs a hidden layer.")
    sharpness: bool = Field(
        False, description="Also record the sharpness: the sharpness_k largest eigenvalues of the Hessian of the "
                           "training loss L with respect to all weights, at every record point (Lanczos on exact "
                           "Hessian-vector products; Cohen et al. 2021's edge of stability, "
                           "docs/theory.md#sharpness), with trajectory.sharpness_threshold = 2/η for gd and sgd "
                           "(2(1 + μ)/η with momentum, − γ with weight decay) beside it. Costs about 100 "
                           "Hessian-vector products per eigenvalue per record, each about two GD steps: more than the "
                           "run itself "
                           "(docs/performance.md#sharpness). Not for exact runs of the Riccati solution (no weights).")
    sharpness_k: int = Field(1, ge=1, description="How many of the largest Hessian eigenvalues record.sharpness "
                                                  "records (at most the number of weights).")
    linearized: bool = Field(
        False, description="Also record the loss of the network linearised at its initialisation (the NTK frozen "
                           "at K(0), the lazy limit; docs/theory.md#linearized), trained by the same method at the "
                           "same records: trajectory.linearized_loss and linearized_excess_loss. For gd without "
                           "momentum, flow and exact, on a single task (not a sequence).")


SAXE_HIERARCHY_EXAMPLE = {
    "data": {"kind": "preset", "name": "hierarchy", "depth": 3},
    "network": {"hidden": [16]},
    "init": {"scheme": "aligned", "strength": 0.001},
    "training": {"method": "exact", "t_max": 40.0},
    "record": {"points": 200, "spacing": "linear"},
}
GD_HIERARCHY_EXAMPLE = {
    "data": {"kind": "preset", "name": "hierarchy", "depth": 3},
    "network": {"hidden": [16]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
    "training": {"method": "gd", "learning_rate": 0.05, "steps": 800},
    "record": {"points": 100},
}
CORRELATIONS_EXAMPLE = {
    "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]]},
    "network": {"hidden": [4]},
    "init": {"scheme": "balanced", "scale": 0.05, "seed": 0},
    "training": {"method": "flow", "t_max": 10.0},
    "record": {"points": 50, "spacing": "log"},
}
DATASET_EXAMPLE = {
    "data": {"kind": "dataset", "x": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "y": [[1.0], [-1.0], [0.0]]},
    "network": {"hidden": []},
    "init": {"scheme": "gaussian", "scale": 0.1, "seed": 0},
    "training": {"method": "gd", "learning_rate": 0.1, "steps": 200},
}

SEQUENCE_EXAMPLE = {
    "data": {"kind": "sequence", "phases": [
        {"data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4,
                  "seed": 1}, "until": 5.0},
        {"data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4,
                  "seed": 2}}]},
    "network": {"hidden": [4]},
    "init": {"scheme": "lambda_balanced", "lambda": 0.0, "scale": 0.05, "seed": 0},
    "training": {"method": "exact", "t_max": 10.0},
    "record": {"points": 101},
}
SGD_EXAMPLE = {
    "data": {"kind": "preset", "name": "noisy_teacher", "n_in": 8, "n_out": 8, "n_samples": 64, "noise": 0.5},
    "network": {"hidden": [8]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
    "training": {"method": "sgd", "learning_rate": 0.02, "batch_size": 8, "epochs": 100, "seed": 0,
                 "momentum": 0.9},
    "record": {"points": 100},
}
SHARPNESS_EXAMPLE = {
    "data": {"kind": "correlations", "sigma11": [[400.0, 1.0], [1.0, 1.0]], "sigma31": [[0.0, 0.02]]},
    "network": {"hidden": [1]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
    "training": {"method": "gd", "learning_rate": 0.16, "steps": 5000, "stop_at_convergence": False},
    "record": {"points": 500, "sharpness": True},
}

REQUEST_EXAMPLES = {
    "saxe_hierarchy_exact": {
        "summary": "Saxe et al.: aligned 2-layer net on the PNAS 2019 hierarchy, exact solution",
        "value": SAXE_HIERARCHY_EXAMPLE},
    "hierarchy_gd": {"summary": "Same task, small random init, gradient descent", "value": GD_HIERARCHY_EXAMPLE},
    "correlations_flow": {"summary": "Given correlations, gradient flow", "value": CORRELATIONS_EXAMPLE},
    "dataset_regression": {"summary": "A small dataset, linear regression by GD", "value": DATASET_EXAMPLE},
    "task_sequence_exact": {"summary": "Forgetting: task A until t = 5, then task B, solved exactly through the switch",
                            "value": SEQUENCE_EXAMPLE},
    "sgd_momentum": {"summary": "Mini-batch SGD with momentum 0.9 on Lampinen & Ganguli's noisy teacher",
                     "value": SGD_EXAMPLE},
    "sharpness_gd": {"summary": "Progressive sharpening: GD's sharpness rises to 2/η (Cohen et al. 2021)",
                     "value": SHARPNESS_EXAMPLE},
}


class SimulationRequest(StrictModel):
    """What to simulate: the task (data), the network, the initial weights, the training method, what to
    record, and the floating-point precision of the run."""

    model_config = ConfigDict(**STRICT, json_schema_extra={
        "examples": [SAXE_HIERARCHY_EXAMPLE, CORRELATIONS_EXAMPLE]})

    data: Data
    network: Network
    init: Init = Field(default_factory=lambda: GaussianInit(scheme="gaussian"),
                       description="Initial weights; default: Gaussian, scale 0.01, seed 0.")
    training: Training
    record: Record = Field(default_factory=Record)
    dtype: Literal["float64", "float32"] = "float64"
    name: Name | None = Field(None, description=NAME_DESCRIPTION, exclude_if=is_none)
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS, description=TAGS_DESCRIPTION)] = Field(
        default_factory=list, exclude_if=lambda tags: not tags)


# Discriminator tags that pydantic puts into error locations; HTTP paths name fields only.
# A list index in a path is "*" here (a phase of a sequence).
_TASK_TAGS = frozenset({"dataset", "correlations", "preset", *PRESETS})
_UNION_TAGS: dict[tuple[str, ...], frozenset[str]] = {
    ("data",): _TASK_TAGS | {"sequence"},
    ("data", "test"): frozenset({"dataset", "correlations"}),
    ("data", "phases", "*", "data"): _TASK_TAGS,
    ("data", "phases", "*", "data", "test"): frozenset({"dataset", "correlations"}),
    ("init",): frozenset({"gaussian", "orthogonal", "balanced", "lambda_balanced", "aligned", "given",
                          "from_simulation"}),
    ("training",): frozenset({"gd", "sgd", "flow", "exact"}),
}
# Member names of plain (non-discriminated) unions, e.g. AlignedInit.strength: float | list[float].
_MEMBER_TAG = re.compile(
    r"^(float|int|bool|str|none|list\[.*\]|function-.*|nullable\[.*\]|constrained-.*|literal\[.*\])$")


def strip_union_tags(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """("data", "preset", "hierarchy", "depth") -> ("data", "depth"): the path as the caller wrote it."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str):
            where = tuple("*" if isinstance(p, int) else p for p in out)
            if where in _UNION_TAGS and part in _UNION_TAGS[where]:
                continue
            if _MEMBER_TAG.match(part):
                continue
        out.append(part)
    return tuple(out)
