"""``dlnsim.Client``: the service's routes as Python calls."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from dlnsim import _wait
from dlnsim._http import Http
from dlnsim.errors import NotSupportedError, ProblemError
from dlnsim.jobs import Simulation, Sweep

__all__ = ["Client", "Gradients"]

try:
    __version__ = version("dlnsim-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0"

DEFAULT_URL = "http://127.0.0.1:8000"
# Prefer: wait=N of a create while a progress bar is shown: long enough that short runs answer finished,
# short enough that the bar appears soon for long ones. Without a bar: up to the service's cap (it clamps N).
PREFER_WAIT_WITH_PROGRESS = 1
PREFER_WAIT_MAX = 60


@dataclass(frozen=True)
class Gradients:
    """``POST /v1/gradients``: L (None without Σ33), L without tr Σ33, the objective L + (γ/2)Σ‖W_l‖², the
    gradients ∂L/∂W_l + γW_l (input→output, shaped like the weights) and their norm."""

    loss: float | None
    loss_without_sigma33: float
    objective: float | None
    gradients: list[np.ndarray]
    gradient_norm: float


class Client:
    """A dlnsim service at ``base_url``.

    ``api_key`` is sent as ``Authorization: Bearer <key>`` (servers with ``DLNSIM_API_KEYS``); ``timeout`` is
    httpx's, in seconds or an ``httpx.Timeout``, for each request (waiting for a job is not one request).
    Failures raise ``dlnsim.ProblemError``; connection errors are httpx's. Use it as a context manager, or
    ``close()`` it.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self._http = Http(base_url, api_key, timeout, f"dlnsim-client/{__version__}", transport)

    def __repr__(self) -> str:
        return f"<dlnsim.Client {self.base_url}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- simulations --------------------------------------------------------------------------------

    def simulate(self, request: Mapping[str, Any], *, wait: bool = True, progress: bool = True,
                 timeout: float | None = None, idempotency_key: str | None = None) -> Simulation:
        """Start a simulation of ``request`` (a SimulationRequest as a dict; numpy arrays allowed).

        With ``wait``, return once it has finished (check ``status``: succeeded, failed or cancelled), showing a
        progress bar if ``progress`` and tqdm is installed; a full queue (429) or an unavailable service (503) is
        retried after its Retry-After. TimeoutError after ``timeout`` seconds (None: no limit). Each call sends an
        ``Idempotency-Key`` (``idempotency_key``, or a new one), so its retries never start a second run.
        """
        key = idempotency_key or str(uuid.uuid4())
        headers = {"Idempotency-Key": key}
        started = time.monotonic()
        read_timeout = None
        if wait:
            seconds = PREFER_WAIT_WITH_PROGRESS if progress else PREFER_WAIT_MAX
            if timeout is not None:
                seconds = min(seconds, max(math.floor(timeout), 0))
            headers["Prefer"] = f"wait={seconds}"
            read_timeout = seconds + 30.0

        def send() -> Any:
            return self._http.json("POST", "/v1/simulations", body=request, headers=headers,
                                   read_timeout=read_timeout)

        document = _wait.retry_busy(send, timeout) if wait else send()
        simulation = Simulation(self._http, document)
        if wait:
            remaining = None if timeout is None else max(timeout - (time.monotonic() - started), 0.0)
            simulation.wait(remaining, progress)
        return simulation

    def get(self, simulation_id: str) -> Simulation:
        """The simulation with this id."""
        return Simulation(self._http, self._http.json("GET", f"/v1/simulations/{simulation_id}"))

    def simulations(self, *, status: str | None = None, tag: str | None = None, name: str | None = None,
                    method: str | None = None, created_after: str | None = None,
                    page_size: int = 100) -> Iterator[Simulation]:
        """Every simulation (of this API key), newest first, page after page; only those with ``status`` (queued,
        running, succeeded, failed, cancelled), ``tag``, ``name``, ``method`` (gd, sgd, flow, exact) or created after
        ``created_after`` (ISO 8601) when given. NotSupportedError when the server ignores ``tag`` (a server
        without tags)."""
        params = {"status": status, "tag": tag, "name": name, "method": method, "created_after": created_after,
                  "page_size": page_size}
        for document in self._pages("/v1/simulations", params):
            if tag is not None and tag not in (document.get("tags") or ()):
                raise NotSupportedError(f"{self.base_url} does not filter simulations by tag: it listed simulation "
                                        f"{document.get('id')}, which has no tag {tag!r}; list without tag=, or "
                                        "use a server that supports tags")
            yield Simulation(self._http, document)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self._http.json("GET", path, params={**params, "page_token": token})
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    # -- sweeps -------------------------------------------------------------------------------------

    def sweep(self, request: Mapping[str, Any], *, wait: bool = True, progress: bool = True,
              timeout: float | None = None, idempotency_key: str | None = None) -> Sweep:
        """Start a parameter sweep (a SweepRequest: ``base``, ``grid`` or ``points``, ``keep``); with ``wait``,
        return once every point has finished (as ``simulate``)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        started = time.monotonic()

        def send() -> Any:
            return self._http.json("POST", "/v1/sweeps", body=request, headers=headers)

        sweep = Sweep(self._http, _wait.retry_busy(send, timeout) if wait else send())
        if wait:
            remaining = None if timeout is None else max(timeout - (time.monotonic() - started), 0.0)
            sweep.wait(remaining, progress)
        return sweep

    def get_sweep(self, sweep_id: str) -> Sweep:
        """The sweep with this id."""
        return Sweep(self._http, self._http.json("GET", f"/v1/sweeps/{sweep_id}"))

    def sweeps(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Sweep]:
        """Every sweep (of this API key), newest first, page after page."""
        for document in self._pages("/v1/sweeps", {"status": status, "page_size": page_size}):
            yield Sweep(self._http, document)

    # -- synchronous answers ------------------------------------------------------------------------

    def gradients(self, request: Mapping[str, Any]) -> Gradients:
        """The loss and its gradients at given weights: ``{"data": …, "weights": [W_1, …, W_D],
        "weight_decay": γ}`` (weights input→output; numpy arrays allowed)."""
        answer = self._http.json("POST", "/v1/gradients", body=request)
        return Gradients(loss=answer.get("loss"), loss_without_sigma33=answer["loss_without_sigma33"],
                         objective=answer.get("objective"),
                         gradients=[np.asarray(g, dtype=np.float64) for g in answer["gradients"]],
                         gradient_norm=answer["gradient_norm"])

    def presets(self) -> list[dict[str, Any]]:
        """The built-in problems: name, description, parameters (with defaults and bounds), example."""
        return list(self._http.json("GET", "/v1/presets")["items"])

    def preset(self, name: str, **params: Any) -> dict[str, Any]:
        """One preset built with ``params`` (defaults for the rest): n_in, n_out, the singular values of Σ31,
        item and feature names, and ``example``, the request's ``data`` member for it."""
        query = {key: _preset_value(value) for key, value in params.items()}
        return dict(self._http.json("GET", f"/v1/presets/{name}", params=query))

    def service_info(self) -> dict[str, Any]:
        """What the service is: ``url``, ``title`` and ``version`` (its OpenAPI document), ``ready`` and, when
        ready, ``workers`` and ``workers_warm``; when not, ``detail`` says what it waits for."""
        info = self._http.json("GET", "/openapi.json")["info"]
        out: dict[str, Any] = {"url": self.base_url, "title": info.get("title"), "version": info.get("version")}
        try:
            ready = self._http.json("GET", "/readyz")
        except ProblemError as exc:
            if exc.status != 503:
                raise
            out.update(ready=False, detail=exc.detail)
        else:
            out.update(ready=True, workers=ready.get("workers"), workers_warm=ready.get("workers_warm"))
        return out


def _preset_value(value: Any) -> str:
    """A preset parameter as its query string: 3, 0.5, null, and lists as 3,2,1."""
    if value is None:
        return "null"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return ",".join(_preset_value(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)
