"""Planning a sweep: parse the body, check its grid (or points), expand it and validate every point exactly as a
single simulation is validated at admission (``build.admit_simulation`` with the service's limits), before anything
is stored.

    sweep, request_json, request_hash = canonical_sweep(body)      # cheap: a retry is recognised before the rest
    validated = validate_parsed(sweep, request_json, request_hash, limits, max_points)

An invalid point is a 422 whose field names where its value came from (``["grid", "init.scale", 2]``) or, for a
problem of the base itself, ``["base", ...]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from service.build import admit_simulation
from service.dynamics.errors import DynamicsError
from service.grid import (
    GridError,
    apply_params,
    describe_params,
    expand_grid,
    expand_points,
    grid_size,
    group_key,
    non_finite,
    overlapping,
    remap_field,
)
from service.json_guard import check_duplicate_keys
from service.limits import (
    ZERO_COST,
    Cost,
    LimitExceededError,
    Limits,
    check_cost,
    check_request_limits,
    copy_flops,
    request_cost,
    trajectory_values,
)
from service.problems import (
    MAX_FIELD_ERRORS,
    ProblemError,
    field_error,
    one_field_problem,
)
from service.schemas import SimulationRequest, SweepRequest
from service.schemas.common import LABELS
from service.schemas.validation import summarize, validation_field_errors


@dataclass(frozen=True)
class ValidatedSweep:
    request_json: bytes                 # the canonical SweepRequest (base with defaults filled in)
    base_json: bytes                    # the canonical base: what each point's values are applied to
    keep: str
    points: list[tuple[bytes, str]]     # (parameter values as JSON, group key), in index order
    request_hash: str                   # sha256 of request_json: what an Idempotency-Key is checked against
    cost: Cost = ZERO_COST              # the points' cost together (validation with one problem per distinct data)


def parse_sweep(body: bytes) -> SweepRequest:
    if not body.strip():
        raise ProblemError(400, "malformed-json", "the request body is empty: send a SweepRequest JSON object",
                           errors=[field_error([], "empty_body", "the request body is empty",
                                               "send a SweepRequest JSON object (with curl: -d @sweep.json)")])
    try:
        sweep = SweepRequest.model_validate_json(body)
        check_duplicate_keys(body)  # {"grid": ..., "grid": ...}: refused, not the last one kept
        return sweep
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        bad_json = next((e for e in errors if e["type"] == "json_invalid"), None)
        if bad_json is not None:
            message = bad_json["ctx"].get("error", "invalid JSON")
            raise ProblemError(400, "malformed-json", f"the request body is not valid JSON: {message}",
                               errors=[field_error([], "json_invalid", str(message),
                                                   "send a valid JSON document (check quotes, commas, brackets)")]
                               ) from None
        fields = []
        for err in errors[:MAX_FIELD_ERRORS]:
            loc = tuple(err.get("loc", ()))
            if loc[:1] == ("base",):  # the base's union tags are stripped as for a SimulationRequest
                for fe in validation_field_errors([err], prefix_len=1):
                    fields.append(field_error(["base", *fe["field"]], fe["code"], fe["message"], fe["fix"]))
            elif loc[-1:] == ("[key]",):  # a grid or point key that is not a parameter path
                path = list(loc[:-1])
                fields.append(field_error(path, "invalid_parameter_path", f"{loc[-2]!r} is not a parameter path",
                                          "name a field with dotted names, e.g. init.scale, "
                                          "training.learning_rate, network.hidden or network.hidden.0"))
            else:
                fields += validation_field_errors([err])
        raise ProblemError(422, "validation-error", summarize(fields, len(errors)), errors=fields) from None


def _check_shape(sweep: SweepRequest, max_points: int) -> int:
    """Exactly one of grid/points, no overlapping paths, finite values, size within the limit."""
    if sweep.grid is not None and sweep.points is not None:
        raise one_field_problem(422, "validation-error", ["points"], "grid_and_points",
                                 "give either a grid or a list of points, not both",
                                 "remove points (to sweep the grid's product) or grid (to run the listed points)")
    if sweep.grid is None and sweep.points is None:
        # Not "missing": neither field is required on its own (the schema says "one of the two" with oneOf).
        raise one_field_problem(422, "validation-error", ["grid"], "grid_or_points_missing",
                                 "a sweep needs a grid (axes whose product is swept) or a list of points",
                                 'add e.g. "grid": {"init.scale": [0.001, 0.1]}')
    if sweep.grid is not None:
        pair = overlapping(list(sweep.grid))
        if pair:
            raise one_field_problem(422, "validation-error", ["grid", pair[1]], "overlapping_parameters",
                                     f"axes {pair[0]!r} and {pair[1]!r} set the same field",
                                     "keep one of the two axes")
        for path, values in sweep.grid.items():
            for i, value in enumerate(values):
                if non_finite(value):
                    raise one_field_problem(422, "validation-error", ["grid", path, i], "finite_number",
                                             "NaN and Infinity are not allowed", "give finite numbers")
        size = grid_size(sweep.grid)
        if size > max_points:
            lengths = " × ".join(str(len(v)) for v in sweep.grid.values())
            raise one_field_problem(
                422, "limit-exceeded", ["grid"], "limit_exceeded",
                f"the grid has {size} points (axis lengths {lengths}), above this service's limit of "
                f"{max_points} points per sweep (DLNSIM_MAX_SWEEP_POINTS)",
                "use fewer values per axis, or split the sweep into several sweeps")
        return size
    for k, point in enumerate(sweep.points):
        pair = overlapping(list(point))
        if pair:
            raise one_field_problem(422, "validation-error", ["points", k, pair[1]], "overlapping_parameters",
                                     f"{pair[0]!r} and {pair[1]!r} set the same field", "keep one of the two")
        for path, value in point.items():
            if non_finite(value):
                raise one_field_problem(422, "validation-error", ["points", k, path], "finite_number",
                                         "NaN and Infinity are not allowed", "give finite numbers")
    if len(sweep.points) > max_points:
        raise one_field_problem(
            422, "limit-exceeded", ["points"], "limit_exceeded",
            f"{len(sweep.points)} points, above this service's limit of {max_points} points per sweep "
            "(DLNSIM_MAX_SWEEP_POINTS)", "split the sweep into several sweeps")
    return len(sweep.points)


def _dynamics_slug(code: str) -> str:
    return {"limit_exceeded": "limit-exceeded", "unstable_learning_rate": "unstable-learning-rate"}.get(
        code, "invalid-simulation")


def _trajectory_values(request: SimulationRequest, spec: Any) -> int:
    """Numbers in a point's trajectory (what DLNSIM_MAX_TRAJECTORY_VALUES bounds for one simulation)."""
    return trajectory_values(request, [tuple(np.shape(w)) for w in spec.weights0], spec.tasks)


