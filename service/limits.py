"""The service's size limits and its cost model: what a request may ask for, checked from the request alone (so an
oversized or too costly request is refused before anything large is allocated or computed).

    check_request_limits(request, limits)     # widths, steps, record points, dataset sizes, trajectory size
    cost = request_cost(request, limits)      # bytes and FLOPs of validating it, running it, storing its results
    check_cost(cost, request, limits)         # the validation budget and the job's compute budget
    check_trajectory_size(request, shapes, problem, limits)

Raises ``LimitExceededError`` (a core DynamicsError, so it names the field and the fix like every other refusal).

The cost model (``request_cost``) counts, from the request's shapes alone:

* validation, what the API itself spends before its 202 (building the problem: generating or reading the data, its
  correlations, Σ11's eigendecomposition and least-squares fit, ‖Σ31‖₂ for the GD stability bound; the initial
  weights; the exact method's decomposition), in FLOP-equivalents: floating-point operations weighted by how fast
  this kind of work runs on one core, so that 1e10 is about one second of one core of a 2020s server (a
  GEMM-heavy step counts 0.4 per multiply-add pair, an SVD 3·m·n·min(m, n), a Gaussian draw 150). Its peak memory
  too. Over DLNSIM_MAX_VALIDATION_FLOPS or DLNSIM_MAX_VALIDATION_BYTES the request is refused before any of it;
* the run, in floating-point operations (a GD step through the layers' products, gradient flow's RK stages at an
  estimated 1,000 steps, the exact solution at each record): over DLNSIM_MAX_JOB_FLOPS it is refused, and a key's
  queued and running work together is bounded by DLNSIM_MAX_KEY_FLOPS (service/jobs/admission.py);
* the stored results, in bytes (the trajectory's numbers as float64, before compression): a key's storage quota
  and the disk's free space are checked against it (service/jobs/admission.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.dynamics.errors import DynamicsError, FieldPath
from service.dynamics.problem import Problem
from service.schemas import (
    CorrelationsData,
    DatasetData,
    GradientDescentTraining,
    HeldOutDataset,
    SimulationRequest,
)


class LimitExceededError(DynamicsError):
    """A request above one of the service's configured limits (dimensions, steps, sizes)."""

    code = "limit_exceeded"



@dataclass(frozen=True)
class Limits:
    """The service's size limits (see service.settings for what each one bounds)."""

    max_dimension: int = 16384
    max_layers: int = 32
    max_matrix_entries: int = 25_000_000
    max_steps: int = 10_000_000
    max_record_points: int = 10_000
    max_dataset_values: int = 8_000_000
    max_trajectory_values: int = 50_000_000
    max_validation_flops: float = 4e9
    max_validation_bytes: int = 256 << 20
    max_job_flops: float = 1e15

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})



def over(value: int, limit: int, field: FieldPath, what: str, fix: str) -> None:
    if value > limit:
        raise LimitExceededError(f"{what} is {value}, above this service's limit of {limit}", field=field, fix=fix)


def preset_shape(name: str, params: Mapping[str, Any], limits: Limits) -> tuple[int, int, FieldPath, FieldPath] | None:
    """(n_in, n_out, field of n_in, field of n_out) of a preset, computed without building it, so that an
    oversized preset is refused before it allocates anything; None for presets not known here."""
    if name == "hierarchy":
        depth = int(params["depth"])
        return 2 ** depth, 2 ** (depth + 1) - 1, ("data", "depth"), ("data", "depth")
    if name == "branching_diffusion":
        items = 1
        for _ in range(int(params["levels"])):  # branches ** levels, stopping once past the limit
            items *= int(params["branches"])
            if items > limits.max_dimension:
                break
        return items, int(params["n_features"]), ("data", "levels"), ("data", "n_features")
    if name in ("whitened", "random_teacher", "noisy_teacher"):
        return int(params["n_in"]), int(params["n_out"]), ("data", "n_in"), ("data", "n_out")
    return None


