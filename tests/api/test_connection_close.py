"""After an unexpected 500 the server closes the connection, and says so (issue 19.7): without ``Connection: close``
a pooled client sent its next request on a socket about to close (ECONNRESET, an unknown outcome for a POST)."""

from __future__ import annotations

import socket

import httpx

from tests.support.inprocess import serving


def test_an_unexpected_500_says_connection_close_and_the_connection_is_closed(tmp_path):
    with serving(tmp_path) as (url, app):
        async def broken(*args, **kwargs):
            raise RuntimeError("an unexpected bug")

        app.state.simulations.list = broken
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/simulations HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):  # the server closes after the answer: recv ends
                raw += chunk
        head = raw.partition(b"\r\n\r\n")[0].decode().lower()
        assert head.startswith("http/1.1 500")
        assert "connection: close" in head
        assert "content-type: application/problem+json" in head
        # a pooled client retries nothing and loses nothing: its next request goes on a new connection
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/v1/simulations").status_code == 500
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/simulations").status_code == 500
