"""/v1/simulations: create, read, list, cancel and delete simulation jobs, and fetch trajectories.

Routes stay thin: parse and validate (off the event loop for large bodies), store, submit, answer.
Bodies that can be large (a Simulation carries its request; a trajectory can be hundreds of MB) are
composed from the stored JSON bytes rather than re-parsed and re-encoded.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints

from service.api.access import check_active_limit, current_owner, visible
from service.api.bodies import check_media_type, json_request_body, parse_body
from service.api.deps import EngineDep, SettingsDep, StoreDep
from service.api.errors import (
    ProblemError,
    dynamics_problem,
    idempotency_key_reused,
    problem_responses,
)
from service.api.prefer import parse_prefer, wait_seconds
from service.convert import Limits, build_simulation
from service.downloads import (
    JSON,
    MEDIA_TYPES,
    NPZ,
    NPZ_LAYOUT,
    DownloadError,
    encode_trajectory,
    negotiate,
    parse_fields,
)
from service.dynamics.errors import DynamicsError
from service.jobs.store import CorruptResultError, QueueFullError
from service.problems import field_error, problem_body
from service.schemas import (
    REQUEST_EXAMPLES,
    Simulation,
    SimulationList,
    SimulationRequest,
    Status,
    Trajectory,
)

log = logging.getLogger("service.api")

router = APIRouter(prefix="/v1/simulations", tags=["simulations"])

TERMINAL = ("succeeded", "failed", "cancelled")
MAX_PAGE_SIZE = 100

JobId = Annotated[str, Path(description="The simulation id.")]


# ------------------------------------------------------------------------------------------------
# Simulation documents


def _links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/simulations/{job_id}", "trajectory": f"/v1/simulations/{job_id}/trajectory"}


def _normalize_error(error: dict | None, job_id: str) -> dict | None:
    """A stored problem as the ProblemDetails schema promises (the worker may omit optional members)."""
    if error is None:
        return None
    out = dict(error)
    out.setdefault("type", "/problems/internal")
    out.setdefault("title", "Simulation failed")
    out.setdefault("status", 500)
    out.setdefault("detail", out["title"])
    if out.get("instance") is None:
        out["instance"] = f"/v1/simulations/{job_id}"
    errors = []
    for e in out.get("errors") or []:
        entry = field_error(list(e.get("field") or []), str(e.get("code", "invalid")), str(e.get("message", "")),
                            str(e.get("fix") or "see the message"), str(e.get("in", "body")))
        errors.append(entry)
    out["errors"] = errors
    return out


def simulation_json(row: Any) -> bytes:
    """The Simulation resource as JSON bytes; the stored request bytes are spliced in, not re-encoded."""
    envelope = orjson.dumps({
        "id": row.id,
        "status": row.status,
        "progress": float(row.progress),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "error": _normalize_error(row.error, row.id),
        "outcome": row.outcome,
        "links": _links(row.id),
    })
    return b'{"request":' + bytes(row.request) + b"," + envelope[1:]


def _simulation_response(row: Any, status_code: int, settings: Any, extra: dict[str, str] | None = None) -> Response:
    headers = dict(extra or {})
    if row.status not in TERMINAL:
        headers["Retry-After"] = str(settings.retry_after_seconds)
    return Response(simulation_json(row), status_code=status_code, media_type="application/json", headers=headers)


async def read_nowait(store: Any, read: Callable[..., Any], *args: Any) -> Any:
    """``read(*args)``, a small indexed read of ``store`` (~11 µs), on the event loop and on a connection
    that never waits for a lock (JobStore.nowait): a thread-pool hop costs ten times that in CPU. Only if
    SQLite is busy, the waiting read in a thread."""
    try:
        with store.nowait():
            return read(*args)
    except sqlite3.OperationalError:
        return await run_in_threadpool(read, *args)


async def _get_row(store: Any, job_id: str) -> Any:
    row = await read_nowait(store, store.get, job_id)
    # Another API key's simulation is a 404 too: its existence is not revealed.
    if row is None or not visible(row.owner):
        raise ProblemError(404, "not-found", f"no simulation with id {job_id!r}")
    return row


# ------------------------------------------------------------------------------------------------
# create


def _queue_full(active: int, settings: Any) -> ProblemError:
    return ProblemError(429, "queue-full", f"{active} simulations are queued or running, the limit is "
                        f"{settings.max_queued}", headers={"Retry-After": str(max(settings.retry_after_seconds, 5))})


def parse_request(body: bytes) -> SimulationRequest:
    """Parse and validate a request body (strict JSON: no NaN/Infinity, no coercions); raise ProblemError."""
    return parse_body(body, SimulationRequest)


def _validate(body: bytes, limits: Limits) -> tuple[SimulationRequest, bytes, str]:
    """Body -> (request, canonical JSON, sha256 of it); every check the core can make, before queueing.

    The canonical JSON is the validated request with defaults filled in (what the worker runs and what
    GET returns); equal requests written differently (spacing, key order, 1 vs 1.0) hash the same.
    """
    request = parse_request(body)
    try:
        build_simulation(request, limits)
    except DynamicsError as exc:
        raise dynamics_problem(exc) from None
    canonical = request.__pydantic_serializer__.to_json(request, by_alias=True)
    return request, canonical, hashlib.sha256(canonical).hexdigest()



_SIMULATION_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Simulation"}}}
_NOT_TERMINAL_HEADERS = {"Retry-After": {"description": "Seconds until it is worth polling again (while not "
                                                        "terminal)", "schema": {"type": "integer"}}}
# OpenAPI links: what a client (or a stateful test generator) can do next with the created simulation.
_SIMULATION_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (("GetSimulation", "get_simulation"), ("GetTrajectory", "get_trajectory"),
                            ("GetSimulationPlot", "get_simulation_plot"), ("CancelSimulation", "cancel_simulation"),
                            ("DeleteSimulation", "delete_simulation"))
}


@router.post(
    "",
    status_code=202,
    response_model=None,
    summary="Start a simulation",
    responses={
        201: {"model": Simulation, "description": "Finished within the Prefer: wait time (any terminal status).",
              "headers": {"Location": {"description": "The simulation's URL", "schema": {"type": "string"}},
                          "Preference-Applied": {"description": "wait=N when a wait was honoured",
                                                 "schema": {"type": "string"}}},
              "links": _SIMULATION_LINKS},
        202: {"model": Simulation, "description": "Accepted and queued (or running): poll the Location.",
              "headers": {"Location": {"description": "The simulation's URL", "schema": {"type": "string"}},
                          **_NOT_TERMINAL_HEADERS},
              "links": _SIMULATION_LINKS},
        **problem_responses(400, 413, 415, 422, 429, 503, 507),
    },
    openapi_extra=json_request_body("SimulationRequest", REQUEST_EXAMPLES),
)
async def create_simulation(
    request: Request,
    store: StoreDep,
    engine: EngineDep,
    settings: SettingsDep,
    prefer: Annotated[str | None, Header(
        alias="Prefer",
        description="RFC 7240. `wait=N` (N ≤ 60): answer 201 with the finished simulation if it ends "
                    "within N seconds, else 202. Unknown preferences are ignored.")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=255,
        description="Retry-safe creation: the same key with the same body returns the same simulation "
                    "(no second run); with a different body it is a 422.")] = None,
) -> Response:
    """Validate the request completely (shapes, Σ11 symmetric PSD, init, stability bound, exact-method
    conditions, limits) and queue it. Nothing invalid is ever queued."""
    check_media_type(request)
    body = await request.body()
    # A full queue answers first: refusing costs one COUNT, where validating can cost milliseconds of
    # numerics, which a saturated service must not spend on requests it refuses (tests/faults/test_load.py).
    # With an Idempotency-Key the store decides, since a replay of a stored job is answered even then.
    if idempotency_key is None:
        active = await read_nowait(store, store.count_active)
        if active >= settings.max_queued:
            raise _queue_full(active, settings)
    # Parsing and building run in a worker thread: a large body, or a small preset request that builds a
    # large task, costs CPU time the event loop must not spend.
    _, canonical, digest = await run_in_threadpool(_validate, body, Limits.from_settings(settings))

    # A replay is answered whatever the per-key limit: it creates nothing.
    if idempotency_key is None or await run_in_threadpool(
            store.by_idempotency_key, idempotency_key, current_owner()) is None:
        await check_active_limit(request)

    try:
        # The store checks the bound again in its write transaction: concurrent creates cannot overshoot it.
        row, created = await run_in_threadpool(partial(store.create, max_active=settings.max_queued),
                                               canonical, digest, idempotency_key, current_owner())
    except QueueFullError as exc:
        raise _queue_full(exc.active, settings) from None
    response_headers: dict[str, str] = {"Location": f"/v1/simulations/{row.id}"}
    if not created:
        if row.request_hash != digest:
            raise idempotency_key_reused(idempotency_key, f"simulation {row.id}")
        response_headers["Idempotent-Replayed"] = "true"
    else:
        try:
            await engine.submit(row.id)
        except Exception:  # the job is stored; the engine resubmits unfinished jobs when it restarts
            log.exception("submitting simulation %s failed", row.id)

    prefs = parse_prefer(request.headers.getlist("prefer"))  # every Prefer header, not just the first
    applied = []
    wait = wait_seconds(prefs, settings.max_wait_seconds)
    if wait is not None:
        if wait > 0 and row.status not in TERMINAL:
            await engine.wait(row.id, wait)
        applied.append(f"wait={wait}")
    if "respond-async" in prefs:
        applied.append("respond-async")
    if applied:
        response_headers["Preference-Applied"] = ", ".join(applied)
    row = await _get_row(store, row.id)
    return _simulation_response(row, 201 if row.status in TERMINAL else 202, settings, response_headers)


# ------------------------------------------------------------------------------------------------
# read


@router.get(
    "/{job_id}",
    response_model=None,
    summary="Get a simulation",
    responses={200: {"model": Simulation, "description": "The simulation (Retry-After while not terminal).",
                     "headers": _NOT_TERMINAL_HEADERS},
               **problem_responses(404)},
)
async def get_simulation(job_id: JobId, store: StoreDep, settings: SettingsDep) -> Response:
    row = await _get_row(store, job_id)
    return _simulation_response(row, 200, settings)


# A corrupt stored result is recomputed until the job has been started this many times; corruption that
# comes back run after run is not the disk's doing, and the job is then marked failed instead.
MAX_RESULT_ATTEMPTS = 5


async def _recover_corrupt_result(store: Any, engine: Any, job_id: str, exc: CorruptResultError,
                                  settings: Any) -> ProblemError:
    """Queue the simulation again (seeded: the rerun stores the same trajectory), or fail it after
    MAX_RESULT_ATTEMPTS starts; the 500 problem that says which."""
    log.error("%s", exc)
    failed = problem_body(500, "corrupt-result", f"the stored trajectory was corrupt ({exc.reason}) after each of "
                          f"{MAX_RESULT_ATTEMPTS} runs; check the data dir's disk, then submit the request again",
                          instance=f"/v1/simulations/{job_id}")
    status = await run_in_threadpool(store.recover_corrupt_result, job_id, failed, MAX_RESULT_ATTEMPTS)
    if status == "failed":
        return ProblemError(500, "corrupt-result", f"the stored trajectory of simulation {job_id} is corrupt "
                            f"({exc.reason}), as after each earlier run: the simulation is now failed; check the "
                            "data dir's disk, then submit the request again")
    if status == "queued" and engine is not None:
        await engine.submit(job_id)
    return ProblemError(500, "corrupt-result", f"the stored trajectory of simulation {job_id} is corrupt "
                        f"({exc.reason}); the simulation was queued to run again (runs are seeded, so it gives the "
                        "same trajectory): poll it until it has succeeded",
                        headers={"Retry-After": str(settings.retry_after_seconds)})


async def succeeded_result(store: Any, job_id: str, settings: Any, engine: Any = None) -> bytes:
    """The stored trajectory JSON of a succeeded simulation: 404 unknown, 409 not (yet) succeeded, 500 unreadable
    (a corrupt result also queues the simulation to run again, on ``engine``)."""
    row = await _get_row(store, job_id)
    if row.status != "succeeded":
        if row.status == "failed":
            reason = (row.error or {}).get("detail") or "see its error"
            detail, headers = f"simulation {job_id} failed, so it has no trajectory: {reason}", {}
        elif row.status == "cancelled":
            detail, headers = f"simulation {job_id} was cancelled, so it has no trajectory", {}
        else:
            detail = f"simulation {job_id} is {row.status}; its trajectory exists once it has succeeded"
            headers = {"Retry-After": str(settings.retry_after_seconds)}
        raise ProblemError(409, "not-finished", detail, headers=headers)
    try:
        data = await run_in_threadpool(store.result, job_id)
    except CorruptResultError as exc:
        raise await _recover_corrupt_result(store, engine, job_id, exc, settings) from None
    if data is None:
        raise ProblemError(500, "invalid-simulation-result", f"simulation {job_id} succeeded but has no stored result")
    return data


_TRAJECTORY_DESCRIPTION = f"""\
The recorded trajectory. 409 until the simulation succeeded.

