"""Fixtures of the dlnsim client's tests (client/, ``import dlnsim``): the suite's shared ``python -m service`` on
loopback (tests/conftest.py), and the client on it."""

from __future__ import annotations

from collections.abc import Iterator

import dlnsim
import pytest

from tests.support.server import Server


@pytest.fixture(scope="package")
def service(server) -> Server:
    """The suite's shared service (tests/conftest.py)."""
    return server


@pytest.fixture(scope="package")
def dl(service) -> Iterator[dlnsim.Client]:
    """The client under test, on that service."""
    with dlnsim.Client(service.url, timeout=60) as client:
        yield client
