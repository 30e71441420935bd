"""schemathesis against the real app in-process (ASGI), with a real embedded Dask LocalCluster of one worker.

Bar: no 5xx, every response conforms to the OpenAPI document (status code documented, content type,
headers, body schema), schema-invalid requests are rejected, schema-valid ones are not refused by the
schema layer, and every error is a documented problem (/problems/<slug>) naming its fields with a fix.

Three tests share one running service:
  * test_stateless          every operation, positive and negative data, all built-in checks;
  * test_accepted_requests  POST /v1/simulations and /v1/sweeps with bodies that are mostly ACCEPTED
                            (tests/fuzz/strategies.py): jobs and sweeps really run on the worker;
  * test_stateful           schemathesis' state machine over the OpenAPI links (declared on the create
                            operations: get, trajectory, plot, cancel, delete; and those it infers),
                            on the accepted bodies, so ids are real; each scenario starts empty.
The profile (DLNSIM_FUZZ_PROFILE=ci|full, tests/fuzz/profiles.py) sets how many cases.
"""

from __future__ import annotations

import traceback
from typing import Any

import hypothesis
import orjson
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi

from service.main import create_app
from service.problems import PROBLEM_TYPE_PREFIX, PROBLEM_TYPES
from service.settings import Settings
from tests.fuzz import profiles
from tests.fuzz.strategies import simulation_request, sweep_request
from tests.support.waiting import wait_until

PROFILE = profiles.current()

# schemathesis' own generators use the random module inside strategies (its concern, not a finding here).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

# The app is built at import (schemathesis parametrizes from its schema); its lifespan (job store, Dask
# cluster) starts in the running_service fixture, with data_dir set to a fresh temporary directory first.
SETTINGS = Settings(workers=1, **profiles.LIMITS)
APP = create_app(SETTINGS)

# positive_data_acceptance: a schema-valid request may still be refused with 422 for what JSON Schema
# cannot say (matrices that do not fit together, an indefinite Σ11, exact-method conditions, limits);
# schema_layer_accepts_positive_data below makes sure such a 422 never comes from the schema layer itself. A 410:
# the stateful phase retries an Idempotency-Key after deleting what it created (the key is spent: not run again).
_CHECKS = {"enabled": True,
           "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "410", "422", "429"]}}


def _config(mode: str) -> Any:
    return schemathesis.Config.from_dict({
        "checks": _CHECKS,
        "generation": {"mode": mode, "deterministic": PROFILE.derandomize, "database": "none"},
        "phases": {"coverage": {"enabled": PROFILE.coverage_phase}},
    })


_CREATE = {("POST", "/v1/simulations"): simulation_request(), ("POST", "/v1/sweeps"): sweep_request()}


def accepted_bodies(context: Any, body: Any) -> st.SearchStrategy:
    """flatmap_body hook: the creating operations' bodies, mostly replaced by accepted requests."""
    op = context.operation
    accepted = _CREATE.get((op.method.upper(), op.path)) if op is not None else None
    if accepted is None:
        return st.just(body)
    return st.one_of(accepted, accepted, accepted, st.just(body))


def creation_headers(context: Any, headers: Any) -> st.SearchStrategy:
    """flatmap_headers hook: sometimes a short Prefer: wait (the 201 path) or an Idempotency-Key from a
    small pool (replays, and the same key with another body: 422)."""
    op = context.operation
    if op is None or (op.method.upper(), op.path) != ("POST", "/v1/simulations"):
        return st.just(headers)
    extra = st.sampled_from([{}, {"Prefer": "wait=1"}, {"Idempotency-Key": "fuzz-key-1"},
                             {"Idempotency-Key": "fuzz-key-2", "Prefer": "respond-async, wait=1"}])
    return extra.map(lambda more: {**(headers or {}), **more})


@schemathesis.hook("before_call")
def wait_until_ready(context: Any, case: Any, kwargs: Any) -> None:
    """before_call hook: fuzz a ready service. A worker that restarted (a poison request's crash) warms up
    (loads its GD kernels) before /readyz says ready; a case sent meanwhile would meet a documented 503."""
    with schemathesis_asgi.get_client(APP) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=180, interval=0.1)


def _schema(mode: str, *hooks: Any) -> Any:
    loaded = schemathesis.openapi.from_dict(APP.openapi(), config=_config(mode))
    loaded.app = APP
    for name, function in hooks:
        loaded.hooks.register_hook_with_name(function, name)
    return loaded


# Every operation, positive and negative data.
schema = _schema("all")
# Positive data; simulations and sweeps mostly accepted, with Prefer: wait and Idempotency-Key.
accepted_schema = _schema("positive", ("flatmap_body", accepted_bodies), ("flatmap_headers", creation_headers))
# The same bodies for the state machine, without the headers: whether a Prefer: wait ends in 201 or 202
# depends on the worker's timing, and Hypothesis requires a scenario to replay the same way.
stateful_schema = _schema("positive", ("flatmap_body", accepted_bodies))


# ------------------------------------------------------------------------------------------------
# checks of our own, on top of schemathesis' built-in ones

# pydantic error codes that JSON Schema expresses: a schema-valid request must never get one.
SCHEMA_LAYER_CODES = {
    "missing", "extra_forbidden", "float_type", "float_parsing", "int_type", "int_parsing", "int_from_float",
    "bool_type", "string_type", "list_type", "model_type", "model_attributes_type", "dict_type", "literal_error",
    "union_tag_invalid", "union_tag_not_found", "greater_than", "greater_than_equal", "less_than",
    "less_than_equal", "too_short", "too_long", "string_too_short", "string_too_long", "string_pattern_mismatch",
}


