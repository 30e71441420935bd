"""Every class of bad input gets the right status, an application/problem+json body whose errors name the
field, and no job is created (nothing reaches the store or the engine)."""

from __future__ import annotations

import orjson
import pytest

from tests.api.conftest import assert_problem, small_request

pytestmark = pytest.mark.anyio


async def _post(service, body: bytes | dict, **headers: str):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers.setdefault("content-type", "application/json")
    return await service.client.post("/v1/simulations", content=content, headers=headers)


def _assert_nothing_created(service) -> None:
    assert service.job_count() == 0
    assert service.engine.submitted == []


def _only_error(body: dict) -> dict:
    assert len(body["errors"]) == 1, body["errors"]
    return body["errors"][0]


# ------------------------------------------------------------------------------------------------
# malformed bodies (400, 415)


@pytest.mark.parametrize("raw", [b'{"data": {', b"{'data': 1}", b'{"data": 1,}', b"\xff\xfe"])
async def test_malformed_json_is_a_400_problem(service, raw):
    body = assert_problem(await _post(service, raw), 400, "malformed-json")
    assert "not valid JSON" in body["detail"]
    _assert_nothing_created(service)


async def test_malformed_json_detail_gives_the_position(service):
    body = assert_problem(await _post(service, b'{"data": {"kind": "dataset",, }'), 400, "malformed-json")
    assert "line 1 column" in body["detail"]


async def test_empty_body_is_a_400_problem(service):
    body = assert_problem(await _post(service, b""), 400, "malformed-json")
    assert "empty" in body["detail"]
    _assert_nothing_created(service)


async def test_non_json_content_type_is_a_415_naming_the_header(service):
    response = await _post(service, small_request(), **{"content-type": "application/x-www-form-urlencoded"})
    body = assert_problem(response, 415, "unsupported-media-type")
    assert _only_error(body)["field"] == ["Content-Type"]
    assert "application/json" in body["errors"][0]["fix"]
    _assert_nothing_created(service)


async def test_top_level_array_is_a_422(service):
    body = assert_problem(await _post(service, b"[1, 2]"), 422, "validation-error")
    assert body["errors"][0]["field"] == []


# ------------------------------------------------------------------------------------------------
# NaN / Infinity


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_number_is_rejected_naming_its_position(service, token):
    raw = small_request()
    text = orjson.dumps(raw).decode().replace("[[1.0,0.0],[0.0,1.0]]", f"[[1.0,{token}],[0.0,1.0]]", 1)
    body = assert_problem(await _post(service, text.encode()), 422, "validation-error")
    error = _only_error(body)
    assert error["field"] == ["data", "sigma11", 0, 1]
    assert error["pointer"] == "/data/sigma11/0/1"
    assert error["code"] == "finite_number"
    expected = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "1e400": "Infinity"}[token]
    assert expected in error["message"]
    _assert_nothing_created(service)


async def test_nan_in_a_scalar_field_is_rejected(service):
    text = orjson.dumps(small_request()).decode().replace('"learning_rate":0.05', '"learning_rate":NaN')
    body = assert_problem(await _post(service, text.encode()), 422)
    assert _only_error(body)["field"] == ["training", "learning_rate"]


# ------------------------------------------------------------------------------------------------
# matrices


async def test_ragged_matrix_names_the_row(service):
    request = small_request(data={"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0], [1.0]],
                                  "sigma31": [[1.0, 0.0]]})
    body = assert_problem(await _post(service, request), 422, "validation-error")
    error = _only_error(body)
    assert error["field"] == ["data", "sigma11", 2]
    assert error["code"] == "ragged_matrix"
    assert "row 2 has 1 entries but row 0 has 2" in error["message"]
    assert "data.sigma11[2]" in body["detail"]
    _assert_nothing_created(service)


async def test_ragged_given_weights_name_the_layer_and_row(service):
    request = small_request(init={"scheme": "given", "weights": [[[1.0, 0.0], [0.0]], [[1.0]]]})
    body = assert_problem(await _post(service, request), 422)
    assert _only_error(body)["field"] == ["init", "weights", 0, 1]


async def test_empty_matrix_row_is_rejected(service):
    request = small_request(data={"kind": "dataset", "x": [[1.0], []], "y": [[1.0], [2.0]]})
    body = assert_problem(await _post(service, request), 422)
    assert _only_error(body)["field"] == ["data", "x", 1]


