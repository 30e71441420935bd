"""Server-Sent Events for tests: a stream's text parsed into events (the WHATWG parsing rules the tests need: fields
``event``, ``id``, ``data`` (joined by newlines), ``retry``; comment lines skipped; blank line dispatches)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    event: str
    id: str | None
    data: Any
    retry: int | None = None


def parse_events(text: str) -> list[Event]:
    events: list[Event] = []
    fields: dict[str, list[str]] = {}
    for line in text.splitlines() + [""]:
        if not line:
            if "data" in fields or "event" in fields:
                data = "\n".join(fields.get("data", []))
                events.append(Event(fields.get("event", ["message"])[-1], (fields.get("id") or [None])[-1],
                                    json.loads(data) if data else None,
                                    int(fields["retry"][-1]) if "retry" in fields else None))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    return events
