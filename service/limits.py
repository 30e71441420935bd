"""The service's size limits and its cost model: what a request may ask for, checked from the request alone (so an
oversized or too costly request is refused before anything large is allocated or computed).

    check_request_limits(request, limits)     # widths, steps, record points, dataset sizes, sharpness's products,
                                              # the trajectory's size (from the shapes the request implies)
    cost = request_cost(request, limits)      # bytes and FLOPs of validating it, running it, storing its results
    check_cost(cost, request, limits)         # the validation budget and the job's compute budget
    check_run_limits(request, tasks, limits)  # what needs the built problem: SGD's steps (epochs × batches)
    check_trajectory_size(request, shapes, tasks, limits)

The size of a run is bounded in units the request states: GD and SGD steps (an SGD epoch is ⌈N/B⌉ steps; a task
sequence's phases share the run's steps), flow integrator steps (capped while running), and for record.sharpness
the Hessian-vector products its eigenvalues take (estimated, ``SHARPNESS_PRODUCTS_PER_EIGENVALUE``).

Raises ``LimitExceededError`` (a core DynamicsError, so it names the field and the fix like every other refusal).

The cost model (``request_cost``) counts, from the request's shapes alone:

* validation, what the API itself spends before its 202 (building the problem: generating or reading the data, its
  correlations, Σ11's eigendecomposition and least-squares fit, ‖Σ31‖₂ for the GD stability bound, for every phase
  of a task sequence; the initial weights, or for an init from_simulation the copy of the source's final weights
  read from the store into the request; the exact method's decomposition), in FLOP-equivalents: floating-point
  operations weighted by how fast this kind of work runs on one core, so that 1e10 is about one second of one core
  of a 2020s server (a GEMM-heavy step counts 0.4 per multiply-add pair, an SVD 3·m·n·min(m, n), a Gaussian draw
  150). Its peak memory too. Over DLNSIM_MAX_VALIDATION_FLOPS or DLNSIM_MAX_VALIDATION_BYTES the request is
  refused before any of it;
* the run, in floating-point operations: GD steps through the layers' products (with momentum, its buffer's
  updates), SGD's epochs × ⌈N/B⌉ steps on mini-batches of B rows (the cheaper of the batch's correlations and
  backprop through its rows, as ``service.dynamics.sgd.source_flops``), gradient flow's RK stages at an estimated
  1,000 steps, the exact solution at each record; what the records add: the similarity and kernel Grams, every
  phase's loss for a sequence, record.sharpness's Hessian-vector products (records × sharpness_k ×
  ``SHARPNESS_PRODUCTS_PER_EIGENVALUE``, each about two GD steps), record.linearized's linearised run (at most the
  run's steps again, plus its closed form's eigendecompositions). Over DLNSIM_MAX_JOB_FLOPS it is refused, naming the
  field that drives it, and a key's queued and running work together is bounded by DLNSIM_MAX_KEY_FLOPS
  (service/jobs/admission.py);
* the stored results, in bytes (the trajectory's numbers as float64, before compression, and an init
  from_simulation's copied weights in the stored request): a key's storage quota and the disk's free space are
  checked against it (service/jobs/admission.py).
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
    SequenceData,
    SimulationRequest,
    StochasticGradientDescentTraining,
)

# The Hessian-vector products record.sharpness is planned at, per eigenvalue and record: Lanczos from the fixed start
# took 48 at (32,32,32) and 92 at (100,100,100) for the top one (service/dynamics/sharpness.py), so 100 is a typical
# count, not a bound (Lanczos may take up to LANCZOS_MAX_ITER, then ARPACK). A product costs about two GD steps.
SHARPNESS_PRODUCTS_PER_EIGENVALUE = 100


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
    max_hessian_products: int = 10_000_000
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
    """Records the request asks for (a task sequence adds one at every switch), and the field that sets them."""
    rec = request.record
    switches = len(request.data.phases) - 1 if isinstance(request.data, SequenceData) else 0
    if rec.times is not None:
        return len(rec.times) + 1 + switches, ("record", "times")  # t = 0 is always added
    return rec.points + switches, ("record", "points")


def check_request_limits(request: SimulationRequest, limits: Limits) -> None:
    """Limits visible in the request itself, checked before anything is computed: steps, record points, the data's
    and the network's sizes, and the trajectory's (from the shapes the request implies)."""
    training = request.training
    if isinstance(training, GradientDescentTraining | StochasticGradientDescentTraining) and training.steps is not None:
        over(training.steps, limits.max_steps, ("training", "steps"), "the number of steps", "use fewer steps")
    if isinstance(training, StochasticGradientDescentTraining) and training.epochs is not None:
        # an epoch is at least one step
        over(training.epochs, limits.max_steps, ("training", "epochs"), "the number of epochs (each at least one "
             "step)", "use fewer epochs")
    count, field = record_count(request)
    over(count, limits.max_record_points, field, "the number of record points", "record fewer points")
    if request.record.sharpness:
        products = count * request.record.sharpness_k * SHARPNESS_PRODUCTS_PER_EIGENVALUE
        over(products, limits.max_hessian_products,
             ("record", "sharpness_k") if request.record.sharpness_k > 1 else field,
             f"the Hessian-vector products of record.sharpness (records × sharpness_k × "
             f"{SHARPNESS_PRODUCTS_PER_EIGENVALUE}, about two GD steps each)",
             "record fewer points, ask for fewer eigenvalues (record.sharpness_k), or set record.sharpness to false")
    hidden = list(request.network.hidden)
    if isinstance(request.data, SequenceData):
        total = 0
        for p, phase in enumerate(request.data.phases):
            prefix = ("data", "phases", p, "data")
            check_data_limits(phase.data, hidden, limits, prefix=prefix)
            total += dataset_values(phase.data)
            over(total, limits.max_dataset_values, prefix, "the datasets of the phases so far, Σ N × (n_in + n_out) "
                 "(with their test data)", "send fewer samples, or the phases' correlations (kind: correlations)")
    else:
        check_data_limits(request.data, hidden, limits)
    shape = request_shape(request, limits)
    if shape is not None:
        shapes = layer_shapes_of(shape.n_in, hidden, shape.n_out)
        _check_trajectory_values(request, _trajectory_values(request, shapes, shape.n_in, shape.n_out, test=shape.test,
                                                             teacher=shape.teacher, n_tasks=len(shape.tasks)), limits)


def dataset_values(data: Any) -> int:
    """The numbers a task's samples hold: N × (n_in + n_out) of its dataset (or sampled preset) and test dataset."""
    total = 0
    test = getattr(data, "test", None)
    if isinstance(test, HeldOutDataset):
        total += len(test.x) * (len(test.x[0]) + len(test.y[0]))
    if isinstance(data, DatasetData):
        total += len(data.x) * (len(data.x[0]) + len(data.y[0]))
    elif getattr(data, "name", None) in ("random_teacher", "noisy_teacher"):
        total += data.n_samples * (data.n_in + data.n_out)
    return total


