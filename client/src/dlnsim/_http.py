"""The HTTP layer: one httpx.Client, JSON bodies that may hold numpy arrays, problems raised as ProblemError."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from dlnsim.errors import ProblemError

JSON = "application/json"
NPZ = "application/x-npz"
SVG = "image/svg+xml"
CSV = "text/csv"

Params = Mapping[str, Any] | None


def _default(value: Any) -> Any:
    """numpy values in request bodies: arrays as nested lists, scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(body: Any) -> bytes:
    """JSON bytes of ``body``; NaN and infinities are refused here (the service accepts finite numbers only)."""
    return json.dumps(body, default=_default, allow_nan=False, separators=(",", ":")).encode()


def query_value(value: Any) -> Any:
    """A query parameter as the service reads it: booleans as true/false, lists repeated, numpy as numbers."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, np.ndarray):
        return [query_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [query_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Http:
    """Requests to one service. A 4xx/5xx answer raises ProblemError; transport errors stay httpx's."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float | httpx.Timeout,
                 user_agent: str, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"User-Agent": user_agent}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=self.timeout,
                                   transport=transport)

    def request(self, method: str, path: str, *, body: Any = None, params: Params = None,
                headers: Mapping[str, str] | None = None, accept: str = JSON,
                read_timeout: float | None = None) -> httpx.Response:
        """Send one request; ``read_timeout`` raises the read timeout for answers the service holds (Prefer: wait)."""
        send_headers = {"Accept": accept, **(headers or {})}
        content = None
        if body is not None:
            content = encode_json(body)
            send_headers["Content-Type"] = JSON
        query = {k: query_value(v) for k, v in (params or {}).items() if v is not None}
        timeout = self.timeout
        if read_timeout is not None and (timeout.read is not None and timeout.read < read_timeout):
            timeout = httpx.Timeout(timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool)
        response = self.client.request(method, path, content=content, params=query, headers=send_headers,
                                       timeout=timeout)
        if response.status_code >= 400:
            raise ProblemError.from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def close(self) -> None:
        self.client.close()