def check_shape_limits(n_in: int, n_out: int, hidden: list[int], in_field: FieldPath, out_field: FieldPath,
                        limits: Limits, hidden_field: FieldPath = ("network", "hidden")) -> None:
    """Widths, layer count and matrix sizes; hidden width k is blamed on ``(*hidden_field, k)``."""
    fix_dim = "use smaller dimensions (or run your own instance with a larger DLNSIM_MAX_DIMENSION)"
    over(n_in, limits.max_dimension, in_field, "the input dimension n_in", fix_dim)
    over(n_out, limits.max_dimension, out_field, "the output dimension n_out", fix_dim)
    over(len(hidden) + 1, limits.max_layers, hidden_field, "the number of layers",
          "use fewer hidden layers")
    for k, h in enumerate(hidden):
        over(h, limits.max_dimension, (*hidden_field, k), f"hidden width {k}", fix_dim)
    fix_entries = "use smaller dimensions: every matrix the run holds must stay below the limit"
    over(n_in * n_in, limits.max_matrix_entries, in_field, "n_in² (the size of Σ11)", fix_entries)
    over(n_out * n_in, limits.max_matrix_entries, out_field, "n_out × n_in (the size of Σ31 and W)", fix_entries)
    widths = [n_in, *hidden, n_out]
    for k in range(len(widths) - 1):
        # Layer k + 1 maps widths[k] -> widths[k + 1]; blame the hidden width it grows with.
        field = (*hidden_field, min(k, len(hidden) - 1)) if hidden else in_field
        over(widths[k] * widths[k + 1], limits.max_matrix_entries, field,
              f"the size of layer {k + 1} ({widths[k + 1]} × {widths[k]})", fix_entries)


def record_count(request: SimulationRequest) -> tuple[int, FieldPath]:
    rec = request.record
    if rec.times is not None:
        return len(rec.times) + 1, ("record", "times")  # t = 0 is always added
    return rec.points, ("record", "points")


def check_request_limits(request: SimulationRequest, limits: Limits) -> None:
    """Limits visible in the request itself, checked before anything is computed: steps, record points, the data's
    and the network's sizes, and the trajectory's (from the shapes the request implies)."""
    training = request.training
    if isinstance(training, GradientDescentTraining):
        over(training.steps, limits.max_steps, ("training", "steps"), "the number of steps", "use fewer steps")
    count, field = record_count(request)
    over(count, limits.max_record_points, field, "the number of record points", "record fewer points")
    check_data_limits(request.data, list(request.network.hidden), limits)
    shape = request_shape(request, limits)
    if shape is not None:
        shapes = layer_shapes_of(shape.n_in, list(request.network.hidden), shape.n_out)
        _check_trajectory_values(request, shapes, shape.n_in, shape.n_out, shape.test, limits)


def check_data_limits(data: Any, hidden: list[int], limits: Limits,
                       hidden_field: FieldPath = ("network", "hidden")) -> None:
    """The limits a request's ``data`` (and network widths) must respect, from the request alone."""
    test = getattr(data, "test", None)
    if isinstance(test, HeldOutDataset):
        n = len(test.x)
        over(n * (len(test.x[0]) + len(test.y[0])), limits.max_dataset_values, ("data", "test", "x"),
              "the test dataset size N_test × (n_in + n_out)",
              "send fewer test samples, or the test distribution's correlations (kind: correlations)")
    if isinstance(data, DatasetData):
        n, n_in, n_out = len(data.x), len(data.x[0]), len(data.y[0])
        over(n * (n_in + n_out), limits.max_dataset_values, ("data", "x"), "the dataset size N × (n_in + n_out)",
              "send fewer samples, or send the correlations (kind: correlations) instead of the data")
        check_shape_limits(n_in, n_out, hidden, ("data", "x"), ("data", "y"), limits, hidden_field)
    elif isinstance(data, CorrelationsData):
        n_out, n_in = len(data.sigma31), len(data.sigma31[0])
        check_shape_limits(n_in, n_out, hidden, ("data", "sigma11"), ("data", "sigma31"), limits, hidden_field)
    else:
        shape = preset_shape(data.name, preset_params(data), limits)
        if shape is not None:
            check_shape_limits(*shape[:2], hidden, *shape[2:], limits, hidden_field)
        if data.name in ("random_teacher", "noisy_teacher"):
            values = data.n_samples * (data.n_in + data.n_out)
            over(values, limits.max_dataset_values, ("data", "n_samples"), "the dataset size N × (n_in + n_out)",
                  "use fewer samples")


