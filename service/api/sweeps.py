"""/v1/sweeps: parameter sweeps over a base simulation request, run in batched chunks on the cluster.

    POST /v1/sweeps {"base": {...}, "grid": {"init.scale": [0.001, 0.1], "init.seed": [0, 1, 2]}}
    GET  /v1/sweeps/{id}                         status, counts per status, progress
    GET  /v1/sweeps/{id}/results?page_size=100   one row per point, in grid order
    GET  /v1/sweeps/{id}/points/{k}/trajectory   with keep: trajectories

An ``Idempotency-Key`` makes the POST retry-safe, with the contract of POST /v1/simulations: the same
key (per API key) with the same canonical body answers the stored sweep (202, ``Idempotent-Replayed:
true``; nothing new is stored or queued), with another body it is a 422 ``idempotency-key-reused``.

Every point is validated exactly like POST /v1/simulations validates a request (``build_simulation``
with the service's limits) before the sweep is stored; an invalid point is a 422 whose field names
where its value came from (``["grid", "init.scale", 2]``) or, for a problem of the base itself,
``["base", ...]``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api.access import check_active_limit, current_owner, visible
from service.api.bodies import check_media_type, json_request_body
from service.api.errors import (
    ProblemError,
    idempotency_key_reused,
    problem_responses,
    summarize,
    validation_field_errors,
)
from service.api.plots import SVG, SWEEP_PLOT_DESCRIPTION, sweep_plot_response
from service.api.simulations import _normalize_error
from service.convert import Limits, build_simulation
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
from service.jobs.store import CorruptResultError, QueueFullError
from service.problems import MAX_FIELD_ERRORS, field_error
from service.schemas import (
    SWEEP_REQUEST_EXAMPLES,
    SimulationRequest,
    Status,
    Sweep,
    SweepList,
    SweepPointResult,
    SweepRequest,
    SweepResults,
    Trajectory,
)

log = logging.getLogger("service.api")

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

MAX_PAGE_SIZE = 100
MAX_RESULTS_PAGE_SIZE = 1000

SweepId = Annotated[str, Path(description="The sweep id.")]
PointIndex = Annotated[int, Path(ge=0, description="The point's index k (its position in the results).")]

# The result fields a point's summary fills (null until it succeeded).
SUMMARY_FIELDS = tuple(name for name in SweepPointResult.model_fields
                       if name not in ("index", "parameters", "status", "finished_at", "outcome", "error", "links"))


# ------------------------------------------------------------------------------------------------
# dependencies: the sweep store and engine the lifespan put on app.state


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ProblemError(503, "unavailable", "the service is starting or stopping; retry shortly",
                           headers={"Retry-After": "1"})
    return value


def _problems(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """problem_responses with sweep wording (``descriptions`` keyed "d404" etc.)."""
    out = problem_responses(*codes)
    for code in codes:
        text = descriptions.get(f"d{code}")
        if text:
            out[code] = {**out[code], "description": text}
    return out


_NOT_FOUND = "No sweep with this id"

# ------------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class ValidatedSweep:
    request_json: bytes                 # the canonical SweepRequest (base with defaults filled in)
    base_json: bytes                    # the canonical base: what each point's values are applied to
    keep: str
    points: list[tuple[bytes, str]]     # (parameter values as JSON, group key), in index order
    request_hash: str                   # sha256 of request_json: what an Idempotency-Key is checked against


def _one_field_problem(status: int, slug: str, field: list, code: str, message: str, fix: str) -> ProblemError:
    return ProblemError(status, slug, f"{'.'.join(map(str, field)) or 'the body'}: {message}. Fix: {fix}",
                        errors=[field_error(field, code, message, fix)])


def _parse(body: bytes) -> SweepRequest:
    if not body.strip():
        raise ProblemError(400, "malformed-json", "the request body is empty: send a SweepRequest JSON object",
                           errors=[field_error([], "empty_body", "the request body is empty",
                                               "send a SweepRequest JSON object (with curl: -d @sweep.json)")])
    try:
        return SweepRequest.model_validate_json(body)
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
        raise _one_field_problem(422, "validation-error", ["points"], "grid_and_points",
                                 "give either a grid or a list of points, not both",
                                 "remove points (to sweep the grid's product) or grid (to run the listed points)")
    if sweep.grid is None and sweep.points is None:
        # Not "missing": neither field is required on its own (the schema says "one of the two" with oneOf).
        raise _one_field_problem(422, "validation-error", ["grid"], "grid_or_points_missing",
                                 "a sweep needs a grid (axes whose product is swept) or a list of points",
                                 'add e.g. "grid": {"init.scale": [0.001, 0.1]}')
    if sweep.grid is not None:
        pair = overlapping(list(sweep.grid))
        if pair:
            raise _one_field_problem(422, "validation-error", ["grid", pair[1]], "overlapping_parameters",
                                     f"axes {pair[0]!r} and {pair[1]!r} set the same field",
                                     "keep one of the two axes")
        for path, values in sweep.grid.items():
            for i, value in enumerate(values):
                if non_finite(value):
                    raise _one_field_problem(422, "validation-error", ["grid", path, i], "finite_number",
                                             "NaN and Infinity are not allowed", "give finite numbers")
        size = grid_size(sweep.grid)
        if size > max_points:
            lengths = " × ".join(str(len(v)) for v in sweep.grid.values())
            raise _one_field_problem(
                422, "limit-exceeded", ["grid"], "limit_exceeded",
                f"the grid has {size} points (axis lengths {lengths}), above this service's limit of "
                f"{max_points} points per sweep (DLNSIM_MAX_SWEEP_POINTS)",
                "use fewer values per axis, or split the sweep into several sweeps")
        return size
    for k, point in enumerate(sweep.points):
        pair = overlapping(list(point))
        if pair:
            raise _one_field_problem(422, "validation-error", ["points", k, pair[1]], "overlapping_parameters",
                                     f"{pair[0]!r} and {pair[1]!r} set the same field", "keep one of the two")
        for path, value in point.items():
            if non_finite(value):
                raise _one_field_problem(422, "validation-error", ["points", k, path], "finite_number",
                                         "NaN and Infinity are not allowed", "give finite numbers")
    if len(sweep.points) > max_points:
        raise _one_field_problem(
            422, "limit-exceeded", ["points"], "limit_exceeded",
            f"{len(sweep.points)} points, above this service's limit of {max_points} points per sweep "
            "(DLNSIM_MAX_SWEEP_POINTS)", "split the sweep into several sweeps")
    return len(sweep.points)


def _dynamics_slug(code: str) -> str:
    return {"limit_exceeded": "limit-exceeded", "unstable_learning_rate": "unstable-learning-rate"}.get(
        code, "invalid-simulation")


def _trajectory_values(request: SimulationRequest, spec: Any) -> int:
    """Numbers in a point's trajectory: per record the network map, two per mode and a few scalars, plus
    every layer with record.weights (what DLNSIM_MAX_TRAJECTORY_VALUES bounds for one simulation)."""
    rec = request.record
    records = len(rec.times) + 1 if rec.times is not None else rec.points
    n_out, n_in = spec.problem.n_out, spec.problem.n_in
    per_record = n_out * n_in + 2 * min(n_out, n_in) + 8
    if rec.weights:
        per_record += sum(int(w.shape[0]) * int(w.shape[1]) for w in spec.weights0)
    return records * per_record


def canonical_sweep(body: bytes) -> tuple[SweepRequest, bytes, str]:
    """Body -> (sweep, canonical JSON, sha256 of it), or ProblemError (400, or 422 for the schema).

    The canonical JSON is the parsed SweepRequest with defaults filled in (in the base too): what is
    stored and what GET returns. Equal sweeps written differently (spacing, the base's key order, explicit
    defaults, 2 vs 2.0 in a float field of the base) hash the same; the grid's axis order does not, since
    it orders the points. Cheap next to validating the points, so a retry is recognised before that.
    """
    sweep = _parse(body)
    request_json = sweep.__pydantic_serializer__.to_json(sweep, by_alias=True)
    return sweep, request_json, hashlib.sha256(request_json).hexdigest()


def validate_sweep(body: bytes, limits: Limits, max_points: int) -> ValidatedSweep:
    """Body -> the stored form of the sweep, after validating every point as a single simulation;
    raises ProblemError (422 naming the grid entry, point or base field to fix)."""
    return validate_parsed(*canonical_sweep(body), limits, max_points)


def validate_parsed(sweep: SweepRequest, request_json: bytes, request_hash: str, limits: Limits,
                    max_points: int) -> ValidatedSweep:
    """``validate_sweep`` for a body already through ``canonical_sweep``."""
    _check_shape(sweep, max_points)
    base_json = sweep.base.__pydantic_serializer__.to_json(sweep.base, by_alias=True)
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
    for k, (params, origin) in enumerate(expanded):
        try:
            point = apply_params(base, params, origin)
            request = SimulationRequest.model_validate_json(orjson.dumps(point))
            spec = build_simulation(request, limits)
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
        raise _one_field_problem(
            422, "limit-exceeded", ["keep"], "limit_exceeded",
            f"keeping every point's trajectory would store about {kept_values} numbers, above this service's "
            f"limit of {limits.max_trajectory_values} (DLNSIM_MAX_TRAJECTORY_VALUES)",
            'use keep: "summary" (the results rows), fewer points, or fewer record points')
    return ValidatedSweep(request_json, base_json, sweep.keep, points, request_hash)


# ------------------------------------------------------------------------------------------------
# documents


def _links(sweep_id: str) -> dict[str, str]:
    return {"self": f"/v1/sweeps/{sweep_id}", "results": f"/v1/sweeps/{sweep_id}/results"}


def _progress(row: Any, running: float) -> float:
    if row.status in ("succeeded", "failed"):
        return 1.0
    c = row.counts
    done = c["succeeded"] + c["failed"]
    if row.status == "cancelled":
        return done / row.n_points
    return min((done + running) / row.n_points, 1.0)


def _sweep_error(row: Any, first_failed: Any) -> dict | None:
    if row.status != "failed" or first_failed is None:
        return None
    failed = row.counts["failed"]
    problem = _normalize_error(first_failed.error or {}, row.id) or {}
    reason = problem.get("detail") or problem.get("title") or "see its error"
    return {**problem,
            "detail": f"{failed} of {row.n_points} points failed (GET /v1/sweeps/{row.id}/results?status=failed); "
                      f"point {first_failed.k}: {reason}",
            "instance": f"/v1/sweeps/{row.id}"}


def sweep_json(row: Any, running: float = 0.0, first_failed: Any = None) -> bytes:
    """The Sweep resource as JSON bytes; the stored request bytes are spliced in, not re-encoded."""
    envelope = orjson.dumps({
        "id": row.id,
        "status": row.status,
        "progress": _progress(row, running),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "size": row.n_points,
        "counts": row.counts,
        "keep": row.keep,
        "error": _sweep_error(row, first_failed),
        "links": _links(row.id),
    })
    return b'{"request":' + bytes(row.request) + b"," + envelope[1:]


def point_document(row: Any, keep: str) -> dict[str, Any]:
    summary = row.summary or {}
    error = None
    if row.error is not None:
        error = _normalize_error({**row.error, "instance": row.error.get("instance")
                                  or f"/v1/sweeps/{row.sweep_id}/results"}, row.sweep_id)
    trajectory = None
    if keep == "trajectories" and row.has_trajectory:
        trajectory = f"/v1/sweeps/{row.sweep_id}/points/{row.k}/trajectory"
    return {
        "index": row.k,
        "parameters": orjson.Fragment(row.params),
        "status": row.status,
        "finished_at": row.finished_at,
        "outcome": row.outcome,
        **{name: summary.get(name) for name in SUMMARY_FIELDS},
        "error": error,
        "links": {"trajectory": trajectory},
    }


async def _get_row(store: Any, sweep_id: str) -> Any:
    row = await run_in_threadpool(store.get, sweep_id)
    # Another API key's sweep is a 404 too: its existence is not revealed.
    if row is None or not visible(row.owner):
        raise ProblemError(404, "not-found", f"no sweep with id {sweep_id!r}")
    return row


async def _sweep_response(request: Request, row: Any, status_code: int,
                          extra: dict[str, str] | None = None) -> Response:
    engine = getattr(request.app.state, "sweep_engine", None)
    running = engine.running_progress(row.id) if engine is not None and not row.terminal else 0.0
    first_failed = None
    if row.status == "failed":
        store = _state(request, "sweep_store")
        failed, _ = await run_in_threadpool(store.points, row.id, "failed", 1)
        first_failed = failed[0] if failed else None
    headers = dict(extra or {})
    if not row.terminal:
        headers["Retry-After"] = str(request.app.state.settings.retry_after_seconds)
    return Response(sweep_json(row, running, first_failed), status_code=status_code,
                    media_type="application/json", headers=headers)


def _page_token_problem(exc: Exception) -> ProblemError:
    return ProblemError(422, "invalid-page-token", str(exc),
                        errors=[field_error(["page_token"], "invalid_page_token", str(exc),
                                            "pass back next_page_token exactly as received, or omit it", "query")])


# ------------------------------------------------------------------------------------------------
# routes

# Why 409 and not 404 for a summary sweep: the sweep and its point exist (404 here means a wrong id or k),
# but the sweep did not record what was asked for, as with a simulation's plot that needs record.similarity
# (409 not-recorded); the problem type tells a client it will never appear, unlike not-finished.
_POINT_TRAJECTORY_DESCRIPTION = """\
The recorded trajectory of point k, served as stored like a simulation's trajectory. Only sweeps created with
`keep: "trajectories"` keep point trajectories (the results rows link them).

