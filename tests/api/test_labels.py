"""Names and tags on simulations and sweeps (stored and returned, never part of the computation), the list filters,
and the provenance a simulation records."""

from __future__ import annotations

import orjson
import pytest

from tests.api.conftest import assert_problem, small_request

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


async def create(service, body: dict, **headers: str):
    return await service.client.post("/v1/simulations", content=orjson.dumps(body), headers={**JSON, **headers})


async def test_name_and_tags_are_stored_and_returned_beside_the_request(service):
    sim = (await create(service, {**small_request(), "name": "lazy, λ = −25", "tags": ["lazy", "lambda=-25"]})).json()
    assert (sim["name"], sim["tags"]) == ("lazy, λ = −25", ["lazy", "lambda=-25"])
    assert "name" not in sim["request"] and "tags" not in sim["request"]
    again = (await service.client.get(f"/v1/simulations/{sim['id']}")).json()
    assert (again["name"], again["tags"]) == (sim["name"], sim["tags"])


async def test_a_simulation_without_labels_has_no_name_and_no_tags(service):
    sim = (await create(service, small_request())).json()
    assert (sim["name"], sim["tags"]) == (None, [])


async def test_labels_are_not_part_of_the_request_an_idempotency_key_checks(service):
    first = await create(service, {**small_request(), "tags": ["a"]}, **{"Idempotency-Key": "k1"})
    replay = await create(service, {**small_request(), "tags": ["b"], "name": "x"}, **{"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"] and replay.json()["tags"] == ["a"]


@pytest.mark.parametrize(("labels", "field"), [
    ({"tags": ["has space"]}, ["tags", 0]),
    ({"tags": [""]}, ["tags", 0]),
    ({"tags": ["x" * 65]}, ["tags", 0]),
    ({"tags": [f"t{i}" for i in range(33)]}, ["tags"]),
    ({"name": ""}, ["name"]),
    ({"name": 3}, ["name"]),
])
async def test_bad_labels_are_a_422_naming_the_label(service, labels, field):
    body = assert_problem(await create(service, {**small_request(), **labels}), 422, "validation-error")
    assert body["errors"][0]["field"] == field


async def test_the_list_keeps_what_its_filters_name(service):
    lazy = (await create(service, {**small_request(), "name": "one", "tags": ["lazy"]})).json()
    rich = (await create(service, {**small_request(), "name": "two", "tags": ["rich", "lazy-ish"]})).json()
    flow = (await create(service, {**small_request(training={"method": "flow", "t_max": 1.0}), "tags": ["rich"]})).json()

    async def ids(**params) -> list[str]:
        response = await service.client.get("/v1/simulations", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(tag="lazy") == [lazy["id"]]
    assert await ids(tag="rich") == [flow["id"], rich["id"]]
    assert await ids(name="two") == [rich["id"]]
    assert await ids(method="flow") == [flow["id"]]
    assert await ids(method="gd", tag="rich") == [rich["id"]]
    assert await ids(created_after=rich["created_at"]) == [flow["id"]]
    assert await ids(created_after="2000-01-01") == [flow["id"], rich["id"], lazy["id"]]


@pytest.mark.parametrize(("params", "field"), [({"method": "adam"}, "method"), ({"created_after": "yesterday"},
                                                                                 "created_after")])
async def test_bad_list_filters_are_a_422_naming_the_parameter(service, params, field):
    body = assert_problem(await service.client.get("/v1/simulations", params=params), 422, "validation-error")
    assert body["errors"][0]["field"] == [field] and body["errors"][0]["in"] == "query"


async def test_a_bad_method_filter_lists_the_methods_in_its_fix(service):
    body = assert_problem(await service.client.get("/v1/simulations", params={"method": "adam"}), 422)
    assert all(f"'{m}'" in body["errors"][0]["fix"] for m in ("gd", "sgd", "flow", "exact"))


async def test_a_simulation_records_its_precision_before_a_worker_starts_it(service):
    sim = (await create(service, small_request(dtype="float32"))).json()
    assert sim["provenance"] == {"dtype": "float32"}


async def test_a_worker_start_merges_what_it_runs_with_into_the_provenance(service):
    sim = (await create(service, small_request())).json()
    service.store.mark_running(sim["id"], {"dlnsim": "1.2.3", "host_cores": 2})
    got = (await service.client.get(f"/v1/simulations/{sim['id']}")).json()["provenance"]
    assert got == {"dtype": "float64", "dlnsim": "1.2.3", "host_cores": 2}


async def test_sweeps_take_labels_and_filters_too(service):
    body = {"base": small_request(), "grid": {"init.seed": [0, 1]}, "name": "seeds", "tags": ["lazy"]}
    sweep = (await service.client.post("/v1/sweeps", content=orjson.dumps(body), headers=JSON)).json()
    assert (sweep["name"], sweep["tags"], sweep["provenance"]) == ("seeds", ["lazy"], {"dtype": "float64"})
    listed = (await service.client.get("/v1/sweeps", params={"tag": "lazy"})).json()["items"]
    assert [s["id"] for s in listed] == [sweep["id"]]
    assert (await service.client.get("/v1/sweeps", params={"tag": "rich"})).json()["items"] == []