**Representations** (content negotiation on `Accept`): `application/json` (default; the Trajectory schema) or
`application/x-npz` (NumPy arrays); anything else is a 406 problem. Without `fields` or `every`, JSON is sent
exactly as stored.

**Only what you need:** `fields=time,loss,modes` keeps those top-level members (comma-separated or repeated);
`every=k` keeps records 0, k, 2k, … and always the last one (per-record members: time, step, loss, excess_loss,
product, weights, balance_drift, gradient_norm, distance_to_optimum, similarity, modes.strength, modes.theory).

{NPZ_LAYOUT}"""


@router.get(
    "/{job_id}/trajectory",
    response_model=None,
    summary="Get the trajectory of a succeeded simulation (JSON or .npz)",
    description=_TRAJECTORY_DESCRIPTION,
    responses={200: {"model": Trajectory, "description": "The recorded trajectory (JSON, or .npz on request).",
                     "content": {NPZ: {"schema": {"type": "string", "format": "binary"}}},
                     "headers": {"Vary": {"description": "Accept: the representation depends on it",
                                          "schema": {"type": "string"}}}},
               **problem_responses(404, 406, 409, 422)},
)
async def get_trajectory(
    job_id: JobId,
    store: StoreDep,
    engine: EngineDep,
    settings: SettingsDep,
    fields: Annotated[list[Annotated[str, StringConstraints(pattern=r"[^,\s]")]] | None, Query(
        min_length=1,
        description="Only these top-level members, e.g. `time,loss,modes` (comma-separated or repeated; each value "
                    "names at least one).")] = None,
    every: Annotated[int | None, Query(
        ge=1, description="Keep every k-th record (0, k, 2k, …) and the last one.")] = None,
    accept: Annotated[str | None, Header(
        alias="Accept", description="`application/json` (default) or `application/x-npz`.")] = None,
) -> Response:
    media = negotiate(accept)
    if media is None:
        raise ProblemError(406, "not-acceptable",
                           f"the trajectory is served as {' or '.join(MEDIA_TYPES)}, and Accept is {accept!r}",
                           errors=[field_error(["Accept"], "not_acceptable", f"no representation matches {accept!r}",
                                               f"send Accept: {JSON} or Accept: {NPZ} (or no Accept header)",
                                               "header")])
    try:
        selected = parse_fields(fields)
    except DownloadError as exc:
        raise ProblemError(422, "validation-error", f"{exc.field}: {exc.message}",
                           errors=[field_error([exc.field], "invalid_field", exc.message, exc.fix, "query")]) from None
    data = await succeeded_result(store, job_id, settings, engine)
    # Decoding and re-encoding a trajectory (up to hundreds of MB) is CPU work: never on the event loop.
    body = await run_in_threadpool(encode_trajectory, data, media, selected, every)
    headers = {"Vary": "Accept"}
    if media == NPZ:
        headers["Content-Disposition"] = f'attachment; filename="trajectory-{job_id}.npz"'
    return Response(body, media_type=media, headers=headers)


@router.get(
    "",
    response_model=None,
    summary="List simulations, newest first",
    responses={200: {"model": SimulationList, "description": "One page of simulations."},
               **problem_responses(422)},
)
async def list_simulations(
    store: StoreDep,
    status: Annotated[Status | None, Query(description="Only simulations with this status.")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1..100).")] = 20,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    try:
        rows, token = await run_in_threadpool(store.list, status, page_size, page_token, current_owner())
    except ValueError as exc:  # InvalidPageToken
        raise ProblemError(422, "invalid-page-token", str(exc),
                           errors=[field_error(["page_token"], "invalid_page_token", str(exc),
                                               "pass back next_page_token exactly as received, or omit it",
                                               "query")]) from None
    items = b",".join(simulation_json(row) for row in rows)
    body = b'{"items":[' + items + b'],"next_page_token":' + orjson.dumps(token) + b"}"
    return Response(body, media_type="application/json")


# ------------------------------------------------------------------------------------------------
# cancel, delete


@router.post(
    "/{job_id}/cancel",
    response_model=None,
    summary="Cancel a simulation",
    responses={200: {"model": Simulation, "description": "The simulation, now cancelled (or already finished: "
                                                         "cancelling a finished simulation changes nothing)."},
               **problem_responses(404)},
)
async def cancel_simulation(job_id: JobId, store: StoreDep, engine: EngineDep, settings: SettingsDep) -> Response:
    """A running job stops within about a second (the worker checks a stop flag)."""
    row = await _get_row(store, job_id)
    if row.status not in TERMINAL:
        await engine.cancel(job_id)
        row = await _get_row(store, job_id)
    return _simulation_response(row, 200, settings)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a simulation (cancelling it first if it runs)",
    responses={**problem_responses(404)},
)
async def delete_simulation(job_id: JobId, store: StoreDep, engine: EngineDep) -> Response:
    row = await _get_row(store, job_id)
    if row.status not in TERMINAL:
        await engine.cancel(job_id)
    if not await run_in_threadpool(store.delete, job_id):
        raise ProblemError(404, "not-found", f"no simulation with id {job_id!r}")
    return Response(status_code=204)
