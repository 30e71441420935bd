"""The HTTP server's own defences, below the ASGI app: what a client that never finishes its request, or never reads
its answer, may hold (README "Settings and limits", "Slow clients").

    protocol = guarded_protocol(settings)           # uvicorn.run(..., http=protocol)
    raise_open_files_limit(); max_connections(settings)

uvicorn's HTTP protocol (httptools) times out only idle keep-alive connections: a client that sends half a request
header, or a body one byte at a time, held its socket (and a file descriptor) for as long as it liked, and a header of
any size or number of fields was accepted. ``GuardedHttpToolsProtocol`` adds, per connection:

* a header deadline: the request line and headers must arrive within DLNSIM_HEADER_TIMEOUT_SECONDS of the first byte
  (of the connection, or of a keep-alive request) → 408 problem, connection closed;
* a body deadline that moves with the data (Apache's mod_reqtimeout MinRate): DLNSIM_BODY_TIMEOUT_SECONDS plus one
  second per DLNSIM_MIN_BODY_RATE bytes received, so a large upload at a fair rate goes through and a dribble is cut
  → 408 problem (or, once the app has answered, the connection is dropped). Time the app itself spends not reading
  (its flow control paused the socket) is not counted against the client;
* a send deadline: a response whose client reads nothing for DLNSIM_SEND_TIMEOUT_SECONDS (the socket's buffer stays
  full) is dropped, so a download read at a byte a minute does not hold its reader, its thread and its memory;
* header limits: more than DLNSIM_MAX_HEADER_BYTES of request line and headers, or more than DLNSIM_MAX_HEADERS header
  fields → 431 problem, counted as the bytes arrive (before the parser buffers a huge field);
* a cap on open connections, DLNSIM_MAX_CONNECTIONS: a connection beyond it is answered 503 (problem, Retry-After)
  and closed at once, so file descriptors stay for the store, the cluster and the clients already served.

Every refusal at this level is an RFC 9457 problem (application/problem+json) with ``Connection: close``, like the
app's own errors (uvicorn's were text/plain).

The access log's lines lose their query strings' values (``RedactQueryFilter``): a token sent as ``?access_token=``
must not reach a log file.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import urllib.parse
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.problems import PROBLEM_MEDIA_TYPE, field_error, problem_body

log = logging.getLogger("dlnsim.http")

# File descriptors kept for everything but client connections (SQLite, the Dask comms, logs, the worker pipes).
RESERVED_FILES = 512
_SECURITY = (b"x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\nx-frame-options: DENY\r\n"
             b"content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: the request is answered ``status`` and the connection closed."""

    def __init__(self, status: int, slug: str, detail: str, field: str, fix: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.field, self.fix = status, slug, detail, field, fix


def problem_bytes(status: int, slug: str, detail: str, *, field: str | None = None, fix: str = "",
                  retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying a problem document, with ``Connection: close``."""
    errors = [field_error([field], slug.replace("-", "_"), detail, fix, "header")] if field else []
    body = orjson.dumps(problem_body(status, slug, detail, errors=errors))
    head = [STATUS_LINE[status], b"content-type: ", PROBLEM_MEDIA_TYPE.encode(), b"\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n", _SECURITY]
    if retry_after is not None:
        head += [b"retry-after: ", str(retry_after).encode(), b"\r\n"]
    return b"".join([*head, b"\r\n", body])


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, body and send deadlines, header limits and a connection cap (module
    docstring). The limits are class attributes, set by ``guarded_protocol``."""

    header_timeout = 10.0
    body_timeout = 10.0
    min_body_rate = 8192.0
    send_timeout = 60.0
    max_connections = 1000
    max_header_bytes = 16384
    max_headers = 100
    refused_connections = 0  # connections answered 503 at the cap (read by the tests and bench/attacks.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._in_head = True         # waiting for (more of) a request line and headers
        self._head_bytes = 0         # bytes received while waiting for them
        self._fields_bytes = 0       # bytes of the header fields parsed so far
        self._header_count = 0
        self._in_body = False
        self._body_started = 0.0
        self._body_received = 0

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            type(self).refused_connections += 1
            self._cancel_timers()
            self.transport.write(problem_bytes(
                503, "unavailable", f"this server already has {self.max_connections} open connections "
                "(DLNSIM_MAX_CONNECTIONS); retry after the Retry-After delay", retry_after=1))
            self.transport.close()
            return
        self._arm(self.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for name in ("_timer", "_send_timer"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _arm(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, slug: str, detail: str, *, field: str | None = None, fix: str = "") -> None:
        """Answer a problem ourselves and close, unless the app has begun its answer (then just drop the
        connection: a second status line would corrupt the stream)."""
        self._cancel_timers()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.abort()
                return
            # The app (waiting for the body) is told the client is gone; nothing it sends is written after ours.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(problem_bytes(status, slug, detail, field=field, fix=fix))
        self.transport.close()

    # -- reading ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._timer is None:  # the first byte of a keep-alive request: its header deadline starts
                self._arm(self.header_timeout, self._header_timed_out)
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is not None:
                log.info("refused a request from %s: %s", self._peer(), refused.detail)
                self._refuse(refused.status, refused.slug, refused.detail, field=refused.field, fix=refused.fix)
            else:
                log.info("invalid HTTP request from %s: %s", self._peer(), exc)
                self._refuse(400, "malformed-request", f"the request is not valid HTTP/1.1: {exc}")
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(*self._headers_too_large())

    def _headers_too_large(self) -> tuple[int, str, str]:
        return (431, "headers-too-large", (f"the request line and headers are longer than this server's limit of "
                                           f"{self.max_header_bytes} bytes (DLNSIM_MAX_HEADER_BYTES)"))

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed-request", msg)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_header_bytes:
            raise _Refused(414, "uri-too-long", f"the request target is longer than this server's limit of "
                           f"{self.max_header_bytes} bytes (DLNSIM_MAX_HEADER_BYTES)", "url",
                           "send the parameters in the body, or fewer of them")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._fields_bytes += len(name) + len(value) + 4
        if self._header_count > self.max_headers:
            raise _Refused(431, "headers-too-large", f"the request has more than this server's limit of "
                           f"{self.max_headers} header fields (DLNSIM_MAX_HEADERS)", name.decode("latin-1")[:64],
                           "send fewer header fields")
        if len(self.url) + self._fields_bytes > self.max_header_bytes:
            raise _Refused(431, "headers-too-large", self._headers_too_large()[2], name.decode("latin-1")[:64],
                           "send shorter header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        self._in_body = True
        self._body_started, self._body_received = self.loop.time(), 0
        self._arm(self.body_timeout, self._body_check)

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        # The next request's header (a keep-alive or pipelined one) is counted and timed from its first byte.
        self._in_head, self._head_bytes, self._fields_bytes, self._header_count = True, 0, 0, 0
        super().on_message_complete()

    def _header_timed_out(self) -> None:
        self._timer = None
        if not self._in_head or self.transport.is_closing():
            return
        log.info("closed a connection from %s: no complete request header within %g s", self._peer(),
                 self.header_timeout)
        self._refuse(408, "request-timeout", f"the request line and headers did not arrive within "
                     f"{self.header_timeout:g} s (DLNSIM_HEADER_TIMEOUT_SECONDS)")

    def _body_check(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The app is not reading (its buffer is full): not the client's time. A new window once it reads.
            self._body_started, self._body_received = now, 0
            self._arm(self.body_timeout, self._body_check)
            return
        deadline = self._body_started + self.body_timeout + self._body_received / self.min_body_rate
        if now < deadline:
            self._arm(deadline - now, self._body_check)
            return
        log.info("closed a connection from %s: the request body came slower than %g bytes/s (%d bytes in %.1f s)",
                 self._peer(), self.min_body_rate, self._body_received, now - self._body_started)
        self._refuse(408, "request-timeout", f"the request body arrived too slowly: {self._body_received} bytes in "
                     f"{now - self._body_started:.0f} s, where this server needs the first bytes within "
                     f"{self.body_timeout:g} s (DLNSIM_BODY_TIMEOUT_SECONDS) and then at least "
                     f"{self.min_body_rate:g} bytes/s (DLNSIM_MIN_BODY_RATE)")

    # -- writing ----------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.flow.write_paused:
            return
        log.info("dropped a connection to %s: it read nothing of its response for %g s (DLNSIM_SEND_TIMEOUT_SECONDS)",
                 self._peer(), self.send_timeout)
        self.transport.abort()  # close() would wait for the buffer to drain, which it never does


def guarded_protocol(settings: Any, max_connections: int | None = None) -> type[GuardedHttpToolsProtocol]:
    """A ``GuardedHttpToolsProtocol`` subclass with the settings' limits (uvicorn.run(http=...) takes the class)."""
    return type("DlnsimHttpProtocol", (GuardedHttpToolsProtocol,), {
        "header_timeout": float(settings.header_timeout_seconds),
        "body_timeout": float(settings.body_timeout_seconds),
        "min_body_rate": float(settings.min_body_rate),
        "send_timeout": float(settings.send_timeout_seconds),
        "max_connections": int(max_connections if max_connections is not None else settings.max_connections),
        "max_header_bytes": int(settings.max_header_bytes),
        "max_headers": int(settings.max_headers),
        "refused_connections": 0,
    })


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def max_connections(settings: Any, open_files: int) -> int:
    """DLNSIM_MAX_CONNECTIONS, lowered (with a warning) to leave RESERVED_FILES descriptors of ``open_files``."""
    cap = int(settings.max_connections)
    room = open_files - RESERVED_FILES
    if open_files != resource.RLIM_INFINITY and cap > room:
        log.warning("DLNSIM_MAX_CONNECTIONS=%d leaves too few of the %d file descriptors this process may open: "
                    "capped at %d (raise `ulimit -n` to allow more)", cap, open_files, max(room, 16))
        cap = max(room, 16)
    return cap


class RedactQueryFilter(logging.Filter):
    """Access-log lines keep a query's parameter names, not their values: ``/v1/x?access_token=…&fields=…``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_query(target: str) -> str:
    path, _, query = target.partition("?")
    names = [urllib.parse.unquote_plus(part.partition("=")[0]) for part in query.split("&") if part]
    return path + "?" + "&".join(urllib.parse.quote(name, safe="") + "=…" for name in names)


def install_access_log_redaction() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())
