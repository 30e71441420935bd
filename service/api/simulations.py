"""/v1/simulations: create, read, list, cancel and delete simulation jobs, and fetch their trajectories.

Handlers parse the HTTP parts (headers, query) and delegate to ``service.jobs.submission.Simulations``; the
resource documents come from ``service.api.documents``, the trajectory's representations from ``service.codec``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from service import codec
from service.api.bodies import check_media_type, json_request_body
from service.api.deps import OwnerDep, SettingsDep, SimulationsDep
from service.api.documents import list_json, simulation_json
from service.api.errors import problem_responses
from service.api.negotiation import JSON, NPZ, TRAJECTORY_MEDIA_TYPES, negotiate
from service.api.prefer import parse_prefer, wait_seconds
from service.jobs.store import JobRow
from service.problems import ProblemError, field_error
from service.schemas import (
    REQUEST_EXAMPLES,
    Simulation,
    SimulationList,
    Status,
    Trajectory,
)
from service.settings import Settings

router = APIRouter(prefix="/v1/simulations", tags=["simulations"])

MAX_PAGE_SIZE = 100

JobId = Annotated[str, Path(description="The simulation id.")]


def simulation_response(row: JobRow, status_code: int, settings: Settings,
                        extra: dict[str, str] | None = None) -> Response:
    headers = dict(extra or {})
    if not row.terminal:
        headers["Retry-After"] = str(settings.retry_after_seconds)
    return Response(simulation_json(row), status_code=status_code, media_type="application/json", headers=headers)


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
        **problem_responses(400, 410, 413, 415, 422, 429, 503, 507),
    },
    openapi_extra=json_request_body("SimulationRequest", REQUEST_EXAMPLES),
)
async def create_simulation(
    request: Request,
    simulations: SimulationsDep,
    settings: SettingsDep,
    owner: OwnerDep,
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
    prefs = parse_prefer(request.headers.getlist("prefer"))  # every Prefer header, not just the first
    wait = wait_seconds(prefs, settings.max_wait_seconds)
    created = await simulations.create(await request.body(), owner=owner, idempotency_key=idempotency_key,
                                       wait=wait)
    headers = {"Location": f"/v1/simulations/{created.row.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    applied = [f"wait={wait}"] * (wait is not None) + ["respond-async"] * ("respond-async" in prefs)
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    return simulation_response(created.row, 201 if created.row.terminal else 202, settings, headers)


@router.get(
    "/{job_id}",
    response_model=None,
    summary="Get a simulation",
    responses={200: {"model": Simulation, "description": "The simulation (Retry-After while not terminal).",
                     "headers": _NOT_TERMINAL_HEADERS},
               **problem_responses(404)},
)
async def get_simulation(job_id: JobId, simulations: SimulationsDep, settings: SettingsDep,
                         owner: OwnerDep) -> Response:
    return simulation_response(await simulations.get(job_id, owner), 200, settings)


_TRAJECTORY_DESCRIPTION = f"""\
The recorded trajectory. 409 until the simulation succeeded.

**Representations** (content negotiation on `Accept`): `application/json` (default; the Trajectory schema) or
`application/x-npz` (NumPy arrays); anything else is a 406 problem. Both are made from the stored arrays.

**Only what you need:** `fields=time,loss,modes` keeps those top-level members (comma-separated or repeated);
`every=k` keeps records 0, k, 2k, … and always the last one (per-record members: time, step, loss, excess_loss,
product, weights, balance_drift, gradient_norm, distance_to_optimum, similarity, modes.strength, modes.theory).
Only the arrays of the members asked for are read from the store, one at a time, and the body is streamed as it
is made.

{codec.NPZ_LAYOUT}"""




def trajectory_selection(fields: list[str] | None, every: int | None, accept: str | None
                         ) -> tuple[str, list[str] | None]:
    """(media type, fields) of a trajectory request; 406 for an Accept nothing matches, 422 for bad fields."""
    media = negotiate(accept)
    if media is None:
        raise ProblemError(406, "not-acceptable",
                           f"the trajectory is served as {' or '.join(TRAJECTORY_MEDIA_TYPES)}, and Accept is "
                           f"{accept!r}",
                           errors=[field_error(["Accept"], "not_acceptable", f"no representation matches {accept!r}",
                                               f"send Accept: {JSON} or Accept: {NPZ} (or no Accept header)",
                                               "header")])
    try:
        return media, codec.parse_fields(fields)
    except codec.SelectionError as exc:
        raise ProblemError(422, "validation-error", f"{exc.field}: {exc.message}",
                           errors=[field_error([exc.field], "invalid_field", exc.message, exc.fix, "query")]) from None


Fields = Annotated[list[Annotated[str, StringConstraints(pattern=r"[^,\s]")]] | None, Query(
    min_length=1, description="Only these top-level members, e.g. `time,loss,modes` (comma-separated or repeated; "
                              "each value names at least one).")]
Every = Annotated[int | None, Query(ge=1, description="Keep every k-th record (0, k, 2k, …) and the last one.")]
Accept = Annotated[str | None, Header(alias="Accept",
                                      description="`application/json` (default) or `application/x-npz`.")]


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
async def get_trajectory(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep, fields: Fields = None,
                         every: Every = None, accept: Accept = None) -> Response:
    media, selected = trajectory_selection(fields, every, accept)
    def encode(stored: codec.Stored) -> Iterator[bytes]:
        return codec.iter_json(stored, selected, every) if media == JSON else codec.iter_npz(stored, selected, every)

    pieces = await simulations.stream_trajectory(job_id, owner, selected, encode)
    headers = {"Vary": "Accept"}
    if media == NPZ:
        headers["Content-Disposition"] = f'attachment; filename="trajectory-{job_id}.npz"'
    return StreamingResponse(pieces, media_type=media, headers=headers)


@router.get(
    "",
    response_model=None,
    summary="List simulations, newest first",
    responses={200: {"model": SimulationList, "description": "One page of simulations."},
               **problem_responses(422)},
)
async def list_simulations(
    simulations: SimulationsDep,
    owner: OwnerDep,
    status: Annotated[Status | None, Query(description="Only simulations with this status.")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1..100).")] = 20,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    rows, token = await simulations.list(status, page_size, page_token, owner)
    return Response(list_json([simulation_json(row) for row in rows], token), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    response_model=None,
    summary="Cancel a simulation",
    responses={200: {"model": Simulation, "description": "The simulation, now cancelled (or already finished: "
                                                         "cancelling a finished simulation changes nothing)."},
               **problem_responses(404)},
)
async def cancel_simulation(job_id: JobId, simulations: SimulationsDep, settings: SettingsDep,
                            owner: OwnerDep) -> Response:
    """A running job stops within about a second (the worker checks a stop flag)."""
    return simulation_response(await simulations.cancel(job_id, owner), 200, settings)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a simulation (cancelling it first if it runs)",
    responses={**problem_responses(404)},
)
async def delete_simulation(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep) -> Response:
    await simulations.delete(job_id, owner)
    return Response(status_code=204)
