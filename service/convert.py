"""The border between HTTP and the core: request -> core objects, core Trajectory -> JSON document.

    spec = build_simulation(request, limits)        # raises DynamicsError (field, fix) for the API's 422
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    doc = trajectory_document(traj)                   # lists, NaN/Inf -> None, orjson-ready

No web imports: the API process calls build_simulation to validate before queueing, and the worker
calls it again to run (with the same result: everything here is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.dynamics import network
from service.dynamics.errors import DynamicsError, FieldPath
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, Method
from service.dynamics.presets import build_preset
from service.dynamics.problem import Problem, problem_from_correlations, problem_from_data, with_test
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import preflight
from service.dynamics.trajectory import Trajectory
from service.schemas import (
    AlignedInit,
    CorrelationsData,
    DatasetData,
    ExactTraining,
    GivenInit,
    GradientDescentTraining,
    GradientFlowTraining,
    GradientsRequest,
    HeldOutDataset,
    LambdaBalancedInit,
    SimulationRequest,
)


class LimitExceededError(DynamicsError):
    """A request above one of the service's configured limits (dimensions, steps, sizes)."""

    code = "limit_exceeded"


class UnstableLearningRateError(DynamicsError):
    """A GD learning rate above the stability bound, without training.allow_unstable."""

    code = "unstable_learning_rate"


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


@dataclass(frozen=True)
class GradientsSpec:
    """What ``network.vector_field`` needs, validated: the problem, the weights (float64), γ."""

    problem: Problem
    weights: list[np.ndarray]
    weight_decay: float


@dataclass(frozen=True)
class SimulationSpec:
    """Everything ``simulate`` needs, validated."""

    problem: Problem
    weights0: list[np.ndarray]
    method: Method
    record: RecordSchedule
    dtype: str


# ------------------------------------------------------------------------------------------------
# limits


def _over(value: int, limit: int, field: FieldPath, what: str, fix: str) -> None:
    if value > limit:
        raise LimitExceededError(f"{what} is {value}, above this service's limit of {limit}", field=field, fix=fix)


def _preset_shape(name: str, params: Mapping[str, Any], limits: Limits) -> tuple[int, int, FieldPath, FieldPath] | None:
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


def _check_shape_limits(n_in: int, n_out: int, hidden: list[int], in_field: FieldPath, out_field: FieldPath,
                        limits: Limits, hidden_field: FieldPath = ("network", "hidden")) -> None:
    """Widths, layer count and matrix sizes; hidden width k is blamed on ``(*hidden_field, k)``."""
    fix_dim = "use smaller dimensions (or run your own instance with a larger DLNSIM_MAX_DIMENSION)"
    _over(n_in, limits.max_dimension, in_field, "the input dimension n_in", fix_dim)
    _over(n_out, limits.max_dimension, out_field, "the output dimension n_out", fix_dim)
    _over(len(hidden) + 1, limits.max_layers, hidden_field, "the number of layers",
          "use fewer hidden layers")
    for k, h in enumerate(hidden):
        _over(h, limits.max_dimension, (*hidden_field, k), f"hidden width {k}", fix_dim)
    fix_entries = "use smaller dimensions: every matrix the run holds must stay below the limit"
    _over(n_in * n_in, limits.max_matrix_entries, in_field, "n_in² (the size of Σ11)", fix_entries)
    _over(n_out * n_in, limits.max_matrix_entries, out_field, "n_out × n_in (the size of Σ31 and W)", fix_entries)
    widths = [n_in, *hidden, n_out]
    for k in range(len(widths) - 1):
        # Layer k + 1 maps widths[k] -> widths[k + 1]; blame the hidden width it grows with.
        field = (*hidden_field, min(k, len(hidden) - 1)) if hidden else in_field
        _over(widths[k] * widths[k + 1], limits.max_matrix_entries, field,
              f"the size of layer {k + 1} ({widths[k + 1]} × {widths[k]})", fix_entries)


def _record_count(request: SimulationRequest) -> tuple[int, FieldPath]:
    rec = request.record
    if rec.times is not None:
        return len(rec.times) + 1, ("record", "times")  # t = 0 is always added
    return rec.points, ("record", "points")


