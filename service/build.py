"""Request → the core's objects: the one crossing from the HTTP contract into ``service.dynamics``.

    spec = admit_simulation(request, limits)       # the API, before queueing: every check, the limits first
    spec = build_run(request, max_flow_steps)      # the worker, to run it: the same objects, no limit checks
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)

Both raise DynamicsError (field, fix) for the API's 422. No web imports; deterministic, so the worker builds exactly
what the API validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.dynamics import network
from service.dynamics.errors import DynamicsError, InvalidParameterError, ShapeError
from service.dynamics.init import initial_weights
from service.dynamics.methods import Exact, GradientDescent, GradientFlow, Method, StochasticGradientDescent
from service.dynamics.presets import build_preset
from service.dynamics.problem import (
    Problem,
    problem_from_correlations,
    problem_from_data,
    with_test,
)
from service.dynamics.record import RecordSchedule
from service.dynamics.sequence import Phase, TaskSequence
from service.dynamics.sgd import SGD_FIX, stability_factor
from service.dynamics.simulate import preflight
from service.limits import (
    Limits,
    check_cost,
    check_data_limits,
    check_request_limits,
    check_run_limits,
    check_shape_limits,
    check_trajectory_size,
    gradients_cost,
    preset_params,
)
from service.schemas import (
    AlignedInit,
    CorrelationsData,
    DatasetData,
    ExactTraining,
    FromSimulationInit,
    GivenInit,
    GradientDescentTraining,
    GradientFlowTraining,
    GradientsRequest,
    HeldOutDataset,
    LambdaBalancedInit,
    SequenceData,
    SimulationRequest,
    StochasticGradientDescentTraining,
)

Task = Problem | TaskSequence


class UnstableLearningRateError(DynamicsError):
    """A GD learning rate above the stability bound, without training.allow_unstable."""

    code = "unstable_learning_rate"



@dataclass(frozen=True)
class GradientsSpec:
    """What ``network.vector_field`` needs, validated: the problem, the weights (float64), γ."""

    problem: Problem
    weights: list[np.ndarray]
    weight_decay: float


@dataclass(frozen=True)
class SimulationSpec:
    """Everything ``simulate`` needs, validated: ``problem`` is a ``TaskSequence`` for data of kind sequence."""

    problem: Task
    weights0: list[np.ndarray]
    method: Method
    record: RecordSchedule
    dtype: str

    @property
    def tasks(self) -> list[Problem]:
        """The task of every phase (one for a single task)."""
        return tasks_of(self.problem)


def tasks_of(problem: Task) -> list[Problem]:
    """The tasks of a problem: its phases' for a sequence, else itself."""
    return problem.problems if isinstance(problem, TaskSequence) else [problem]


def task_fields(request: SimulationRequest) -> list[tuple[str | int, ...]]:
    """Where each task's data sits in the request: ("data",), or ("data", "phases", p, "data") per phase."""
    if isinstance(request.data, SequenceData):
        return [("data", "phases", p, "data") for p in range(len(request.data.phases))]
    return [("data",)]


# ------------------------------------------------------------------------------------------------
# building


def _rename_preset_field(exc: DynamicsError) -> DynamicsError:
    """The core names preset fields data.params.<p> and data.preset; our request has them inline."""
    field = tuple(exc.field)
    if field[:2] == ("data", "params"):
        exc.field = ("data", *field[2:])
    elif field == ("data", "preset"):
        exc.field = ("data", "name")
    return exc


def _under(exc: DynamicsError, prefix: tuple[str | int, ...]) -> DynamicsError:
    """``exc`` about a task's ``data`` (field ("data", …)) re-named as the task at ``prefix`` (a phase's data)."""
    if prefix != ("data",) and tuple(exc.field[:1]) == ("data",):
        exc.field = (*prefix, *tuple(exc.field)[1:])
    return exc