def _check_continuation(base: dict, point: dict, params: dict, origin: dict) -> None:
    """A point may continue from a simulation only as its base does: the base's init from_simulation is resolved once
    (its weights copied in), a point that names another source (or turns its init into one) would run without them.
    GridError naming the grid entry that set init."""
    init = point.get("init")
    if not (isinstance(init, dict) and init.get("scheme") == "from_simulation") or init == base.get("init"):
        return
    path = next((p for p in params if p == "init" or p.startswith("init.")), "init")
    raise GridError(origin.get(path, ["grid", path]), "from_simulation_in_grid",
                    "a sweep continues from one simulation, its base's init (the service copies that simulation's "
                    "final weights into the base); a point cannot name another",
                    "put init: {scheme: from_simulation, id: …} in base and leave init out of the grid; to continue "
                    "from several simulations, send one sweep per simulation")


def canonical_sweep(body: bytes) -> tuple[SweepRequest, bytes, str]:
    """Body -> (sweep, canonical JSON, sha256 of it), or ProblemError (400, or 422 for the schema).

    The canonical JSON is the parsed SweepRequest with defaults filled in (in the base too): what is
    stored and what GET returns. Equal sweeps written differently (spacing, the base's key order, explicit
    defaults, 2 vs 2.0 in a float field of the base) hash the same; the grid's axis order does not, since
    it orders the points. Cheap next to validating the points, so a retry is recognised before that.
    """
    sweep = parse_sweep(body)
    labels = dict.fromkeys(LABELS, True)
    request_json = sweep.__pydantic_serializer__.to_json(sweep, by_alias=True, exclude={**labels, "base": labels})
    return sweep, request_json, hashlib.sha256(request_json).hexdigest()


