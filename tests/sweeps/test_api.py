"""HTTP behaviour of /v1/sweeps in process, with the Engine test double: validation of the grid and of
every point, the documents, paging, cancel and delete. Sweeps stay queued here (the double has no Dask
client); finished points are written into the sweep store by the tests. Runs on a real cluster are in
test_cluster.py."""

from __future__ import annotations

import itertools

import orjson
import pytest

from tests.api.conftest import assert_problem, small_request
from tests.support.sweeps import SUMMARY, create, finish, post, results, store, sweep_body

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------------------------
# create and read


async def test_create_answers_202_with_location_counts_and_the_canonical_request(service):
    response = await post(service, sweep_body(grid={"init.scale": [0.01, 0.1], "init.seed": [0, 1, 2]}))
    assert response.status_code == 202
    sweep = response.json()
    assert response.headers["location"] == f"/v1/sweeps/{sweep['id']}"
    assert response.headers["retry-after"] == "1"
    assert (sweep["status"], sweep["size"], sweep["progress"], sweep["keep"]) == ("queued", 6, 0.0, "summary")
    assert sweep["counts"] == {"queued": 6, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    # the base is stored as validated: defaults filled in, so grid paths name fields that exist
    assert sweep["request"]["base"]["record"]["points"] == 200
    assert sweep["links"] == {"self": f"/v1/sweeps/{sweep['id']}", "results": f"/v1/sweeps/{sweep['id']}/results"}
    got = await service.client.get(response.headers["location"])
    assert got.status_code == 200 and got.json()["id"] == sweep["id"]


async def test_grid_points_are_the_product_of_the_axes_first_axis_slowest(service):
    grid = {"init.scale": [0.01, 0.1], "training.learning_rate": [0.01, 0.02, 0.05], "network.hidden": [[3], [2, 2]]}
    sweep = await create(service, grid=grid)
    rows = (await results(service, sweep["id"]))["items"]
    expected = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    assert [r["parameters"] for r in rows] == expected
    assert [r["index"] for r in rows] == list(range(12))
    assert all(r["status"] == "queued" and r["final_loss"] is None for r in rows)


async def test_explicit_points_run_in_the_order_given(service):
    points = [{"init.scale": 0.5, "init.seed": 3}, {"training.steps": 10}, {"init": {"scheme": "balanced"}}]
    sweep = await create(service, points=points)
    assert sweep["size"] == 3
    assert [r["parameters"] for r in (await results(service, sweep["id"]))["items"]] == points


async def test_points_that_share_shapes_and_method_share_a_group(service):
    sweep = await create(service, grid={"init.seed": [0, 1], "network.hidden": [[3], [4]]})
    rows, _ = store(service).points(sweep["id"])
    keys = [r.group_key for r in rows]
    assert keys[0] == keys[2] and keys[1] == keys[3] and keys[0] != keys[1]  # hidden is the second axis


# ------------------------------------------------------------------------------------------------
# validation: nothing is stored unless every point is valid


async def test_grid_above_the_point_limit_is_refused_naming_grid_and_the_limit(service):
    service.settings.max_sweep_points = 5
    response = await post(service, sweep_body(grid={"init.seed": [0, 1, 2], "init.scale": [0.1, 0.2]}))
    body = assert_problem(response, 422, "limit-exceeded")
    (error,) = body["errors"]
    assert error["field"] == ["grid"] and error["code"] == "limit_exceeded"
    assert "6 points" in error["message"] and "limit of 5" in error["message"]
    assert "DLNSIM_MAX_SWEEP_POINTS" in error["message"]
    assert store(service).list()[0] == []


async def test_kept_trajectories_above_the_trajectory_limit_are_refused(service):
    # 3 points × (200 records × (2·2 + 2·2 + 8 numbers) + the final weights, 3·2 + 2·3) = 9636 numbers
    service.settings.max_trajectory_values = 9635
    response = await post(service, sweep_body(grid={"init.seed": [0, 1, 2]}, keep="trajectories"))
    error = assert_problem(response, 422, "limit-exceeded")["errors"][0]
    assert error["field"] == ["keep"] and "9636" in error["message"]
    service.settings.max_trajectory_values = 9636
    assert (await post(service, sweep_body(grid={"init.seed": [0, 1, 2]}, keep="trajectories"))).status_code == 202


async def test_explicit_points_above_the_limit_are_refused(service):
    service.settings.max_sweep_points = 2
    response = await post(service, sweep_body(points=[{"init.seed": s} for s in range(3)]))
    assert assert_problem(response, 422, "limit-exceeded")["errors"][0]["field"] == ["points"]


async def test_invalid_value_is_named_by_its_grid_entry(service):
    response = await post(service, sweep_body(grid={"init.seed": [0, 1], "init.scale": [0.1, -1.0]}))
    body = assert_problem(response, 422, "validation-error")
    assert {tuple(e["field"]) for e in body["errors"]} == {("grid", "init.scale", 1)}  # reported once
    assert "point 1 (init.seed=0, init.scale=-1.0)" in body["errors"][0]["message"]
    assert store(service).list()[0] == []


async def test_unstable_learning_rate_point_is_refused_with_the_bound(service):
    response = await post(service, sweep_body(grid={"training.learning_rate": [0.05, 100.0]}))
    body = assert_problem(response, 422, "unstable-learning-rate")
    (error,) = body["errors"]
    assert error["field"] == ["grid", "training.learning_rate", 1]
    assert "stability bound" in error["message"] and "allow_unstable" in error["fix"]


async def test_invalid_explicit_point_is_named_by_its_index_and_path(service):
    response = await post(service, sweep_body(points=[{"network.hidden": [3]}, {"network.hidden": [0]}]))
    body = assert_problem(response, 422)
    assert body["errors"][0]["field"] == ["points", 1, "network.hidden", 0]


async def test_error_outside_the_swept_values_is_named_in_the_base(service):
    # aligned init takes no scale: the base's (defaulted) init.scale is what the point trips on
    response = await post(service, sweep_body(grid={"init.scheme": ["gaussian", "aligned"]}))
    body = assert_problem(response, 422)
    assert body["errors"][0]["field"] == ["base", "init", "scale"]
    assert body["errors"][0]["message"].startswith("point 1 (init.scheme='aligned')")


@pytest.mark.parametrize("path", ["init.sclae", "training.nothing.here", "network.hidden.5"])
async def test_parameter_path_that_names_no_field_is_refused(service, path):
    response = await post(service, sweep_body(grid={path: [1]}))
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["field"] == ["grid", path, 0]


async def test_malformed_parameter_path_is_refused(service):
    response = await post(service, sweep_body(grid={"init..scale": [1]}))
    error = assert_problem(response, 422)["errors"][0]
    assert (error["field"], error["code"]) == (["grid", "init..scale"], "invalid_parameter_path")


async def test_overlapping_axes_are_refused(service):
    response = await post(service, sweep_body(grid={"init": [{"scheme": "balanced"}], "init.scale": [1.0]}))
    assert assert_problem(response, 422)["errors"][0]["code"] == "overlapping_parameters"


async def test_grid_and_points_together_are_refused(service):
    response = await post(service, sweep_body(grid={"init.seed": [1]}, points=[{"init.seed": 1}]))
    assert assert_problem(response, 422)["errors"][0]["field"] == ["points"]


async def test_sweep_without_grid_or_points_is_refused(service):
    assert assert_problem(await post(service, sweep_body()), 422)["errors"][0]["field"] == ["grid"]


async def test_empty_axis_is_refused(service):
    response = await post(service, sweep_body(grid={"init.seed": []}))
    assert assert_problem(response, 422)["errors"][0]["field"] == ["grid", "init.seed"]


async def test_nan_in_the_grid_is_refused(service):
    body = orjson.dumps(sweep_body(grid={"init.scale": [0.1, 0.125]})).replace(b"0.125", b"NaN")
    response = await post(service, body)
    assert assert_problem(response, 422)["errors"][0]["field"] == ["grid", "init.scale", 1]


async def test_invalid_base_is_named_under_base_without_union_tags(service):
    base = small_request(data={"kind": "preset", "name": "hierarchy", "depth": 0})
    response = await post(service, sweep_body(base=base, grid={"init.seed": [1]}))
    assert assert_problem(response, 422)["errors"][0]["field"] == ["base", "data", "depth"]


async def test_malformed_json_is_a_400_problem(service):
    assert_problem(await post(service, b'{"base": '), 400, "malformed-json")


async def test_too_many_active_sweeps_is_429_with_retry_after(service):
    service.settings.max_active_sweeps = 1
    await create(service, grid={"init.seed": [1]})
    response = await post(service, sweep_body(grid={"init.seed": [2]}))
    assert_problem(response, 429, "queue-full")
    assert int(response.headers["retry-after"]) >= 1


# ------------------------------------------------------------------------------------------------
# results, trajectories


async def test_finished_point_reports_its_summary_and_the_sweep_its_progress(service):
    sweep = await create(service, grid={"init.seed": [0, 1, 2, 3]})
    finish(service, sweep["id"], 2)
    got = (await service.client.get(f"/v1/sweeps/{sweep['id']}")).json()
    assert (got["status"], got["progress"]) == ("running", 0.25)
    assert got["counts"]["succeeded"] == 1 and got["counts"]["queued"] == 3
    row = (await results(service, sweep["id"]))["items"][2]
    assert {k: row[k] for k in SUMMARY} == SUMMARY
    assert (row["status"], row["outcome"], row["links"]) == ("succeeded", "converged", {"trajectory": None})


async def test_sweep_succeeds_when_its_last_point_does(service):
    sweep = await create(service, grid={"init.seed": [0, 1]})
    for k in (0, 1):
        finish(service, sweep["id"], k)
    response = await service.client.get(f"/v1/sweeps/{sweep['id']}")
    got = response.json()
    assert (got["status"], got["progress"], got["error"]) == ("succeeded", 1.0, None)
    assert got["finished_at"] is not None and "retry-after" not in response.headers


async def test_a_failed_point_fails_the_sweep_and_its_error_is_reported(service):
    sweep = await create(service, grid={"init.seed": [0, 1]})
    finish(service, sweep["id"], 0)
    finish(service, sweep["id"], 1, error={"type": "/problems/internal", "title": "Internal server error",
                                           "status": 500, "detail": "worker died"})
    got = (await service.client.get(f"/v1/sweeps/{sweep['id']}")).json()
    assert got["status"] == "failed"
    assert got["error"]["status"] == 500 and "1 of 2 points failed" in got["error"]["detail"]
    assert "point 1: worker died" in got["error"]["detail"]
    rows = (await results(service, sweep["id"], status="failed"))["items"]
    assert [r["index"] for r in rows] == [1] and rows[0]["error"]["detail"] == "worker died"


async def test_results_page_through_every_point_once(service):
    sweep = await create(service, grid={"init.seed": list(range(5))})
    seen, token = [], None
    while True:
        params = {"page_size": 2, **({"page_token": token} if token else {})}
        page = await results(service, sweep["id"], **params)
        seen += [r["index"] for r in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == [0, 1, 2, 3, 4]


async def test_invalid_results_page_token_is_a_422_problem(service):
    sweep = await create(service, grid={"init.seed": [0]})
    response = await service.client.get(f"/v1/sweeps/{sweep['id']}/results", params={"page_token": "nope"})
    assert_problem(response, 422, "invalid-page-token")


async def test_kept_trajectory_is_linked_and_served_as_stored(service):
    sweep = await create(service, grid={"init.seed": [0, 1]}, keep="trajectories")
    document = {"time": [0.0, 1.0], "outcome": "completed"}
    finish(service, sweep["id"], 1, trajectory=document)
    row = (await results(service, sweep["id"]))["items"][1]
    assert row["links"]["trajectory"] == f"/v1/sweeps/{sweep['id']}/points/1/trajectory"
    response = await service.client.get(row["links"]["trajectory"])
    assert response.status_code == 200
    assert {name: value for name, value in response.json().items() if value is not None} == document
    queued = await service.client.get(f"/v1/sweeps/{sweep['id']}/points/0/trajectory")
    assert_problem(queued, 409, "not-finished")
    assert queued.headers["retry-after"] == "1"


async def test_corrupt_kept_trajectory_is_a_500_corrupt_result_saying_how_to_get_it_again(service):
    sweep = await create(service, grid={"init.seed": [0]}, keep="trajectories")
    finish(service, sweep["id"], 0, trajectory={"time": [0.0], "outcome": "completed"})
    with store(service).db.write() as conn:  # damage the stored bytes (the checksum must catch it)
        conn.execute("UPDATE sweep_trajectories SET data = ? WHERE sweep_id = ?", (b"garbage", sweep["id"]))
    response = await service.client.get(f"/v1/sweeps/{sweep['id']}/points/0/trajectory")
    detail = assert_problem(response, 500, "corrupt-result")["detail"]
    assert "/v1/simulations" in detail and "seeded" in detail
    assert (await service.client.get("/healthz")).status_code == 200


async def test_trajectory_of_a_summary_sweep_is_409_not_recorded_saying_how_to_get_it(service):
    sweep = await create(service, grid={"init.seed": [0]})
    finish(service, sweep["id"], 0)
    response = await service.client.get(f"/v1/sweeps/{sweep['id']}/points/0/trajectory")
    detail = assert_problem(response, 409, "not-recorded")["detail"]
    assert "not kept" in detail and 'keep: "summary"' in detail
    assert 'keep: "trajectories"' in detail and "as a simulation" in detail  # the two ways to get it
    assert "retry-after" not in response.headers  # waiting does not help: it will never be there


async def test_trajectory_of_a_point_beyond_the_sweep_is_404_naming_its_points(service):
    sweep = await create(service, grid={"init.seed": [0]}, keep="trajectories")
    body = assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}/points/1/trajectory"), 404)
    assert "0..0" in body["detail"]


# ------------------------------------------------------------------------------------------------
# unknown ids, list, cancel, delete


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/sweeps/{id}"), ("GET", "/v1/sweeps/{id}/results"), ("POST", "/v1/sweeps/{id}/cancel"),
    ("DELETE", "/v1/sweeps/{id}"), ("GET", "/v1/sweeps/{id}/points/0/trajectory")])
