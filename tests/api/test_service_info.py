"""GET /v1/service-info: the service's version, what its API process runs with, its workers and limits."""

from __future__ import annotations

import importlib.metadata

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings_overrides():
    return {"max_steps": 12345}


async def test_service_info_gives_versions_workers_and_limits(service):
    body = (await service.client.get("/v1/service-info")).json()
    assert body["version"] == importlib.metadata.version("dlnsim") == body["provenance"]["dlnsim"]
    assert body["provenance"]["numpy"] == importlib.metadata.version("numpy")
    assert body["provenance"]["host_cores"] >= 1
    assert (body["workers"], body["workers_warm"]) == service.engine.workers
    assert body["limits"]["max_steps"] == 12345
    assert "CITATION.cff" in body["cite"]
