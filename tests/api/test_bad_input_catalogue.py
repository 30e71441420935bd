"""The catalogue of bad input: every class of bad request in one table, each answered with the right 4xx
application/problem+json whose errors[] name the field and say how to fix it; after each, the service is
healthy and nothing was created (no simulation or sweep stored, nothing submitted to the engine).

Some classes are also tested in detail in test_validation.py; this is the one place listing them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.api.conftest import assert_problem, small_request

pytestmark = pytest.mark.anyio

BODY_LIMIT = 256 * 1024


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_body_bytes": BODY_LIMIT}


@dataclass(frozen=True)
class Bad:
    """One bad request and the answer it must get."""

    body: bytes | dict
    status: int
    slug: str
    field: list                     # errors[].field of the error that names the culprit
    code: str | None = None         # and its code, where the class has one
    route: str = "/v1/simulations"
    headers: dict = field(default_factory=dict)


def corr(sigma11: Any, sigma31: Any, **more: Any) -> dict:
    return small_request(data={"kind": "correlations", "sigma11": sigma11, "sigma31": sigma31, **more})


def dataset(x: Any, y: Any) -> dict:
    return small_request(data={"kind": "dataset", "x": x, "y": y}, network={"hidden": []})


def gd(**training: Any) -> dict:
    return small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 100, **training})


def with_token(path_value: str) -> bytes:
    """small_request with a raw JSON token in place of training.learning_rate (NaN, 1e400, ...)."""
    return orjson.dumps(gd(learning_rate=12345.678)).replace(b"12345.678", path_value.encode())


def nested(depth: int) -> bytes:
    return b'{"data": {"kind": "correlations", "sigma11": ' + b"[" * depth + b"]" * depth + b"}}"


SWEEP = {"base": small_request(), "grid": {"init.seed": [0, 1]}}
EYE2 = [[1.0, 0.0], [0.0, 1.0]]

CATALOGUE: dict[str, Bad] = {
    # --- malformed JSON (400) and the wrong media type (415)
    "malformed_truncated": Bad(b'{"data": {', 400, "malformed-json", [], "json_invalid"),
    "malformed_trailing_comma": Bad(b'{"data": 1,}', 400, "malformed-json", [], "json_invalid"),
    "malformed_single_quotes": Bad(b"{'data': 1}", 400, "malformed-json", [], "json_invalid"),
    "malformed_not_utf8": Bad(b"\xff\xfe{}", 400, "malformed-json", [], "json_invalid"),
    "malformed_empty_body": Bad(b"", 400, "malformed-json", [], "empty_body"),
    "malformed_sweep": Bad(b'{"base": ', 400, "malformed-json", [], "json_invalid", route="/v1/sweeps"),
    "not_json_media_type": Bad(small_request(), 415, "unsupported-media-type", ["Content-Type"],
                               headers={"content-type": "text/plain"}),
    "top_level_array": Bad(b"[1, 2]", 422, "validation-error", []),
    # --- NaN / Infinity tokens, and literals that overflow to infinity
    "nan_token": Bad(with_token("NaN"), 422, "validation-error", ["training", "learning_rate"], "finite_number"),
    "infinity_token": Bad(with_token("Infinity"), 422, "validation-error", ["training", "learning_rate"],
                          "finite_number"),
    "minus_infinity_in_matrix": Bad(orjson.dumps(corr(EYE2, [[1.0, 2.0]])).replace(b"2.0", b"-Infinity"), 422,
                                    "validation-error", ["data", "sigma31", 0, 1], "finite_number"),
    "nan_in_sweep_grid": Bad(orjson.dumps({**SWEEP, "grid": {"init.scale": [12345.678]}}).replace(b"12345.678", b"NaN"),
                             422, "validation-error", ["grid", "init.scale", 0], route="/v1/sweeps"),
    # --- ragged matrices (the row that differs is named)
    "ragged_sigma11": Bad(corr([[1.0, 0.0], [0.0]], [[1.0, 1.0]]), 422, "validation-error",
                          ["data", "sigma11", 1], "ragged_matrix"),
    "ragged_x": Bad(dataset([[1.0, 2.0], [3.0]], [[1.0], [2.0]]), 422, "validation-error", ["data", "x", 1],
                    "ragged_matrix"),
    "ragged_given_weights": Bad(small_request(init={"scheme": "given", "weights": [[[0.1, 0.2], [0.3]], [[0.1, 0.2]]]}),
                                422, "validation-error", ["init", "weights", 0, 1], "ragged_matrix"),
    "empty_matrix_row": Bad(corr([[]], [[1.0]]), 422, "validation-error", ["data", "sigma11", 0], "too_short"),
    # --- shapes that do not fit together
    "sigma31_width_not_n_in": Bad(corr(EYE2, [[1.0, 2.0, 3.0]]), 422, "invalid-simulation", ["data", "sigma31"]),
    "sigma11_not_square": Bad(corr([[1.0, 0.0]], [[1.0, 2.0]]), 422, "invalid-simulation", ["data", "sigma11"]),
    "sigma33_wrong_size": Bad(corr(EYE2, [[1.0, 0.0]], sigma33=EYE2), 422, "invalid-simulation", ["data", "sigma33"]),
    "x_and_y_rows_differ": Bad(dataset([[1.0], [2.0], [3.0]], [[1.0], [2.0]]), 422, "invalid-simulation",
                               ["data", "y"]),
    "given_weights_wrong_shape": Bad(small_request(init={"scheme": "given",
                                                         "weights": [[[0.1, 0.2]] * 3, [[0.1, 0.2]] * 2]}),
                                     422, "invalid-simulation", ["init", "weights", 1]),
    # --- Σ11 that is no covariance, Σ31 that no dataset has
    "sigma11_indefinite": Bad(corr([[1.0, 0.0], [0.0, -1.0]], [[1.0, 1.0]]), 422, "invalid-simulation",
                              ["data", "sigma11"], "not_psd"),
    "sigma11_not_symmetric": Bad(corr([[1.0, 0.5], [0.0, 1.0]], [[1.0, 1.0]]), 422, "invalid-simulation",
                                 ["data", "sigma11"], "not_symmetric"),
    "sigma31_outside_range_of_singular_sigma11": Bad(corr([[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0]]), 422,
                                                     "invalid-simulation", ["data", "sigma31"]),
    # --- absurd sizes
    "absurd_hidden_width": Bad(small_request(network={"hidden": [10**9]}), 422, "limit-exceeded",
                               ["network", "hidden", 0], "limit_exceeded"),
    "absurd_depth": Bad(small_request(network={"hidden": [2] * 1000}), 422, "limit-exceeded", ["network", "hidden"],
                        "limit_exceeded"),
    "absurd_steps": Bad(gd(steps=10**12), 422, "limit-exceeded", ["training", "steps"], "limit_exceeded"),
    "absurd_record_points": Bad(small_request(record={"points": 10**9}), 422, "limit-exceeded", ["record", "points"],
                                "limit_exceeded"),
    "absurd_dimension_preset": Bad(small_request(data={"kind": "preset", "name": "random_teacher", "n_in": 10**9}),
                                   422, "limit-exceeded", ["data", "n_in"], "limit_exceeded"),
    "absurd_preset_depth": Bad(small_request(data={"kind": "preset", "name": "hierarchy", "depth": 10**6}), 422,
                               "validation-error", ["data", "depth"], "less_than_equal"),
    "absurd_preset_branching": Bad(small_request(data={"kind": "preset", "name": "branching_diffusion",
                                                       "levels": 10**9, "branches": 10**9}),
                                   422, "limit-exceeded", ["data", "levels"], "limit_exceeded"),
    "absurd_sweep_size": Bad({**SWEEP, "grid": {"init.seed": list(range(200)), "init.scale": [0.1] * 100}}, 422,
                             "limit-exceeded", ["grid"], "limit_exceeded", route="/v1/sweeps"),
    # --- out of range values
    "zero_hidden_width": Bad(small_request(network={"hidden": [0]}), 422, "validation-error", ["network", "hidden", 0],
                             "greater_than_equal"),
    "zero_learning_rate": Bad(gd(learning_rate=0.0), 422, "validation-error", ["training", "learning_rate"],
                              "greater_than"),
    "negative_t_max": Bad(small_request(training={"method": "flow", "t_max": -1.0}), 422, "validation-error",
                          ["training", "t_max"], "greater_than"),
    "learning_rate_above_stability_bound": Bad(gd(learning_rate=5.0), 422, "unstable-learning-rate",
                                               ["training", "learning_rate"], "unstable_learning_rate"),
    # --- wrong types (strict: nothing is coerced)
    "string_for_number": Bad(gd(learning_rate="0.05"), 422, "validation-error", ["training", "learning_rate"],
                             "float_type"),
    "string_for_integer": Bad(gd(steps="100"), 422, "validation-error", ["training", "steps"], "int_type"),
    "bool_for_float": Bad(gd(learning_rate=True), 422, "validation-error", ["training", "learning_rate"], "float_type"),
    "float_for_int": Bad(gd(steps=100.5), 422, "validation-error", ["training", "steps"], "int_type"),
    "integral_float_for_int": Bad(gd(steps=100.0), 422, "validation-error", ["training", "steps"], "int_type"),
    "null_for_number": Bad(gd(learning_rate=None), 422, "validation-error", ["training", "learning_rate"],
                           "float_type"),
    "number_for_matrix": Bad(corr(1.0, [[1.0]]), 422, "validation-error", ["data", "sigma11"], "list_type"),
    "string_for_bool": Bad(small_request(record={"weights": "yes"}), 422, "validation-error", ["record", "weights"],
                           "bool_type"),
    "unknown_data_kind": Bad(small_request(data={"kind": "images"}), 422, "validation-error", ["data", "kind"],
                             "union_tag_invalid"),
    "missing_required_member": Bad({k: v for k, v in small_request().items() if k != "training"}, 422,
                                   "validation-error", ["training"], "missing"),
    # --- unknown fields
    "unknown_top_level_field": Bad(small_request(priority=1), 422, "validation-error", ["priority"], "extra_forbidden"),
    "unknown_nested_field": Bad(gd(lr=0.1), 422, "validation-error", ["training", "lr"], "extra_forbidden"),
    "unknown_deeply_nested_field": Bad(small_request(record={"points": 10, "pointz": 3}), 422, "validation-error",
                                       ["record", "pointz"], "extra_forbidden"),
    "unknown_sweep_field": Bad({**SWEEP, "parallel": True}, 422, "validation-error", ["parallel"], "extra_forbidden",
                               route="/v1/sweeps"),
    # --- huge numbers
    "literal_1e400": Bad(with_token("1e400"), 422, "validation-error", ["training", "learning_rate"], "finite_number"),
    "products_overflow_1e308": Bad(dataset([[1e200, 1e200], [1e200, -1e200]], [[1.0], [2.0]]), 422,
                                   "invalid-simulation", ["data", "x"], "non_finite"),
    "eigenvalue_1e308_makes_any_rate_unstable": Bad(corr([[1e308, 0.0], [0.0, 1e308]], [[1e308, 1e308]]), 422,
                                                    "unstable-learning-rate", ["training", "learning_rate"]),
    "seed_beyond_2_53": Bad(small_request(init={"scheme": "gaussian", "scale": 0.1, "seed": 2**53}), 422,
                            "validation-error", ["init", "seed"], "less_than_equal"),
    "integer_literal_of_5000_digits": Bad(orjson.dumps(gd(steps=7)).replace(b'"steps":7', b'"steps":' + b"9" * 5000),
                                          400, "malformed-json", [], "json_invalid"),
    # --- deep nesting (the parser's recursion limit, never a RecursionError)
    "deep_nesting_10000_arrays": Bad(nested(10_000), 400, "malformed-json", [], "json_invalid"),
    "deep_nesting_10000_objects": Bad(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "malformed-json", [],
                                      "json_invalid"),
    "deep_nesting_in_sweep_values": Bad(b'{"base": ' + orjson.dumps(small_request()) + b', "grid": {"init.seed": '
                                        + b"[" * 10_000 + b"]" * 10_000 + b"}}", 400, "malformed-json", [],
                                        "json_invalid", route="/v1/sweeps"),
    # --- oversize body
    "oversize_body": Bad(b'{"data": "' + b"x" * (BODY_LIMIT + 1) + b'"}', 413, "body-too-large", [], "body_too_large"),
    "oversize_sweep_body": Bad(b'{"base": "' + b"x" * (BODY_LIMIT + 1) + b'"}', 413, "body-too-large", [],
                               "body_too_large", route="/v1/sweeps"),
}


def _sweep_count(service: Any) -> int:
    rows, _ = service.app.state.sweep_store.list(page_size=100)
    return len(rows)


@pytest.mark.parametrize("case", list(CATALOGUE.values()), ids=list(CATALOGUE))
async def test_bad_input_gets_a_problem_naming_the_field_and_creates_nothing(service, case: Bad):
    content = case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
    headers = {"content-type": "application/json", **case.headers}
    response = await service.client.post(case.route, content=content, headers=headers)

    body = assert_problem(response, case.status, case.slug)
    named = [e for e in body["errors"] if e["field"] == case.field]
    assert named, f"no error names {case.field}: {body['errors']}"
    assert all(e["fix"].strip() for e in body["errors"]), body["errors"]
    if case.code is not None:
        assert case.code in {e["code"] for e in named}, named

    assert (await service.client.get("/healthz")).status_code == 200
    assert service.job_count() == 0
    assert _sweep_count(service) == 0
    assert service.engine.submitted == []
