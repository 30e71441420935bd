"""Strict requests on every route (service.api.strict): an unknown query parameter is a 400 problem naming it and the
route's known ones; an Accept header that no representation of the route matches is a 406."""

from __future__ import annotations

import re

import pytest

from service.openapi_export import current_schema
from tests.api.conftest import assert_problem, small_request
from tests.support.real_runs import CORRELATIONS_EXACT, create_finished, run_document

pytestmark = pytest.mark.anyio

# a value for each path parameter of the app's routes
PATH_VALUES = {"job_id": "some-id", "sweep_id": "some-id", "k": "0", "name": "hierarchy", "slug": "not-found"}


# routes the OpenAPI document leaves out
HIDDEN = [("GET", "/problems/{slug}"), ("GET", "/docs"), ("GET", "/redoc")]


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app: the OpenAPI document's operations and the hidden pages."""
    ops = [(method.upper(), path) for path, item in current_schema()["paths"].items() for method in item] + HIDDEN
    return [(method, re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)) for method, path in ops]


async def test_an_unknown_query_parameter_is_a_400_naming_it_and_the_known_ones(service):
    job = await create_finished(service, CORRELATIONS_EXACT, run_document(CORRELATIONS_EXACT))
    body = assert_problem(await service.client.get(f"/v1/simulations/{job}/plot.svg?logtime=true"), 400,
                          "unknown-query-parameter")
    (error,) = body["errors"]
    assert error["field"] == ["logtime"] and error["in"] == "query" and error["code"] == "unknown_parameter"
    assert "'logtime'" in body["detail"] and "time_scale" in body["detail"] and "kind" in body["detail"]
    assert "did you mean 'log_time'?" in error["fix"]


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/simulations/{job}/trajectory?feilds=loss", "feilds"),
    ("/v1/simulations/{job}/plot.svg?format=png", "format"),
    ("/v1/simulations?pagesize=5", "pagesize"),
    ("/v1/sweeps?status=queued&colour=red", "colour"),
    ("/healthz?verbose=1", "verbose"),
])
async def test_a_sample_of_routes_refuse_an_unknown_query_parameter(service, path, name):
    job = await create_finished(service, CORRELATIONS_EXACT, run_document(CORRELATIONS_EXACT))
    body = assert_problem(await service.client.get(path.format(job=job)), 400, "unknown-query-parameter")
    assert [e["field"] for e in body["errors"]] == [[name]]


async def test_every_route_refuses_an_unknown_query_parameter_before_anything_else(service):
    routes = _routes()
    assert len(routes) >= 20
    for method, path in routes:
        response = await service.client.request(method, path, params={"zz_unknown": "1"})
        body = assert_problem(response, 400, "unknown-query-parameter")
        assert body["errors"][0]["field"] == ["zz_unknown"], (method, path)


async def test_every_unknown_parameter_of_a_request_is_named(service):
    body = assert_problem(await service.client.get("/v1/simulations?a=1&b=2&a=3"), 400, "unknown-query-parameter")
    assert [e["field"] for e in body["errors"]] == [["a"], ["b"]]


async def test_known_query_parameters_are_still_taken(service):
    response = await service.client.get("/v1/simulations", params={"page_size": 5, "status": "queued"})
    assert response.status_code == 200


async def test_an_accept_the_route_cannot_serve_is_a_406_naming_what_it_serves(service):
    body = assert_problem(await service.client.get("/v1/simulations", headers={"Accept": "text/csv"}), 406,
                          "not-acceptable")
    assert "application/json" in body["detail"] and body["errors"][0]["field"] == ["Accept"]


async def test_an_svg_plot_asked_for_as_png_is_a_406_pointing_at_the_svg(service):
    job = await create_finished(service, CORRELATIONS_EXACT, run_document(CORRELATIONS_EXACT))
    response = await service.client.get(f"/v1/simulations/{job}/plot.svg", headers={"Accept": "image/png"})
    body = assert_problem(response, 406, "not-acceptable")
    assert "image/svg+xml" in body["detail"]


@pytest.mark.parametrize("accept", ["*/*", "application/*", "application/json", "text/html, */*;q=0.8"])
async def test_wildcards_and_the_routes_own_type_are_acceptable(service, accept):
    assert (await service.client.get("/v1/simulations", headers={"Accept": accept})).status_code == 200


async def test_every_route_with_a_body_answers_406_to_an_accept_it_cannot_serve(service):
    for method, path in _routes():
        if method == "DELETE":      # 204: no body, any Accept
            continue
        response = await service.client.request(method, path, headers={"Accept": "application/x-unservable"})
        assert_problem(response, 406, "not-acceptable")


async def test_a_post_with_a_typo_in_its_query_is_refused_before_anything_is_queued(service):
    response = await service.client.post("/v1/simulations?wait=30", json=small_request())
    assert_problem(response, 400, "unknown-query-parameter")
    assert service.job_count() == 0


def test_the_openapi_document_gives_every_operation_its_400_and_each_with_a_body_its_406():
    schema = current_schema()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "unknown query parameter" in responses["400"]["description"], (path, method)
            if any(code.startswith("2") and r.get("content") for code, r in responses.items()):
                assert "406" in responses, (path, method)
