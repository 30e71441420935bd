"""The real app behind a real uvicorn (with the service's own HTTP protocol, service/http_server.py) in a thread of
the test process, with the HTTP tests' FakeEngine: for what only a socket shows (connection handling, headers the
server adds) without starting a Dask cluster.

    with serving(tmp_path) as (url, app):
        ...
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from service.http_server import guarded_protocol
from service.main import create_app
from service.settings import Settings
from tests.api.conftest import FakeEngine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(tmp_path, **overrides: Any) -> Iterator[tuple[str, Any]]:
    settings = Settings(data_dir=tmp_path, **overrides)
    app = create_app(settings, engine_factory=FakeEngine)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=guarded_protocol(settings),
                            timeout_keep_alive=settings.keep_alive_seconds)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)
