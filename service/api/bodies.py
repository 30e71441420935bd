"""JSON request bodies, shared by the routes that take one: the media type, and strict parsing into a schema
with the one error model (400 malformed-json, 415 unsupported-media-type, 422 validation-error)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from service.api.errors import ProblemError
from service.problems import field_error


def json_request_body(schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (``parse_body``): the body's schema, by
    name in components/schemas, and its examples, so the document and generated clients still know it."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}, "examples": examples}}}}


def check_media_type(request: Request) -> None:
    """415 unless the body is sent as JSON (application/json or application/*+json; no Content-Type passes)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # be lenient with clients that send JSON without saying so
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise ProblemError(415, "unsupported-media-type",
                       f"the body must be sent as application/json, not {media!r}",
                       errors=[field_error(["Content-Type"], "unsupported_media_type",
                                           f"Content-Type is {media!r}",
                                           "send Content-Type: application/json "
                                           "(with curl: -H 'Content-Type: application/json')", "header")])
