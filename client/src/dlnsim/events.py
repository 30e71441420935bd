"""A simulation's Server-Sent Events stream (``GET /v1/simulations/{id}/events``), resumed after a drop.

The contract: events ``progress`` (data ``{"step", "time", "progress", "loss", "test_loss", "eta_seconds"}``),
``record`` (one trajectory record ``{"index", "time", "step", "loss", "excess_loss", "test_loss",
"strength"}``) and a final ``end`` (``{"status", "outcome", "error"}``); every event has an ``id``, and a
request with ``Last-Event-ID`` continues after that event. Connecting after the end yields ``end`` at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from dlnsim.errors import ProblemError

__all__ = ["Event", "stream_events"]

# A stream idle this long counts as dropped (the service sends progress about every 0.2 s while it runs).
IDLE_TIMEOUT = 60.0
# Reconnection attempts in a row without receiving an event, before the last error is raised.
MAX_RECONNECTS = 5
# Seconds before reconnecting, until the stream's own ``retry:`` says otherwise.
DEFAULT_RETRY = 1.0


@dataclass(frozen=True)
class Event:
    """One event: its type (``progress``, ``record``, ``end``), its ``id`` and its decoded JSON ``data``."""

    event: str
    id: str
    data: Any


def stream_events(client: httpx.Client, path: str, last_event_id: str | None = None, *,
                  max_reconnects: int = MAX_RECONNECTS) -> Iterator[Event]:
    """Events from ``path`` until ``end``. A dropped connection, or one closed before ``end``, is reopened with
    ``Last-Event-ID`` (after the ``retry`` delay the stream set); an error answer raises ProblemError."""
    retry = DEFAULT_RETRY
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(client.timeout.connect, read=IDLE_TIMEOUT, write=client.timeout.write,
                                pool=client.timeout.pool)
        try:
            with connect_sse(client, "GET", path, headers=headers, timeout=timeout) as source:
                response = source.response
                if response.status_code >= 400:
                    response.read()
                    raise ProblemError.from_response(response)
                for sse in source.iter_sse():
                    if sse.retry is not None:
                        retry = sse.retry / 1000
                    if sse.id:
                        last_event_id = sse.id
                    if not sse.data and sse.event == "message":
                        continue   # no data and no type (a bare retry: or id:): nothing to dispatch
                    failures = 0
                    event = Event(sse.event, sse.id, json.loads(sse.data) if sse.data else None)
                    yield event
                    if event.event == "end":
                        return
            error: Exception = ConnectionError(f"the event stream {path} closed before its end event")
        except httpx.TransportError as exc:
            error = exc
        failures += 1
        if failures > max_reconnects:
            raise error
        time.sleep(retry)
