"""Every HTTP schema in one place: the request, the Simulation resource, the Trajectory, problems.

Requests are strict (pydantic strict mode: no true -> 1.0, no "3" -> 3; an integer where a number is
expected is fine), closed (unknown fields are errors naming the field) and finite (NaN/Infinity are
rejected where they appear). Tagged unions are discriminated on ``data.kind``, ``data.name`` (presets),
``init.scheme`` and ``training.method`` so that an error names the one variant the caller meant.
Preset models are generated from the core's registry (``service.dynamics.presets.PRESETS``), so the
documented parameters, defaults and bounds are the ones the core applies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints, create_model
from pydantic_core import PydanticCustomError

from service.dynamics.init import DEFAULTS as INIT_DEFAULTS
from service.dynamics.presets import PRESETS, PresetParam
from service.grid import PATH_PATTERN

# Largest seed: 2^53 − 1, the largest integer every JSON client holds exactly (JavaScript numbers are
# doubles; so are the numbers of JSON Schema validators that compare bounds as floats: with 2^63 − 1,
# 9223372036854775999 passed their check and failed ours).
MAX_SEED = 2**53 - 1

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, serialize_by_alias=True,
                    validate_by_alias=True, validate_by_name=False)


class StrictModel(BaseModel):
    model_config = STRICT


# ------------------------------------------------------------------------------------------------
# matrices


def _rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Rows of equal length (the row that differs is reported, its index appended to the path)."""
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise PydanticCustomError(
                "ragged_matrix", "row {row} has {got} entries but row 0 has {expected}",
                {"row": i, "got": len(row), "expected": width,
                 "fix": "give a rectangular matrix: a list of rows, all of the same length"})
    return rows


Row = Annotated[list[float], Field(min_length=1)]
Matrix = Annotated[
    list[Row], Field(min_length=1, description="A matrix as a list of rows (each a list of numbers)."),
    AfterValidator(_rectangular)]

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


def _is_none(value: Any) -> bool:
    """Left out of the canonical request when absent: requests without test data keep their bytes (and hashes)."""
    return value is None


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
    test: HeldOutData | None = Field(None, description=TEST_DESCRIPTION, exclude_if=_is_none)


