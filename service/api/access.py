"""Who may call the service: optional API keys, job ownership, per-key limits, CORS, and how the
OpenAPI document declares them. README "Access" is the user-facing version of this docstring.

API keys (``DLNSIM_API_KEYS``, comma-separated entries)::

    token                  a bearer token (at least 16 of A-Z a-z 0-9 - . _ ~ + / and trailing =)
    name:token             the same, owned by ``name`` (letters, digits, . _ @ -)
    sha256:<64 hex>        only the token's SHA-256, so the secret itself need not sit in the environment
    name:sha256:<64 hex>

With keys set, every /v1 request needs ``Authorization: Bearer <token>``; otherwise 401 problem+json
with ``WWW-Authenticate: Bearer``. The presented token is hashed and compared with every configured
digest by ``hmac.compare_digest`` without stopping at a match, so timing tells nothing about which key
(or how much of one) matched. /healthz, /readyz, /docs, /openapi.json and /problems stay open: probes
must work without secrets, and the API's description is not one.

Ownership: a job or sweep stores its creator's key id — the name, or ``key:`` plus the first 16 hex digits of
HMAC-SHA256(the server's owner secret, SHA-256 of the token) for an unnamed key; never the token, nor anything
computable from the token alone (a plain hash prefix would let whoever reads the store test guesses of a token
offline). The secret is DLNSIM_OWNER_SECRET, or a random one kept in DLNSIM_DATA_DIR/owner-secret (``owner_secret``);
ids of the earlier form are renamed at start (``legacy_owner``). Entries that share a name are one owner
(rotate a key by adding the new token under the same name, then removing the old). A key sees only its
own jobs and sweeps: any other id is a 404, exactly as if it did not exist. Idempotency keys are scoped
per owner. With keys off, nothing is filtered and jobs are stored without owner; such jobs are not
visible to any key once keys are turned on.

The key of the current request is carried in a context variable set by ``ApiKeyMiddleware``, so the
routes' lookups (``current_owner()``) need no extra parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.security import is_api_path
from service.problems import PROBLEM_MEDIA_TYPE, field_error, problem_body

REALM = "dlnsim"
SCHEME_NAME = "bearerAuth"
KEY_ID_HEX = 16          # 64 bits of the hash name an unnamed key: unique among any realistic key set
MIN_TOKEN_LENGTH = 16

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")       # RFC 6750 b64token
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")

_owner: ContextVar[str | None] = ContextVar("dlnsim_owner", default=None)


def current_owner() -> str | None:
    """The key id of the request being served; None when API keys are off (then nothing is filtered)."""
    return _owner.get()


# ------------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class ApiKey:
    name: str | None  # the entry's name, the stable id stored with jobs (None: an unnamed key, see ``owner_id``)
    digest: bytes     # SHA-256 of the token

    def owner_id(self, secret: bytes) -> str:
        """The id stored with this key's jobs: its name, or the keyed hash of its digest."""
        return self.name if self.name is not None else keyed_owner(self.digest, secret)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def keyed_owner(digest: bytes, secret: bytes) -> str:
    """An unnamed key's id: ``key:`` and 16 hex digits of HMAC-SHA256(secret, the token's SHA-256)."""
    return "key:" + hmac.new(secret, digest, hashlib.sha256).hexdigest()[:KEY_ID_HEX]


def legacy_owner(digest: bytes) -> str:
    """The id earlier versions stored for an unnamed key (a plain hash prefix): renamed at start."""
    return "sha256:" + digest.hex()[:KEY_ID_HEX]


OWNER_SECRET_FILE = "owner-secret"