async def test_non_symmetric_sigma11_is_refused_by_the_core(service):
    request = small_request(data={"kind": "correlations", "sigma11": [[1.0, 0.5], [0.0, 1.0]],
                                  "sigma31": [[1.0, 0.0]]})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    error = _only_error(body)
    assert error["field"] == ["data", "sigma11"]
    assert error["code"] == "not_symmetric"
    assert error["fix"]
    _assert_nothing_created(service)


async def test_indefinite_sigma11_is_refused(service):
    request = small_request(data={"kind": "correlations", "sigma11": [[1.0, 2.0], [2.0, 1.0]],
                                  "sigma31": [[1.0, 0.0]]})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["code"] == "not_psd"
    _assert_nothing_created(service)


async def test_sigma31_of_the_wrong_width_is_refused(service):
    request = small_request(data={"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]],
                                  "sigma31": [[1.0, 0.0, 0.0]]})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["field"] == ["data", "sigma31"]


async def test_dataset_with_mismatched_rows_is_refused(service):
    request = small_request(data={"kind": "dataset", "x": [[1.0], [2.0]], "y": [[1.0]]})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["field"] == ["data", "y"]


async def test_given_weights_of_the_wrong_shape_name_the_layer(service):
    request = small_request(init={"scheme": "given", "weights": [[[1.0, 0.0]], [[1.0], [1.0]]]})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["field"][:3] == ["init", "weights", 0]


# ------------------------------------------------------------------------------------------------
# strict types, unknown and missing fields, tagged unions


@pytest.mark.parametrize(("path", "value", "code"), [
    (("training", "learning_rate"), True, "float_type"),
    (("training", "learning_rate"), "0.1", "float_type"),
    (("training", "steps"), "3", "int_type"),
    (("training", "steps"), 3.0, "int_type"),
    (("training", "steps"), True, "int_type"),
    (("network", "hidden"), [True], "int_type"),
    (("init", "seed"), 1.5, "int_type"),
    (("record", "weights"), 1, "bool_type"),
    (("record", "weights"), "true", "bool_type"),
])
async def test_strict_types_refuse_coercion(service, path, value, code):
    request = small_request(record={"points": 10})
    target = request
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    body = assert_problem(await _post(service, request), 422, "validation-error")
    error = _only_error(body)
    assert error["field"][:len(path)] == list(path)
    assert error["code"] == code
    _assert_nothing_created(service)


async def test_integer_where_a_number_is_expected_is_accepted(service):
    request = small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 10})
    request["data"]["sigma11"] = [[1, 0], [0, 1]]
    response = await _post(service, request)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["data"]["sigma11"] == [[1.0, 0.0], [0.0, 1.0]]


async def test_unknown_field_is_named(service):
    request = small_request()
    request["training"]["learning_rte"] = 0.1
    body = assert_problem(await _post(service, request), 422)
    error = _only_error(body)
    assert error["field"] == ["training", "learning_rte"]
    assert error["code"] == "extra_forbidden"
    assert "learning_rte" in error["message"]


async def test_unknown_top_level_field_is_named(service):
    body = assert_problem(await _post(service, {**small_request(), "seed": 3}), 422)
    assert _only_error(body)["field"] == ["seed"]


async def test_missing_required_field_is_named(service):
    request = small_request()
    del request["training"]["steps"]
    body = assert_problem(await _post(service, request), 422)
    error = _only_error(body)
    assert error["field"] == ["training", "steps"]
    assert error["code"] == "missing"


async def test_unknown_data_kind_names_the_tag_and_the_choices(service):
    body = assert_problem(await _post(service, small_request(data={"kind": "images"})), 422)
    error = _only_error(body)
    assert error["field"] == ["data", "kind"]
    assert "'dataset'" in error["fix"] and "'preset'" in error["fix"]


async def test_missing_training_method_is_named(service):
    body = assert_problem(await _post(service, small_request(training={"steps": 3})), 422)
    assert _only_error(body)["field"] == ["training", "method"]


async def test_unknown_preset_name_is_named(service):
    body = assert_problem(await _post(service, small_request(data={"kind": "preset", "name": "mnist"})), 422)
    error = _only_error(body)
    assert error["field"] == ["data", "name"]
    assert "hierarchy" in error["fix"]


