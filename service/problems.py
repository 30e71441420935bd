"""RFC 9457 problem documents and ``ProblemError``, without any web framework (the worker builds them too).

A problem's ``type`` is a relative URI, ``/problems/<slug>``: it resolves against the service's own
address, where GET /problems/<slug> describes the problem type. Every layer raises ``ProblemError`` (the job
services, the routes); ``service.api.errors`` turns it into the application/problem+json response, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"
# A body with a million NaNs would otherwise produce a million-entry problem.
MAX_FIELD_ERRORS = 50

# slug -> (title, what it means and what to do)
PROBLEM_TYPES: dict[str, tuple[str, str]] = {
    "malformed-json": ("Malformed JSON", "The request body is not valid JSON; the detail gives the position."),
    "unsupported-media-type": ("Unsupported media type", "Send the body as JSON with Content-Type: application/json."),
    "validation-error": ("Invalid request", "Fields have the wrong type, are missing, unknown or out of range; "
                                            "errors[] names each one with a fix."),
    "invalid-simulation": ("The simulation cannot run as requested",
                           "The inputs are well-formed but inconsistent or outside the method's domain "
                           "(shapes, a non-symmetric or indefinite Σ11, exact-method conditions...)."),
    "limit-exceeded": ("Request exceeds a configured limit",
                       "A dimension, step count, record count or dataset size is above this service's limit."),
    "unstable-learning-rate": ("Learning rate above the stability bound",
                               "Gradient descent would diverge or oscillate at this learning rate; lower it, or "
                               "set training.allow_unstable to true to get the divergence as a result."),
    "idempotency-key-reused": ("Idempotency-Key reused with a different request",
                               "An Idempotency-Key identifies one request body; use a new key for a new request."),
    "invalid-page-token": ("Invalid page token", "Pass back a next_page_token exactly as received."),
    "not-found": ("Not found", "No such simulation (or route)."),
    "method-not-allowed": ("Method not allowed", "This route does not support the HTTP method used."),
    "not-finished": ("Trajectory not available", "The simulation has not succeeded (yet); poll it until "
                                                 "status is succeeded, or read its error."),
    "not-recorded": ("Not recorded", "The run succeeded but did not keep what was asked for (a simulation without "
                                     "record.similarity, record.kernel or record.sharpness, the tasks plot of a "
                                     "single task rather than a task sequence, a sweep point of a keep: summary "
                                     "sweep); run it again recording it."),
    "unknown-query-parameter": ("Unknown query parameter",
                                "The query string names a parameter this route does not take (a typo, or a parameter "
                                "of another route); errors[] names it and its fix lists the route's parameters."),
    "not-acceptable": ("Not acceptable", "No representation matches the Accept header; the route's description "
                                         "lists the media types it serves."),
    "body-too-large": ("Request body too large", "The request body is above this service's size limit."),
    "queue-full": ("Too many jobs queued", "Too many simulations (or sweeps) are queued or running; retry after "
                                           "the Retry-After delay."),
    "unauthorized": ("Missing or invalid API key", "This service requires an API key on /v1 routes: send "
                                                   "Authorization: Bearer <key>."),
    "too-many-active-jobs": ("Too many active jobs for this API key",
                             "This key already has DLNSIM_MAX_ACTIVE_PER_KEY simulations and sweeps queued or "
                             "running; retry after the Retry-After delay, or cancel some."),
    "compute-budget-exceeded": ("Compute budget exceeded", "This key's queued and running simulations and sweeps "
                                                           "already use DLNSIM_MAX_KEY_FLOPS of estimated compute; "
                                                           "retry after the Retry-After delay, or cancel some."),
    "storage-quota-exceeded": ("Storage quota exceeded", "This key's stored results, plus what its running work and "
                                                         "this request may store, exceed DLNSIM_STORAGE_QUOTA_BYTES; "
                                                         "delete simulations or sweeps it no longer needs."),
    "idempotency-key-spent": ("Idempotency-Key already used", "This Idempotency-Key created a simulation or sweep that "
                                                              "has since been deleted; the request is not run again. "
                                                              "Send a new key to run it again."),
    "cors-rejected": ("CORS preflight rejected", "The browser's preflight asked for an origin, method or header "
                                                 "this service does not allow (DLNSIM_CORS_ORIGINS)."),
    "unavailable": ("Service unavailable", "The job store or the worker cluster is not reachable (or the store is "
                                           "locked by another connection, or has no room: see the detail); retry "
                                           "after the Retry-After delay."),
    "store-damaged": ("Job store damaged", "The job store's file is damaged (a page that does not decode); the "
                                           "detail names the file and how to recover it. The operator must repair "
                                           "it: retrying does not help."),
    "invalid-simulation-result": ("Stored result unreadable", "The stored trajectory could not be read."),
    "corrupt-result": ("Stored result corrupt", "The stored trajectory failed its checksum (damaged on disk). A "
                                                "simulation is queued to run again: poll it until it succeeds. A "
                                                "sweep point's detail says how to get its trajectory again."),
    "insufficient-storage": ("Insufficient storage", "The disk of the job store (DLNSIM_DATA_DIR) is full, or the "
                                                     "store reached DLNSIM_STORE_MAX_BYTES; nothing was stored. Free "
                                                     "space (delete old simulations, grow the volume), then retry."),
    "request-timeout": ("Request timeout", "The request's headers or body did not arrive in time "
                                           "(DLNSIM_HEADER_TIMEOUT_SECONDS, DLNSIM_BODY_TIMEOUT_SECONDS and "
                                           "DLNSIM_MIN_BODY_RATE); the connection was closed. Send the request at "
                                           "once."),
    "headers-too-large": ("Request header fields too large", "The request line and headers are longer than "
                                                             "DLNSIM_MAX_HEADER_BYTES, or have more than "
                                                             "DLNSIM_MAX_HEADERS fields."),
    "uri-too-long": ("URI too long", "The request target is longer than DLNSIM_MAX_HEADER_BYTES."),
    "malformed-request": ("Malformed HTTP request", "The bytes received are not a valid HTTP/1.1 request."),
    "internal": ("Internal server error", "An unexpected error; it has been logged."),
    "http-error": ("HTTP error", "An HTTP-level error."),
}
TITLES = {slug: title for slug, (title, _) in PROBLEM_TYPES.items()}


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


def problem_body(status: int, slug: str, detail: str, *, instance: str | None = None,
                 errors: Sequence[dict] = (), title: str | None = None) -> dict[str, Any]:
    """The RFC 9457 document: type, title, status, detail, instance, errors."""
    return {
        "type": problem_type(slug),
        "title": title or TITLES.get(slug, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        "errors": list(errors),
    }


def json_pointer(path: Sequence[str | int]) -> str:
    """RFC 6901 pointer for a field path: ("data", "sigma11", 2) -> "/data/sigma11/2"."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def dotted(path: Sequence[str | int]) -> str:
    """Human form of a path: ("data", "sigma11", 2, 0) -> "data.sigma11[2][0]"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(body)"


def field_error(path: Sequence[str | int], code: str, message: str, fix: str, where: str = "body") -> dict:
    """One entry of a problem's ``errors``: the field (as a list and as a JSON pointer), what and how to fix."""
    path = list(path)
    return {"field": path, "pointer": json_pointer(path), "in": where, "code": code, "message": message,
            "fix": fix}


