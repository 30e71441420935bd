"""The service's size limits: what a request may ask for, checked from the request alone where possible (so an
oversized request is refused before anything large is allocated).

    check_request_limits(request, limits)     # widths, steps, record points, dataset sizes
    check_trajectory_size(request, shapes, problem, limits)

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
    """Limits visible in the request itself, checked before anything is computed."""
    training = request.training
    if isinstance(training, GradientDescentTraining):
        over(training.steps, limits.max_steps, ("training", "steps"), "the number of steps", "use fewer steps")
    count, field = record_count(request)
    over(count, limits.max_record_points, field, "the number of record points", "record fewer points")
    check_data_limits(request.data, list(request.network.hidden), limits)


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
    count, field = record_count(request)
    per_record = problem.n_out * problem.n_in + 2 * min(problem.n_out, problem.n_in) + 8
    if request.record.weights:
        per_record += sum(r * c for r, c in shapes)
    if request.record.similarity:
        per_record += problem.n_in * problem.n_in
    if problem.test is not None:
        per_record += 3  # test loss, and its theory
    if request.record.kernel:  # the Grams of every hidden layer, and the distance
        per_record += (len(shapes) - 1) * (problem.n_in ** 2 + problem.n_out ** 2) + 1
    fix = "record fewer points" + (", or set record.weights to false" if request.record.weights else "") + (
        ", or set record.similarity to false" if request.record.similarity else "") + (
        ", or set record.kernel to false" if request.record.kernel else "")
    over(count * per_record, limits.max_trajectory_values, field,
          "the trajectory size (record points × numbers per record)", fix)



def preset_params(data: Any) -> dict[str, Any]:
    """A preset ``data`` member's parameters (without kind, name and test)."""
    return data.model_dump(exclude={"kind", "name", "test"})