def _check_request_limits(request: SimulationRequest, limits: Limits) -> None:
    """Limits visible in the request itself, checked before anything is computed."""
    training = request.training
    if isinstance(training, GradientDescentTraining):
        _over(training.steps, limits.max_steps, ("training", "steps"), "the number of steps", "use fewer steps")
    count, field = _record_count(request)
    _over(count, limits.max_record_points, field, "the number of record points", "record fewer points")
    _check_data_limits(request.data, list(request.network.hidden), limits)


def _check_data_limits(data: Any, hidden: list[int], limits: Limits,
                       hidden_field: FieldPath = ("network", "hidden")) -> None:
    """The limits a request's ``data`` (and network widths) must respect, from the request alone."""
    test = getattr(data, "test", None)
    if isinstance(test, HeldOutDataset):
        n = len(test.x)
        _over(n * (len(test.x[0]) + len(test.y[0])), limits.max_dataset_values, ("data", "test", "x"),
              "the test dataset size N_test × (n_in + n_out)",
              "send fewer test samples, or the test distribution's correlations (kind: correlations)")
    if isinstance(data, DatasetData):
        n, n_in, n_out = len(data.x), len(data.x[0]), len(data.y[0])
        _over(n * (n_in + n_out), limits.max_dataset_values, ("data", "x"), "the dataset size N × (n_in + n_out)",
              "send fewer samples, or send the correlations (kind: correlations) instead of the data")
        _check_shape_limits(n_in, n_out, hidden, ("data", "x"), ("data", "y"), limits, hidden_field)
    elif isinstance(data, CorrelationsData):
        n_out, n_in = len(data.sigma31), len(data.sigma31[0])
        _check_shape_limits(n_in, n_out, hidden, ("data", "sigma11"), ("data", "sigma31"), limits, hidden_field)
    else:
        shape = _preset_shape(data.name, _preset_params(data), limits)
        if shape is not None:
            _check_shape_limits(*shape[:2], hidden, *shape[2:], limits, hidden_field)
        if data.name in ("random_teacher", "noisy_teacher"):
            values = data.n_samples * (data.n_in + data.n_out)
            _over(values, limits.max_dataset_values, ("data", "n_samples"), "the dataset size N × (n_in + n_out)",
                  "use fewer samples")


def _check_trajectory_size(request: SimulationRequest, shapes: list[tuple[int, int]], problem: Problem,
                           limits: Limits) -> None:
    count, field = _record_count(request)
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
    _over(count * per_record, limits.max_trajectory_values, field,
          "the trajectory size (record points × numbers per record)", fix)


# ------------------------------------------------------------------------------------------------
# building


def _preset_params(data: Any) -> dict[str, Any]:
    return data.model_dump(exclude={"kind", "name", "test"})


def _rename_preset_field(exc: DynamicsError) -> DynamicsError:
    """The core names preset fields data.params.<p> and data.preset; our request has them inline."""
    field = tuple(exc.field)
    if field[:2] == ("data", "params"):
        exc.field = ("data", *field[2:])
    elif field == ("data", "preset"):
        exc.field = ("data", "name")
    return exc


def build_problem(request: SimulationRequest | GradientsRequest) -> Problem:
    """The core's problem of ``request.data``, with its held-out statistics when ``data.test`` is given."""
    data = request.data
    if isinstance(data, DatasetData):
        problem = problem_from_data(data.x, data.y)
    elif isinstance(data, CorrelationsData):
        problem = problem_from_correlations(data.sigma11, data.sigma31, data.sigma33)
    else:
        try:
            problem = build_preset(data.name, _preset_params(data))
        except DynamicsError as exc:
            raise _rename_preset_field(exc) from None
    test = getattr(data, "test", None)
    if test is None:
        return problem
    prefix = ("data", "test")
    if isinstance(test, HeldOutDataset):
        held_out = problem_from_data(test.x, test.y, field_prefix=prefix)
    else:
        held_out = problem_from_correlations(test.sigma11, test.sigma31, test.sigma33, field_prefix=prefix)
    return with_test(problem, held_out, field_prefix=prefix)


def build_init_params(request: SimulationRequest) -> dict[str, Any]:
    """The keyword parameters of ``initial_weights`` for the request's init (scheme excluded)."""
    init = request.init
    if isinstance(init, GivenInit):
        return {"weights": init.weights}
    if isinstance(init, AlignedInit):
        return {"strength": init.strength, "seed": init.seed}
    if isinstance(init, LambdaBalancedInit):
        return {"lam": init.lam, "scale": init.scale, "seed": init.seed}
    return {"scale": init.scale, "seed": init.seed}