def build_task(data: Any, prefix: tuple[str | int, ...] = ("data",)) -> Problem:
    """The core's problem of one task's data (dataset, correlations, preset), with its held-out statistics when
    ``data.test`` is given; errors name the fields under ``prefix``."""
    try:
        if isinstance(data, DatasetData):
            problem = problem_from_data(data.x, data.y)
        elif isinstance(data, CorrelationsData):
            problem = problem_from_correlations(data.sigma11, data.sigma31, data.sigma33)
        else:
            try:
                problem = build_preset(data.name, preset_params(data))
            except DynamicsError as exc:
                raise _rename_preset_field(exc) from None
        test = getattr(data, "test", None)
        if test is None:
            return problem
        where = ("data", "test")
        if isinstance(test, HeldOutDataset):
            held_out = problem_from_data(test.x, test.y, field_prefix=where)
        else:
            held_out = problem_from_correlations(test.sigma11, test.sigma31, test.sigma33, field_prefix=where)
        return with_test(problem, held_out, field_prefix=where)
    except DynamicsError as exc:
        raise _under(exc, prefix) from None


def build_problem(request: SimulationRequest | GradientsRequest) -> Task:
    """The core's problem of ``request.data``: one task, or for kind sequence a ``TaskSequence`` of its phases."""
    data = request.data
    if isinstance(data, SequenceData):
        return TaskSequence(tuple(Phase(build_task(phase.data, ("data", "phases", p, "data")), phase.until)
                                  for p, phase in enumerate(data.phases)))
    return build_task(data)


def build_init_params(request: SimulationRequest) -> dict[str, Any]:
    """The keyword parameters of ``initial_weights`` for the request's init (scheme excluded)."""
    init = request.init
    if isinstance(init, GivenInit | FromSimulationInit):
        return {"weights": init.weights}
    if isinstance(init, AlignedInit):
        return {"strength": init.strength, "seed": init.seed}
    if isinstance(init, LambdaBalancedInit):
        return {"lam": init.lam, "scale": init.scale, "seed": init.seed}
    return {"scale": init.scale, "seed": init.seed}


def _shapes_text(shapes: list[tuple[int, int]]) -> str:
    return ", ".join(f"{r}×{c}" for r, c in shapes)


def build_weights0(request: SimulationRequest, problem: Problem) -> list[np.ndarray]:
    """The initial weights on ``problem`` (a sequence's first task). For init from_simulation they are the weights the
    service copied into ``init.weights`` at admission (``service.jobs.continuation``), checked against the network's
    widths naming ``init.id``."""
    hidden = list(request.network.hidden)
    init = request.init
    if isinstance(init, FromSimulationInit):
        if init.weights is None:
            raise InvalidParameterError(
                f"init.weights of simulation {init.id} was not filled in: the service copies a simulation's final "
                "weights into the request when it admits it", field=("init", "id"),
                fix="submit the request through POST /v1/simulations (or as a sweep's base)")
        shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
        got = [(len(w), len(w[0])) for w in init.weights]
        if got != shapes:
            source_hidden = [r for r, _ in got[:-1]]
            raise ShapeError(
                f"simulation {init.id} ended with layers {_shapes_text(got)} (input→output), this network needs "
                f"{_shapes_text(shapes)}", field=("init", "id"),
                fix=f"continue it with network.hidden = {source_hidden} and data with n_in = {got[0][1]} and "
                    f"n_out = {got[-1][0]}, as it had; or use another init")
        return initial_weights(problem, hidden, "given", weights=init.weights)
    return initial_weights(problem, hidden, init.scheme, **build_init_params(request))


def build_method(request: SimulationRequest, max_flow_steps: int | None = None) -> Method:
    """The core's method; ``max_flow_steps`` caps a flow run's integrator steps (``GradientFlow.max_steps``)."""
    t = request.training
    if isinstance(t, GradientDescentTraining):
        return GradientDescent(learning_rate=t.learning_rate, steps=t.steps, weight_decay=t.weight_decay,
                               stop_at_convergence=t.stop_at_convergence, momentum=t.momentum, nesterov=t.nesterov)
    if isinstance(t, StochasticGradientDescentTraining):
        return StochasticGradientDescent(learning_rate=t.learning_rate, batch_size=t.batch_size, steps=t.steps,
                                         epochs=t.epochs, seed=t.seed, weight_decay=t.weight_decay,
                                         momentum=t.momentum, nesterov=t.nesterov)
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
                          similarity=rec.similarity, kernel=rec.kernel, sharpness=rec.sharpness,
                          sharpness_k=rec.sharpness_k, linearized=rec.linearized)


# The initial network map's Frobenius norm at most: the loss is quadratic in it and must stay below ~1.8e308.
MAX_INITIAL_MAP_NORM = 1e150