# What a point that keeps no trajectory stores: its results row (summary, params, per-mode times).
SUMMARY_BYTES = 2048


def _point_count(sweep: SweepRequest) -> int:
    if sweep.grid is not None:
        return grid_size(sweep.grid)
    return len(sweep.points or [])


def sweep_cost_estimate(sweep: SweepRequest, limits: Limits, max_points: int) -> Cost:
    """The sweep's cost estimated from its base and its number of points, before any point is expanded: the base's
    problem built once (points with the same data share it), each point's initial weights and checks, runs and
    results. 422 limit-exceeded over the validation or job budget (the points' exact cost is counted again as they
    are validated)."""
    n = max(1, min(_point_count(sweep), max_points))
    try:
        base = request_cost(sweep.base, limits)
    except (TypeError, ValueError, IndexError):  # an odd base: its validation below says what is wrong
        return ZERO_COST
    copy = copy_flops(sweep.base, limits)  # an init from_simulation's weights, copied once into the base
    per_point = base.validation_flops - base.data_flops - copy
    kept = base.result_bytes if sweep.keep == "trajectories" else SUMMARY_BYTES
    estimate = Cost(base.data_flops + copy + n * per_point, base.validation_bytes, base.data_flops,
                    n * base.run_flops, n * kept)
    field = ["grid"] if sweep.grid is not None else ["points"]
    try:
        check_cost(estimate, sweep.base, Limits(**{**limits.__dict__, "max_job_flops": float("inf")}),
                   what=f"this sweep's {n} points")
    except LimitExceededError as exc:
        raise one_field_problem(422, "limit-exceeded", field, "limit_exceeded", exc.message,
                                f"use fewer points, or a smaller base ({exc.fix})") from None
    return estimate


def validate_sweep(body: bytes, limits: Limits, max_points: int) -> ValidatedSweep:
    """Body -> the stored form of the sweep, after validating every point as a single simulation;
    raises ProblemError (422 naming the grid entry, point or base field to fix)."""
    return validate_parsed(*canonical_sweep(body), limits, max_points)