def build_method(request: SimulationRequest, max_flow_steps: int | None = None) -> Method:
    """The core's method; ``max_flow_steps`` caps a flow run's integrator steps (``GradientFlow.max_steps``)."""
    t = request.training
    if isinstance(t, GradientDescentTraining):
        return GradientDescent(learning_rate=t.learning_rate, steps=t.steps, weight_decay=t.weight_decay,
                               stop_at_convergence=t.stop_at_convergence)
    if isinstance(t, GradientFlowTraining):
        return GradientFlow(t_max=t.t_max, rtol=t.rtol, atol=t.atol, weight_decay=t.weight_decay,
                            max_steps=max_flow_steps, stop_at_convergence=t.stop_at_convergence)
    if isinstance(t, ExactTraining):
        return Exact(t_max=t.t_max, weight_decay=t.weight_decay)
    raise TypeError(f"unknown training method {type(t).__name__}")


def build_record(request: SimulationRequest) -> RecordSchedule:
    rec = request.record
    return RecordSchedule(points=rec.points, spacing=rec.spacing,
                          times=tuple(rec.times) if rec.times is not None else None, weights=rec.weights,
                          similarity=rec.similarity, kernel=rec.kernel)


def check_learning_rate(problem: Problem, depth: int, training: GradientDescentTraining) -> None:
    """GD with η above ``gd_stability_bound`` cannot settle at the minimum (reference §5d): refuse it
    unless the caller asked for the unstable run (its divergence is then reported as the outcome)."""
    if training.allow_unstable:
        return
    bound = network.gd_stability_bound(problem, depth, training.weight_decay)
    if training.learning_rate > bound:
        raise UnstableLearningRateError(
            f"learning_rate {training.learning_rate:g} is above the stability bound {bound:.6g} for this task "
            f"and depth {depth}: gradient descent would diverge or oscillate",
            field=("training", "learning_rate"),
            fix=f"use a learning_rate below {bound:.6g} (with proportionally more steps), "
                "or set training.allow_unstable to true to simulate the divergence")


def build_simulation(request: SimulationRequest, limits: Limits | None = None, *,
                     max_flow_steps: int | None = None) -> SimulationSpec:
    """Validate ``request`` completely and build the core's inputs; raise DynamicsError naming the field.

    A flow run's integrator steps are capped at ``limits.max_steps`` (with limits) or ``max_flow_steps``
    (a worker, which rebuilds the request without checking the limits again).

    With ``limits``, the service's size limits are checked first, from the request alone where
    possible (so an oversized request is refused before anything large is allocated).
    Checks: data (shapes, finiteness, symmetric PSD Σ11/Σ33), network widths, init parameters,
    record times within the run, the GD stability bound, and the exact method's conditions.
    """
    if limits is not None:
        _check_request_limits(request, limits)
    problem = build_problem(request)
    hidden = list(request.network.hidden)
    shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
    if limits is not None:
        _check_shape_limits(problem.n_in, problem.n_out, hidden, ("data",), ("data",), limits)
        _check_trajectory_size(request, shapes, problem, limits)
    weights0 = initial_weights(problem, hidden, request.init.scheme, **build_init_params(request))
    method = build_method(request, max_flow_steps if limits is None else limits.max_steps)
    record = build_record(request)
    if isinstance(request.training, GradientDescentTraining):
        check_learning_rate(problem, len(shapes), request.training)
    # The core's own checks of everything simulate() would refuse: method parameters, record times
    # outside the run, and for method exact whether a closed form applies (check_exact).
    preflight(problem, weights0, method, record, dtype=request.dtype)
    return SimulationSpec(problem, weights0, method, record, request.dtype)


def build_gradients(request: GradientsRequest, limits: Limits | None = None) -> GradientsSpec:
    """Validate a POST /v1/gradients request like a simulation's data and given init; raise DynamicsError.

    The network's widths are those of the weights (input→output, as ``init.weights``): hidden width k is
    the number of rows of weights[k], so the limits and shape errors name ``weights[k]``.
    """
    hidden = [len(w) for w in request.weights[:-1]]
    if limits is not None:
        _check_data_limits(request.data, hidden, limits, hidden_field=("weights",))
    problem = build_problem(request)
    shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
    if limits is not None:
        _check_shape_limits(problem.n_in, problem.n_out, hidden, ("data",), ("data",), limits,
                            hidden_field=("weights",))
    weights = network.check_weights(request.weights, shapes, field=("weights",))
    return GradientsSpec(problem, weights, float(request.weight_decay))