class InitOverflowError(DynamicsError):
    """Initial weights drawn from the init's parameters overflow (a scale near the largest float)."""

    code = "init_overflow"


def check_initial_weights(request: SimulationRequest, weights: list[np.ndarray]) -> None:
    """The initial weights the init's parameters make are finite: else the parameter that sets their size is named
    (``init.scale``, ``init.strength``, ``init.lambda``), not ``init.weights[k]``, which the caller never sent."""
    init = request.init
    if isinstance(init, GivenInit | FromSimulationInit):
        return  # given (or copied) weights are checked as given (init.weights[k] or init.id names them)
    name = "strength" if isinstance(init, AlignedInit) else (
        "lambda" if isinstance(init, LambdaBalancedInit) and abs(init.lam) > abs(init.scale) else "scale")
    value = getattr(init, "lam" if name == "lambda" else name)
    fix = f"give a much smaller init.{name} (small random inits are around 1e-3 to 1)"
    for k, w in enumerate(weights):
        if not np.all(np.isfinite(w)):
            raise InitOverflowError(f"init.{name} = {value!r} makes the initial weights of layer {k + 1} overflow "
                                    "(entries beyond ±1.8e308, the largest float)", field=("init", name), fix=fix)
    with np.errstate(over="ignore", invalid="ignore"):
        product = weights[0]
        for w in weights[1:]:
            product = w @ product
        size = float(np.linalg.norm(product)) if np.all(np.isfinite(product)) else float("inf")
    if not size <= MAX_INITIAL_MAP_NORM:  # its square (the loss) must stay a float
        raise InitOverflowError(f"init.{name} = {value!r} makes the network's initial map W_D⋯W_1 overflow (norm "
                                f"{size:.3g}: the loss, its square, is beyond the largest float)",
                                field=("init", name), fix=fix)


def check_learning_rate(tasks: list[Problem], depth: int,
                        training: GradientDescentTraining | StochasticGradientDescentTraining) -> None:
    """GD with η above ``gd_stability_bound`` (times the momentum's stability factor) cannot settle at the minimum
    (docs/theory.md#gd-stability): refuse it unless the caller asked for the unstable run (its divergence is then
    reported as the outcome). SGD is held to the full-batch bound: its noise only makes an unstable η worse. A
    sequence is held to the smallest bound of its tasks."""
    if training.allow_unstable:
        return
    factor = stability_factor(training.momentum, training.nesterov)
    key = ("gd_stability_bound", depth, float(training.weight_decay))
    for task in tasks:
        if key not in task._cache:  # a sweep's points share their problem: its ‖Σ31‖₂ is computed once
            task._cache[key] = network.gd_stability_bound(task, depth, training.weight_decay)
    bounds = [task._cache[key] * factor for task in tasks]
    p = int(np.argmin(bounds))
    bound = bounds[p]
    if training.learning_rate > bound:
        name = "stochastic gradient descent" if isinstance(training, StochasticGradientDescentTraining) else \
            "gradient descent"
        where = f"phase {p}'s task" if len(tasks) > 1 else "this task"
        with_momentum = f" with momentum {training.momentum:g}" if training.momentum else ""
        raise UnstableLearningRateError(
            f"learning_rate {training.learning_rate:g} is above the stability bound {bound:.6g} for {where} and "
            f"depth {depth}{with_momentum}: {name} would diverge or oscillate",
            field=("training", "learning_rate"),
            fix=f"use a learning_rate below {bound:.6g} (with proportionally more steps), "
                "or set training.allow_unstable to true to simulate the divergence")


def check_samples(request: SimulationRequest, problem: Task) -> None:
    """SGD samples mini-batches: its data must carry samples (a dataset, or a preset built from one), not only
    correlations. Named at the data, where the fix usually is. (A sequence with sgd is refused by the core.)"""
    if not isinstance(request.training, StochasticGradientDescentTraining) or isinstance(problem, TaskSequence):
        return
    if problem.samples is None:
        kind = request.data.kind if request.data.kind != "preset" else f"the preset {request.data.name!r}"
        raise InvalidParameterError(
            f"method sgd samples mini-batches from a dataset, and data ({kind}) has only its correlations, no "
            "samples", field=("data",), fix=f'{SGD_FIX}; or use method "gd" on the correlations')