def check_trajectory_size(request: SimulationRequest, shapes: list[tuple[int, int]], problem: Problem,
                           limits: Limits) -> None:
    _check_trajectory_values(request, shapes, problem.n_in, problem.n_out, problem.test is not None, limits)


def trajectory_values(request: SimulationRequest, shapes: list[tuple[int, int]], n_in: int, n_out: int,
                      test: bool) -> int:
    """Numbers in the trajectory: per record the network map, two per mode and a few scalars, plus what
    ``record`` asks for (every layer, the similarity, the kernel's Grams)."""
    count, _ = record_count(request)
    per_record = n_out * n_in + 2 * min(n_out, n_in) + 8
    if request.record.weights:
        per_record += sum(r * c for r, c in shapes)
    if request.record.similarity:
        per_record += n_in * n_in
    if test:
        per_record += 3  # test loss, and its theory
    if request.record.kernel:  # the Grams of every hidden layer, and the distance
        per_record += (len(shapes) - 1) * (n_in ** 2 + n_out ** 2) + 1
    return count * per_record


def _check_trajectory_values(request: SimulationRequest, shapes: list[tuple[int, int]], n_in: int, n_out: int,
                             test: bool, limits: Limits) -> None:
    _, field = record_count(request)
    fix = "record fewer points" + (", or set record.weights to false" if request.record.weights else "") + (
        ", or set record.similarity to false" if request.record.similarity else "") + (
        ", or set record.kernel to false" if request.record.kernel else "")
    over(trajectory_values(request, shapes, n_in, n_out, test), limits.max_trajectory_values, field,
          "the trajectory size (record points × numbers per record)", fix)



def preset_params(data: Any) -> dict[str, Any]:
    """A preset ``data`` member's parameters (without kind, name and test)."""
    return data.model_dump(exclude={"kind", "name", "test"})


# ------------------------------------------------------------------------------------------------
# the cost model (module docstring)

# FLOP-equivalents per unit of work (calibrated on one core: bench/attacks.py prints estimate against measure).
GEMM_FE = 0.4        # per multiply-add pair (2·m·n·k flops) of a matrix product: BLAS runs it near peak
EIG_FE = 1.5         # × n³: a symmetric eigendecomposition with vectors (Σ11's least-squares fit)
EIGVALS_FE = 0.7     # × n³: eigenvalues only (Σ11's PSD check and λ_max)
SVD_FE = 2.0         # × m·n·min(m, n): an SVD (‖Σ31‖₂, orthonormal draws, the exact method)
DRAW_FE = 150.0      # a Gaussian draw (data of the teacher presets, random initial weights)
READ_FE = 200.0      # a number read from the request (a Python float made into an array entry, checked)
QR_FE = 1.0          # × m·n·min(m, n): an orthonormal basis (QR) of an m × n draw
# Gradient flow's integrator steps are not known before it runs (DLNSIM_MAX_STEPS caps them): the run's estimate
# assumes this many, with 6 evaluations of the vector field each (Dormand-Prince).
FLOW_STEPS_ESTIMATE = 1000
# What a stored result holds besides its numbers (the header, scalars).
RESULT_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class RequestShape:
    n_in: int
    n_out: int
    n_samples: int            # rows of data read or drawn (0 for correlations and closed-form presets)
    test_samples: int         # rows of a held-out dataset (0 otherwise)
    test: bool                # held-out statistics are given (a test loss is recorded)
    dense_values: int         # numbers the request carries as matrices (a dataset, correlations, given weights)


@dataclass(frozen=True)
class Cost:
    """What a request costs (module docstring): validating it in the API (FLOP-equivalents and peak bytes, of which
    ``data_flops`` build its problem), running it (FLOPs) and storing its results (bytes)."""

    validation_flops: float
    validation_bytes: int
    data_flops: float
    run_flops: float
    result_bytes: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.validation_flops + other.validation_flops,
                    max(self.validation_bytes, other.validation_bytes), self.data_flops + other.data_flops,
                    self.run_flops + other.run_flops, self.result_bytes + other.result_bytes)