def gradients_document(field: network.VectorField) -> dict[str, Any]:
    """The Gradients JSON document (schema: service.schemas.Gradients)."""
    return {
        "loss": _json_number(field.loss),
        "loss_without_sigma33": _json_number(field.loss_without_sigma33),
        "objective": _json_number(field.objective),
        "gradients": [_json_array(g) for g in field.gradients],
        "gradient_norm": _json_number(field.gradient_norm),
    }


# ------------------------------------------------------------------------------------------------
# trajectory -> JSON document


def _json_array(a: Any) -> Any:
    """Nested lists of Python numbers; entries that are NaN or ±Inf become None (JSON null).

    ``tolist`` turns float32 and float64 values into Python floats exactly, and orjson prints the
    shortest repr that round-trips, so the document carries the run's values bit for bit.
    """
    a = np.asarray(a)
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            out = a.astype(object)
            out[~finite] = None
            return out.tolist()
    return a.tolist()


def _json_number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _optional(a: Any) -> Any:
    return None if a is None else _json_array(a)


def trajectory_document(traj: Trajectory) -> dict[str, Any]:
    """The Trajectory JSON document (schema: service.schemas.Trajectory), ready for orjson.dumps.

    ``weights`` is per record time, per layer (input→output), as the API documents it; the core keeps
    it per layer, per time.
    """
    modes = traj.modes
    weights = None
    if traj.weights is not None:
        per_layer = [_json_array(w) for w in traj.weights]
        weights = [[layer[t] for layer in per_layer] for t in range(len(traj.time))]
    return {
        "time": _json_array(traj.time),
        "step": None if traj.step is None else [int(s) for s in np.asarray(traj.step)],
        "loss": _optional(traj.loss),
        "excess_loss": _json_array(traj.excess_loss),
        "product": _json_array(traj.product),
        "weights": weights,
        "modes": {
            "singular_values": _json_array(modes.singular_values),
            "strength": _json_array(modes.strength),
            "theory": _optional(modes.theory),
            "theory_model": modes.theory_model,
            "theory_exact": bool(modes.theory_exact),
            "theory_assumptions": modes.theory_assumptions,
            "learning_time": _json_array(modes.learning_time),
            "learning_time_theory": _optional(modes.learning_time_theory),
        },
        "balance_drift": _json_array(traj.balance_drift),
        "gradient_norm": _json_array(traj.gradient_norm),
        "distance_to_optimum": _json_array(traj.distance_to_optimum),
        "outcome": str(traj.outcome),
        "diverged_at_step": None if traj.diverged_at_step is None else int(traj.diverged_at_step),
        "optimum": {
            "product": _json_array(traj.optimum.product),
            "loss": _json_number(traj.optimum.loss),
            "loss_without_sigma33": _json_number(traj.optimum.loss_without_sigma33),
            "rank": int(traj.optimum.rank),
        },
        "method": str(traj.method),
        "stability_hint": traj.stability_hint,
        "test_loss": _optional(traj.test_loss),
        "early_stopping": None if traj.early_stopping is None else {
            "time": _json_number(traj.early_stopping.time),
            "step": traj.early_stopping.step,
            "test_loss": _json_number(traj.early_stopping.test_loss),
        },
        "loss_theory": None if traj.loss_theory is None else {
            "loss": _optional(traj.loss_theory.loss),
            "test_loss": _optional(traj.loss_theory.test_loss),
            "model": traj.loss_theory.model,
            "exact": bool(traj.loss_theory.exact),
            "assumptions": traj.loss_theory.assumptions,
        },
        "kernel": None if traj.kernel is None else _kernel_document(traj.kernel, len(traj.time)),
        "kernel_distance": None if traj.kernel is None else _json_array(traj.kernel.distance),
        "similarity": _optional(traj.similarity),
    }


def _kernel_document(kernel: Any, count: int) -> dict[str, Any]:
    """Per time, per hidden layer (the core keeps them per layer, per time)."""
    inputs = [_json_array(p) for p in kernel.input_grams]
    outputs = [_json_array(q) for q in kernel.output_grams]
    return {"input_grams": [[layer[t] for layer in inputs] for t in range(count)],
            "output_grams": [[layer[t] for layer in outputs] for t in range(count)]}