def admit_simulation(request: SimulationRequest, limits: Limits, *, problems: dict | None = None,
                     data_key: object = None) -> SimulationSpec:
    """Validate ``request`` completely, as the API does before queueing it; raise DynamicsError naming the field.

    The service's size and cost limits come first, from the request alone where possible (so an oversized request
    is refused before anything large is allocated), then every check of the run itself: data (shapes, finiteness,
    symmetric PSD Σ11/Σ33; every phase of a sequence), network widths, init parameters, record times within the run,
    the GD stability bound and the exact method's conditions. A flow run's integrator steps are capped at
    ``limits.max_steps``. An init from_simulation must have its weights filled in already
    (``service.jobs.continuation`` does it, reading the store). ``problems``: problems already built, by ``data_key``
    (a sweep's points with the same data share one).
    """
    check_request_limits(request, limits)
    if problems is not None and data_key in problems:
        problem = problems[data_key]
    else:
        problem = build_problem(request)
        if problems is not None:
            problems[data_key] = problem
    tasks = tasks_of(problem)
    hidden = list(request.network.hidden)
    shapes = network.layer_shapes(tasks[0].n_in, hidden, tasks[0].n_out)
    for task, where in zip(tasks, task_fields(request), strict=True):
        check_shape_limits(task.n_in, task.n_out, hidden, where, where, limits)
    check_run_limits(request, tasks, limits)
    check_trajectory_size(request, shapes, tasks, limits)
    return _simulation_spec(request, problem, len(shapes), limits.max_steps)


def build_run(request: SimulationRequest, max_flow_steps: int | None = None, problem: Task | None = None
              ) -> SimulationSpec:
    """The core's inputs for a request the API admitted, as a worker builds them to run it (no limit checks: they
    held at admission; the run's own checks run again and give the same answer). ``max_flow_steps`` caps a flow
    run's integrator steps (``GradientFlow.max_steps``). ``problem``: the problem of ``request.data``, built already
    (the sweep points that keep the base's data share one, and with it its cached optimum, mode basis and fit)."""
    problem = build_problem(request) if problem is None else problem
    return _simulation_spec(request, problem, len(request.network.hidden) + 1, max_flow_steps)


def _simulation_spec(request: SimulationRequest, problem: Task, depth: int,
                     max_flow_steps: int | None) -> SimulationSpec:
    tasks = tasks_of(problem)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, naming the parameter
        weights0 = build_weights0(request, tasks[0])
    check_initial_weights(request, weights0)
    method = build_method(request, max_flow_steps)
    record = build_record(request)
    check_samples(request, problem)
    if isinstance(request.training, GradientDescentTraining | StochasticGradientDescentTraining):
        check_learning_rate(tasks, depth, request.training)
    # The core's own checks of everything simulate() would refuse: method parameters, record times
    # outside the run, and for method exact whether a closed form applies (check_exact).
    try:
        preflight(problem, weights0, method, record, dtype=request.dtype)
    except DynamicsError as exc:
        raise in_request(exc) from None
    return SimulationSpec(problem, weights0, method, record, request.dtype)


def in_request(exc: DynamicsError) -> DynamicsError:
    """A core error named as the request names its field: the core names a sequence's phases from the sequence
    (("phases", p, …)), the request has them under data. For the checks at admission and for a run that fails later
    (exact at a later switch)."""
    if tuple(exc.field[:1]) == ("phases",):
        exc.field = ("data", *exc.field)
    return exc


def build_gradients(request: GradientsRequest, limits: Limits) -> GradientsSpec:
    """Validate a POST /v1/gradients request like a simulation's data and given init; raise DynamicsError.

    The network's widths are those of the weights (input→output, as ``init.weights``): hidden width k is
    the number of rows of weights[k], so the limits and shape errors name ``weights[k]``.
    """
    hidden = [len(w) for w in request.weights[:-1]]
    check_data_limits(request.data, hidden, limits, hidden_field=("weights",))
    try:
        cost = gradients_cost(request, limits)
    except (IndexError, TypeError, ValueError):  # shapes the model cannot read: the checks below say what is wrong
        cost = None
    if cost is not None:
        check_cost(cost, request, limits)
    problem = build_problem(request)
    shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
    check_shape_limits(problem.n_in, problem.n_out, hidden, ("data",), ("data",), limits, hidden_field=("weights",))
    weights = network.check_weights(request.weights, shapes, field=("weights",))
    return GradientsSpec(problem, weights, float(request.weight_decay))