async def test_unknown_sweep_is_a_404_problem(service, method, path):
    response = await service.client.request(method, path.format(id="0" * 32))
    assert_problem(response, 404, "not-found")


async def test_list_is_newest_first_and_paged(service):
    ids = [(await create(service, grid={"init.seed": [s]}))["id"] for s in range(3)]
    first = (await service.client.get("/v1/sweeps", params={"page_size": 2})).json()
    assert [s["id"] for s in first["items"]] == ids[::-1][:2]
    rest = (await service.client.get("/v1/sweeps", params={"page_token": first["next_page_token"]})).json()
    assert [s["id"] for s in rest["items"]] == ids[:1] and rest["next_page_token"] is None
    queued = (await service.client.get("/v1/sweeps", params={"status": "succeeded"})).json()
    assert queued["items"] == []


async def test_cancel_keeps_finished_points_and_cancels_the_rest(service):
    sweep = await create(service, grid={"init.seed": [0, 1, 2]})
    finish(service, sweep["id"], 0)
    response = await service.client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 200
    got = response.json()
    assert got["status"] == "cancelled"
    assert got["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 2}
    assert [r["status"] for r in (await results(service, sweep["id"]))["items"]] == \
        ["succeeded", "cancelled", "cancelled"]
    again = await service.client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert again.json()["status"] == "cancelled"


async def test_delete_removes_the_sweep_and_its_points(service):
    sweep = await create(service, grid={"init.seed": [0, 1]})
    assert (await service.client.delete(f"/v1/sweeps/{sweep['id']}")).status_code == 204
    assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}"), 404)
    assert store(service).points(sweep["id"]) == ([], None)
