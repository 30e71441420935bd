"""A simulation's trajectory, in the representation a client works with: JSON (the Trajectory schema), .npz (NumPy
arrays) or netCDF (named dimensions, for xarray), all made from the stored arrays by ``service.codec`` and streamed.

    GET /v1/simulations/{id}/trajectory          by Accept: application/json (default), application/x-npz,
                                                 application/x-netcdf
    GET /v1/simulations/{id}/trajectory.npz      the .npz alone (one media type: generated clients read it as a file)
    GET /v1/simulations/{id}/trajectory.nc       netCDF alone
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import StringConstraints

from service import codec
from service.api.deps import OwnerDep, SimulationsDep
from service.api.errors import problem_responses
from service.api.negotiation import NETCDF, NPZ
from service.api.representations import BINARY, VARY_ACCEPT, accepted, encoder, selected, streamed
from service.jobs.store import JobRow
from service.schemas import Trajectory

router = APIRouter(prefix="/v1/simulations", tags=["simulations"])

JobId = Annotated[str, Path(description="The simulation id.")]
Fields = Annotated[list[Annotated[str, StringConstraints(pattern=r"[^,\s]")]] | None, Query(
    min_length=1, description="Only these top-level members, e.g. `time,loss,modes` (comma-separated or repeated; "
                              "each value names at least one).")]
Every = Annotated[int | None, Query(ge=1, description="Keep every k-th record (0, k, 2k, …) and the last one.")]

_SELECTION = """\
**Only what you need:** `fields=time,loss,modes` keeps those top-level members (comma-separated or repeated);
`every=k` keeps records 0, k, 2k, … and always the last one (per-record members: time, step, loss, excess_loss,
product, weights, balance_drift, gradient_norm, distance_to_optimum, similarity, modes.strength, modes.theory).
Only the arrays of the members asked for are read from the store, one at a time, and the body is streamed as it
is made."""

_TRAJECTORY_DESCRIPTION = f"""\
The recorded trajectory of a succeeded simulation. **Partial trajectories** (`"partial": true`): while the simulation
runs, its records so far (`time`, `step`, `loss`, `excess_loss`, `test_loss`, `modes.strength` of the first 64 modes;
`outcome` "running"; the other members null until it ends); after a cancel, the records up to the cancellation
(every member, `outcome` "stopped"). 409 while it is queued or has no record yet (with Retry-After), and for a
failed simulation.

**Representations** (content negotiation on `Accept`): `application/json` (default; the Trajectory schema),
`application/x-npz` (NumPy arrays) or `application/x-netcdf` (netCDF-3 with named dimensions and the request and
provenance as attributes: `xarray.open_dataset`); anything else is a 406 problem. All are made from the stored
arrays. `…/trajectory.npz` and `…/trajectory.nc` serve one representation each.

{_SELECTION}

{codec.NPZ_LAYOUT}"""

_NETCDF_DESCRIPTION = f"""\
The recorded trajectory as netCDF-3 (64-bit offsets): every array of the .npz layout as a variable with named
dimensions (`time`, `mode`, `output`, `input`, `unit_l` for layer widths …), `mode` (1…k) and, for GD, `step` as
coordinates, each variable's `description`; the request, the provenance, name and tags as global attributes (JSON
text, UTF-8). `xarray.open_dataset(io.BytesIO(body))` loads it (scipy engine). netCDF-3 has no 64-bit integers:
integers are int32, flags int8. Partial while the simulation runs and after a cancel, as `get_trajectory`.

{_SELECTION}"""


def _attributes(row: JobRow) -> dict[str, str]:
    """The simulation's request, provenance and labels, for the netCDF file's global attributes."""
    return {"simulation": row.id, "request": bytes(row.request).decode(),
            "provenance": orjson.dumps(row.provenance or {}).decode(), "name": row.name or "",
            "tags": orjson.dumps(list(row.tags)).decode()}


async def _serve(simulations: SimulationsDep, owner: str | None, job_id: str, media: str, fields: list[str] | None,
                 every: int | None) -> Response:
    kept = selected(fields)
    attributes = _attributes(await simulations.get(job_id, owner)) if media == NETCDF else None
    pieces = await simulations.stream_trajectory(job_id, owner, kept, encoder(media, kept, every, attributes))
    return streamed(pieces, media, f"trajectory-{job_id}")


@router.get(
    "/{job_id}/trajectory",
    response_model=None,
    summary="Get the trajectory of a simulation (JSON, .npz or netCDF; partial while it runs)",
    description=_TRAJECTORY_DESCRIPTION,
    responses={200: {"model": Trajectory, "description": "The recorded trajectory (JSON, or .npz or netCDF on "
                                                         "request).",
                     "content": {NPZ: {"schema": BINARY}, NETCDF: {"schema": BINARY}},
                     "headers": VARY_ACCEPT},
               **problem_responses(404, 406, 409, 422)},
)
async def get_trajectory(job_id: JobId, request: Request, simulations: SimulationsDep, owner: OwnerDep,
                         fields: Fields = None, every: Every = None) -> Response:
    return await _serve(simulations, owner, job_id, accepted(request.headers.get("accept")), fields, every)


@router.get(
    "/{job_id}/trajectory.npz",
    response_class=Response,
    summary="Get the trajectory of a simulation as a .npz archive",
    description=f"The trajectory as the `.npz` of `get_trajectory` (same `fields`, `every`; partial while the "
                f"simulation runs and after a cancel, as there).\n\n{codec.NPZ_LAYOUT}",
    responses={200: {"description": "The .npz archive.", "content": {NPZ: {"schema": BINARY}}},
               **problem_responses(404, 409, 422)},
)
async def get_trajectory_npz(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep, fields: Fields = None,
                             every: Every = None) -> Response:
    return await _serve(simulations, owner, job_id, NPZ, fields, every)


@router.get(
    "/{job_id}/trajectory.nc",
    response_class=Response,
    summary="Get the trajectory of a simulation as netCDF (for xarray)",
    description=_NETCDF_DESCRIPTION,
    responses={200: {"description": "The netCDF-3 file.", "content": {NETCDF: {"schema": BINARY}}},
               **problem_responses(404, 409, 422)},
)
async def get_trajectory_netcdf(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep, fields: Fields = None,
                                every: Every = None) -> Response:
    return await _serve(simulations, owner, job_id, NETCDF, fields, every)
