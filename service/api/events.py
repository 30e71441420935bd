"""A simulation's live events, as Server-Sent Events (FastAPI's own ``EventSourceResponse``).

    GET /v1/simulations/{id}/events      text/event-stream: progress, record … , end

The handler only turns ``Simulations.follow``'s tuples into ``ServerSentEvent``s; the simulation is looked up in
a dependency, so that an unknown id is a 404 problem before the stream starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api.deps import OwnerDep, SimulationsDep
from service.api.errors import problem_responses
from service.jobs.store import JobRow

router = APIRouter(prefix="/v1/simulations", tags=["simulations"])

EVENTS_DESCRIPTION = """\
The simulation's live view as Server-Sent Events (`text/event-stream`), from its worker as it runs:

* `progress`: `{"step", "time", "progress", "loss", "test_loss", "eta_seconds"}` — about twice a second; `progress`
  in [0, 1], `step` and `time` where the run is (`step` null for flow and exact), `loss` and `test_loss` at the
  latest record (null when unknown), `eta_seconds` the seconds left at the pace so far (null at first);
* `record`: one per trajectory record as it is computed, `{"index", "time", "step", "loss", "excess_loss",
  "test_loss", "strength"}` (`strength`: the mode strengths u_α of the first 64 modes; the numbers are the finished
  trajectory's at that index, to round-off). A task sequence's records are on the whole run's clock, each with its
  own phase's task loss and the first task's mode strengths, as in its trajectory. The exact method sends none (it
  evaluates every record at once, at its end);
* `end`: `{"status", "outcome", "error"}` once the simulation has finished (succeeded, failed or cancelled), after
  which the stream closes. A client connecting after the end gets `end` at once.

Every event has an `id` (`<attempt>.<n>`); reconnecting with `Last-Event-ID` resumes after that event without gaps.
If the simulation ran again meanwhile (its worker died, or the service restarted), the stream starts over with the
new run's records (their `index` starts at 0 again). The first event carries `retry: 1000` (ms). Comments keep an
idle connection alive. While it runs, `GET …/trajectory` and the plots serve the records so far (`"partial": true`).
"""


async def followed_simulation(job_id: Annotated[str, Path(description="The simulation id.")],
                              simulations: SimulationsDep, owner: OwnerDep) -> JobRow:
    """The simulation to follow (404 problem before the stream starts)."""
    return await simulations.get(job_id, owner)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a simulation live (Server-Sent Events)",
    description=EVENTS_DESCRIPTION,
    responses={200: {"description": "The event stream (text/event-stream; events described above).",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               **problem_responses(404)},
)
async def get_simulation_events(
    row: Annotated[JobRow, Depends(followed_simulation)],
    simulations: SimulationsDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", max_length=200, description="Resume after this event (the id of the last event received).")] = None,
) -> AsyncIterable[ServerSentEvent]:
    async for event, event_id, data, retry in simulations.follow(row.id, owner, last_event_id):
        yield ServerSentEvent(event=event, id=event_id, data=data, retry=retry)
