"""Regression tests for what the schemathesis run (tests/fuzz) found: each test pins one fix."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.dynamics.problem import check_covariance
from service.main import create_app
from service.schemas import MAX_SEED, SweepRequest
from service.settings import Settings
from tests.api.conftest import assert_problem, small_request

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/v1/simulations", "GET, POST"),
    ("PATCH", "/v1/simulations/some-id", "DELETE, GET"),
    ("PUT", "/v1/sweeps/some-id", "DELETE, GET"),
    ("GET", "/v1/simulations/some-id/cancel", "POST"),
])
async def test_405_allow_header_lists_every_method_of_the_path(service, method, path, allow):
    # Starlette named only the first matching route's methods (FastAPI has one route per method):
    # PATCH /v1/simulations/{id} said "Allow: GET", hiding DELETE.
    response = await service.client.request(method, path)
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == allow


async def test_sweep_without_grid_or_points_has_its_own_error_code(service):
    # It was code "missing" on field grid, which claims grid is required (it is not: points will do).
    body = {"base": small_request()}
    response = await service.client.post("/v1/sweeps", content=orjson.dumps(body),
                                         headers={"content-type": "application/json"})
    error = assert_problem(response, 422, "validation-error")["errors"][0]
    assert (error["field"], error["code"]) == (["grid"], "grid_or_points_missing")


def test_sweep_parameter_paths_are_constrained_in_the_schema():
    # pydantic wrote the grid's and points' keys as patternProperties, which leaves any other key (with
    # any value) valid for JSON Schema, while the service refuses it.
    schema = SweepRequest.model_json_schema()
    grid = schema["properties"]["grid"]["anyOf"][0]
    point = schema["properties"]["points"]["anyOf"][0]["items"]
    for member in (grid, point):
        assert "patternProperties" not in member
        assert member["propertyNames"]["pattern"].startswith("^[A-Za-z_]")
        assert "additionalProperties" in member
    assert grid["additionalProperties"]["type"] == "array"


async def test_sweep_grid_key_that_is_not_a_parameter_path_is_refused(service):
    body = {"base": small_request(), "grid": {"not a path!": [1, 2]}}
    response = await service.client.post("/v1/sweeps", content=orjson.dumps(body),
                                         headers={"content-type": "application/json"})
    errors = assert_problem(response, 422, "validation-error")["errors"]
    assert any(e["code"] == "invalid_parameter_path" and e["field"][:1] == ["grid"] for e in errors), errors


def test_largest_seed_is_exact_as_a_double():
    # With 2^63 − 1, a validator comparing as doubles (JSON Schema tools, JavaScript) let 9223372036854775999
    # through and the service refused it.
    assert MAX_SEED == 2**53 - 1
    assert float(MAX_SEED) == MAX_SEED


async def test_seed_at_the_maximum_is_accepted(service):
    request = small_request(init={"scheme": "gaussian", "scale": 0.01, "seed": MAX_SEED})
    response = await service.client.post("/v1/simulations", content=orjson.dumps(request),
                                         headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text


def test_sigma11_near_the_largest_double_symmetrizes_without_overflow():
    # (a + aᵀ)/2 overflowed to inf for entries above 9e307, so an inf Σ11 passed the PSD check.
    a = np.diag([1.7e308, 1.0])
    assert np.array_equal(check_covariance(a, "sigma11", ("data", "sigma11")), a)


async def test_dataset_whose_products_overflow_is_refused_naming_x(service):
    # XᵀX overflowed to inf (with a RuntimeWarning) and the request was accepted.
    request = small_request(data={"kind": "dataset", "x": [[1e200, 1.0], [1.0, 1.0]], "y": [[1.0], [1.0]]},
                            network={"hidden": []})
    response = await service.client.post("/v1/simulations", content=orjson.dumps(request),
                                         headers={"content-type": "application/json"})
    error = assert_problem(response, 422, "invalid-simulation")["errors"][0]
    assert (error["field"], error["code"]) == (["data", "x"], "non_finite")
    assert service.job_count() == 0


def test_created_simulations_and_sweeps_link_to_what_can_be_done_next(tmp_path):
    # Without links, schemathesis' stateful phase never fetched a created simulation's trajectory or plot.
    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    created = spec["paths"]["/v1/simulations"]["post"]["responses"]
    for status in ("201", "202"):
        links = created[status]["links"]
        assert {link["operationId"] for link in links.values()} >= {"get_trajectory", "get_simulation_plot"}
        assert all(link["parameters"] == {"job_id": "$response.body#/id"} for link in links.values())
    sweep_links = spec["paths"]["/v1/sweeps"]["post"]["responses"]["202"]["links"]
    assert sweep_links["GetFirstPointTrajectory"]["parameters"] == {"sweep_id": "$response.body#/id", "k": "0"}