ZERO_COST = Cost(0.0, 0, 0.0, 0.0, 0)


def layer_shapes_of(n_in: int, hidden: list[int], n_out: int) -> list[tuple[int, int]]:
    widths = [n_in, *hidden, n_out]
    return [(widths[k + 1], widths[k]) for k in range(len(widths) - 1)]


def request_shape(request: Any, limits: Limits) -> RequestShape | None:
    """The dimensions a request implies, read from it alone (None for a preset this module does not know)."""
    data = request.data
    test = getattr(data, "test", None)
    test_samples = len(test.x) if isinstance(test, HeldOutDataset) else 0
    dense = 0
    if isinstance(test, HeldOutDataset):
        dense += test_samples * (len(test.x[0]) + len(test.y[0]))
    elif test is not None:
        dense += sum(len(m) * len(m[0]) for m in (test.sigma11, test.sigma31, test.sigma33) if m)
    if isinstance(data, DatasetData):
        n, n_in, n_out = len(data.x), len(data.x[0]), len(data.y[0])
        dense += n * (n_in + n_out)
    elif isinstance(data, CorrelationsData):
        n, n_out, n_in = 0, len(data.sigma31), len(data.sigma31[0])
        dense += n_in * n_in + n_out * n_in + (n_out * n_out if data.sigma33 else 0)
    else:
        shape = preset_shape(data.name, preset_params(data), limits)
        if shape is None:
            return None
        n_in, n_out = shape[0], shape[1]
        n = int(getattr(data, "n_samples", 0) or 0) if data.name in ("random_teacher", "noisy_teacher") else 0
    init = getattr(request, "init", None)
    if getattr(init, "scheme", None) == "given":
        dense += sum(len(w) * len(w[0]) for w in init.weights)
    return RequestShape(n_in, n_out, n, test_samples, test is not None, dense)


def _problem_flops(shape: RequestShape, name: str | None) -> float:
    """Building the problem: reading or drawing the data, its correlations, Σ11's eigendecomposition (PSD check,
    least squares) and ‖Σ31‖₂."""
    n_in, n_out, n = shape.n_in, shape.n_out, shape.n_samples
    m = min(n_in, n_out)
    flops = READ_FE * shape.dense_values
    if n:  # correlations and the least-squares residual from the rows
        flops += GEMM_FE * 2 * n * (n_in + n_out) * (n_in + min(n_out, 2048)) + GEMM_FE * 2 * n * n_in * n_out
    if name in ("random_teacher", "noisy_teacher"):
        flops += DRAW_FE * (n * (n_in + n_out) + n_in * n_out)
    elif name is not None:  # the closed-form presets: their matrices
        flops += READ_FE * (n_in * n_in + n_in * n_out)
    if name in ("whitened", "noisy_teacher"):  # orthonormal U and V drawn for the teacher
        flops += SVD_FE * (n_in + n_out) * m * m
    flops += (EIG_FE + EIGVALS_FE) * n_in ** 3 + SVD_FE * n_out * n_in * m
    if shape.test_samples:
        flops += GEMM_FE * 2 * shape.test_samples * (n_in + n_out) ** 2
    if shape.test:
        flops += (EIG_FE + EIGVALS_FE) * n_in ** 3 + EIGVALS_FE * min(n_out, 2048) ** 3
    return flops


def _init_flops(scheme: str, shapes: list[tuple[int, int]], shape: RequestShape) -> float:
    entries = sum(r * c for r, c in shapes)
    if scheme == "given":
        return 10.0 * entries  # read already (dense_values); shape and finiteness checks
    # the draws, and the initial map W_D⋯W_1 (checked to stay finite): W_l times the product of the layers below it
    flops = DRAW_FE * entries + GEMM_FE * 2 * shape.n_in * sum(r * c for r, c in shapes[1:])
    if scheme in ("orthogonal", "balanced", "lambda_balanced"):
        flops += QR_FE * sum(r * c * min(r, c) for r, c in shapes)
    if scheme == "aligned":
        flops += SVD_FE * shape.n_out * shape.n_in * min(shape.n_in, shape.n_out) + GEMM_FE * 2 * entries * max(
            (max(r, c) for r, c in shapes), default=1)
    return flops


