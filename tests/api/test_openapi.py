"""The committed OpenAPI document is the app's, valid, and documents every route's problems."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from service.convert import build_simulation
from service.openapi_export import DEFAULT_PATH, current_schema, render
from service.schemas import REQUEST_EXAMPLES, SimulationRequest

OPERATIONS = {"create_simulation", "get_simulation", "get_trajectory", "cancel_simulation", "delete_simulation",
              "list_simulations", "healthz", "readyz", "get_simulation_plot", "list_presets", "get_preset",
              "create_sweep", "get_sweep", "list_sweep_results", "get_sweep_point_trajectory", "cancel_sweep",
              "delete_sweep", "list_sweeps", "get_sweep_plot"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return current_schema()


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_committed_openapi_matches_the_app(schema):
    committed = DEFAULT_PATH.read_text(encoding="utf-8") if DEFAULT_PATH.exists() else ""
    assert committed == render(schema), (
        "openapi/openapi.json differs from the app's schema: run `make openapi` and commit the result")


def test_committed_openapi_is_a_valid_openapi_document():
    validate(json.loads(DEFAULT_PATH.read_text(encoding="utf-8")))


def test_operation_ids_are_the_clean_names(schema):
    assert {op["operationId"] for _, _, op in _operations(schema)} == OPERATIONS


def test_every_error_response_is_a_documented_problem(schema):
    for path, method, op in _operations(schema):
        codes = {code for code in op["responses"] if code == "default" or code >= "400"}
        assert {"500", "default"} <= codes, (path, method)
        for code in codes:
            content = op["responses"][code]["content"]
            assert set(content) == {"application/problem+json"}, (path, method, code)
            assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}


@pytest.mark.parametrize(("path", "method", "codes"), [
    ("/v1/simulations", "post", {"400", "413", "415", "422", "429", "503"}),
    ("/v1/simulations/{job_id}", "get", {"404"}),
    ("/v1/simulations/{job_id}/trajectory", "get", {"404", "406", "409", "422"}),
    ("/v1/simulations/{job_id}/plot.svg", "get", {"404", "409", "422"}),
    ("/v1/presets/{name}", "get", {"404", "422"}),
    ("/v1/simulations/{job_id}/cancel", "post", {"404"}),
    ("/v1/simulations/{job_id}", "delete", {"404"}),
    ("/v1/simulations", "get", {"422"}),
    ("/readyz", "get", {"503"}),
])
def test_each_route_documents_its_problem_statuses(schema, path, method, codes):
    assert codes <= set(schema["paths"][path][method]["responses"])


def test_no_framework_validation_error_schema_leaks_in(schema):
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_success_responses_reference_the_resource_schemas(schema):
    paths = schema["paths"]
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    post = paths["/v1/simulations"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == ref("SimulationRequest")
    assert post["responses"]["202"]["content"]["application/json"]["schema"] == ref("Simulation")
    assert post["responses"]["201"]["content"]["application/json"]["schema"] == ref("Simulation")
    trajectory = paths["/v1/simulations/{job_id}/trajectory"]["get"]["responses"]["200"]
    assert trajectory["content"]["application/json"]["schema"] == ref("Trajectory")
    listing = paths["/v1/simulations"]["get"]["responses"]["200"]
    assert listing["content"]["application/json"]["schema"] == ref("SimulationList")


def test_request_examples_are_valid_requests():
    for name, example in REQUEST_EXAMPLES.items():
        request = SimulationRequest.model_validate(example["value"])
        build_simulation(request)  # raises if the core would refuse it
        assert name


def test_request_schema_carries_examples(schema):
    assert len(schema["components"]["schemas"]["SimulationRequest"]["examples"]) >= 2


def test_tagged_unions_are_documented_with_their_discriminators(schema):
    schemas = schema["components"]["schemas"]
    request = schemas["SimulationRequest"]["properties"]
    assert request["init"]["discriminator"]["propertyName"] == "scheme"
    assert request["training"]["discriminator"]["propertyName"] == "method"
    preset_union = [m for m in request["data"]["oneOf"] if "discriminator" in m]
    assert preset_union[0]["discriminator"]["propertyName"] == "name"
    assert schemas["HierarchyPreset"]["properties"]["depth"]["maximum"] == 10
