"""Sweeps over HTTP in process (the app with the engine double): a body, create, read the results, and a point
finished by hand in the sweep store, as a worker would finish it."""

from __future__ import annotations

import orjson

from tests.api.conftest import small_request
from tests.support.trajectories import packed


def sweep_body(grid=None, points=None, keep=None, base=None) -> dict:
    body = {"base": base or small_request()}
    if grid is not None:
        body["grid"] = grid
    if points is not None:
        body["points"] = points
    if keep is not None:
        body["keep"] = keep
    return body


async def post(service, body) -> object:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await service.client.post("/v1/sweeps", content=content, headers={"content-type": "application/json"})


async def create(service, **kwargs) -> dict:
    response = await post(service, sweep_body(**kwargs))
    assert response.status_code == 202, response.text
    return response.json()


def store(service):
    return service.app.state.sweep_store


async def results(service, sweep_id: str, **params) -> dict:
    response = await service.client.get(f"/v1/sweeps/{sweep_id}/results", params=params)
    assert response.status_code == 200, response.text
    return response.json()


SUMMARY = {"final_time": 5.0, "final_loss": 0.25, "final_excess_loss": 1e-9, "optimum_loss": 0.25,
           "final_distance_to_optimum": 1e-5, "final_strength": [2.0, 0.5], "learning_time": [1.5, None],
           "learning_time_theory": [1.4, 6.0], "theory_model": "saxe", "steps_to_convergence": 100,
           "time_to_convergence": 5.0, "diverged_at_step": None}


def finish(service, sweep_id: str, k: int, *, trajectory: dict | None = None, error: dict | None = None) -> None:
    result = {"k": k, "status": "failed" if error else "succeeded", "outcome": None if error else "converged",
              "summary": None if error else SUMMARY, "error": error,
              "trajectory": packed(trajectory) if trajectory is not None else None}
    store(service).mark_points_running(sweep_id, [k])
    assert store(service).finish_points(sweep_id, [result]) == 1