def step_flops(shapes: list[tuple[int, int]], n_in: int, n_out: int) -> float:
    """One GD step (or one evaluation of the flow's vector field) on the correlations: the layers' products from
    the input side (P_l = W_l⋯W_1), the error E = W Σ11 − Σ31 and the gradients back through the layers."""
    layers = sum(r * c for r, c in shapes)
    return 2.0 * (3 * n_in * layers + n_out * n_in * n_in)


def request_cost(request: SimulationRequest, limits: Limits) -> Cost:
    """The cost of ``request`` (module docstring), from the request alone: nothing is built."""
    shape = request_shape(request, limits)
    if shape is None:
        return ZERO_COST
    hidden = [int(h) for h in request.network.hidden]
    shapes = layer_shapes_of(shape.n_in, hidden, shape.n_out)
    n_in, n_out = shape.n_in, shape.n_out
    name = getattr(request.data, "name", None) if getattr(request.data, "kind", None) == "preset" else None
    data_flops = _problem_flops(shape, name)
    scheme = getattr(request.init, "scheme", "gaussian")
    validation = data_flops + _init_flops(scheme, shapes, shape)
    training = request.training
    method = getattr(training, "method", "gd")
    m = min(n_in, n_out)
    if method == "exact":  # whether a closed form applies: Σ31's SVD with vectors, Σ11's eigenbasis, the modes
        validation += SVD_FE * n_out * n_in * m + EIG_FE * n_in ** 3 + 10.0 * n_in * n_out * m
    layers = sum(r * c for r, c in shapes)
    validation_bytes = 8 * (2 * shape.dense_values + 4 * n_in * n_in + 3 * n_in * n_out + min(n_out, 2048) ** 2
                            + 2 * layers + 2 * shape.n_samples * (n_in + n_out))
    records, _ = record_count(request)
    per_step = step_flops(shapes, n_in, n_out)
    record_flops = per_step
    if request.record.similarity and hidden:
        record_flops += 2.0 * n_in * n_in * hidden[0]
    if request.record.kernel:
        record_flops += 2.0 * sum(h * (n_in * n_in + n_out * n_out) for h in hidden)
    if method == "gd":
        run = per_step * int(training.steps)
    elif method == "flow":
        run = per_step * 6 * min(FLOW_STEPS_ESTIMATE, limits.max_steps)
    else:  # exact: the closed form at each record (its decomposition was counted in validation)
        run = SVD_FE * n_out * n_in * m + 4.0 * (layers + n_out * n_in * m)
    run += records * record_flops
    result = 8 * trajectory_values(request, shapes, n_in, n_out, shape.test) + RESULT_OVERHEAD_BYTES
    return Cost(float(validation), int(validation_bytes), float(data_flops), float(run), int(result))


def _biggest_field(request: SimulationRequest) -> FieldPath:
    data = request.data
    if isinstance(data, DatasetData):
        return ("data", "x")
    if isinstance(data, CorrelationsData):
        return ("data", "sigma11")
    return ("data", "n_in") if hasattr(data, "n_in") else ("data",)


