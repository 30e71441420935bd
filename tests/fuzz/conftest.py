"""The fuzz run's summary: requests per test and status, and the profile's minimum case count."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.fuzz import profiles

FUZZ_TESTS = ("test_stateless", "test_accepted_requests", "test_stateful")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    stats = profiles.STATS
    if not stats:
        return
    profile = profiles.current()
    per_test: Counter = Counter()
    per_status: Counter = Counter()
    for (test, _method, _path, status), n in stats.items():
        per_test[test] += n
        per_status[status] += n
    total = sum(per_test.values())
    terminalreporter.section(f"dlnsim fuzz ({profile.name} profile)")
    terminalreporter.write_line(f"{total} requests: " + ", ".join(f"{t} {n}" for t, n in sorted(per_test.items())))
    terminalreporter.write_line("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(per_status.items())))
    created = sum(n for (test, method, path, status), n in stats.items()
                  if method == "POST" and path in ("/v1/simulations", "/v1/sweeps") and status in (201, 202))
    terminalreporter.write_line(f"simulations and sweeps created: {created}")


def pytest_collection_finish(session: Any) -> None:
    # When the whole fuzz module runs (nothing deselected), it must reach the profile's case count: a
    # schemathesis or hypothesis change that silently generates fewer cases would otherwise go unnoticed.
    names = {getattr(item, "originalname", item.name) for item in session.items
             if getattr(item, "module", None) is not None and item.module.__name__.endswith("tests.fuzz.test_fuzz")}
    session.config._dlnsim_fuzz_complete = set(FUZZ_TESTS) <= names


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if not getattr(session.config, "_dlnsim_fuzz_complete", False) or exitstatus != 0:
        return
    total = sum(profiles.STATS.values())
    profile = profiles.current()
    if total < profile.min_cases:
        session.config.get_terminal_writer().line(
            f"dlnsim fuzz: only {total} requests, the {profile.name} profile needs {profile.min_cases}", red=True)
        session.exitstatus = 1
