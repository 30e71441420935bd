"""Fixtures of the dlnsim client's tests (client/, ``import dlnsim``): one real ``python -m service`` on loopback
for the package, shared by test_package.py and test_client_readme.py."""

from __future__ import annotations

from collections.abc import Iterator

import dlnsim
import pytest

from tests.e2e.conftest import Server


@pytest.fixture(scope="package")
def service(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("dlnsim-client-server")
    srv = Server(base / "data", base / "server.log", workers=1).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def dl(service) -> Iterator[dlnsim.Client]:
    """The client under test, on that service."""
    with dlnsim.Client(service.url, timeout=60) as client:
        yield client
