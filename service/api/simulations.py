"""/v1/simulations: create, read, list, cancel and delete simulation jobs, and fetch their trajectories.

Handlers parse the HTTP parts (headers, query) and delegate to ``service.jobs.submission.Simulations``; the
resource documents come from ``service.api.documents``, the trajectory's representations from ``service.codec``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from service.api.bodies import check_media_type, json_request_body
from service.api.deps import ListFilterDep, OwnerDep, SettingsDep, SimulationsDep
from service.api.documents import list_json, simulation_json
from service.api.errors import problem_responses
from service.api.prefer import parse_prefer, wait_seconds
from service.jobs.store import JobRow
from service.schemas import (
    REQUEST_EXAMPLES,
    Simulation,
    SimulationList,
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
    filters: ListFilterDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1..100).")] = 20,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    rows, token = await simulations.list(filters, page_size, page_token, owner)
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