- 404 `not-found`: no sweep with this id (or another API key's), or no point k in it.
- 409 `not-recorded`: the sweep has `keep: "summary"`, so this trajectory was not kept and never will be;
  submit the sweep again with `keep: "trajectories"`, or run the point as a simulation (the sweep's
  `request.base` with the point's `parameters` applied).
- 409 `not-finished`: the point has not succeeded (yet); poll while it is queued or running."""

_SWEEP_CONTENT_HEADERS = {"Retry-After": {"description": "Seconds until it is worth polling again (while not "
                                                        "terminal)", "schema": {"type": "integer"}}}
# OpenAPI links: what a client (or a stateful test generator) can do next with the created sweep.
_SWEEP_LINKS = {
    name: {"operationId": operation, "parameters": {"sweep_id": "$response.body#/id", **extra}}
    for name, operation, extra in (("GetSweep", "get_sweep", {}), ("ListSweepResults", "list_sweep_results", {}),
                                   ("GetFirstPointTrajectory", "get_sweep_point_trajectory", {"k": "0"}),
                                   ("CancelSweep", "cancel_sweep", {}), ("DeleteSweep", "delete_sweep", {}))
}
_SWEEP_LINKS["GetFirstPointTrajectory"]["description"] = "Sweeps with keep: trajectories (else 409 not-recorded)."

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Retry-safe creation: the same key with the same body returns the same sweep (no second "
                "sweep, no new points); with a different body it is a 422.")]


def _queue_full(active: int, settings: Any) -> ProblemError:
    return ProblemError(429, "queue-full",
                        f"{active} sweeps are queued or running, the limit is {settings.max_active_sweeps} "
                        "(DLNSIM_MAX_ACTIVE_SWEEPS)",
                        headers={"Retry-After": str(max(settings.retry_after_seconds, 5))})


async def _replay(request: Request, row: Any, request_hash: str, idempotency_key: str) -> Response:
    """The answer to a POST whose Idempotency-Key this owner already used for ``row``: that sweep as it is
    now if the body is the same (its canonical digest), else the 422 of a reused key."""
    if row.request_hash != request_hash:
        raise idempotency_key_reused(idempotency_key, f"sweep {row.id}")
    return await _sweep_response(request, row, 202, {"Location": f"/v1/sweeps/{row.id}",
                                                     "Idempotent-Replayed": "true"})


@router.post(
    "",
    status_code=202,
    response_model=None,
    summary="Start a parameter sweep",
    responses={
        202: {"model": Sweep, "description": "Accepted: every point validated and queued. Poll the Location. "
                                             "Also the answer to a retry with a used Idempotency-Key and the same "
                                             "body: the stored sweep as it is now (Idempotent-Replayed: true).",
              "headers": {"Location": {"description": "The sweep's URL", "schema": {"type": "string"}},
                          "Idempotent-Replayed": {"description": "true when this is the sweep an earlier request "
                                                                 "with the same Idempotency-Key created",
                                                  "schema": {"type": "string"}},
                          **_SWEEP_CONTENT_HEADERS},
              "links": _SWEEP_LINKS},
        **_problems(400, 413, 415, 422, 429, 503, 507,
                    d422="Invalid sweep: a point (named by its grid entry or point index), the base, or the "
                         "sweep's size above DLNSIM_MAX_SWEEP_POINTS; or an Idempotency-Key already used with "
                         "a different body (idempotency-key-reused)",
                    d429="Too many sweeps queued or running; retry after the Retry-After delay (a retry with a "
                         "used Idempotency-Key is answered even then)"),
    },
    openapi_extra=json_request_body("SweepRequest", SWEEP_REQUEST_EXAMPLES),
)
async def create_sweep(request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    """Validate the grid (or points) and every point as a single simulation would be validated, store
    the sweep and queue its points in batched chunks. Nothing runs unless every point is valid.

    With an Idempotency-Key this caller already used: the same body (same canonical digest) answers the
    stored sweep with 202 and Idempotent-Replayed: true, even when the sweep limits would refuse a new
    sweep; a different body is a 422 idempotency-key-reused. Concurrent POSTs with one key store one sweep."""
    store = _state(request, "sweep_store")
    engine = _state(request, "sweep_engine")
    settings = request.app.state.settings
    check_media_type(request)
    body = await request.body()
    owner = current_owner()
    sweep, request_json, request_hash = await run_in_threadpool(canonical_sweep, body)
    if idempotency_key is not None:
        # A retry is answered from the digest, before the points are validated again (seconds for a large
        # sweep) and before any limit: the sweep it names exists already.
        existing = await run_in_threadpool(store.by_idempotency_key, idempotency_key, owner)
        if existing is not None:
            return await _replay(request, existing, request_hash, idempotency_key)
    # A full queue answers before validation: refusing costs one COUNT, validating every point far more.
    active = await run_in_threadpool(store.count_active)
    if active >= settings.max_active_sweeps:
        raise _queue_full(active, settings)
    validated = await run_in_threadpool(validate_parsed, sweep, request_json, request_hash,
                                        Limits.from_settings(settings), settings.max_sweep_points)
    await check_active_limit(request)
    try:
        # The store checks the bound again in its write transaction, and the unique (owner, key) index
        # decides between concurrent POSTs with one key.
        row, created = await run_in_threadpool(
            partial(store.create_or_get, request_hash=validated.request_hash, idempotency_key=idempotency_key,
                    max_active=settings.max_active_sweeps),
            validated.request_json, validated.base_json, validated.keep, validated.points, owner)
    except QueueFullError as exc:
        raise _queue_full(exc.active, settings) from None
    if not created:  # a concurrent POST with this key stored its sweep first
        return await _replay(request, row, validated.request_hash, idempotency_key)
    try:
        await engine.submit(row.id)
    except Exception:  # the sweep is stored: the next reconcile pass (every RECONCILE_SECONDS) submits it
        log.exception("submitting sweep %s failed", row.id)
    row = await _get_row(store, row.id)
    return await _sweep_response(request, row, 202, {"Location": f"/v1/sweeps/{row.id}"})


@router.get(
    "/{sweep_id}",
    response_model=None,
    summary="Get a sweep: status, counts per status, progress",
    responses={200: {"model": Sweep, "description": "The sweep (Retry-After while not terminal).",
                     "headers": _SWEEP_CONTENT_HEADERS},
               **_problems(404, d404=_NOT_FOUND)},
)
async def get_sweep(sweep_id: SweepId, request: Request) -> Response:
    row = await _get_row(_state(request, "sweep_store"), sweep_id)
    return await _sweep_response(request, row, 200)


@router.get(
    "/{sweep_id}/results",
    response_model=None,
    summary="A sweep's results: one row per point, in index order",
    responses={200: {"model": SweepResults, "description": "One page of points (all of them, finished or not)."},
               **_problems(404, 422, d404=_NOT_FOUND)},
)
async def list_sweep_results(
    sweep_id: SweepId,
    request: Request,
    status: Annotated[Status | None, Query(description="Only points with this status.")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_RESULTS_PAGE_SIZE, description="Rows per page (1..1000).")] = 100,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    store = _state(request, "sweep_store")
    row = await _get_row(store, sweep_id)
    try:
        points, token = await run_in_threadpool(store.points, sweep_id, status, page_size, page_token)
    except ValueError as exc:  # InvalidPageToken
        raise _page_token_problem(exc) from None
    body = orjson.dumps({"items": [point_document(p, row.keep) for p in points], "next_page_token": token})
    return Response(body, media_type="application/json")


@router.get(
    "/{sweep_id}/points/{k}/trajectory",
    response_model=None,
    summary="The trajectory of one sweep point (sweeps with keep: trajectories)",
    description=_POINT_TRAJECTORY_DESCRIPTION,
    responses={200: {"model": Trajectory, "description": "The point's recorded trajectory."},
               **_problems(404, 409, d404="No sweep with this id, or no point k in it",
                           d409="not-finished: the point has not succeeded (yet; Retry-After while it is queued or "
                                "running). not-recorded: the sweep has keep: \"summary\", so no point trajectory "
                                "was kept; submit the sweep again with keep: \"trajectories\", or run the point "
                                "as a simulation")},
)
async def get_sweep_point_trajectory(sweep_id: SweepId, k: PointIndex, request: Request) -> Response:
    store = _state(request, "sweep_store")
    row = await _get_row(store, sweep_id)
    if k >= row.n_points:
        raise ProblemError(404, "not-found", f"sweep {sweep_id} has no point {k}: its points are 0..{row.n_points - 1}")
    if row.keep != "trajectories":
        raise ProblemError(
            409, "not-recorded",
            f'the trajectory of point {k} was not kept: sweep {sweep_id} has keep: "summary" (one results row per '
            'point). To get it, submit the sweep again with keep: "trajectories", or run the point as a simulation '
            f"(POST /v1/simulations with the sweep's request.base and the point's parameters from "
            f"GET /v1/sweeps/{sweep_id}/results applied)")
    point = await run_in_threadpool(store.point, sweep_id, k)
    if point is None or point.status != "succeeded":
        state = point.status if point is not None else "unknown"
        headers = {"Retry-After": str(request.app.state.settings.retry_after_seconds)} \
            if state in ("queued", "running") else {}
        raise ProblemError(409, "not-finished", f"point {k} of sweep {sweep_id} is {state}; its trajectory exists "
                           "once it has succeeded", headers=headers)
    try:
        data = await run_in_threadpool(store.trajectory, sweep_id, k)
    except CorruptResultError as exc:
        log.error("%s", exc)
        # Not rerun in place (the sweep has finished): the point's run is seeded, so the same request run
        # as a simulation gives the same trajectory.
        raise ProblemError(500, "corrupt-result", f"the stored trajectory of point {k} of sweep {sweep_id} is "
                           f"corrupt ({exc.reason}); check the data dir's disk. The run is seeded: POST the sweep's "
                           f"base with this point's parameters (GET /v1/sweeps/{sweep_id}/results) to "
                           "/v1/simulations for the same trajectory") from None
    if data is None:
        raise ProblemError(500, "invalid-simulation-result", f"point {k} of sweep {sweep_id} succeeded but has "
                           "no stored trajectory")
    return Response(data, media_type="application/json")


@router.get(
    "",
    response_model=None,
    summary="List sweeps, newest first",
    responses={200: {"model": SweepList, "description": "One page of sweeps."}, **_problems(422)},
)
async def list_sweeps(
    request: Request,
    status: Annotated[Status | None, Query(description="Only sweeps with this status.")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1..100).")] = 20,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    store = _state(request, "sweep_store")
    engine = getattr(request.app.state, "sweep_engine", None)
    try:
        rows, token = await run_in_threadpool(store.list, status, page_size, page_token, current_owner())
    except ValueError as exc:
        raise _page_token_problem(exc) from None
    items = []
    for row in rows:
        running = engine.running_progress(row.id) if engine is not None and not row.terminal else 0.0
        first_failed = None
        if row.status == "failed":
            failed, _ = await run_in_threadpool(store.points, row.id, "failed", 1)
            first_failed = failed[0] if failed else None
        items.append(sweep_json(row, running, first_failed))
    body = b'{"items":[' + b",".join(items) + b'],"next_page_token":' + orjson.dumps(token) + b"}"
    return Response(body, media_type="application/json")


@router.post(
    "/{sweep_id}/cancel",
    response_model=None,
    summary="Cancel a sweep",
    responses={200: {"model": Sweep, "description": "The sweep, now cancelled (finished points keep their results; "
                                                    "cancelling a finished sweep changes nothing)."},
               **_problems(404, d404=_NOT_FOUND)},
)
async def cancel_sweep(sweep_id: SweepId, request: Request) -> Response:
    """Running chunks stop within about a second (the workers check the sweep's stop flag); queued
    chunks never start."""
    store = _state(request, "sweep_store")
    row = await _get_row(store, sweep_id)
    if not row.terminal:
        await _state(request, "sweep_engine").cancel(sweep_id)
        row = await _get_row(store, sweep_id)
    return await _sweep_response(request, row, 200)


@router.delete(
    "/{sweep_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a sweep and its results (cancelling it first if it runs)",
    responses={**_problems(404, d404=_NOT_FOUND)},
)
async def delete_sweep(sweep_id: SweepId, request: Request) -> Response:
    store = _state(request, "sweep_store")
    row = await _get_row(store, sweep_id)
    if not row.terminal:
        await _state(request, "sweep_engine").cancel(sweep_id)
    if not await run_in_threadpool(store.delete, sweep_id):
        raise ProblemError(404, "not-found", f"no sweep with id {sweep_id!r}")
    return Response(status_code=204)


@router.get(
    "/{sweep_id}/plot.svg",
    response_class=Response,
    summary="Plot a sweep's learning times or final losses against a swept parameter (SVG)",
    description=SWEEP_PLOT_DESCRIPTION,
    responses={200: {"description": "The figure.", "content": {SVG: {"schema": {"type": "string"}}}},
               **_problems(404, 422, d404=_NOT_FOUND,
                           d422="Unknown kind, x not a swept parameter, or too many combinations of the other axes")},
)
async def get_sweep_plot(
    sweep_id: SweepId,
    request: Request,
    kind: Annotated[Literal["learning_time", "final_loss"], Query(
        description="learning_time: per-mode learning time, measured and theory; final_loss: L − L* (log).")
    ] = "learning_time",
    x: Annotated[str | None, Query(max_length=200, description="The swept parameter path on the x axis (default: "
                                                               "the first grid axis), e.g. init.scale.")] = None,
) -> Response:
    store = _state(request, "sweep_store")
    row = await _get_row(store, sweep_id)
    return await sweep_plot_response(store, row, kind, x)