def error_is_a_documented_problem(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx is application/problem+json of a documented type whose field errors carry a fix."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/problem+json"), f"error served as {content_type!r}"
    body = orjson.loads(response.content)
    slug = str(body.get("type", "")).removeprefix(PROBLEM_TYPE_PREFIX)
    assert slug in PROBLEM_TYPES, f"problem type {body.get('type')!r} is not documented (service.problems)"
    assert body.get("status") == response.status_code, "problem status differs from the HTTP status"
    assert body.get("detail"), "problem without a detail"
    for error in body.get("errors", []):
        assert isinstance(error.get("field"), list), f"field error without a field path: {error}"
        assert error.get("fix"), f"field error without a fix: {error}"


def _at(document: Any, path: list) -> Any:
    for part in path:
        try:
            document = document[part]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def _integral_float(case: Any, error: dict) -> bool:
    """JSON Schema's ``integer`` admits 3.0; the service's strict types do not (README: 3.0 is not 3)."""
    value = _at(case.body, error.get("field", [])) if error.get("in") == "body" else None
    return error.get("code") == "int_type" and isinstance(value, float) and value.is_integer()


def schema_layer_accepts_positive_data(ctx: Any, response: Any, case: Any) -> None:
    """A request generated from the schema as VALID must not fail a check the schema could express:
    that would mean the OpenAPI document is looser (or stricter) than the validator."""
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE or response.status_code != 422:
        return
    body = orjson.loads(response.content)
    # A sweep point is the base with the point's values set: whether that request is valid (init.seed on
    # a given init...) is beyond the sweep's schema, and its errors start "point k (...)".
    drift = [e for e in body.get("errors", []) if e.get("code") in SCHEMA_LAYER_CODES
             and not _integral_float(case, e) and not str(e.get("message", "")).startswith("point ")]
    assert not drift, f"schema-valid request refused by the schema layer: {drift}"


OUR_CHECKS = [error_is_a_documented_problem, schema_layer_accepts_positive_data]


def _hypothesis_settings(examples: int) -> hypothesis.settings:
    # deadline None: response times vary on a shared 2-core machine (speed is bench/'s business).
    return hypothesis.settings(max_examples=examples, derandomize=PROFILE.derandomize, deadline=None,
                               database=None, suppress_health_check=list(hypothesis.HealthCheck))


def _record(test: str, case: Any, response: Any) -> None:
    profiles.STATS[(test, case.method.upper(), case.path, response.status_code)] += 1


# ------------------------------------------------------------------------------------------------
# the running service


@pytest.fixture(scope="module", autouse=True)
def running_service(tmp_path_factory) -> Any:
    SETTINGS.data_dir = tmp_path_factory.mktemp("fuzz-data")
    # schemathesis' pytest plugin ends every ASGI lifespan after each test item (one per operation), and each
    # new lifespan starts a new Dask cluster: one service for the module instead, ended here.
    shutdown_lifespans = schemathesis_asgi.shutdown_lifespans
    schemathesis_asgi.shutdown_lifespans = lambda: None
    try:
        with schemathesis_asgi.get_client(APP) as client:  # starts the lifespan: store, engine, 1-worker cluster
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=180, interval=0.2)
        yield
    finally:
        schemathesis_asgi.shutdown_lifespans = shutdown_lifespans
        shutdown_lifespans()


def clear_service() -> None:
    """Delete every simulation and sweep (through the API: running ones are cancelled first)."""
    with schemathesis_asgi.get_client(APP) as client:
        for collection in ("/v1/simulations", "/v1/sweeps"):
            while True:
                items = client.get(collection, params={"page_size": 100}).json()["items"]
                if not items:
                    break
                for item in items:
                    assert client.delete(f"{collection}/{item['id']}").status_code in (204, 404)


# ------------------------------------------------------------------------------------------------
# the tests


@schema.parametrize()
@_hypothesis_settings(PROFILE.stateless_examples)
def test_stateless(case: Any) -> None:
    response = case.call_and_validate(additional_checks=OUR_CHECKS)
    _record("stateless", case, response)


@accepted_schema.include(method="POST", path_regex=r"^/v1/(simulations|sweeps)$").parametrize()
@_hypothesis_settings(PROFILE.accepted_examples)
def test_accepted_requests(case: Any) -> None:
    response = case.call_and_validate(additional_checks=OUR_CHECKS)
    _record("accepted", case, response)


@pytest.mark.timeout(1800)
def test_stateful() -> None:
    # Replaying a failing scenario against a live service need not take the same path (a job that had
    # finished may not have yet), and Hypothesis then reports only "Flaky": keep the first real failure.
    failures: list[str] = []

    class Workflow(stateful_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every scenario starts from an empty service: links resolve against what this scenario
            # created, so a replay draws the same way.
            clear_service()

        def step(self, input: Any) -> Any:
            try:
                return super().step(input)
            except Exception as exc:
                case = input.case
                failures.append(f"{case.method} {case.path}: {type(exc).__name__}: {exc}\n"
                                + "".join(traceback.format_exception(exc)[-3:]))
                raise

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            _record("stateful", case, response)
            case.validate_response(response, additional_checks=OUR_CHECKS,
                                   transport_kwargs=kwargs or None, recorder=self.recorder)

    try:
        Workflow.run(settings=hypothesis.settings(
            _hypothesis_settings(PROFILE.stateful_scenarios), stateful_step_count=PROFILE.stateful_steps,
            phases=[hypothesis.Phase.generate]))
    except hypothesis.errors.Flaky:
        pytest.fail("stateful phase failed (then replayed differently):\n" + "\n".join(failures[:3]))
