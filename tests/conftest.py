"""Suite-wide settings.

BLAS runs on one thread in the test process and in the processes it starts: the suite shares 2 cores with the Dask
workers and servers it launches, and a multi-threaded OpenBLAS spin-waiting at its barriers while another process
holds a core made small solves many times slower here (docs/performance.md#cores). Numerics do not depend on the
thread count beyond round-off, and results compared bit for bit are computed on one thread on both sides.
"""

import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # for the processes the tests start
# The host's core ledger (service/jobs/cores.py) of the suite's workers and servers: their own, so that a
# service running beside the tests (make run) and the suite do not count each other's jobs.
os.environ.setdefault("DLNSIM_CORES_DIR", tempfile.mkdtemp(prefix="dlnsim-cores-tests-"))

import numpy  # noqa: E402,F401  (load both OpenBLAS copies first: threadpoolctl only reaches loaded libraries)
import scipy.linalg  # noqa: E402,F401
from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(limits=1)


from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.support.server import Server  # noqa: E402

TESTS = Path(__file__).parent
# `make test` runs the suite in two processes (pytest-xdist, --dist loadgroup), then tests/fuzz alone (schemathesis
# parametrizes per operation only without xdist). The fault tests stay in one process, one after another: they
# crash, fill and time real service processes of their own, and their deadlines and memory bounds assume one at a time.
ONE_PROCESS = ("faults",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        part = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if part in ONE_PROCESS:
            item.add_marker(pytest.mark.xdist_group(part))


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """The suite's one shared service (one worker; request bodies capped at 1 MiB so that the 413 is testable):
    the end-to-end, client and example tests use it. Each test leaves it as it found it (cancels its long jobs)."""
    base = tmp_path_factory.mktemp("server")
    srv = Server(base / "data", base / "server.log", workers=1, DLNSIM_MAX_BODY_BYTES=str(1 << 20)).start()
    try:
        yield srv
    finally:
        srv.stop()