def check_cost(cost: Cost, request: SimulationRequest, limits: Limits, *, what: str = "this request") -> None:
    """The validation budget (what the API may spend on one request before answering) and the job's compute budget;
    LimitExceededError naming the field that drives the cost."""
    field = _biggest_field(request)
    fix = ("use smaller dimensions (n_in, n_out, the hidden widths) or fewer samples, or run your own instance with "
           "a larger DLNSIM_MAX_VALIDATION_FLOPS")
    if cost.validation_flops > limits.max_validation_flops:
        raise LimitExceededError(
            f"validating {what} would cost about {cost.validation_flops:.3g} FLOP-equivalents (the problem's "
            f"decompositions, its data, the initial weights), above this service's limit of "
            f"{limits.max_validation_flops:.3g} (DLNSIM_MAX_VALIDATION_FLOPS, about a second of one core per 1e10)",
            field=field, fix=fix)
    if cost.validation_bytes > limits.max_validation_bytes:
        raise LimitExceededError(
            f"validating {what} would hold about {cost.validation_bytes / 2**20:.0f} MiB at once, above this "
            f"service's limit of {limits.max_validation_bytes / 2**20:.0f} MiB (DLNSIM_MAX_VALIDATION_BYTES)",
            field=field, fix=fix.replace("DLNSIM_MAX_VALIDATION_FLOPS", "DLNSIM_MAX_VALIDATION_BYTES"))
    if cost.run_flops > limits.max_job_flops:
        training = request.training
        method = getattr(training, "method", "gd")
        run_field: FieldPath = ("training", "steps") if method == "gd" else ("network", "hidden")
        raise LimitExceededError(
            f"running {what} would take about {cost.run_flops:.3g} floating-point operations, above this service's "
            f"limit of {limits.max_job_flops:.3g} per job (DLNSIM_MAX_JOB_FLOPS; 1e15 is hours of a whole server)",
            field=run_field, fix="use fewer steps or narrower layers (a GD step costs about 6·n_in·Σ layer sizes)")


def preset_cost(name: str, params: Mapping[str, Any], limits: Limits) -> Cost:
    """What building a preset costs (GET /v1/presets/{name}: the problem and its spectrum), from its parameters."""
    shape = preset_shape(name, params, limits)
    if shape is None:
        return ZERO_COST
    n_in, n_out = shape[0], shape[1]
    n = int(params.get("n_samples") or 0) if name in ("random_teacher", "noisy_teacher") else 0
    rs = RequestShape(n_in, n_out, n, 0, False, 0)
    flops = _problem_flops(rs, name) + SVD_FE * n_out * n_in * min(n_in, n_out)  # + its modes
    memory = 8 * (4 * n_in * n_in + 3 * n_in * n_out + min(n_out, 2048) ** 2 + 2 * n * (n_in + n_out))
    return Cost(flops, memory, flops, 0.0, 0)


def check_preset_cost(name: str, params: Mapping[str, Any], limits: Limits) -> None:
    cost = preset_cost(name, params, limits)
    field: FieldPath = ("data", "n_samples") if "n_samples" in params else (
        ("data", "n_in") if "n_in" in params else ("data",))
    fix = "use smaller dimensions or fewer samples, or run your own instance with a larger limit"
    if cost.validation_flops > limits.max_validation_flops:
        raise LimitExceededError(
            f"building this preset would cost about {cost.validation_flops:.3g} FLOP-equivalents, above this "
            f"service's limit of {limits.max_validation_flops:.3g} (DLNSIM_MAX_VALIDATION_FLOPS)", field=field, fix=fix)
    if cost.validation_bytes > limits.max_validation_bytes:
        raise LimitExceededError(
            f"building this preset would hold about {cost.validation_bytes / 2**20:.0f} MiB, above this service's "
            f"limit of {limits.max_validation_bytes / 2**20:.0f} MiB (DLNSIM_MAX_VALIDATION_BYTES)", field=field,
            fix=fix)


def gradients_cost(request: Any, limits: Limits) -> Cost:
    """POST /v1/gradients: building its problem, reading its weights, one evaluation of the vector field."""
    shape = request_shape(request, limits)
    if shape is None:
        return ZERO_COST
    weights = request.weights
    hidden = [len(w) for w in weights[:-1]]
    shapes = layer_shapes_of(shape.n_in, hidden, shape.n_out)
    dense = sum(len(w) * len(w[0]) for w in weights if w)
    name = getattr(request.data, "name", None) if getattr(request.data, "kind", None) == "preset" else None
    flops = _problem_flops(shape, name) + READ_FE * dense + step_flops(shapes, shape.n_in, shape.n_out)
    memory = 8 * (2 * shape.dense_values + 2 * dense + 4 * shape.n_in ** 2 + 3 * shape.n_in * shape.n_out
                  + 2 * shape.n_samples * (shape.n_in + shape.n_out))
    return Cost(flops, memory, flops, 0.0, 0)
