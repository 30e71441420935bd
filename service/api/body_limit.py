"""A pure ASGI middleware that refuses request bodies above a size with a 413 problem.

A declared Content-Length above the limit is refused before the app (or the JSON parser) sees the
request; a body without one (chunked) is counted as it arrives and refused as soon as it passes the
limit, so the service never holds more than ``max_body_bytes`` of one request.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import PROBLEM_MEDIA_TYPE, field_error, problem_body


class _BodyTooLarge(Exception):
    pass


def _too_large(scope: Scope, limit: int) -> JSONResponse:
    body = problem_body(413, "body-too-large",
                        f"the request body is larger than this service's limit of {limit} bytes; "
                        "send a smaller request (e.g. the correlations instead of a large dataset)",
                        instance=scope.get("path"),
                        errors=[field_error([], "body_too_large", f"the body is larger than {limit} bytes",
                                            "send a smaller body: the correlations (sigma11, sigma31) instead of a "
                                            "large dataset, fewer record times, or a preset")])
    # No "Connection: close": uvicorn then discards the rest of the upload, so a client still sending it
    # gets to read this answer (and a client that sent "Expect: 100-continue" never sends the body).
    return JSONResponse(body, status_code=413, media_type=PROBLEM_MEDIA_TYPE)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _too_large(scope, limit)(scope, receive, send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(scope, limit)(scope, receive, send)