async def test_preset_parameter_errors_use_the_inline_path(service):
    request = small_request(data={"kind": "preset", "name": "hierarchy", "depth": 0})
    body = assert_problem(await _post(service, request), 422)
    assert _only_error(body)["field"] == ["data", "depth"]


async def test_preset_parameter_rejected_by_the_core_uses_the_inline_path(service):
    # 3 singular values do not fit a 2 → 2 task: the core refuses it as data.params.singular_values.
    request = small_request(data={"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0],
                                  "n_in": 2, "n_out": 2})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["field"] == ["data", "singular_values"]


async def test_lambda_spelled_lam_is_pointed_out(service):
    request = small_request(init={"scheme": "lambda_balanced", "lam": 0.5})
    body = assert_problem(await _post(service, request), 422)
    assert "'lambda'" in _only_error(body)["message"]


async def test_one_bad_value_for_a_number_or_list_field_is_one_error(service):
    request = small_request(init={"scheme": "aligned", "strength": "small"})
    body = assert_problem(await _post(service, request), 422)
    assert _only_error(body)["field"] == ["init", "strength"]


@pytest.mark.parametrize(("path", "value"), [
    (("training", "learning_rate"), -0.1),
    (("training", "learning_rate"), 0.0),
    (("training", "steps"), 0),
    (("network", "hidden"), [3, 0]),
    (("init", "scale"), 0.0),
    (("init", "seed"), -1),
    (("record", "points"), 1),
])
async def test_non_positive_settings_are_refused_with_the_bound(service, path, value):
    request = small_request()
    target = request
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    body = assert_problem(await _post(service, request), 422, "validation-error")
    error = _only_error(body)
    assert error["field"][:len(path)] == list(path)
    assert error["fix"].startswith("give a value")
    _assert_nothing_created(service)


async def test_many_errors_are_all_listed(service):
    request = small_request()
    request["training"]["steps"] = "3"
    request["network"]["hidden"] = [0]
    request["dtype"] = "float16"
    body = assert_problem(await _post(service, request), 422)
    fields = {tuple(e["field"]) for e in body["errors"]}
    assert fields == {("training", "steps"), ("network", "hidden", 0), ("dtype",)}
    assert "and 2 more errors" in body["detail"]


async def test_a_flood_of_errors_is_capped(service):
    n = 300
    text = orjson.dumps(small_request(data={"kind": "dataset", "x": [[0.0]] * n, "y": [[0.0]] * n})).decode()
    text = text.replace("[0.0]", "[NaN]")
    body = assert_problem(await _post(service, text.encode()), 422)
    assert len(body["errors"]) == 50
    assert f"and {2 * n - 1} more errors" in body["detail"]


# ------------------------------------------------------------------------------------------------
# record times, learning rate, exact method


async def test_record_time_beyond_the_run_is_refused(service):
    request = small_request(record={"times": [1.0, 100.0]})  # the run ends at t = 0.05 · 100 = 5
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert _only_error(body)["field"] == ["record", "times"]


async def test_learning_rate_above_the_stability_bound_is_refused_with_the_bound(service):
    # Σ11 = I, s_max = 2, D = 2: the bound is 1/(D s_max^(2 − 2/D)) = 1/4 (docs/theory.md#gd-stability).
    request = small_request(training={"method": "gd", "learning_rate": 0.3, "steps": 100})
    body = assert_problem(await _post(service, request), 422, "unstable-learning-rate")
    error = _only_error(body)
    assert error["field"] == ["training", "learning_rate"]
    assert "0.25" in error["message"]
    assert "allow_unstable" in error["fix"]
    _assert_nothing_created(service)


async def test_allow_unstable_accepts_a_learning_rate_above_the_bound(service):
    request = small_request(training={"method": "gd", "learning_rate": 0.3, "steps": 100, "allow_unstable": True})
    response = await _post(service, request)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["training"]["allow_unstable"] is True


async def test_exact_method_outside_its_conditions_is_refused_before_queueing(service):
    # A random Gaussian init on a non-whitened task: no closed form applies.
    request = small_request(data={"kind": "correlations", "sigma11": [[2.0, 0.3], [0.3, 1.0]],
                                  "sigma31": [[2.0, 0.1], [0.2, 0.5]]},
                            training={"method": "exact", "t_max": 5.0})
    body = assert_problem(await _post(service, request), 422, "invalid-simulation")
    assert body["errors"][0]["code"] == "exact_not_applicable"
    assert body["errors"][0]["fix"]
    _assert_nothing_created(service)


