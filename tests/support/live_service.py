"""A real service over HTTP: the requests the end-to-end and fault tests send, and what the core gives for them
called directly (to compare bit for bit: orjson writes the shortest repr that round-trips a float64)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
from threadpoolctl import threadpool_limits

from service.build import build_run
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest
from tests.support.trajectories import trajectory_document

TERMINAL = {"succeeded", "failed", "cancelled"}


def core_document(request: dict) -> dict:
    """What the core gives for this request, called directly, as the service would serialise it."""
    validated = SimulationRequest.model_validate_json(orjson.dumps(request))
    spec = build_run(validated)
    # One BLAS thread, like the workers: a different thread count may change summation order.
    with threadpool_limits(limits=1):
        traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    return orjson.loads(orjson.dumps(trajectory_document(traj), option=orjson.OPT_SERIALIZE_NUMPY))


def post(client: httpx.Client, request: dict, **headers: str) -> httpx.Response:
    return client.post("/v1/simulations", content=orjson.dumps(request),
                       headers={"content-type": "application/json", **headers})


def poll(client: httpx.Client, job_id: str, until, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        sim = client.get(f"/v1/simulations/{job_id}").json()
        if until(sim) or time.monotonic() > deadline:
            return sim
        time.sleep(0.1)


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# Tasks whose Σ11 is a multiple of I (so the exact solution applies to an aligned init), one per data kind.
DATASET = {"kind": "dataset",
           "x": [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],
           "y": [[1.0, 0.2], [0.3, -0.5], [-0.7, 0.1], [0.2, 0.9]]}
_S31 = np.array([[2.0, 0.0], [0.0, 0.5], [0.3, 0.1]])
CORRELATIONS = {"kind": "correlations", "sigma11": np.eye(2).tolist(), "sigma31": _S31.tolist(),
                "sigma33": (_S31 @ _S31.T + 0.1 * np.eye(3)).tolist()}
PRESET = {"kind": "preset", "name": "hierarchy", "depth": 2}

METHODS = {
    "gd": ({"scheme": "gaussian", "scale": 0.01, "seed": 3}, {"method": "gd", "learning_rate": 0.05, "steps": 400}),
    "flow": ({"scheme": "gaussian", "scale": 0.01, "seed": 3}, {"method": "flow", "t_max": 20.0}),
    "exact": ({"scheme": "aligned", "strength": 0.001}, {"method": "exact", "t_max": 20.0}),
}


def run_request(data: dict, method: str) -> dict:
    init, training = METHODS[method]
    return {"data": data, "network": {"hidden": [4]}, "init": init, "training": training,
            "record": {"points": 30, "weights": True}}


def long_request(steps: int = 1_000_000) -> dict:
    """A GD run that takes far longer than any test waits (~ms per step, no convergence for hours)."""
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 128, "n_out": 128, "n_samples": 256},
            "network": {"hidden": [256]}, "init": {"scheme": "gaussian", "scale": 0.001, "seed": 1},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": steps}, "record": {"points": 10}}


def medium_request() -> dict:
    """A GD run of a few seconds on one worker (long enough to crash the server in the middle of it)."""
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128},
            "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 2},
            "training": {"method": "gd", "learning_rate": 0.01, "steps": 60000}, "record": {"points": 50}}


def short_request(steps: int = 20_000) -> dict:
    """A GD run of a couple of seconds on one worker (64-128-64 random teacher)."""
    request = medium_request()
    request["training"]["steps"] = steps
    return request


def assert_problem_type(response: httpx.Response, status: int, slug: str) -> dict:
    """The response is problem+json of status ``status`` and type /problems/<slug>."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == f"/problems/{slug}", problem
    return problem
