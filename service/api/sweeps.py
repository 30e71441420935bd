"""/v1/sweeps: parameter sweeps over a base simulation request, run in batched chunks on the cluster.

    POST /v1/sweeps {"base": {...}, "grid": {"init.scale": [0.001, 0.1], "init.seed": [0, 1, 2]}}
    GET  /v1/sweeps/{id}                         status, counts per status, progress
    GET  /v1/sweeps/{id}/results?page_size=100   one row per point, in grid order (JSON pages; CSV or Parquet whole)
    GET  /v1/sweeps/{id}/points/{k}/trajectory   with keep: trajectories

Handlers delegate to ``service.jobs.submission.Sweeps`` (whose create flow is the simulations': an
``Idempotency-Key`` makes the POST retry-safe, every point is validated as a single simulation before anything is
stored, ``service.jobs.sweep_plan``); the documents come from ``service.api.documents``.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.bodies import check_media_type, json_request_body
from service.api.deps import ListFilterDep, OwnerDep, SettingsDep, StatusQuery, SweepsDep
from service.api.documents import list_json, point_document, point_values, sweep_json
from service.api.errors import problem_responses
from service.api.negotiation import JSON, NETCDF, NPZ
from service.api.representations import BINARY, VARY_ACCEPT, accepted, encoder, results_media, streamed
from service.jobs.submission import Sweeps
from service.jobs.sweeps_store import SweepRow
from service.results_table import CSV, PARQUET, results_table, to_csv, to_parquet
from service.schemas import (
    SWEEP_REQUEST_EXAMPLES,
    Sweep,
    SweepList,
    SweepResults,
    Trajectory,
)
from service.settings import Settings

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

MAX_PAGE_SIZE = 100
MAX_RESULTS_PAGE_SIZE = 1000

SweepId = Annotated[str, Path(description="The sweep id.")]
PointIndex = Annotated[int, Path(ge=0, description="The point's index k (its position in the results).")]
NOT_FOUND = "No sweep with this id"


_RESULTS_DESCRIPTION = """\
One row per point, in index order. **Representations** (content negotiation on `Accept`):