# ------------------------------------------------------------------------------------------------
# limits


@pytest.mark.parametrize("settings_overrides", [{"max_steps": 50}])
async def test_steps_above_the_limit_are_refused_naming_the_limit(service):
    body = assert_problem(await _post(service, small_request()), 422, "limit-exceeded")
    error = _only_error(body)
    assert error["field"] == ["training", "steps"]
    assert "limit of 50" in error["message"]
    _assert_nothing_created(service)


@pytest.mark.parametrize("settings_overrides", [{"max_record_points": 20}])
async def test_record_points_above_the_limit_are_refused(service):
    body = assert_problem(await _post(service, small_request(record={"points": 21})), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["record", "points"]
    body = assert_problem(await _post(service, small_request(record={"times": [0.1] * 20})), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["record", "times"]


@pytest.mark.parametrize("settings_overrides", [{"max_dimension": 8}])
async def test_dimensions_above_the_limit_are_refused(service):
    body = assert_problem(await _post(service, small_request(network={"hidden": [9]})), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["network", "hidden", 0]
    x = [[0.0] * 9] * 2
    body = assert_problem(await _post(service, small_request(data={"kind": "dataset", "x": x, "y": [[1.0]] * 2})),
                          422, "limit-exceeded")
    assert _only_error(body)["field"] == ["data", "x"]
    preset = {"kind": "preset", "name": "hierarchy", "depth": 4}  # 16 items > 8
    body = assert_problem(await _post(service, small_request(data=preset)), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["data", "depth"]
    _assert_nothing_created(service)


@pytest.mark.parametrize("settings_overrides", [{"max_dimension": 1000}])
async def test_huge_preset_is_refused_before_it_is_built(service):
    # 2**(10**12) items would never finish computing, let alone allocating.
    preset = {"kind": "preset", "name": "branching_diffusion", "levels": 10**12}
    body = assert_problem(await _post(service, small_request(data=preset)), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["data", "levels"]


@pytest.mark.parametrize("settings_overrides", [{"max_layers": 3}])
async def test_depth_above_the_limit_is_refused(service):
    body = assert_problem(await _post(service, small_request(network={"hidden": [2, 2, 2]})), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["network", "hidden"]


@pytest.mark.parametrize("settings_overrides", [{"max_dataset_values": 30}])
async def test_dataset_above_the_limit_is_refused(service):
    data = {"kind": "dataset", "x": [[1.0, 0.0]] * 11, "y": [[1.0]] * 11}  # 11 × 3 = 33 values
    body = assert_problem(await _post(service, small_request(data=data)), 422, "limit-exceeded")
    assert _only_error(body)["field"] == ["data", "x"]


@pytest.mark.parametrize("settings_overrides", [{"max_trajectory_values": 1000}])
async def test_trajectory_above_the_limit_is_refused(service):
    # 2×2 task: 4 + 2·2 + 8 = 16 numbers per record; with weights 2·3 + 3·2 = 12 more.
    assert (await _post(service, small_request(record={"points": 60}))).status_code == 202
    body = assert_problem(await _post(service, small_request(record={"points": 60, "weights": True})),
                          422, "limit-exceeded")
    error = _only_error(body)
    assert error["field"] == ["record", "points"]
    assert "record.weights" in error["fix"]


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
async def test_oversize_body_is_a_413_before_parsing(service):
    big = b'{"data": ' + b" " * 4096 + b"}"
    body = assert_problem(await _post(service, big), 413, "body-too-large")
    assert "2048" in body["detail"]
    _assert_nothing_created(service)


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
async def test_oversize_chunked_body_without_length_is_a_413(service):
    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = await service.client.post("/v1/simulations", content=chunks(),
                                         headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body-too-large")
    _assert_nothing_created(service)


@pytest.mark.parametrize("settings_overrides", [{"max_queued": 2}])
async def test_full_queue_is_a_429_with_retry_after(service):
    for _ in range(2):
        assert (await _post(service, small_request())).status_code == 202
    response = await _post(service, small_request())
    body = assert_problem(response, 429, "queue-full")
    assert int(response.headers["retry-after"]) >= 1
    assert "limit is 2" in body["detail"]
    assert service.job_count() == 2