def check_run_limits(request: SimulationRequest, tasks: list[Problem], limits: Limits) -> None:
    """What the built tasks decide: SGD's steps, epochs × ⌈N/batch_size⌉ (N the task's samples)."""
    training = request.training
    samples = tasks[0].samples
    if isinstance(training, StochasticGradientDescentTraining) and training.epochs is not None and samples is not None:
        per_epoch = -(-samples.n // max(1, training.batch_size))
        over(training.epochs * per_epoch, limits.max_steps, ("training", "epochs"),
             f"the number of SGD steps, epochs × ⌈N/batch_size⌉ = {training.epochs} × {per_epoch},",
             "use fewer epochs, or a larger batch_size")


def check_data_limits(data: Any, hidden: list[int], limits: Limits,
                      hidden_field: FieldPath = ("network", "hidden"), prefix: FieldPath = ("data",)) -> None:
    """The limits a task's ``data`` (and the network widths) must respect, from the request alone; fields are named
    under ``prefix`` (a sequence's phase: ("data", "phases", p, "data"))."""
    test = getattr(data, "test", None)
    if isinstance(test, HeldOutDataset):
        n = len(test.x)
        over(n * (len(test.x[0]) + len(test.y[0])), limits.max_dataset_values, (*prefix, "test", "x"),
             "the test dataset size N_test × (n_in + n_out)",
             "send fewer test samples, or the test distribution's correlations (kind: correlations)")
    if isinstance(data, DatasetData):
        n, n_in, n_out = len(data.x), len(data.x[0]), len(data.y[0])
        over(n * (n_in + n_out), limits.max_dataset_values, (*prefix, "x"), "the dataset size N × (n_in + n_out)",
             "send fewer samples, or send the correlations (kind: correlations) instead of the data")
        check_shape_limits(n_in, n_out, hidden, (*prefix, "x"), (*prefix, "y"), limits, hidden_field)
    elif isinstance(data, CorrelationsData):
        n_out, n_in = len(data.sigma31), len(data.sigma31[0])
        check_shape_limits(n_in, n_out, hidden, (*prefix, "sigma11"), (*prefix, "sigma31"), limits, hidden_field)
    else:
        shape = preset_shape(data.name, preset_params(data), limits)
        if shape is not None:
            in_field, out_field = ((*prefix, *f[1:]) for f in shape[2:])
            check_shape_limits(*shape[:2], hidden, in_field, out_field, limits, hidden_field)
        if data.name in ("random_teacher", "noisy_teacher"):
            values = data.n_samples * (data.n_in + data.n_out)
            over(values, limits.max_dataset_values, (*prefix, "n_samples"), "the dataset size N × (n_in + n_out)",
                 "use fewer samples")


def trajectory_values(request: SimulationRequest, shapes: list[tuple[int, int]], tasks: list[Problem]) -> int:
    """Numbers in the trajectory of ``request`` on its built ``tasks`` (``_trajectory_values``)."""
    first = tasks[0]
    return _trajectory_values(request, shapes, first.n_in, first.n_out, test=first.test is not None,
                              teacher=getattr(first, "teacher", None) is not None, n_tasks=len(tasks))


def _trajectory_values(request: SimulationRequest, shapes: list[tuple[int, int]], n_in: int, n_out: int, *,
                       test: bool, teacher: bool, n_tasks: int) -> int:
    """Numbers in the trajectory (``count`` records): per record the network map, two per mode and a few scalars,
    plus what the record settings add (every layer, the similarity, the kernel's Grams, the sharpness, the linearised
    loss), the test loss and the random-matrix theory when the first task has them, every task's loss for a
    sequence; the final weights once."""
    count, _ = record_count(request)
    rec = request.record
    per_record = n_out * n_in + 2 * min(n_out, n_in) + 8
    if rec.weights:
        per_record += sum(r * c for r, c in shapes)
    if rec.similarity:
        per_record += n_in * n_in
    if test:
        per_record += 3  # test loss, and its theory
    if rec.kernel:  # the Grams of every hidden layer, and the distance
        per_record += (len(shapes) - 1) * (n_in ** 2 + n_out ** 2) + 1
    if rec.sharpness:
        per_record += rec.sharpness_k
    if rec.linearized:
        per_record += 2
    if teacher:
        per_record += 2  # the random-matrix theory's train and test loss
    if n_tasks > 1:
        per_record += 2 * n_tasks + 1  # task_loss, task_excess_loss, phase
    return count * per_record + sum(r * c for r, c in shapes)


def check_trajectory_size(request: SimulationRequest, shapes: list[tuple[int, int]], tasks: list[Problem],
                          limits: Limits) -> None:
    _check_trajectory_values(request, trajectory_values(request, shapes, tasks), limits)


def _check_trajectory_values(request: SimulationRequest, values: int, limits: Limits) -> None:
    _, field = record_count(request)
    rec = request.record
    fix = "record fewer points" + (", or set record.weights to false" if rec.weights else "") + (
        ", or set record.similarity to false" if rec.similarity else "") + (
        ", or set record.kernel to false" if rec.kernel else "") + (
        ", or ask for fewer eigenvalues (record.sharpness_k)" if rec.sharpness and rec.sharpness_k > 1 else "")
    over(values, limits.max_trajectory_values, field, "the trajectory size (record points × numbers per record)", fix)


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
# An init from_simulation's weight copied from the stored source into the request (service/jobs/continuation.py):
# decoded from its frame, made a Python float, checked finite, compared, serialised into the stored request.
COPY_FE = 300.0
# Bytes an init from_simulation's copied weight holds in the API while it is validated (a Python float in a list, its
# JSON text, its array) and stores in the request (its JSON text).
COPY_HELD_BYTES = 48
COPY_STORED_BYTES = 24
# Gradient flow's integrator steps are not known before it runs (DLNSIM_MAX_STEPS caps them): the run's estimate
# assumes this many, with 6 evaluations of the vector field each (Dormand-Prince).
FLOW_STEPS_ESTIMATE = 1000
# What a stored result holds besides its numbers (the header, scalars).
RESULT_OVERHEAD_BYTES = 4096
# The one-hot presets: their P items are the samples SGD draws its batches from (P = n_in).
ONE_HOT_PRESETS = ("hierarchy", "branching_diffusion")


@dataclass(frozen=True)
class TaskShape:
    """One task's data (a request's data, or a sequence's phase), as its cost needs it."""

    n_in: int
    n_out: int
    n_samples: int            # rows of data read or drawn (0 for correlations and closed-form presets)
    test_samples: int         # rows of a held-out dataset (0 otherwise)
    test: bool                # held-out statistics are given or made (a test loss is recorded)
    dense_values: int         # numbers the task carries as matrices (a dataset, correlations, test data)
    name: str | None = None   # the preset's name (None for a dataset or correlations)
    train_samples: int = 0    # the rows SGD draws batches from (0: correlations only, no samples)
    teacher: bool = False     # a teacher's random-matrix theory is recorded (noisy_teacher)


@dataclass(frozen=True)
class RequestShape:
    """The dimensions a request implies (its first task's n_in and n_out: every phase of a sequence has them), and
    its tasks: one, or a sequence's phases."""

    n_in: int
    n_out: int
    n_samples: int            # rows of data read or drawn, every task together
    test_samples: int         # rows of held-out datasets, every task together
    test: bool                # the first task has held-out statistics (a test loss is recorded)
    dense_values: int         # numbers the request carries as matrices (datasets, correlations, given weights)
    tasks: tuple[TaskShape, ...] = ()
    teacher: bool = False     # the first task records a teacher's random-matrix theory
    copied_values: int = 0    # an init from_simulation's weights, copied from the store at admission


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


def task_shape(data: Any, limits: Limits) -> TaskShape | None:
    """The dimensions one task's ``data`` implies, read from it alone (None for a preset this module does not
    know)."""
    test = getattr(data, "test", None)
    test_samples = len(test.x) if isinstance(test, HeldOutDataset) else 0
    dense = 0
    if isinstance(test, HeldOutDataset):
        dense += test_samples * (len(test.x[0]) + len(test.y[0]))
    elif test is not None:
        dense += sum(len(m) * len(m[0]) for m in (test.sigma11, test.sigma31, test.sigma33) if m)
    name = None
    if isinstance(data, DatasetData):
        n, n_in, n_out = len(data.x), len(data.x[0]), len(data.y[0])
        dense += n * (n_in + n_out)
        train = n
    elif isinstance(data, CorrelationsData):
        n, n_out, n_in = 0, len(data.sigma31), len(data.sigma31[0])
        dense += n_in * n_in + n_out * n_in + (n_out * n_out if data.sigma33 else 0)
        train = 0
    else:
        name = data.name
        shape = preset_shape(name, preset_params(data), limits)
        if shape is None:
            return None
        n_in, n_out = shape[0], shape[1]
        n = int(getattr(data, "n_samples", 0) or 0) if name in ("random_teacher", "noisy_teacher") else 0
        train = n if n else (n_in if name in ONE_HOT_PRESETS else 0)
    made_test = name == "noisy_teacher"  # its problem carries the teacher's test statistics
    return TaskShape(n_in, n_out, n, test_samples, test is not None or made_test, dense, name, train, made_test)


def request_shape(request: Any, limits: Limits) -> RequestShape | None:
    """The dimensions a request implies, read from it alone (None for a preset this module does not know)."""
    data = request.data
    if isinstance(data, SequenceData):
        tasks = [task_shape(phase.data, limits) for phase in data.phases]
    else:
        tasks = [task_shape(data, limits)]
    if any(task is None for task in tasks):
        return None
    first = tasks[0]
    dense = sum(task.dense_values for task in tasks)
    copied = 0
    init = getattr(request, "init", None)
    scheme = getattr(init, "scheme", None)
    if scheme == "given":
        dense += sum(len(w) * len(w[0]) for w in init.weights)
    elif scheme == "from_simulation":  # copied into the request from the store, then read as given weights
        hidden = [int(h) for h in request.network.hidden]
        copied = sum(r * c for r, c in layer_shapes_of(first.n_in, hidden, first.n_out))
        if init.weights is not None:  # sent back as read from GET: parsed already, compared with the copy
            copied = max(copied, sum(len(w) * len(w[0]) for w in init.weights))
        dense += copied
    return RequestShape(first.n_in, first.n_out, sum(t.n_samples for t in tasks), sum(t.test_samples for t in tasks),
                        first.test, dense, tuple(tasks), first.teacher, copied)


def copy_flops(request: Any, limits: Limits) -> float:
    """What copying an init from_simulation's weights from the store costs (part of ``request_cost``'s validation):
    a sweep copies them once, into its base, not once a point."""
    if getattr(getattr(request, "init", None), "scheme", None) != "from_simulation":
        return 0.0
    shape = request_shape(request, limits)
    return COPY_FE * shape.copied_values if shape is not None else 0.0


def _problem_flops(shape: TaskShape) -> float:
    """Building one task's problem: reading or drawing the data, its correlations, Σ11's eigendecomposition (PSD
    check, least squares) and ‖Σ31‖₂ (the GD stability bound)."""
    n_in, n_out, n, name = shape.n_in, shape.n_out, shape.n_samples, shape.name
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


def _task_bytes(shape: TaskShape) -> int:
    """What one built task holds: its correlations, Σ11's eigenbasis and least-squares factors, its rows."""
    n_in, n_out = shape.n_in, shape.n_out
    return 8 * (4 * n_in * n_in + 3 * n_in * n_out + min(n_out, 2048) ** 2 + 2 * shape.n_samples * (n_in + n_out))


def _init_flops(scheme: str, shapes: list[tuple[int, int]], shape: RequestShape) -> float:
    entries = sum(r * c for r, c in shapes)
    if scheme == "given":
        return 10.0 * entries  # read already (dense_values); shape and finiteness checks
    if scheme == "from_simulation":  # the copy from the store (read as given weights: dense_values)
        return (COPY_FE + 10.0) * shape.copied_values
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


def sgd_step_flops(shapes: list[tuple[int, int]], n_in: int, n_out: int, batch_size: int) -> float:
    """One SGD step on a batch of B rows: the cheaper of its correlations Σ11_b, Σ31_b and a GD step on them, and
    backprop through its rows (as ``service.dynamics.sgd.source_flops``)."""
    sizes = [r * c for r, c in shapes]
    b = max(1, int(batch_size))
    correlations = 2.0 * b * n_in * (n_in + n_out) + step_flops(shapes, n_in, n_out)
    samples = 2.0 * b * (2 * sum(sizes) + sum(sizes[1:]))
    return min(correlations, samples)


def sgd_steps(training: Any, shape: RequestShape) -> int:
    """An SGD run's steps: ``steps``, or epochs × ⌈N/B⌉ with N the first task's samples (one batch an epoch when the
    data has none: it is then refused at validation)."""
    if training.steps is not None:
        return int(training.steps)
    n = shape.tasks[0].train_samples if shape.tasks else 0
    return int(training.epochs) * max(1, -(-n // max(1, int(training.batch_size))))


# Heavy-ball and Nesterov momentum: the gradient formed on its own, the buffer v ← μv + g and the update, per weight.
MOMENTUM_FLOPS_PER_WEIGHT = 6.0


def _run_parts(request: SimulationRequest, shape: RequestShape, limits: Limits) -> dict[FieldPath, float]:
    """The run's FLOPs by the field that drives each part: the training's steps, the records' work, the sharpness,
    the linearised run."""
    hidden = [int(h) for h in request.network.hidden]
    n_in, n_out = shape.n_in, shape.n_out
    shapes = layer_shapes_of(n_in, hidden, n_out)
    layers = sum(r * c for r, c in shapes)
    m = min(n_in, n_out)
    training = request.training
    method = getattr(training, "method", "gd")
    per_step = step_flops(shapes, n_in, n_out)
    momentum = MOMENTUM_FLOPS_PER_WEIGHT * layers if getattr(training, "momentum", 0.0) else 0.0
    parts: dict[FieldPath, float] = {}
    if method == "gd":
        steps = int(training.steps)
        parts[("training", "steps")] = (per_step + momentum) * steps
    elif method == "sgd":
        steps = sgd_steps(training, shape)
        field: FieldPath = ("training", "steps") if training.steps is not None else ("training", "epochs")
        parts[field] = (sgd_step_flops(shapes, n_in, n_out, training.batch_size) + momentum) * steps
    elif method == "flow":
        steps = 6 * min(FLOW_STEPS_ESTIMATE, limits.max_steps)
        parts[("network", "hidden")] = per_step * steps
    else:  # exact: the closed form at each record (its decomposition was counted in validation)
        steps = 0
        parts[("network", "hidden")] = SVD_FE * n_out * n_in * m + 4.0 * (layers + n_out * n_in * m)
    records, record_field = record_count(request)
    record_flops = per_step
    if request.record.similarity and hidden:
        record_flops += 2.0 * n_in * n_in * hidden[0]
    if request.record.kernel:
        record_flops += 2.0 * sum(h * (n_in * n_in + n_out * n_out) for h in hidden)
    if len(shape.tasks) > 1:  # every phase's task's loss at every record
        record_flops += len(shape.tasks) * 2.0 * n_out * n_in * n_in
    parts[record_field] = parts.get(record_field, 0.0) + records * record_flops
    if request.record.sharpness:  # Hessian-vector products, each about two GD steps
        products = records * request.record.sharpness_k * SHARPNESS_PRODUCTS_PER_EIGENVALUE
        parts[("record", "sharpness")] = products * 2.0 * per_step
    if request.record.linearized:  # at most the run's steps again (the stepped route), and the closed forms
        parts[("record", "linearized")] = per_step * steps + EIG_FE * n_out * n_in ** 3 + records * 2.0 * n_out * n_in
    return parts


def request_cost(request: SimulationRequest, limits: Limits) -> Cost:
    """The cost of ``request`` (module docstring), from the request alone: nothing is built."""
    shape = request_shape(request, limits)
    if shape is None:
        return ZERO_COST
    hidden = [int(h) for h in request.network.hidden]
    shapes = layer_shapes_of(shape.n_in, hidden, shape.n_out)
    n_in, n_out = shape.n_in, shape.n_out
    data_flops = sum(_problem_flops(task) for task in shape.tasks)
    weights_read = READ_FE * (shape.dense_values - sum(task.dense_values for task in shape.tasks))  # given, copied
    scheme = getattr(request.init, "scheme", "gaussian")
    validation = data_flops + weights_read + _init_flops(scheme, shapes, shape)
    method = getattr(request.training, "method", "gd")
    m = min(n_in, n_out)
    if method == "exact":  # whether a closed form applies, per task: Σ31's SVD with vectors, Σ11's eigenbasis, modes
        validation += len(shape.tasks) * (SVD_FE * n_out * n_in * m + EIG_FE * n_in ** 3 + 10.0 * n_in * n_out * m)
    layers = sum(r * c for r, c in shapes)
    validation_bytes = (8 * (2 * shape.dense_values + 2 * layers) + COPY_HELD_BYTES * shape.copied_values
                        + sum(_task_bytes(task) for task in shape.tasks))
    run = sum(_run_parts(request, shape, limits).values())
    values = _trajectory_values(request, shapes, n_in, n_out, test=shape.test, teacher=shape.teacher,
                                n_tasks=len(shape.tasks))
    result = 8 * values + COPY_STORED_BYTES * shape.copied_values + RESULT_OVERHEAD_BYTES
    return Cost(float(validation), int(validation_bytes), float(data_flops), float(run), int(result))


def _biggest_field(request: SimulationRequest, cost: Cost, limits: Limits) -> FieldPath:
    """The field that drives a request's validation cost: an init from_simulation's copy when it outweighs the
    rest, else the data's size."""
    if getattr(getattr(request, "init", None), "scheme", None) == "from_simulation":
        shape = request_shape(request, limits)
        copied = (COPY_FE + 10.0 + READ_FE) * shape.copied_values if shape is not None else 0.0
        if copied > cost.validation_flops - copied:
            return ("init", "id")
    data = request.data
    if isinstance(data, SequenceData):
        return ("data", "phases")
    if isinstance(data, DatasetData):
        return ("data", "x")
    if isinstance(data, CorrelationsData):
        return ("data", "sigma11")
    return ("data", "n_in") if hasattr(data, "n_in") else ("data",)


RUN_FIXES: dict[FieldPath, str] = {
    ("training", "steps"): "use fewer steps or narrower layers (a GD step costs about 6·n_in·Σ layer sizes)",
    ("training", "epochs"): "use fewer epochs or narrower layers (an epoch is ⌈N/batch_size⌉ steps, each about "
                            "6·batch_size·Σ layer sizes)",
    ("network", "hidden"): "use narrower or fewer layers",
    ("record", "points"): "record fewer points (or fewer of the quantities record asks for)",
    ("record", "times"): "record at fewer times (or fewer of the quantities record asks for)",
    ("record", "sharpness"): f"record the sharpness at fewer points, ask for fewer eigenvalues (record.sharpness_k), "
                             f"or set record.sharpness to false (each eigenvalue takes about "
                             f"{SHARPNESS_PRODUCTS_PER_EIGENVALUE} Hessian-vector products per record)",
    ("record", "linearized"): "set record.linearized to false, or use fewer steps",
}


def check_cost(cost: Cost, request: SimulationRequest, limits: Limits, *, what: str = "this request") -> None:
    """The validation budget (what the API may spend on one request before answering) and the job's compute budget;
    LimitExceededError naming the field that drives the cost."""
    field = _biggest_field(request, cost, limits)
    fix = ("use smaller dimensions (n_in, n_out, the hidden widths) or fewer samples, or run your own instance with "
           "a larger DLNSIM_MAX_VALIDATION_FLOPS")
    if field == ("init", "id"):
        fix = ("continue a smaller network (its final weights are copied into this request), or run your own "
               "instance with a larger DLNSIM_MAX_VALIDATION_FLOPS")
    if cost.validation_flops > limits.max_validation_flops:
        raise LimitExceededError(
            f"validating {what} would cost about {cost.validation_flops:.3g} FLOP-equivalents (the problem's "
            f"decompositions, its data, the initial weights or their copy), above this service's limit of "
            f"{limits.max_validation_flops:.3g} (DLNSIM_MAX_VALIDATION_FLOPS, about a second of one core per 1e10)",
            field=field, fix=fix)
    if cost.validation_bytes > limits.max_validation_bytes:
        raise LimitExceededError(
            f"validating {what} would hold about {cost.validation_bytes / 2**20:.0f} MiB at once, above this "
            f"service's limit of {limits.max_validation_bytes / 2**20:.0f} MiB (DLNSIM_MAX_VALIDATION_BYTES)",
            field=field, fix=fix.replace("DLNSIM_MAX_VALIDATION_FLOPS", "DLNSIM_MAX_VALIDATION_BYTES"))
    if cost.run_flops > limits.max_job_flops:
        shape = request_shape(request, limits)
        parts = _run_parts(request, shape, limits) if shape is not None else {}
        run_field = max(parts, key=parts.__getitem__) if parts else ("training",)
        raise LimitExceededError(
            f"running {what} would take about {cost.run_flops:.3g} floating-point operations, above this service's "
            f"limit of {limits.max_job_flops:.3g} per job (DLNSIM_MAX_JOB_FLOPS; 1e15 is hours of a whole server)",
            field=run_field, fix=RUN_FIXES.get(run_field, "use fewer steps or narrower layers"))


def preset_cost(name: str, params: Mapping[str, Any], limits: Limits) -> Cost:
    """What building a preset costs (GET /v1/presets/{name}: the problem and its spectrum), from its parameters."""
    shape = preset_shape(name, params, limits)
    if shape is None:
        return ZERO_COST
    n_in, n_out = shape[0], shape[1]
    n = int(params.get("n_samples") or 0) if name in ("random_teacher", "noisy_teacher") else 0
    task = TaskShape(n_in, n_out, n, 0, False, 0, name)
    flops = _problem_flops(task) + SVD_FE * n_out * n_in * min(n_in, n_out)  # + its modes
    return Cost(flops, _task_bytes(task), flops, 0.0, 0)


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
    flops = _problem_flops(shape.tasks[0]) + READ_FE * dense + step_flops(shapes, shape.n_in, shape.n_out)
    memory = 8 * (2 * shape.dense_values + 2 * dense + 4 * shape.n_in ** 2 + 3 * shape.n_in * shape.n_out
                  + 2 * shape.n_samples * (shape.n_in + shape.n_out))
    return Cost(flops, memory, flops, 0.0, 0)
