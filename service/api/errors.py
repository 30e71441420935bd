"""The one error model: RFC 9457 problem details (application/problem+json) for every 4xx/5xx.

    {"type": "/problems/validation-error", "title": "Invalid request", "status": 422,
     "detail": "data.sigma11[2]: row 2 has 3 entries but row 0 has 4",
     "instance": "/v1/simulations",
     "errors": [{"field": ["data", "sigma11", 2], "pointer": "/data/sigma11/2", "in": "body",
                 "code": "ragged_matrix", "message": "...", "fix": "..."}]}

Routes raise ``ProblemError``; pydantic and core (DynamicsError) errors are translated here, and a
catch-all handler turns anything unexpected into a bare 500 problem (the traceback goes to the log,
never to the client).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.security import security_headers
from service.dynamics.errors import DynamicsError
from service.jobs.store import StorageFullError
from service.problems import (
    MAX_FIELD_ERRORS,
    PROBLEM_MEDIA_TYPE,
    TITLES,
    dotted,
    dynamics_problem_body,
    field_error,
    problem_body,
)
from service.schemas import strip_union_tags

logger = logging.getLogger("service.api")


class ProblemError(Exception):
    """An error that becomes a problem+json response (raise it from routes and dependencies)."""

    def __init__(self, status: int, slug: str, detail: str, *, errors: Sequence[dict] | None = None,
                 headers: dict[str, str] | None = None, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title or TITLES.get(slug, "Error")
        self.detail = detail
        self.errors = list(errors or [])
        self.headers = headers or {}


def problem_response(request: Request | None, exc: ProblemError) -> JSONResponse:
    instance = request.url.path if request is not None else None
    body = problem_body(exc.status, exc.slug, exc.detail, instance=instance, errors=exc.errors, title=exc.title)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE)


# ------------------------------------------------------------------------------------------------
# pydantic errors -> field errors


def _number_token(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


_JSON_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                    list: "an array", dict: "an object", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(err: dict, name: str) -> tuple[str, str]:
    """(message, fix) for one pydantic error dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "this field is required", f"add {name}"
    if kind == "extra_forbidden":
        last = name.rsplit(".", 1)[-1]
        hint = " (the init parameter is spelled 'lambda')" if last == "lam" else ""
        return f"unknown field {last!r}{hint}", "remove it or fix its spelling (see the SimulationRequest schema)"
    if kind == "finite_number":
        token = _number_token(value)
        return (f"{token} is not allowed: every number must be finite",
                f"replace {token} with a finite number (JSON has no NaN/Infinity; literals beyond ±1.8e308 overflow)")
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_json_type(value)} {_short(value)}", \
            "send a JSON number without quotes (true/false are not numbers)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_json_type(value)} {_short(value)}", \
            "send a JSON integer without quotes or decimal point, e.g. 3"
    if kind == "bool_type":
        return f"expected true or false, got {_json_type(value)} {_short(value)}", "send true or false"
    if kind == "string_type":
        return f"expected a string, got {_json_type(value)}", "send a JSON string"
    if kind == "list_type":
        return f"expected an array, got {_json_type(value)}", "send a JSON array"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object, got {_json_type(value)}", "send a JSON object"
    if kind == "literal_error":
        return f"{_short(value)} is not allowed", f"use one of {ctx.get('expected', 'the documented values')}"
    if kind == "union_tag_invalid":
        return f"unknown {name} {ctx.get('tag')!r}", f"use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{name} is missing (it selects the variant)", f"add {name}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), None)
        relation = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}[kind]
        return f"must be {relation} {bound}, got {_short(value)}", f"give a value {relation} {bound}"
    if kind in ("too_short", "too_long"):
        return err["msg"], ("give at least {} item(s)".format(ctx.get("min_length"))
                            if kind == "too_short" else "give at most {} item(s)".format(ctx.get("max_length")))
    if kind in ("ragged_matrix", "empty_matrix", "matrix_shape"):
        return err["msg"], ctx.get("fix", "give a list of rows of equal length, each a list of numbers")
    return err.get("msg", "invalid value"), "see the SimulationRequest schema in the OpenAPI document"


def validation_field_errors(errors: Iterable[dict], *, where: str = "body",
                            prefix_len: int = 0) -> list[dict]:
    """Translate pydantic ``errors()`` into our field errors (union tags removed from the paths).

    ``prefix_len`` drops leading loc entries (FastAPI's "query"/"path"/"body" marker).
    """
    out = []
    for err in errors:
        loc = tuple(err.get("loc", ()))[prefix_len:]
        path = list(strip_union_tags(loc)) if where == "body" else list(loc)
        ctx = err.get("ctx") or {}
        if err["type"] == "ragged_matrix" and "row" in ctx:
            path.append(int(ctx["row"]))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append(str(ctx.get("discriminator", "kind")).strip("'"))
        name = dotted(path) if path else "the body"
        message, fix = _describe(err, name)
        if out and out[-1]["field"] == path:
            # One value failing every member of a plain union (e.g. strength: number | array).
            out[-1]["message"] += f"; or {message}"
            out[-1]["fix"] += f"; or {fix}"
            continue
        out.append(field_error(path, err["type"], message, fix, where))
    return out


