"""Duplicate keys in a JSON body are refused (issue 19.10): RFC 8259 leaves their meaning open, and pydantic keeps the
last, so ``{"steps": 200, "steps": 1e7}`` ran 10⁷ steps while a reader of the body (a proxy, an audit log, the client's
own code) saw 200.

    duplicate_key(body)      # the path of the first key given twice, e.g. ["training", "steps"], or None

A scan of the raw bytes, not a second parse: the positions of ``{``, ``}`` and ``"`` are found by numpy a few MB at a
time (a 64 MB dataset body has almost none of them among its numbers), and only those are walked in Python, so the
check costs tens of milliseconds and no copy of the body's numbers. The path names the keys that lead to the object
(array positions are not counted: ``["points", "init.scale"]`` for a sweep point's key).
"""

from __future__ import annotations

import numpy as np
import orjson

_PIECE = 4 << 20
_QUOTE, _OPEN, _CLOSE, _BACKSLASH, _COLON = 0x22, 0x7B, 0x7D, 0x5C, 0x3A
_SPACE = frozenset(b" \t\r\n")


def _marks(body: bytes):
    """Positions of every ``"``, ``{`` and ``}`` in ``body``, in order."""
    data = np.frombuffer(body, dtype=np.uint8)
    for start in range(0, len(data), _PIECE):
        piece = data[start:start + _PIECE]
        hits = np.flatnonzero((piece == _QUOTE) | (piece == _OPEN) | (piece == _CLOSE))
        for p in hits.tolist():
            yield start + p


def _escaped(body: bytes, p: int) -> bool:
    count = 0
    while p - 1 - count >= 0 and body[p - 1 - count] == _BACKSLASH:
        count += 1
    return count % 2 == 1


def _followed_by_colon(body: bytes, p: int) -> bool:
    i = p + 1
    while i < len(body) and body[i] in _SPACE:
        i += 1
    return i < len(body) and body[i] == _COLON


def duplicate_key(body: bytes) -> list[str] | None:
    """The path to the first object key that ``body`` gives twice in one object (keys compared as decoded: "k\\u0061"
    and "ka" are one key), or None. Malformed JSON is left to the parser (whatever this returns for it)."""
    objects: list[list] = []  # per open object: [its keys, the key it is (in) the value of, its latest key]
    string_start = -1
    for p in _marks(body):
        c = body[p]
        if string_start >= 0:
            if c == _QUOTE and not _escaped(body, p):
                raw, string_start = body[string_start + 1:p], -1
                if objects and _followed_by_colon(body, p):
                    key = _decode(raw)
                    if key in objects[-1][0]:
                        return [o[1] for o in objects[1:]] + [key]
                    objects[-1][0].add(key)
                    objects[-1][2] = key
            continue
        if c == _QUOTE:
            string_start = p
        elif c == _OPEN:
            objects.append([set(), objects[-1][2] if objects else None, None])
        elif c == _CLOSE and objects:
            objects.pop()
    return None


def _decode(raw: bytes) -> str:
    try:
        return orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def check_duplicate_keys(body: bytes) -> None:
    """422 validation-error naming the first key ``body`` gives twice."""
    from service.problems import one_field_problem

    path = duplicate_key(body)
    if path is not None:
        raise one_field_problem(422, "validation-error", path, "duplicate_key",
                                f"{path[-1]!r} is given more than once in the same object (which one counts is not "
                                "defined by JSON)", f"give {path[-1]!r} once")
