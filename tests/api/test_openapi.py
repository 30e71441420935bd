"""The committed OpenAPI document is the app's, valid, and documents every route's problems."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from service.build import build_gradients, build_run
from service.limits import Limits
from service.openapi_export import DEFAULT_PATH, current_schema, render
from service.schemas import (
    GRADIENTS_EXAMPLES,
    REQUEST_EXAMPLES,
    GradientsRequest,
    SimulationRequest,
)

OPERATIONS = {"create_simulation", "get_simulation", "get_trajectory", "cancel_simulation", "delete_simulation",
              "list_simulations", "healthz", "readyz", "get_simulation_plot", "list_presets", "get_preset",
              "create_sweep", "get_sweep", "list_sweep_results", "get_sweep_point_trajectory", "cancel_sweep",
              "delete_sweep", "list_sweeps", "get_sweep_plot", "compute_gradients", "get_trajectory_npz",
              "get_trajectory_netcdf", "service_info", "get_simulation_events",
              "get_simulation_plot_png", "get_simulation_plot_pdf", "get_sweep_plot_png", "get_sweep_plot_pdf",
              "get_sweep_point_plot", "get_sweep_point_plot_png", "get_sweep_point_plot_pdf",
              "get_comparison_plot", "get_comparison_plot_png", "get_comparison_plot_pdf"}


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
    ("/v1/simulations/{job_id}/plot.svg", "get", {"400", "404", "406", "409", "422"}),
    ("/v1/simulations/{job_id}/plot.png", "get", {"400", "404", "406", "409", "422"}),
    ("/v1/plots/compare.pdf", "get", {"400", "404", "406", "409", "422"}),
    ("/v1/presets/{name}", "get", {"404", "422"}),
    ("/v1/simulations/{job_id}/cancel", "post", {"404"}),
    ("/v1/simulations/{job_id}", "delete", {"404"}),
    ("/v1/simulations", "get", {"422"}),
    ("/readyz", "get", {"503"}),
    ("/v1/gradients", "post", {"400", "413", "415", "422"}),
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


def test_gradients_route_takes_a_gradients_request_and_answers_gradients(schema):
    post = schema["paths"]["/v1/gradients"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/GradientsRequest"}
    assert body["examples"]  # documented with an example
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Gradients"}


def test_gradients_examples_are_valid_requests():
    for example in GRADIENTS_EXAMPLES.values():
        build_gradients(GradientsRequest.model_validate(example["value"]), Limits())  # raises if the core would refuse it


def test_request_examples_are_valid_requests():
    for name, example in REQUEST_EXAMPLES.items():
        request = SimulationRequest.model_validate(example["value"])
        build_run(request)  # raises if the core would refuse it
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


# -- constraints the service enforces are in the schema, so generated clients and fuzzers know them -------


def _parameter(schema: dict, path: str, name: str) -> dict:
    (param,) = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
    return next(s for s in param["schema"]["anyOf"] if s["type"] == "array")


def test_plot_times_are_documented_non_negative_and_at_most_the_panel_count(schema):
    from service.plots import MAX_TIMES

    times = _parameter(schema, "/v1/simulations/{job_id}/plot.svg", "time")
    assert times["items"]["minimum"] == 0 and times["maxItems"] == MAX_TIMES


def test_trajectory_fields_are_documented_non_empty(schema):
    import re

    fields = _parameter(schema, "/v1/simulations/{job_id}/trajectory", "fields")
    assert fields["minItems"] == 1
    pattern = re.compile(fields["items"]["pattern"])
    assert pattern.search("time,loss") and not pattern.search("") and not pattern.search(" , ")


@pytest.mark.parametrize(("members", "valid"), [
    ({"grid": {"init.scale": [0.1]}}, True),
    ({"points": [{"init.scale": 0.1}]}, True),
    ({"grid": {"init.scale": [0.1]}, "points": None}, True),   # a sweep resource echoes the other as null
    ({}, False),
    ({"grid": None, "points": None}, False),
    ({"grid": {"init.scale": [0.1]}, "points": [{"init.scale": 0.1}]}, False),
])
def test_sweep_request_schema_asks_for_exactly_one_of_grid_and_points(schema, members, valid):
    import jsonschema

    body = {"base": REQUEST_EXAMPLES["hierarchy_gd"]["value"], **members}
    validator = jsonschema.Draft202012Validator(
        {**schema["components"]["schemas"]["SweepRequest"], "components": schema["components"]})
    assert validator.is_valid(json.loads(json.dumps(body))) is valid


@pytest.mark.parametrize(("fmt", "media"), [("png", "image/png"), ("pdf", "application/pdf")])
def test_binary_plot_routes_answer_one_binary_media_type(schema, fmt, media):
    for path in (f"/v1/simulations/{{job_id}}/plot.{fmt}", f"/v1/sweeps/{{sweep_id}}/plot.{fmt}",
                 f"/v1/sweeps/{{sweep_id}}/points/{{k}}/plot.{fmt}", f"/v1/plots/compare.{fmt}"):
        content = schema["paths"][path]["get"]["responses"]["200"]["content"]
        assert content == {media: {"schema": {"type": "string", "format": "binary"}}}, path


def test_dpi_is_a_parameter_of_the_png_routes_only(schema):
    def names(path):
        return {p["name"] for p in schema["paths"][path]["get"]["parameters"]}

    assert "dpi" in names("/v1/simulations/{job_id}/plot.png") and "dpi" not in names("/v1/simulations/{job_id}/plot.svg")
    assert names("/v1/simulations/{job_id}/plot.svg") == {"job_id", "kind", "time_scale", "y_scale", "time", "log_time"}
