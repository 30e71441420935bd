"""Real trajectories for in-process API tests: the core runs here (small problems, milliseconds), and the
document is stored as the worker would store it (tests/e2e cover the real engine)."""

from __future__ import annotations

from typing import Any

import orjson

from service import codec
from service.build import build_run
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest
from tests.support.trajectories import trajectory_document

HIERARCHY_GD = {
    "data": {"kind": "preset", "name": "hierarchy", "depth": 2},
    "network": {"hidden": [6]},
    "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
    "training": {"method": "gd", "learning_rate": 0.2, "steps": 400},
    "record": {"points": 60, "similarity": True},
}
CORRELATIONS_EXACT = {
    "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]]},
    "network": {"hidden": [3]},
    "init": {"scheme": "aligned", "strength": 0.01},
    "training": {"method": "exact", "t_max": 8.0},
    "record": {"points": 40, "spacing": "log"},
}
TEACHER_FLOW = {  # Σ11 ≠ cI and a random init: no analytic prediction applies
    "data": {"kind": "preset", "name": "random_teacher", "n_in": 4, "n_out": 3, "noise": 0.3},
    "network": {"hidden": [3]},
    "init": {"scheme": "gaussian", "scale": 0.05, "seed": 2},
    "training": {"method": "flow", "t_max": 10.0},
    "record": {"points": 30},
}


def run_document(request: dict[str, Any]) -> dict[str, Any]:
    """The Trajectory document of ``request``, as stored (through orjson, so nulls are nulls)."""
    spec = build_run(SimulationRequest.model_validate(request))
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    return orjson.loads(orjson.dumps(trajectory_document(traj)))


async def create_finished(service: Any, request: dict[str, Any], document: dict[str, Any] | None = None) -> str:
    """POST ``request`` (validated as usual) and store its real trajectory as the worker would; returns the id."""
    response = await service.client.post("/v1/simulations", content=orjson.dumps(request),
                                         headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    service.finish(job_id, document if document is not None else run_document(request))
    return job_id


def run_as_worker(service: Any, job_id: str) -> dict[str, Any]:
    """Run job ``job_id``'s stored request as a worker does (``tasks.simulate_request``: parse, build, simulate, pack)
    and store the result; returns the trajectory document GET serves. For requests whose stored form matters (an init
    the service filled in at admission, a sequence): everything between the store and the core is the real code."""
    from service.jobs.tasks import simulate_request

    row = service.store.get(job_id)
    outcome, blob = simulate_request(row.request)
    service.finish(job_id, blob, outcome)
    with service.store.open_result(job_id) as stored:
        return orjson.loads(codec.to_json(stored, codec.MEMBERS))


async def submit(service: Any, request: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """POST ``request`` to /v1/simulations; the response."""
    return await service.client.post("/v1/simulations", content=orjson.dumps(request),
                                     headers={"content-type": "application/json", **(headers or {})})


async def submit_and_run(service: Any, request: dict[str, Any], headers: dict[str, str] | None = None
                         ) -> tuple[str, dict[str, Any]]:
    """POST ``request`` (admitted as usual), run it as a worker does (``run_as_worker``); (its id, its trajectory)."""
    response = await submit(service, request, headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    return job_id, run_as_worker(service, job_id)