def validate_parsed(sweep: SweepRequest, request_json: bytes, request_hash: str, limits: Limits,
                    max_points: int, resolve: Callable[[SimulationRequest], SimulationRequest] | None = None
                    ) -> ValidatedSweep:
    """``validate_sweep`` for a body already through ``canonical_sweep``. ``resolve`` fills in what the base needs from
    the store (``continuation.resolve_init``: an init from_simulation's weights, copied into the stored base and
    request); then every point's init from_simulation must be the base's (one source per sweep)."""
    _check_shape(sweep, max_points)
    if resolve is not None:
        resolved = resolve(sweep.base)
        if resolved is not sweep.base:
            sweep = sweep.model_copy(update={"base": resolved})
            labels = dict.fromkeys(LABELS, True)
            request_json = sweep.__pydantic_serializer__.to_json(sweep, by_alias=True,
                                                                 exclude={**labels, "base": labels})
    base_json = sweep.base.__pydantic_serializer__.to_json(sweep.base, by_alias=True, exclude=LABELS)
    base = orjson.loads(base_json)
    expanded = expand_grid(sweep.grid) if sweep.grid is not None else expand_points(sweep.points)

    errors: list[dict] = []
    seen: set[tuple] = set()
    slug = None
    total = 0

    def add(k: int, params: dict, field: list, code: str, message: str, fix: str, kind: str) -> None:
        nonlocal slug, total
        total += 1
        key = (tuple(map(str, field)), code)
        if key in seen or len(errors) >= MAX_FIELD_ERRORS:
            return
        seen.add(key)
        slug = slug or kind
        errors.append(field_error(field, code, f"point {k} ({describe_params(params)}): {message}", fix))

    points: list[tuple[bytes, str]] = []
    kept_values = 0  # numbers in all kept trajectories (keep: trajectories)
    problems: dict[bytes, Any] = {}  # one problem per distinct data: built once, shared by the points
    spent = ZERO_COST  # the points' cost so far
    copy = copy_flops(sweep.base, limits)  # the base's init from_simulation: copied once (by resolve), not a point
    if copy:
        spent = Cost(copy, 0, 0.0, 0.0, 0)
    for k, (params, origin) in enumerate(expanded):
        try:
            point = apply_params(base, params, origin)
            _check_continuation(base, point, params, origin)
            request = SimulationRequest.model_validate_json(orjson.dumps(point))
            check_request_limits(request, limits)
            cost = request_cost(request, limits)
            if copy:
                cost = Cost(cost.validation_flops - copy_flops(request, limits), cost.validation_bytes,
                            cost.data_flops, cost.run_flops, cost.result_bytes)
            data_key = orjson.dumps(point.get("data"), option=orjson.OPT_SORT_KEYS)
            if data_key in problems:  # the problem is built already
                cost = Cost(cost.validation_flops - cost.data_flops, cost.validation_bytes, 0.0, cost.run_flops,
                            cost.result_bytes)
            if sweep.keep != "trajectories":
                cost = Cost(cost.validation_flops, cost.validation_bytes, cost.data_flops, cost.run_flops,
                            SUMMARY_BYTES)
            spent = spent + cost
            if spent.validation_flops > limits.max_validation_flops:
                raise one_field_problem(
                    422, "limit-exceeded", ["grid"] if sweep.grid is not None else ["points"], "limit_exceeded",
                    f"validating this sweep's points would cost more than this service's limit of "
                    f"{limits.max_validation_flops:.3g} FLOP-equivalents (DLNSIM_MAX_VALIDATION_FLOPS), reached at "
                    f"point {k} of {len(expanded)}", "use fewer points, or points that share their data (vary the "
                    "init, the learning rate or the widths rather than the data)")
            check_cost(cost, request, limits, what=f"point {k}")
            spec = admit_simulation(request, limits, problems=problems, data_key=data_key)
        except GridError as exc:
            add(k, params, exc.field, exc.code, exc.message, exc.fix, "validation-error")
            continue
        except ValidationError as exc:
            for fe in validation_field_errors(exc.errors(include_url=False)[:MAX_FIELD_ERRORS]):
                add(k, params, remap_field(fe["field"], params, origin), fe["code"], fe["message"], fe["fix"],
                    "validation-error")
            continue
        except DynamicsError as exc:
            add(k, params, remap_field(exc.field, params, origin), exc.code, exc.message,
                exc.fix or "see the message", _dynamics_slug(exc.code))
            continue
        if not errors:
            points.append((orjson.dumps(params), group_key(spec)))
            kept_values += _trajectory_values(request, spec)
    if errors:
        detail = summarize(errors, total)
        raise ProblemError(422, slug or "validation-error", detail, errors=errors)
    if sweep.keep == "trajectories" and kept_values > limits.max_trajectory_values:
        raise one_field_problem(
            422, "limit-exceeded", ["keep"], "limit_exceeded",
            f"keeping every point's trajectory would store about {kept_values} numbers, above this service's "
            f"limit of {limits.max_trajectory_values} (DLNSIM_MAX_TRAJECTORY_VALUES)",
            'use keep: "summary" (the results rows), fewer points, or fewer record points')
    return ValidatedSweep(request_json, base_json, sweep.keep, points, request_hash, spent)

