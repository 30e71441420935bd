"""The service's size limits: what a request may ask for, checked from the request alone where possible (so an
oversized request is refused before anything large is allocated).

    check_request_limits(request, limits)     # widths, steps, record points, dataset sizes, sharpness's products
    check_run_limits(request, tasks, limits)  # what needs the built problem: SGD's steps (epochs × batches)
    check_trajectory_size(request, shapes, tasks, limits)

The cost of a run is bounded in units the request states: GD and SGD steps (an SGD epoch is ⌈N/B⌉ steps; a task
sequence's phases share the run's steps), flow integrator steps (capped while running), and for record.sharpness
the Hessian-vector products its eigenvalues take (estimated, ``SHARPNESS_PRODUCTS_PER_EIGENVALUE``).

Raises ``LimitExceededError`` (a core DynamicsError, so it names the field and the fix like every other refusal).
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
    """Limits visible in the request itself, checked before anything is computed."""
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
    """Numbers in the trajectory of ``request`` (``count`` records): per record the network map, two per mode and a
    few scalars, plus what the record settings add; the final weights once."""
    count, _ = record_count(request)
    first, n_tasks = tasks[0], len(tasks)
    rec = request.record
    per_record = first.n_out * first.n_in + 2 * min(first.n_out, first.n_in) + 8
    if rec.weights:
        per_record += sum(r * c for r, c in shapes)
    if rec.similarity:
        per_record += first.n_in * first.n_in
    if first.test is not None:
        per_record += 3  # test loss, and its theory
    if rec.kernel:  # the Grams of every hidden layer, and the distance
        per_record += (len(shapes) - 1) * (first.n_in ** 2 + first.n_out ** 2) + 1
    if rec.sharpness:
        per_record += rec.sharpness_k
    if rec.linearized:
        per_record += 2
    if getattr(first, "teacher", None) is not None:
        per_record += 2  # the random-matrix theory's train and test loss
    if n_tasks > 1:
        per_record += 2 * n_tasks + 1  # task_loss, task_excess_loss, phase
    return count * per_record + sum(r * c for r, c in shapes)


def check_trajectory_size(request: SimulationRequest, shapes: list[tuple[int, int]], tasks: list[Problem],
                          limits: Limits) -> None:
    count, field = record_count(request)
    rec = request.record
    fix = "record fewer points" + (", or set record.weights to false" if rec.weights else "") + (
        ", or set record.similarity to false" if rec.similarity else "") + (
        ", or set record.kernel to false" if rec.kernel else "") + (
        ", or ask for fewer eigenvalues (record.sharpness_k)" if rec.sharpness and rec.sharpness_k > 1 else "")
    over(trajectory_values(request, shapes, tasks), limits.max_trajectory_values, field,
         "the trajectory size (record points × numbers per record)", fix)


def preset_params(data: Any) -> dict[str, Any]:
    """A preset ``data`` member's parameters (without kind, name and test)."""
    return data.model_dump(exclude={"kind", "name", "test"})
