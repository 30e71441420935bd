"""Polling helper shared by the tests that wait on real processes (servers, Dask workers)."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Call ``predicate`` until it returns something truthy and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