* `application/json` (default): pages of `page_size` rows, `next_page_token` to go on;
* `text/csv`: every point (of `status`, if given) in one flat table — `point`, one column per swept parameter
  named by its path (`init.scale`; list values as JSON text), `status`, `finished_at`, `outcome`, one column per
  scalar result, the per-mode vectors as `final_strength_1 … _k`, `learning_time_1 … _k`,
  `learning_time_theory_1 … _k` (1-based; empty where a point has fewer modes), `error_type`, `error_detail`.
  Floats are printed to round-trip (the JSON's numbers, exactly); `pandas.read_csv` reads it as it is;
* `application/vnd.apache.parquet`: the same table as a Parquet file (float64, nullable int64, strings,
  `finished_at` a UTC timestamp), where the server has pyarrow (`dlnsim[parquet]`; else 406 naming it).

`page_size` and `page_token` apply to the JSON pages only."""


async def sweep_response(sweeps: Sweeps, settings: Settings, row: SweepRow, status_code: int,
                         extra: dict[str, str] | None = None) -> Response:
    headers = dict(extra or {})
    if not row.terminal:
        headers["Retry-After"] = str(settings.retry_after_seconds)
    body = sweep_json(row, sweeps.running_progress(row), await sweeps.first_failed(row))
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


# Why 409 and not 404 for a summary sweep: the sweep and its point exist (404 here means a wrong id or k),
# but the sweep did not record what was asked for, as with a simulation's plot that needs record.similarity
# (409 not-recorded); the problem type tells a client it will never appear, unlike not-finished.
_POINT_TRAJECTORY_DESCRIPTION = """\
The recorded trajectory of point k, served like a simulation's trajectory (JSON, or .npz or netCDF by `Accept`). Only sweeps created with
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
        **problem_responses(400, 410, 413, 415, 422, 429, 503, 507,
                         d422="Invalid sweep: a point (named by its grid entry or point index), the base, or the "
                              "sweep's size above DLNSIM_MAX_SWEEP_POINTS; or an Idempotency-Key already used with "
                              "a different body (idempotency-key-reused)",
                         d429="Too many sweeps queued or running; retry after the Retry-After delay (a retry with a "
                              "used Idempotency-Key is answered even then)"),
    },
    openapi_extra=json_request_body("SweepRequest", SWEEP_REQUEST_EXAMPLES),
)
async def create_sweep(request: Request, sweeps: SweepsDep, settings: SettingsDep, owner: OwnerDep,
                       idempotency_key: IdempotencyKey = None) -> Response:
    """Validate the grid (or points) and every point as a single simulation would be validated, store
    the sweep and queue its points in batched chunks. Nothing runs unless every point is valid.

    With an Idempotency-Key this caller already used: the same body (same canonical digest) answers the
    stored sweep with 202 and Idempotent-Replayed: true, even when the sweep limits would refuse a new
    sweep; a different body is a 422 idempotency-key-reused. Concurrent POSTs with one key store one sweep."""
    check_media_type(request)
    created = await sweeps.create(await request.body(), owner=owner, idempotency_key=idempotency_key)
    headers = {"Location": f"/v1/sweeps/{created.row.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return await sweep_response(sweeps, settings, created.row, 202, headers)


@router.get(
    "/{sweep_id}",
    response_model=None,
    summary="Get a sweep: status, counts per status, progress",
    responses={200: {"model": Sweep, "description": "The sweep (Retry-After while not terminal).",
                     "headers": _SWEEP_CONTENT_HEADERS},
               **problem_responses(404, d404=NOT_FOUND)},
)
async def get_sweep(sweep_id: SweepId, sweeps: SweepsDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    return await sweep_response(sweeps, settings, await sweeps.get(sweep_id, owner), 200)


@router.get(
    "/{sweep_id}/results",
    response_model=None,
    summary="A sweep's results: one row per point, in index order (JSON pages, or all of it as CSV or Parquet)",
    description=_RESULTS_DESCRIPTION,
    responses={200: {"model": SweepResults, "description": "One page of points (all of them, finished or not); "
                                                           "the whole table as CSV or Parquet on request.",
                     "content": {CSV: {"schema": {"type": "string"}}, PARQUET: {"schema": BINARY}},
                     "headers": VARY_ACCEPT},
               **problem_responses(404, 406, 422, d404=NOT_FOUND)},
)
async def list_sweep_results(
    sweep_id: SweepId,
    request: Request,
    sweeps: SweepsDep,
    owner: OwnerDep,
    status: Annotated[StatusQuery | None, Query(description="Only points with this status.")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_RESULTS_PAGE_SIZE, description="Rows per page (1..1000).")] = 100,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    media = results_media(request.headers.get("accept"))
    if media != JSON:
        row = await sweeps.get(sweep_id, owner)
        rows = [point_values(p, row.keep) for p in await sweeps.all_points(row) if status in (None, p.status)]
        write = to_csv if media == CSV else to_parquet
        body = await run_in_threadpool(lambda: write(results_table(rows)))
        name = f"sweep-{sweep_id}-results.{'csv' if media == CSV else 'parquet'}"
        return Response(body, media_type=media, headers={"Vary": "Accept",
                                                         "Content-Disposition": f'attachment; filename="{name}"'})
    row, points, token = await sweeps.points(sweep_id, owner, status, page_size, page_token)
    body = orjson.dumps({"items": [point_document(p, row.keep) for p in points], "next_page_token": token})
    return Response(body, media_type="application/json", headers={"Vary": "Accept"})


@router.get(
    "/{sweep_id}/points/{k}/trajectory",
    response_model=None,
    summary="The trajectory of one sweep point (sweeps with keep: trajectories)",
    description=_POINT_TRAJECTORY_DESCRIPTION,
    responses={200: {"model": Trajectory, "description": "The point's recorded trajectory (JSON; .npz or netCDF on "
                                                         "request, by Accept, as a simulation's).",
                     "content": {NPZ: {"schema": BINARY}, NETCDF: {"schema": BINARY}}},
               **problem_responses(404, 409, d404="No sweep with this id, or no point k in it",
                                d409="not-finished: the point has not succeeded (yet; Retry-After while it is queued "
                                     "or running). not-recorded: the sweep has keep: \"summary\", so no point "
                                     "trajectory was kept; submit the sweep again with keep: \"trajectories\", or "
                                     "run the point as a simulation")},
)
async def get_sweep_point_trajectory(sweep_id: SweepId, k: PointIndex, request: Request, sweeps: SweepsDep,
                                     owner: OwnerDep) -> Response:
    media = accepted(request.headers.get("accept"))
    pieces = await sweeps.stream_point_trajectory(sweep_id, k, owner, encoder(media, None, None))
    return streamed(pieces, media, f"sweep-{sweep_id}-point-{k}")


@router.get(
    "",
    response_model=None,
    summary="List sweeps, newest first",
    responses={200: {"model": SweepList, "description": "One page of sweeps."}, **problem_responses(422)},
)
async def list_sweeps(
    sweeps: SweepsDep,
    owner: OwnerDep,
    filters: ListFilterDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1..100).")] = 20,
    page_token: Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")
                          ] = None,
) -> Response:
    rows, token = await sweeps.list(filters, page_size, page_token, owner)
    items = [sweep_json(row, sweeps.running_progress(row), await sweeps.first_failed(row)) for row in rows]
    return Response(list_json(items, token), media_type="application/json")


@router.post(
    "/{sweep_id}/cancel",
    response_model=None,
    summary="Cancel a sweep",
    responses={200: {"model": Sweep, "description": "The sweep, now cancelled (finished points keep their results; "
                                                    "cancelling a finished sweep changes nothing)."},
               **problem_responses(404, d404=NOT_FOUND)},
)
async def cancel_sweep(sweep_id: SweepId, sweeps: SweepsDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    """Running chunks stop within about a second (the workers check the sweep's stop flag); queued
    chunks never start."""
    return await sweep_response(sweeps, settings, await sweeps.cancel(sweep_id, owner), 200)


@router.delete(
    "/{sweep_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a sweep and its results (cancelling it first if it runs)",
    responses={**problem_responses(404, d404=NOT_FOUND)},
)
async def delete_sweep(sweep_id: SweepId, sweeps: SweepsDep, owner: OwnerDep) -> Response:
    await sweeps.delete(sweep_id, owner)
    return Response(status_code=204)
