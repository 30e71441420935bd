"""In-process app fixtures: the real app, the real JobStore (in tmp_path), and an Engine test double.

The double only records what the HTTP layer asks of the engine (submit, cancel, wait, ready); tests
that need a finished job write its result into the store themselves. Numerics are never faked here:
runs through the real engine are covered by tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.jobs.live import LiveFeeds
from service.main import create_app
from service.settings import Settings
from tests.support.trajectories import packed


class FakeEngine:
    """Engine test double: same async interface as service.jobs.engine.Engine, no Dask."""

    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.waits: list[tuple[str, float]] = []
        self.is_ready = True
        self.workers = (2, 2)  # (connected, warm)
        # Called by wait(): lets a test finish a job "during" the wait.
        self.on_wait: Callable[[str], None] | None = None
        # the real feeds: tests play a worker's messages into them
        self.live = LiveFeeds(settings.max_record_points)

    def live_feeds(self) -> LiveFeeds:
        return self.live
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    async def cancel(self, job_id: str) -> bool:
        self.cancelled.append(job_id)
        return bool(await asyncio.to_thread(self.store.mark_cancelled, job_id))

    async def wait(self, job_id: str, timeout: float) -> bool:
        self.waits.append((job_id, timeout))
        if self.on_wait is not None:
            self.on_wait(job_id)
        row = await asyncio.to_thread(self.store.get, job_id)
        return row is not None and row.terminal

    async def ready(self) -> bool:
        return self.is_ready

    async def warm_workers(self) -> tuple[int, int]:
        return self.workers


class Service:
    """What a test gets: an httpx client on the app, the store, the fake engine and the settings."""

    def __init__(self, client: httpx.AsyncClient, app: Any, engine: FakeEngine, settings: Settings) -> None:
        self.client, self.app, self.engine, self.settings = client, app, engine, settings

    @property
    def store(self) -> Any:
        return self.engine.store

    def finish(self, job_id: str, document: dict | bytes, outcome: str = "converged") -> bytes:
        """Store a result as the worker would: a Trajectory document (packed here) or packed bytes."""
        data = document if isinstance(document, bytes) else packed(document)
        self.store.mark_running(job_id)
        assert self.store.finish(job_id, data, outcome)
        return data

    def job_count(self) -> int:
        rows, _ = self.store.list(page_size=1000)
        return len(rows)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change limits."""
    return {}


@pytest.fixture
async def service(tmp_path, settings_overrides) -> AsyncIterator[Service]:
    settings = Settings(data_dir=tmp_path, **settings_overrides)
    engines: list[FakeEngine] = []

    def factory(s: Settings, store: Any) -> FakeEngine:
        engines.append(FakeEngine(s, store))
        return engines[-1]

    app = create_app(settings, engine_factory=factory)
    # ASGITransport does not run the lifespan: enter it ourselves (it opens the store, starts the engine).
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Service(client, app, engines[0], settings)


def small_request(**changes: Any) -> dict[str, Any]:
    """A valid request that builds instantly: 2-d correlations, one hidden layer, GD."""
    request = {
        "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]]},
        "network": {"hidden": [3]},
        "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
        "training": {"method": "gd", "learning_rate": 0.05, "steps": 100},
    }
    request.update(changes)
    return request


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    """The response is an RFC 9457 problem with this status (and type); returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail", "instance", "errors"} <= set(body)
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    return body