class CorrelationsData(StrictModel):
    """Input–output statistics as means (1/N)·Σ over samples: Σ11 (n_in × n_in, symmetric PSD),
    Σ31 (n_out × n_in) and optionally Σ33 (n_out × n_out). Without Σ33 the loss is reported as null and
    only the excess loss L − L* is given."""

    kind: Literal["correlations"]
    sigma11: Matrix = Field(description="Σ11 = (1/N) Σ x xᵀ, n_in × n_in, symmetric positive semi-definite.")
    sigma31: Matrix = Field(description="Σ31 = (1/N) Σ y xᵀ, n_out × n_in.")
    sigma33: Matrix | None = Field(None, description="Σ33 = (1/N) Σ y yᵀ, n_out × n_out (optional).")
    test: HeldOutData | None = Field(None, description=TEST_DESCRIPTION, exclude_if=_is_none)


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
        fields["test"] = (HeldOutData | None, Field(None, description=TEST_DESCRIPTION, exclude_if=_is_none))
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
Data = Annotated[Union[DatasetData, CorrelationsData, PresetData],  # noqa: UP007
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


Init = Annotated[Union[GaussianInit, OrthogonalInit, BalancedInit, LambdaBalancedInit,  # noqa: UP007
                       AlignedInit, GivenInit], Field(discriminator="scheme")]

WeightDecay = Annotated[float, Field(ge=0, description="γ: adds (γ/2) Σ_l ‖W_l‖² to the loss.")]


class GradientDescentTraining(StrictModel):
    """Full-batch gradient descent; time is t = learning_rate × step."""

    method: Literal["gd"]
    learning_rate: float = Field(gt=0, description="η. Must be below the stability bound unless allow_unstable.")
    steps: int = Field(ge=1, description="Number of GD steps.")
    weight_decay: WeightDecay = 0.0
    allow_unstable: bool = Field(
        False, description="Run even when learning_rate exceeds the stability bound: divergence is then "
                           "a reported outcome (status succeeded, outcome diverged), not an error.")
    stop_at_convergence: bool = Field(
        True, description="true: the run stops at the first step whose gradient norm is ≤ 1e-10·‖Σ31‖_F "
                          "(outcome converged); the trajectory then ends at that time, and record points after "
                          "it are not in it. false: GD steps on to the last step, so the records cover the whole "
                          "time axis [0, learning_rate·steps] (outcome completed).")


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


Training = Annotated[Union[GradientDescentTraining, GradientFlowTraining, ExactTraining],  # noqa: UP007
                     Field(discriminator="method")]


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

REQUEST_EXAMPLES = {
    "saxe_hierarchy_exact": {
        "summary": "Saxe et al.: aligned 2-layer net on the PNAS 2019 hierarchy, exact solution",
        "value": SAXE_HIERARCHY_EXAMPLE},
    "hierarchy_gd": {"summary": "Same task, small random init, gradient descent", "value": GD_HIERARCHY_EXAMPLE},
    "correlations_flow": {"summary": "Given correlations, gradient flow", "value": CORRELATIONS_EXAMPLE},
    "dataset_regression": {"summary": "A small dataset, linear regression by GD", "value": DATASET_EXAMPLE},
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


# ------------------------------------------------------------------------------------------------
# the vector field: POST /v1/gradients

GRADIENTS_EXAMPLE = {
    "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]],
             "sigma33": [[4.0, 0.0], [0.0, 0.25]]},
    "weights": [[[0.1, 0.0], [0.0, 0.1], [0.05, -0.05]], [[0.2, 0.0, 0.1], [0.0, 0.2, -0.1]]],
    "weight_decay": 0.0,
}
GRADIENTS_EXAMPLES = {
    "two_layer": {"summary": "A 2-3-2 network on given correlations: L, ∂L/∂W21, ∂L/∂W32", "value": GRADIENTS_EXAMPLE},
    "hierarchy_regression": {
        "summary": "Linear regression (one layer) on the PNAS hierarchy at W = 0",
        "value": {"data": {"kind": "preset", "name": "hierarchy", "depth": 1},
                  "weights": [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]}},
}


class GradientsRequest(StrictModel):
    """The seed's vector field at given weights: any data kind, the weights of every layer (input→output, as
    ``init.weights``: weights[0] is W21, hidden[0] × n_in) and an optional weight decay γ."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [GRADIENTS_EXAMPLE]})

    data: Data
    weights: Annotated[list[Matrix], Field(min_length=1, description=(
        "W_1 … W_D input→output; the widths are the weights' own (hidden width k = rows of weights[k]); "
        "one matrix is linear regression."))]
    weight_decay: WeightDecay = 0.0


# Discriminator tags that pydantic puts into error locations; HTTP paths name fields only.
_UNION_TAGS: dict[tuple[str, ...], frozenset[str]] = {
    ("data",): frozenset({"dataset", "correlations", "preset", *PRESETS}),
    ("data", "test"): frozenset({"dataset", "correlations"}),
    ("init",): frozenset({"gaussian", "orthogonal", "balanced", "lambda_balanced", "aligned", "given"}),
    ("training",): frozenset({"gd", "flow", "exact"}),
}
# Member names of plain (non-discriminated) unions, e.g. AlignedInit.strength: float | list[float].
_MEMBER_TAG = re.compile(r"^(float|int|bool|str|none|list\[.*\]|function-.*|nullable\[.*\]|constrained-.*)$")


def strip_union_tags(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """("data", "preset", "hierarchy", "depth") -> ("data", "depth"): the path as the caller wrote it."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str):
            if tuple(out) in _UNION_TAGS and part in _UNION_TAGS[tuple(out)]:
                continue
            if _MEMBER_TAG.match(part):
                continue
        out.append(part)
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# problems (RFC 9457)


class FieldError(BaseModel):
    field: list[str | int] = Field(description='Path of the offending field, e.g. ["data", "sigma11", 2].')
    pointer: str = Field(description="The same path as a JSON pointer (RFC 6901), e.g. /data/sigma11/2.")
    in_: Literal["body", "query", "path", "header"] = Field("body", alias="in")
    code: str = Field(description="Machine-readable error code, e.g. ragged_matrix, not_symmetric.")
    message: str
    fix: str = Field(description="How to fix it, in one sentence.")

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, served as application/problem+json for every 4xx and 5xx."""

    type: str = Field(description="The problem type, a URI relative to the service, e.g. "
                                  "/problems/validation-error (GET it for a description).")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path this problem occurred on.")
    errors: list[FieldError] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# the Simulation resource

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Outcome = Literal["converged", "completed", "diverged"]


class SimulationLinks(BaseModel):
    self: str
    trajectory: str


class Simulation(BaseModel):
    """A simulation job. ``request`` is the validated request (defaults filled in); ``outcome`` and the
    trajectory exist once it succeeded; ``error`` is a problem once it failed."""

    id: str
    status: Status
    progress: float = Field(ge=0, le=1)
    created_at: str = Field(description="UTC, ISO 8601.")
    started_at: str | None = None
    finished_at: str | None = None
    request: SimulationRequest
    error: ProblemDetails | None = None
    outcome: Outcome | None = None
    links: SimulationLinks


class SimulationList(BaseModel):
    items: list[Simulation]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")


# ------------------------------------------------------------------------------------------------
# the Trajectory document (documented; served as stored bytes, not re-validated)

Num = float | None  # null where a value is not a finite float64 (undefined, or overflow in a diverged run)
NumMatrix = list[list[Num]]


class Modes(BaseModel):
    """Mode strengths u_α(t) = u_αᵀ W(t) v_α on Σ31 = U S Vᵀ, with the analytic prediction where one exists."""

    singular_values: list[Num]
    strength: list[list[Num]] = Field(description="Per record time, per mode.")
    theory: list[list[Num]] | None = Field(None, description="Prediction at the same times, null without a formula.")
    theory_model: str | None = None
    theory_exact: bool = False
    theory_assumptions: str | None = None
    learning_time: list[Num] = Field(description="Time a mode first reaches half its final strength (null: never).")
    learning_time_theory: list[Num] | None = None


class OptimumReport(BaseModel):
    """The best network map for the network's rank r (reduced-rank regression)."""

    product: NumMatrix
    loss: Num = None
    loss_without_sigma33: Num
    rank: int


class EarlyStoppingReport(BaseModel):
    """Where to stop: the record with the smallest test loss."""

    time: Num = Field(description="t of that record (t = η·step for GD).")
    step: int | None = Field(None, description="Its GD step (null for flow and exact).")
    test_loss: Num = Field(description="The smallest recorded test loss.")


class LossTheoryReport(BaseModel):
    """Train and test loss predicted from the mode theory (modes.theory): W(t) = Σ_α u_α(t) û_α v̂_αᵀ on the
    training SVD with Σ11 = c·I (Lampinen & Ganguli 2019). Offered where a mode theory applies with Σ11 ≈ c·I."""

    loss: list[Num] | None = Field(None, description="Predicted L at each time; null when Σ33 is unknown.")
    test_loss: list[Num] | None = Field(None, description="Predicted L_test at each time; null without test data.")
    model: str = Field(description="The model's name (modes_generalization).")
    exact: bool = Field(description="Whether its assumptions hold exactly (an exact mode theory, Σ11 = c·I, an "
                                    "init in the span of the mode pairs) or only approximately.")
    assumptions: str


class KernelReport(BaseModel):
    """The neural tangent kernel on the input basis, held by the hidden layers' Grams: with P_0 = I_in, Q_D = I_out,
    K = Σ_(l=1..D) Q_l ⊗ P_(l−1), (n_out·n_in)², row i·n_in + a ↔ output i of input e_a; Θ(x, x') =
    Σ_l (xᵀP_(l−1)x') Q_l. Two layers: K = W32W32ᵀ ⊗ I_in + I_out ⊗ W21ᵀW21."""

    input_grams: list[list[NumMatrix]] = Field(
        description="Per time, per hidden layer h = 1 … D−1: P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1), n_in × n_in (P_1 = W21ᵀW21).")
    output_grams: list[list[NumMatrix]] = Field(
        description="Per time, per hidden layer h = 1 … D−1: Q_h = (W_D⋯W_(h+1))(W_D⋯W_(h+1))ᵀ, n_out × n_out "
                    "(two layers: Q_1 = W32W32ᵀ).")


class Trajectory(BaseModel):
    """The recorded run. Times are t = η·step for GD."""

    time: list[Num]
    step: list[int] | None = None
    loss: list[Num] | None = Field(None, description="L at each time; null when Σ33 is unknown.")
    excess_loss: list[Num] = Field(description="L − L*, always computable.")
    product: list[NumMatrix] = Field(description="W = W_D⋯W_1 at each time (n_out × n_in).")
    weights: list[list[NumMatrix]] | None = Field(None, description="Per time, per layer (input→output).")
    modes: Modes
    balance_drift: list[Num]
    gradient_norm: list[Num]
    distance_to_optimum: list[Num]
    outcome: Outcome
    diverged_at_step: int | None = None
    optimum: OptimumReport
    method: str
    stability_hint: str | None = None
    test_loss: list[Num] | None = Field(
        None, description="L_test at each time: tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ), the MSE of the recorded "
                          "network map on data.test (no ½); null without test data.")
    early_stopping: EarlyStoppingReport | None = Field(
        None, description="The record of least test loss (the first, if tied); null without test data.")
    loss_theory: LossTheoryReport | None = None
    kernel: KernelReport | None = Field(None, description="The NTK's Grams per record; null unless record.kernel.")
    kernel_distance: list[Num] | None = Field(
        None, description="1 − ⟨K(0), K(t)⟩_F/(‖K(0)‖_F ‖K(t)‖_F) at each time: 0 while the kernel keeps its "
                          "direction (lazy), towards 1 as it is rebuilt (rich); null unless record.kernel.")
    similarity: list[NumMatrix] | None = Field(
        None, description="Per time, the hidden-layer item similarity RSM = W21ᵀW21 (n_in × n_in: "
                          "RSM_ij = h_i·h_j with h_i = W21 e_i the hidden representation of input basis vector "
                          "(one-hot item) i; Neuromatch's net_rsm). Null unless record.similarity.")


class Gradients(BaseModel):
    """L and its gradient at the given weights (reference §0). ``gradients`` is the gradient itself, so GD is
    W_l ← W_l − η·gradients[l] and gradient flow dW_l/dt = −gradients[l]; for two layers
    gradients = [−2 W32ᵀ(Σ31 − W32W21Σ11), −2 (Σ31 − W32W21Σ11) W21ᵀ] (+ γ W_l with weight decay)."""

    loss: Num = Field(description="L = (1/N) Σ ‖y − W x‖² (no ½, no weight decay term); null when Σ33 is unknown.")
    loss_without_sigma33: Num = Field(description="L − tr Σ33 = −2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ), always known.")
    objective: Num = Field(description="L + (γ/2) Σ_l ‖W_l‖²_F, the function whose gradient `gradients` is "
                                       "(equal to loss without weight decay); null when Σ33 is unknown.")
    gradients: list[NumMatrix] = Field(description="∂L/∂W_l + γ W_l for l = 1 … D, input→output, each shaped like "
                                                   "its weight matrix.")
    gradient_norm: Num = Field(description="sqrt(Σ_l ‖gradients[l]‖²_F), as in trajectories.")


# ------------------------------------------------------------------------------------------------
# presets: GET /v1/presets


class PresetParameter(BaseModel):
    """One parameter of a preset, as it goes beside ``name`` in the request's ``data``."""

    name: str
    type: Literal["integer", "number", "number_list"]
    nullable: bool = Field(False, description="null is allowed (e.g. random_teacher.rank: null = full rank).")
    default: int | float | list[float] | None
    minimum: int | float | None = Field(None, description="Smallest allowed value (of each entry for lists).")
    maximum: int | float | None = Field(None, description="Largest allowed value.")
    description: str


class PresetInfo(BaseModel):
    """A built-in learning problem: use it as ``data`` = ``example`` (with your parameter values)."""

    name: str
    description: str
    parameters: list[PresetParameter]
    example: dict[str, Any] = Field(description="The request's data member for this preset with every default.")
    links: dict[str, str] = Field(description="self: this preset's details.")


class PresetList(BaseModel):
    items: list[PresetInfo]


class PresetDetail(PresetInfo):
    """A preset built with the given parameters (query) or its defaults: dimensions, spectrum and names."""

    values: dict[str, Any] = Field(description="The parameter values used (defaults filled in).")
    n_in: int = Field(description="Input dimension (the number of items for one-hot presets).")
    n_out: int = Field(description="Output dimension (the number of features).")
    singular_values: list[float] = Field(description="Singular values of Σ31, descending: the modes' strengths "
                                                     "to be learned (min(n_in, n_out) of them).")
    items: list[str] | None = Field(None, description="Names of the items (inputs), where they have names.")
    features: list[str] | None = Field(None, description="Names of the features (outputs), where they have names.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    store: bool
    worker: bool
    workers: int = Field(description="Workers connected to the cluster.")
    workers_warm: int = Field(description="Workers that have compiled the GD kernels (all of them when ready).")


# ------------------------------------------------------------------------------------------------
# sweeps: POST /v1/sweeps and its resources

ParamPath = Annotated[str, StringConstraints(pattern=PATH_PATTERN, max_length=200)]
SweepKeep = Literal["summary", "trajectories"]

SWEEP_EXAMPLE = {
    "base": GD_HIERARCHY_EXAMPLE,
    "grid": {"init.scale": [0.001, 0.01, 0.1, 1.0], "training.learning_rate": [0.02, 0.05], "init.seed": [0, 1]},
    "keep": "summary",
}
SWEEP_POINTS_EXAMPLE = {
    "base": GD_HIERARCHY_EXAMPLE,
    "points": [{"network.hidden": [4], "init.scale": 0.001}, {"network.hidden": [64], "init.scale": 0.5}],
    "keep": "trajectories",
}
SWEEP_REQUEST_EXAMPLES = {
    "grid": {"summary": "Lazy vs rich: init scale × learning rate × seed on the hierarchy task (16 points)",
             "value": SWEEP_EXAMPLE},
    "points": {"summary": "Two explicit points, keeping their trajectories", "value": SWEEP_POINTS_EXAMPLE},
}


def _keys_by_pattern(node: Any) -> None:
    """pydantic writes ``dict[<str with a pattern>, V]`` as ``patternProperties``, which leaves keys that do not
    match the pattern unconstrained in JSON Schema, while the validator refuses them: say it in the schema
    (``propertyNames`` carries the pattern, ``additionalProperties`` the value schema)."""
    if isinstance(node, list):
        for item in node:
            _keys_by_pattern(item)
    elif isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            (pattern, value), = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = value
        for item in node.values():
            _keys_by_pattern(item)


def _sweep_schema_extra(schema: dict[str, Any]) -> None:
    schema["examples"] = [SWEEP_EXAMPLE]
    _keys_by_pattern(schema.get("properties", {}))
    # Exactly one of grid and points given (the route refuses neither and both with a problem naming the field;
    # null counts as not given, as in the echoed request of a sweep resource), said with `not` alone: a
    # top-level oneOf/anyOf makes openapi-python-client treat the model as a union and drop it.
    grid = {"required": ["grid"], "properties": {"grid": {"type": "object"}}}
    points = {"required": ["points"], "properties": {"points": {"type": "array"}}}
    schema["not"] = {"anyOf": [{"allOf": [grid, points]}, {"not": {"anyOf": [grid, points]}}]}


class SweepRequest(StrictModel):
    """A parameter sweep: a base request and either a ``grid`` (every combination of its axes' values;
    the first axis varies slowest) or an explicit list of ``points``. A point is the base with the named
    fields set. Names are dotted paths into the request as it is after defaults are filled in:
    ``init.scale``, ``init.seed``, ``training.learning_rate``, ``network.hidden`` (whose values are
    lists), ``data.depth``, ``network.hidden.0``, ... Every point is validated like a single simulation
    before anything runs."""

    model_config = ConfigDict(**STRICT, json_schema_extra=_sweep_schema_extra)

    base: SimulationRequest
    grid: dict[ParamPath, Annotated[list[JsonValue], Field(min_length=1)]] | None = Field(
        None, description="Axes: parameter path → its values. The sweep is their product.")
    points: Annotated[list[Annotated[dict[ParamPath, JsonValue], Field(min_length=1)]], Field(min_length=1)] | None = (
        Field(None, description="Explicit points, each a map parameter path → value (instead of a grid)."))
    keep: SweepKeep = Field(
        "summary", description="summary: one results row per point; trajectories: also each point's full "
                               "trajectory, at /v1/sweeps/{id}/points/{k}/trajectory.")


class SweepCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class SweepLinks(BaseModel):
    self: str
    results: str


class Sweep(BaseModel):
    """A sweep. ``status`` is succeeded once every point succeeded, failed once every point finished and
    some failed (the others' results are there), cancelled when cancelled (finished points keep their
    results). ``progress`` counts finished points and the running chunks' progress."""

    id: str
    status: Status
    progress: float = Field(ge=0, le=1)
    created_at: str = Field(description="UTC, ISO 8601.")
    started_at: str | None = None
    finished_at: str | None = None
    size: int = Field(description="Number of points.")
    counts: SweepCounts = Field(description="Points per status.")
    keep: SweepKeep
    request: SweepRequest
    error: ProblemDetails | None = Field(None, description="Why a failed sweep failed (which points).")
    links: SweepLinks


class SweepList(BaseModel):
    items: list[Sweep]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")


class SweepPointLinks(BaseModel):
    trajectory: str | None = Field(None, description="The point's trajectory (keep: trajectories, succeeded).")


class SweepPointResult(BaseModel):
    """One point of a sweep: its parameter values and, once it succeeded, what its run reached."""

    index: int = Field(description="k: the point's position in the grid's product order (or in points).")
    parameters: dict[str, JsonValue] = Field(description="The values this point sets, by parameter path.")
    status: Status
    finished_at: str | None = None
    outcome: Outcome | None = None
    final_time: Num = Field(None, description="t at the last record (t = η·step for GD).")
    final_loss: Num = Field(None, description="L at the last record; null when Σ33 is unknown.")
    final_excess_loss: Num = Field(None, description="L − L* at the last record.")
    optimum_loss: Num = Field(None, description="L* of the network's rank; null when Σ33 is unknown.")
    final_distance_to_optimum: Num = Field(None, description="‖W − W*‖_F at the last record.")
    final_strength: list[Num] | None = Field(None, description="Mode strengths u_α at the last record.")
    learning_time: list[Num] | None = Field(
        None, description="Per mode: the first time u_α reaches half its final value (null: never).")
    learning_time_theory: list[Num] | None = Field(None, description="The same, predicted (where a formula applies).")
    theory_model: str | None = None
    steps_to_convergence: int | None = Field(None, description="GD steps until the run converged (null otherwise).")
    time_to_convergence: Num = Field(None, description="t at which the run converged (null otherwise).")
    diverged_at_step: int | None = None
    final_test_loss: Num = Field(None, description="L_test at the last record (null without data.test).")
    min_test_loss: Num = Field(None, description="The smallest recorded L_test (null without data.test).")
    early_stopping_time: Num = Field(None, description="t of the record of least L_test (null without data.test).")
    final_kernel_distance: Num = Field(None, description="The NTK's kernel distance from its initial value at the "
                                                         "last record, lazy ≈ 0 (null unless record.kernel).")
    error: ProblemDetails | None = Field(None, description="Why the point failed.")
    links: SweepPointLinks


class SweepResults(BaseModel):
    items: list[SweepPointResult]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")