def dynamics_problem_body(exc: Any, *, instance: str | None = None) -> dict[str, Any]:
    """422 problem for a core DynamicsError (``.message``, ``.field``, ``.fix``, ``.code``).

    Used for requests refused at POST time and for jobs the worker refuses, so both look the same.
    """
    path = list(getattr(exc, "field", ()) or ())
    message = getattr(exc, "message", str(exc))
    fix = getattr(exc, "fix", "") or "see the message"
    code = getattr(exc, "code", "invalid")
    slug = {"limit_exceeded": "limit-exceeded", "unstable_learning_rate": "unstable-learning-rate"}.get(
        code, "invalid-simulation")
    detail = f"{dotted(path)}: {message}" if path else message
    return problem_body(422, slug, f"{detail}. Fix: {fix}", instance=instance,
                        errors=[field_error(path, code, message, fix)])


class ProblemError(Exception):
    """An error that becomes a problem+json response: its status, problem type (slug), detail, field errors and
    response headers (e.g. Retry-After)."""

    def __init__(self, status: int, slug: str, detail: str, *, errors: Sequence[dict] | None = None,
                 headers: dict[str, str] | None = None, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title or TITLES.get(slug, "Error")
        self.detail = detail
        self.errors = list(errors or [])
        self.headers = headers or {}


def dynamics_problem(exc: Any) -> ProblemError:
    """422 for a request the core refuses (shape, symmetry, PSD, exact conditions, limits, …)."""
    body = dynamics_problem_body(exc)
    return ProblemError(422, body["type"].rsplit("/", 1)[-1], body["detail"], errors=body["errors"])


def one_field_problem(status: int, slug: str, field: Sequence[str | int], code: str, message: str, fix: str,
                      where: str = "body", headers: dict[str, str] | None = None) -> ProblemError:
    """A problem about one field: "<field path joined by dots>: <message>. Fix: <fix>" with that field's error."""
    return ProblemError(status, slug, f"{'.'.join(map(str, field)) or 'the body'}: {message}. Fix: {fix}",
                        errors=[field_error(field, code, message, fix, where)], headers=headers)


def idempotency_key_reused(key: str, resource: str) -> ProblemError:
    """422 for an Idempotency-Key the caller already used with a different request body; ``resource``
    names what the key created, e.g. "simulation <id>" or "sweep <id>"."""
    return ProblemError(
        422, "idempotency-key-reused", f"Idempotency-Key {key!r} was used for {resource} with a different request",
        errors=[field_error(["Idempotency-Key"], "idempotency_key_reused", "this key belongs to another request body",
                            "use a new Idempotency-Key for a new request, or resend the original body", "header")])


def page_token_problem(exc: Exception) -> ProblemError:
    """422 for a ``page_token`` the service did not issue."""
    return ProblemError(422, "invalid-page-token", str(exc),
                        errors=[field_error(["page_token"], "invalid_page_token", str(exc),
                                            "pass back next_page_token exactly as received, or omit it", "query")])
