"""The one error model: RFC 9457 problem details (application/problem+json) for every 4xx/5xx.

    {"type": "/problems/validation-error", "title": "Invalid request", "status": 422,
     "detail": "data.sigma11[2]: row 2 has 3 entries but row 0 has 4",
     "instance": "/v1/simulations",
     "errors": [{"field": ["data", "sigma11", 2], "pointer": "/data/sigma11/2", "in": "body",
                 "code": "ragged_matrix", "message": "...", "fix": "..."}]}

Every layer raises ``service.problems.ProblemError`` (pydantic's errors are put in our words by
``service.schemas.validation``, the core's by ``service.problems.dynamics_problem``); this module is the one place
that turns errors into responses: ProblemError, FastAPI's parameter validation, Starlette's HTTP errors, a full
store (507) and, as a bare 500 problem, anything unexpected (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from itertools import groupby
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.api.security import security_headers
from service.jobs.database import (
    IdempotencyKeySpent,
    StorageFullError,
    StoreBusyError,
    StoreDamagedError,
    classify,
)
from service.problems import (
    MAX_FIELD_ERRORS,
    PROBLEM_MEDIA_TYPE,
    TITLES,
    ProblemError,
    field_error,
    problem_body,
)
from service.schemas.validation import summarize, validation_field_errors

__all__ = ["ProblemError", "install_error_handlers", "problem_responses"]

logger = logging.getLogger("service.api")


def problem_response(request: Request | None, exc: ProblemError) -> JSONResponse:
    instance = request.url.path if request is not None else None
    body = problem_body(exc.status, exc.slug, exc.detail, instance=instance, errors=exc.errors, title=exc.title)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE)


# ------------------------------------------------------------------------------------------------
# handlers


async def _problem_error_handler(request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(request, exc)


def _parameter_kind(err: dict) -> tuple[str, int]:
    """(where the parameter is: query, path, header, body…, how many location entries name that)."""
    loc = tuple(err.get("loc", ()))
    where = str(loc[0]) if loc and loc[0] in ("query", "path", "header", "body", "cookie") else "body"
    return where, 1 if loc and loc[0] == where else 0


async def _request_validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own validation: query, path and header parameters (the body is parsed by the route).
    errors = list(exc.errors())
    fields = []
    for (where, prefix_len), run in groupby(errors[:MAX_FIELD_ERRORS], key=_parameter_kind):
        # a run of errors of one kind of parameter together: one value outside a union is then one error
        fields += validation_field_errors(list(run), where=where, prefix_len=prefix_len)
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


# A lock held by another connection is usually gone in seconds.
STORE_BUSY_RETRY_AFTER = 5


async def _store_busy_handler(request: Request, exc: StoreBusyError) -> JSONResponse:
    logger.warning("answered %s %s with 503: %s", request.method, request.url.path, exc)
    return problem_response(request, ProblemError(
        503, "unavailable", "the job store is locked by another connection (another process's transaction, a "
        "backup) for longer than this service waits: nothing was changed; retry after the Retry-After delay",
        headers={"Retry-After": str(STORE_BUSY_RETRY_AFTER)}))


async def _store_damaged_handler(request: Request, exc: StoreDamagedError) -> JSONResponse:
    store = getattr(request.app.state, "store", None)
    if store is not None:
        store.db.damaged = exc.reason  # /readyz says so from now on
    logger.error("answered %s %s with 503: %s", request.method, request.url.path, exc)
    return problem_response(request, ProblemError(503, "store-damaged", str(exc)))


async def _key_spent_handler(request: Request, exc: IdempotencyKeySpent) -> JSONResponse:
    return problem_response(request, ProblemError(
        410, "idempotency-key-spent", f"{exc}: its request was answered then and is not run again",
        errors=[field_error(["Idempotency-Key"], "idempotency_key_spent", str(exc),
                            "send a new Idempotency-Key to run the request again", "header")]))


async def _database_error_handler(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
    """An SQLite error raised outside ``Database.write`` (a read): typed by its code, else unexpected."""
    store = getattr(request.app.state, "store", None)
    path, timeout = (store.db.path, store.db.busy_timeout) if store is not None else ("the job store", 0.0)
    typed = classify(exc, path, timeout)
    if isinstance(typed, StoreBusyError):
        return await _store_busy_handler(request, typed)
    if isinstance(typed, StoreDamagedError):
        return await _store_damaged_handler(request, typed)
    if isinstance(typed, StorageFullError):
        return await _storage_full_handler(request, typed)
    return await _unhandled_handler(request, exc)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = ProblemError(500, "internal", "an unexpected error occurred; it has been logged")
    # Starlette sends this response from its outermost middleware, past SecurityHeadersMiddleware.
    problem.headers = security_headers(request.url.path, PROBLEM_MEDIA_TYPE)
    # Starlette re-raises the error after this answer and uvicorn then closes the connection: say so, or a pooled
    # client sends its next request on a socket about to close and cannot tell whether it was received.
    problem.headers["Connection"] = "close"
    return problem_response(request, problem)


async def _client_disconnect_handler(request: Request, exc: ClientDisconnect) -> Response:
    # A client that went away mid-upload: an ordinary event, not an error (no traceback; nobody reads the answer).
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400, headers={"Connection": "close"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(StorageFullError, _storage_full_handler)
    app.add_exception_handler(StoreBusyError, _store_busy_handler)
    app.add_exception_handler(StoreDamagedError, _store_damaged_handler)
    app.add_exception_handler(sqlite3.DatabaseError, _database_error_handler)
    app.add_exception_handler(IdempotencyKeySpent, _key_spent_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


# ------------------------------------------------------------------------------------------------
# OpenAPI documentation of problem responses

_DESCRIPTIONS = {
    400: "Malformed JSON body",
    404: "No simulation with this id",
    406: "No representation matches the Accept header",
    409: "The simulation is not in a state that allows this",
    410: "This Idempotency-Key created a simulation or sweep that has since been deleted: not run again",
    413: "Request body larger than the configured limit",
    415: "Body is not sent as application/json",
    422: "Invalid request: the errors list names each field, what is wrong and how to fix it",
    429: "Too many simulations queued; retry after the Retry-After delay",
    500: "Unexpected server error",
    503: "Job store or worker unreachable, the store locked, or the service busy validating large requests",
    507: "The job store's disk is full: nothing was stored; retry after the Retry-After delay",
}


def problem_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting each code (and ``default``) as application/problem+json; a route's own
    wording of a code as ``d404="..."``."""
    schema = {"$ref": "#/components/schemas/ProblemDetails"}
    out: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, 500):
        entry: dict[str, Any] = {"description": descriptions.get(f"d{code}") or _DESCRIPTIONS.get(code, "Error"),
                                 "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        if code in (429, 503, 507):
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying",
                                                "schema": {"type": "integer"}}}
        out[code] = entry
    out["default"] = {"description": "Any other error", "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
    return out
