"""Errors: the service's RFC 9457 problem documents as ``ProblemError``.

Every 4xx/5xx answer of the service is a problem (``application/problem+json``) whose ``errors[]`` name the
offending field and how to fix it. Transport failures (connection refused, timeouts) stay httpx's exceptions.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["FieldError", "NotSupportedError", "ProblemError", "field_path"]


def field_path(field: Sequence[str | int]) -> str:
    """``["data", "sigma11", 2]`` -> ``data.sigma11[2]``; an empty path -> ``(request)``."""
    out = ""
    for part in field:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(request)"


@dataclass(frozen=True)
class FieldError:
    """One entry of a problem's ``errors[]``: which field, what is wrong, how to fix it."""

    field: tuple[str | int, ...]
    message: str
    fix: str
    code: str | None = None
    location: str | None = None   # the problem's "in": body, query, path or header
    pointer: str | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> FieldError:
        return cls(field=tuple(entry.get("field") or ()), message=str(entry.get("message", "")),
                   fix=str(entry.get("fix", "")), code=entry.get("code"), location=entry.get("in"),
                   pointer=entry.get("pointer"))

    @property
    def path(self) -> str:
        """The field as one string, e.g. ``network.hidden[0]``."""
        return field_path(self.field)

    def __str__(self) -> str:
        return f"{self.path} → {self.message}" + (f"; {self.fix}" if self.fix else "")


class ProblemError(Exception):
    """The service refused a request or failed: its problem document, readable.

    ``status``, ``type``, ``title``, ``detail``, ``instance`` and ``errors`` (a list of ``FieldError``) are the
    document's members; ``problem`` is the document itself and ``retry_after`` the seconds the service asked
    to wait (429, 503, 507), if it said.
    """

    def __init__(self, problem: Mapping[str, Any], *, retry_after: float | None = None) -> None:
        super().__init__(dict(problem))
        self.problem: dict[str, Any] = dict(problem)
        self.status: int = int(problem.get("status") or 0)
        self.type: str = str(problem.get("type") or "about:blank")
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or "")
        self.instance: str | None = problem.get("instance")
        self.errors: list[FieldError] = [FieldError.from_dict(e) for e in problem.get("errors") or []
                                         if isinstance(e, Mapping)]
        self.retry_after = retry_after

    def __str__(self) -> str:
        lines = [f"{self.title or 'Error'} ({self.status})"]
        if self.detail and self.detail != self.title:
            lines.append(self.detail)
        lines.extend(f"  {error}" for error in self.errors)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ProblemError(status={self.status}, type={self.type!r}, title={self.title!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problem,), {"retry_after": self.retry_after})

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        """The problem a response carries; for a body that is not one (a proxy's error page), a problem made
        of the status line and the start of the body."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            body = None
        if isinstance(body, Mapping) and ("title" in body or "type" in body):
            problem = dict(body)
            problem.setdefault("status", response.status_code)
            return cls(problem, retry_after=retry_after)
        text = response.text.strip() if response.content else ""
        return cls({"type": "about:blank", "title": response.reason_phrase or "HTTP error",
                    "status": response.status_code, "detail": text[:500],
                    "instance": response.request.url.path if response.request is not None else None},
                   retry_after=retry_after)


class NotSupportedError(RuntimeError):
    """The service answered, but does not support what was asked of it (an older server)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
