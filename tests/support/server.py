"""A real ``python -m service`` (uvicorn + embedded Dask cluster) on a free loopback port, for the tests that need
one: the suite's shared one is the ``server`` fixture (tests/conftest.py); tests that crash, restart or configure a
server start their own ``Server``.

Each server runs in its own process group (session), so that a test can crash it the way a machine
or container dies: SIGKILL to the server and its worker processes at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# Starting the embedded cluster takes a few seconds; a loaded CI machine may need many more.
READY_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another program listens on while the block runs (as a second server would hold it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def wait_for_line(path: Path, prefix: str, timeout: float = 10.0) -> list[str]:
    """The lines of the log at ``path`` that start with ``prefix``, once there is at least one (or ``timeout``
    seconds have passed: then whatever there is, maybe none)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.startswith(prefix)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


class Server:
    """One service process; ``url`` once ready. Logs go to ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path, workers: int = 1, **env: str) -> None:
        self.data_dir, self.log_path, self.workers, self.env = data_dir, log_path, workers, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Server:
        """Start it and wait for /readyz to answer 200 (``wait=False``: return once started)."""
        env = {**os.environ, "DLNSIM_HOST": "127.0.0.1", "DLNSIM_PORT": str(self.port),
               "DLNSIM_DATA_DIR": str(self.data_dir), "DLNSIM_WORKERS": str(self.workers),
               "DLNSIM_LOG_LEVEL": "warning", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """kill -9 the server and every process it started (its session), like a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self) -> None:
        """Graceful stop (SIGTERM: uvicorn runs the lifespan shutdown), then make sure nothing is left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # stray workers of this server only
            except ProcessLookupError:
                pass
            if self.process.poll() is None:
                self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()


def send_raw(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send ``payload`` as it is on a new loopback connection and read until the server closes it: a server that
    refuses a request may answer and close before the payload is all sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = b""
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except ConnectionResetError:
            pass
    return raw