def summarize(errors: Sequence[dict], total: int | None = None) -> str:
    """One-line detail: the first error, and how many more."""
    if not errors:
        return "the request is invalid"
    first = errors[0]
    text = f"{dotted(first['field'])}: {first['message']}"
    total = len(errors) if total is None else total
    if total > 1:
        text += f" (and {total - 1} more error{'s' if total > 2 else ''}; see errors)"
    return text


def validation_problem(errors: Sequence[dict], *, where: str = "body", prefix_len: int = 0) -> ProblemError:
    """422 problem from pydantic errors (capped at MAX_FIELD_ERRORS entries)."""
    errors = list(errors)
    fields = validation_field_errors(errors[:MAX_FIELD_ERRORS], where=where, prefix_len=prefix_len)
    return ProblemError(422, "validation-error", summarize(fields, len(errors)), errors=fields)


def dynamics_problem(exc: DynamicsError) -> ProblemError:
    """422 problem for a request the core refuses (shape, symmetry, PSD, exact conditions, limits, ...)."""
    body = dynamics_problem_body(exc)
    slug = body["type"].rsplit("/", 1)[-1]
    return ProblemError(422, slug, body["detail"], errors=body["errors"])


def idempotency_key_reused(key: str, resource: str) -> ProblemError:
    """422 for an Idempotency-Key the caller already used with a different request body; ``resource``
    names what the key created, e.g. "simulation <id>" or "sweep <id>" (POST /v1/simulations, /v1/sweeps)."""
    return ProblemError(
        422, "idempotency-key-reused", f"Idempotency-Key {key!r} was used for {resource} with a different request",
        errors=[field_error(["Idempotency-Key"], "idempotency_key_reused", "this key belongs to another request body",
                            "use a new Idempotency-Key for a new request, or resend the original body", "header")])


# ------------------------------------------------------------------------------------------------
# handlers


async def _problem_error_handler(request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(request, exc)


async def _request_validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own validation: query, path and header parameters (the body is parsed by the route).
    errors = list(exc.errors())
    fields = []
    for err in errors[:MAX_FIELD_ERRORS]:
        loc = tuple(err.get("loc", ()))
        where = str(loc[0]) if loc and loc[0] in ("query", "path", "header", "body", "cookie") else "body"
        fields += validation_field_errors([err], where=where, prefix_len=1 if loc and loc[0] == where else 0)
    if any(e.get("type") == "json_invalid" for e in errors):
        raise_exc = ProblemError(400, "malformed-json", "the request body is not valid JSON", errors=fields)
    else:
        raise_exc = ProblemError(422, "validation-error", summarize(fields, len(errors)), errors=fields)
    return problem_response(request, raise_exc)


_OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _allowed_methods(request: Request, allow: str | None) -> list[str]:
    """Every method served at this path: Starlette's 405 names only the first matching route's methods,
    and FastAPI has one route per method (DELETE /v1/simulations/{id} would say ``Allow: GET``), so the
    documented operations of the path are added (the OpenAPI document lists every one)."""
    methods = {m.strip().upper() for m in (allow or "").split(",") if m.strip()}
    path = request.url.path
    for template, item in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in item if m in _OPENAPI_METHODS}
    return sorted(methods)


async def _http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; see /docs for the API"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed_methods(request, headers.get("Allow"))
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
    problem = ProblemError(exc.status_code, slug, detail, headers=headers)
    if exc.status_code >= 500:
        problem.title = TITLES["internal"]
    return problem_response(request, problem)


# A full disk is freed by an operator, not in a second: clients wait this long before retrying.
STORAGE_FULL_RETRY_AFTER = 30


async def _storage_full_handler(request: Request, exc: StorageFullError) -> JSONResponse:
    logger.error("refused %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, ProblemError(
        507, "insufficient-storage",
        "the job store's disk is full (DLNSIM_DATA_DIR, or its DLNSIM_STORE_MAX_BYTES cap), so nothing was "
        "stored: retry after the Retry-After delay; the operator frees space by deleting old simulations or "
        "growing the volume", headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER)}))


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = ProblemError(500, "internal", "an unexpected error occurred; it has been logged")
    # Starlette sends this response from its outermost middleware, past SecurityHeadersMiddleware.
    problem.headers = security_headers(request.url.path, PROBLEM_MEDIA_TYPE)
    return problem_response(request, problem)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(StorageFullError, _storage_full_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


# ------------------------------------------------------------------------------------------------
# OpenAPI documentation of problem responses

_DESCRIPTIONS = {
    400: "Malformed JSON body",
    404: "No simulation with this id",
    406: "No representation matches the Accept header",
    409: "The simulation is not in a state that allows this",
    413: "Request body larger than the configured limit",
    415: "Body is not sent as application/json",
    422: "Invalid request: the errors list names each field, what is wrong and how to fix it",
    429: "Too many simulations queued; retry after the Retry-After delay",
    500: "Unexpected server error",
    503: "Job store or worker unreachable",
    507: "The job store's disk is full: nothing was stored; retry after the Retry-After delay",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting each code (and ``default``) as application/problem+json."""
    schema = {"$ref": "#/components/schemas/ProblemDetails"}
    out: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, 500):
        entry: dict[str, Any] = {"description": _DESCRIPTIONS.get(code, "Error"),
                                 "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        if code in (429, 503, 507):
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying",
                                                "schema": {"type": "integer"}}}
        out[code] = entry
    out["default"] = {"description": "Any other error", "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
    return out
