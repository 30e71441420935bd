"""RFC 7240 ``Prefer`` header parsing.

    Prefer: respond-async, wait=10
    Prefer: wait="5"; foo=bar, handling=lenient

Preference names are case-insensitive; values are tokens or quoted strings; parameters after ``;``
are parsed and ignored; several Prefer headers form one list; when a preference appears twice the
first one counts (RFC 7240 §2). Unknown preferences are ignored, as the RFC requires.
"""

from __future__ import annotations

from collections.abc import Iterable


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, out, escaped = value[1:-1], [], False
        for ch in inner:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_prefer(headers: Iterable[str] | None) -> dict[str, str | None]:
    """{preference name (lower case): value or None}, first occurrence wins."""
    prefs: dict[str, str | None] = {}
    for header in headers or ():
        for item in _split_outside_quotes(header, ","):
            head = _split_outside_quotes(item, ";")[0].strip()
            if not head:
                continue
            name, eq, value = head.partition("=")
            name = name.strip().lower()
            if name and name not in prefs:
                prefs[name] = _unquote(value) if eq else None
    return prefs


def wait_seconds(prefs: dict[str, str | None], maximum: int) -> int | None:
    """The ``wait`` preference as whole seconds clamped to ``maximum``; None if absent or malformed
    (delta-seconds is 1*DIGIT: anything else is ignored like an unknown preference)."""
    value = prefs.get("wait")
    if value is None or not value.isdigit():
        return None
    return min(int(value), maximum)