def owner_secret(configured: str | None, data_dir: Path) -> bytes:
    """DLNSIM_OWNER_SECRET, or the random secret kept in ``data_dir``/owner-secret (made on first use, mode 0600), so
    that ids stay the same across restarts."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / OWNER_SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another start on this data dir
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


def parse_api_keys(text: str | None) -> tuple[ApiKey, ...]:
    """``DLNSIM_API_KEYS`` -> keys; raises ValueError naming the bad entry (never echoing a secret)."""
    keys: list[ApiKey] = []
    owners: dict[bytes, str | None] = {}
    for number, entry in enumerate((text or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        name, secret = (None, entry) if entry.startswith("sha256:") or ":" not in entry else entry.split(":", 1)
        where = f"DLNSIM_API_KEYS entry {number}"
        if name is not None and (not _NAME.fullmatch(name) or name == "sha256"):
            raise ValueError(f"{where}: the name before ':' must be 1-64 letters, digits or . _ @ - "
                             "(and not 'sha256')")
        hashed = _DIGEST.fullmatch(secret)
        if hashed:
            digest = bytes.fromhex(hashed.group(1))
        elif secret.startswith("sha256:"):
            raise ValueError(f"{where}: a hashed key is sha256: followed by 64 hex digits")
        elif not _TOKEN.fullmatch(secret) or len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 "
                             "- . _ ~ + / (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        else:
            digest = _digest(secret)
        if owners.setdefault(digest, name) != name:
            raise ValueError(f"{where}: the same key is listed under two names")
        keys.append(ApiKey(name, digest))
    return tuple(keys)


def authenticate(keys: Sequence[ApiKey], token: str, secret: bytes) -> str | None:
    """The owner id of ``token``, or None. Every digest is compared (no early exit)."""
    digest = _digest(token)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found.owner_id(secret) if found is not None else None


def _unauthorized(path: str, presented: bool, detail: str) -> JSONResponse:
    challenge = f'Bearer realm="{REALM}"'
    if presented:  # RFC 6750 §3.1: error codes only when credentials were sent
        challenge += ', error="invalid_token"'
    code = "invalid_api_key" if presented else "missing_api_key"
    body = problem_body(401, "unauthorized", detail, instance=path, errors=[field_error(
        ["Authorization"], code, detail,
        "send Authorization: Bearer <key> with a key this service was given (DLNSIM_API_KEYS)", "header")])
    return JSONResponse(body, status_code=401, media_type=PROBLEM_MEDIA_TYPE,
                        headers={"WWW-Authenticate": challenge})


class ApiKeyMiddleware:
    """401 for /v1 requests without a valid bearer key, before the body is read; else the request runs
    with ``current_owner()`` set to the key's id."""

    def __init__(self, app: ASGIApp, keys: Sequence[ApiKey], secret: Callable[[], bytes | None]) -> None:
        """``secret()``: the owner secret, set by the app's lifespan (None before: 503)."""
        self.app = app
        self.keys = tuple(keys)
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if header is None:
            response = _unauthorized(scope["path"], False, "this service requires an API key")
        else:
            scheme, _, token = header.strip().partition(" ")
            token = token.strip()
            secret = self.secret()
            if secret is None:  # the lifespan has not started (or has ended)
                body = problem_body(503, "unavailable", "the service is starting or stopping; retry shortly",
                                    instance=scope["path"])
                await JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE,
                                   headers={"Retry-After": "1"})(scope, receive, send)
                return
            owner = authenticate(self.keys, token, secret) if scheme.lower() == "bearer" and token else None
            if owner is not None:
                reset = _owner.set(owner)
                try:
                    await self.app(scope, receive, send)
                finally:
                    _owner.reset(reset)
                return
            if scheme.lower() != "bearer":
                response = _unauthorized(scope["path"], False,
                                         f"the Authorization scheme must be Bearer, not {scheme[:20]!r}")
            else:
                response = _unauthorized(scope["path"], True, "the API key is not valid")
        await response(scope, receive, send)


# ------------------------------------------------------------------------------------------------
# CORS

CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("Authorization", "Content-Type", "Accept", "Prefer", "Idempotency-Key")
CORS_EXPOSE = ("Location", "Retry-After", "Preference-Applied", "Idempotent-Replayed", "WWW-Authenticate",
               "Content-Disposition", "Allow")


def parse_cors_origins(text: str | None) -> tuple[str, ...]:
    """``DLNSIM_CORS_ORIGINS`` -> origins; "*" alone means any. Raises ValueError for an entry a browser
    would never send as Origin (a path, a trailing slash)."""
    origins = tuple(o.strip() for o in (text or "").split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"DLNSIM_CORS_ORIGINS: {origin!r} is not an origin; write scheme://host[:port] "
                             "without a path or trailing slash, e.g. https://lab.example.org")
    return origins


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, but a refused preflight is a 400 problem+json like every other error."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        # No credentials (cookies): keys travel in Authorization, which the preflight allows explicitly.
        super().__init__(app, allow_origins=list(origins), allow_methods=CORS_METHODS,
                         allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSE, max_age=600)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        what = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        detail = (f"this service does not allow the preflight's {what} "
                  f"(Origin {request_headers.get('origin')!r}); allowed origins are set by DLNSIM_CORS_ORIGINS")
        body = problem_body(400, "cors-rejected", detail, errors=[field_error(
            ["Origin"], "cors_rejected", detail,
            "call from an allowed origin, with methods GET, POST, DELETE and the documented headers", "header")])
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse(body, status_code=400, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


# ------------------------------------------------------------------------------------------------
# OpenAPI

_HTTP_METHODS = ("get", "put", "post", "patch", "delete")


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer scheme and, on every /v1 operation, optional bearer security and the 401.

    The document does not depend on the settings (the committed openapi.json is the app's): security is
    ``[{bearerAuth: []}, {}]``, i.e. a bearer key, or none on a server without DLNSIM_API_KEYS.
    """
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME_NAME] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key, sent as `Authorization: Bearer <key>`; required on /v1 routes when the "
                       "server sets DLNSIM_API_KEYS (each key then sees only the jobs and sweeps it created).",
    }
    unauthorized = {
        "description": "Missing or invalid API key (only on servers that set DLNSIM_API_KEYS)",
        "headers": {"WWW-Authenticate": {"description": f'Bearer realm="{REALM}" (with error="invalid_token" '
                                                        "when a key was sent)", "schema": {"type": "string"}}},
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
    }
    for path, item in schema.get("paths", {}).items():
        if not is_api_path(path):
            continue
        for method, operation in item.items():
            if method in _HTTP_METHODS:
                operation["security"] = [{SCHEME_NAME: []}, {}]
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
    return schema
