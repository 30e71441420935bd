"""Security headers on every response (a pure ASGI middleware, so streamed bodies stay streamed).

    X-Content-Type-Options: nosniff        a JSON or .npz body is never run as script or HTML
    Referrer-Policy: no-referrer           job URLs never leak to third parties through Referer
    X-Frame-Options: DENY                  no page of this service can be framed (clickjacking)
    Cache-Control: no-store                on /v1: a job's data is its owner's, no shared cache keeps it
    Content-Security-Policy                by what the body is (below)

The API's bodies are data, never documents, so their policy is ``default-src 'none'`` (nothing loads,
nothing runs) with ``frame-ancestors 'none'``. Three kinds of body are documents:

* the Swagger UI page at /docs loads its script and stylesheet from this service (/docs/assets, the installed
  fastapi-offline package: ``service.api.docs``), boots with one inline ``<script>``, styles elements inline
  (React style attributes), draws icons as ``data:`` SVG, fetches /openapi.json and sends "Try it out" requests
  to this origin. Its policy allows exactly that; the inline script is allowed by its sha256 (computed from the
  page as served, so it follows FastAPI's template and the root path), never by 'unsafe-inline'.
* the ReDoc page at /redoc: its script from /docs/assets (no inline script), inline styles (styled-components),
  ``data:`` images, its search index in a web worker made from a ``blob:`` URL, /openapi.json from this origin.
* SVG plots (matplotlib) style with ``<style>`` and style attributes and embed heatmaps as ``data:``
  PNGs: opened on their own in a browser they get styles and data: images, still no script.

Nothing on either docs page comes from another origin, so both work offline. A route that sets one of these
headers itself keeps its own value.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
DOCS_CSP = ("default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
REDOC_CSP = ("default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

# Inline scripts: <script> elements without a src attribute.
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def is_api_path(path: str) -> bool:
    """The versioned API (/v1 and below): what API keys protect and no cache may keep."""
    return path == "/v1" or path.startswith("/v1/")


def script_hashes(html: bytes) -> list[str]:
    """CSP source expressions ('sha256-…') of the page's inline scripts, as browsers hash them (the
    exact bytes between the tags)."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
            for body in _INLINE_SCRIPT.findall(html)]


def docs_csp(html: bytes, template: str = DOCS_CSP) -> str:
    """The page's policy: ``template`` with the hashes of the page's inline scripts (none: 'self' only)."""
    return template.format(scripts=" ".join(["'self'", *script_hashes(html)]))


def security_headers(path: str, content_type: str | None) -> dict[str, str]:
    """The headers for a response on ``path`` with this Content-Type (the docs page excepted: see
    SecurityHeadersMiddleware, which needs its body)."""
    headers = dict(BASE_HEADERS)
    if is_api_path(path):
        headers["Cache-Control"] = "no-store"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "image/svg+xml":
        headers["Content-Security-Policy"] = SVG_CSP
    elif media != "text/html":
        headers["Content-Security-Policy"] = API_CSP
    return headers


def _set_default(message: Message, values: dict[str, str]) -> None:
    headers = MutableHeaders(scope=message)
    for name, value in values.items():
        if name not in headers:
            headers[name] = value


class SecurityHeadersMiddleware:
    """Adds ``security_headers`` to every HTTP response; the docs pages (``pages``: path → policy template) get
    their policy with the hashes of their inline scripts (a page's body, a few kB, is held until complete to hash
    it)."""

    def __init__(self, app: ASGIApp, pages: dict[str, str] | None = None) -> None:
        self.app = app
        self.pages = {"/docs": DOCS_CSP, "/redoc": REDOC_CSP} if pages is None else pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        page = self.pages.get(path)
        docs = page is not None
        held: list[Message] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                content_type = MutableHeaders(scope=message).get("content-type")
                _set_default(message, security_headers(path, content_type))
                if docs and (content_type or "").startswith("text/html"):
                    held.append(message)
                    return
            elif held:
                held.append(message)
                if message.get("more_body", False):
                    return
                body = b"".join(m.get("body", b"") for m in held[1:])
                start = held[0]
                _set_default(start, {"Content-Security-Policy": docs_csp(body, page)})
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                held.clear()
                return
            await send(message)

        await self.app(scope, receive, send_with_headers)
