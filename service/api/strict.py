"""Strict requests, once for every route: an unknown query parameter is a 400 naming it and the route's known ones,
and an ``Accept`` header that none of the route's representations matches is a 406.

``strict_request`` is an app-wide dependency (``FastAPI(dependencies=[...])``), so it runs for every route before
the route's own parameters are validated; it reads what each route declares, nothing is listed by hand:

* the known query parameters are those of the route's signature and of its dependencies (FastAPI's dependant
  and its sub-dependants), by their alias; a route whose query parameters depend on the request (GET /v1/presets/{name} takes the
  named preset's parameters) declares them with ``known_query(function)``;
* the representations are the media types of the route's success responses (its ``responses`` content and its
  response class); routes without a success body (204) accept any ``Accept``. Error responses are problem+json
  whatever the ``Accept`` says (RFC 9110 allows a server to send an error in another type).

Without this, ``?logtime=true`` drew a linear plot, ``?format=png`` an SVG and ``?feilds=`` sent the whole
trajectory, while a typo in a body was a precise 422.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.api.negotiation import negotiate
from service.problems import ProblemError, field_error

KnownQuery = Callable[[Request], "list[str] | None"]


def known_query(names: KnownQuery) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a route whose query parameters depend on the request: ``names(request)`` lists them (None: the
    route checks its query itself, e.g. before its 404)."""
    def mark(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        endpoint.__dlnsim_known_query__ = names  # type: ignore[attr-defined]
        return endpoint
    return mark


@dataclass(frozen=True)
class Contract:
    """What a route declares: its query parameters and the media types of its success responses (empty: no body)."""

    query: tuple[str, ...]
    media: tuple[str, ...]


def _query_names(dependant: Dependant) -> list[str]:
    """The aliases of the query parameters of a dependant and of all its sub-dependencies."""
    names = [p.alias for p in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return names


def route_contract(route: APIRoute) -> Contract:
    """The route's declared query parameters and success media types (cached on the route)."""
    cached = getattr(route, "__dlnsim_contract__", None)
    if cached is not None:
        return cached
    query = tuple(dict.fromkeys(_query_names(route.dependant)))
    media: list[str] = []
    for code, response in (route.responses or {}).items():
        if str(code).startswith("2"):
            media += list((response or {}).get("content", {}))
    status = route.status_code or 200
    response_class = getattr(route.response_class, "value", route.response_class)  # a DefaultPlaceholder's class
    body = status != 204 and getattr(response_class, "media_type", None)
    if body and body not in media:
        media.insert(0, body)
    contract = Contract(query, tuple(dict.fromkeys(media)))
    route.__dlnsim_contract__ = contract  # type: ignore[attr-defined]
    return contract


def _unknown_problem(request: Request, route: APIRoute, unknown: list[str], known: list[str]) -> ProblemError:
    where = f"{request.method} {route.path_format}"
    takes = ", ".join(known) if known else "no query parameters"
    errors = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fix = f"{hint}remove it; {where} takes {takes}"
        errors.append(field_error([name], "unknown_parameter", f"{name!r} is not a query parameter of {where}", fix,
                                  "query"))
    names = ", ".join(repr(n) for n in unknown)
    return ProblemError(400, "unknown-query-parameter",
                        f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}; {where} takes {takes}",
                        errors=errors)


def _not_acceptable(request: Request, route: APIRoute, accept: str, media: tuple[str, ...]) -> ProblemError:
    offered = " or ".join(media)
    return ProblemError(406, "not-acceptable",
                        f"{request.method} {route.path_format} answers {offered}, and Accept is {accept!r}",
                        errors=[field_error(["Accept"], "not_acceptable", f"no representation matches {accept!r}",
                                            f"send Accept: {' or Accept: '.join(media)} (or no Accept header)",
                                            "header")])


async def strict_request(request: Request) -> None:
    """The app-wide check (module docstring): 400 for unknown query parameters, then 406 for an Accept header that
    no success representation of the route matches."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    contract = route_contract(route)
    dynamic = getattr(route.endpoint, "__dlnsim_known_query__", None)
    known = list(contract.query)
    if dynamic is not None:
        extra = dynamic(request)
        known = None if extra is None else known + [n for n in extra if n not in known]
    if known is not None:
        unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in known]
        if unknown:
            raise _unknown_problem(request, route, unknown, known)
    accept = request.headers.get("accept")
    if contract.media and accept is not None and negotiate(accept, contract.media) is None:
        raise _not_acceptable(request, route, accept, contract.media)


UNKNOWN_QUERY = "an unknown query parameter (errors[] names it; the fix lists the route's parameters)"
NOT_ACCEPTABLE = "No representation matches the Accept header (the detail lists the route's media types)"


def document_strictness(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation of the OpenAPI document documents the 400 for unknown query parameters and, where it answers
    with a body, the 406 for an Accept header it cannot serve (added to the app's schema once, here)."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch") or not isinstance(op, dict):
                continue
            responses = op.setdefault("responses", {})
            if "400" in responses:
                if UNKNOWN_QUERY not in responses["400"]["description"]:
                    responses["400"]["description"] += f"; or {UNKNOWN_QUERY}"
            else:
                responses["400"] = {"description": UNKNOWN_QUERY[0].upper() + UNKNOWN_QUERY[1:], "content": problem}
            has_body = any(code.startswith("2") and r.get("content") for code, r in responses.items())
            if has_body and "406" not in responses:
                responses["406"] = {"description": NOT_ACCEPTABLE, "content": problem}
    return schema
