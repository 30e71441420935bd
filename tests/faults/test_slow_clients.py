"""Slow and greedy clients against a real ``python -m service`` (issue 19.1): a few hundred sockets that send half a
request header, a body one byte at a time, a 1 MB header or 20,000 header fields, more connections than the cap, a
download nobody reads. Each must be released within its deadline while the service keeps answering; every refusal
is a problem document with ``Connection: close``.

Deadlines are shortened (DLNSIM_HEADER_TIMEOUT_SECONDS=2, DLNSIM_BODY_TIMEOUT_SECONDS=2, DLNSIM_SEND_TIMEOUT_SECONDS=3)
so that the attacks take seconds; bench/attacks.py measures the defaults.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.faults.conftest import poll
from tests.support.live_service import post
from tests.support.server import Server, send_raw

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SEND_TIMEOUT = 3.0
SLOW_SOCKETS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("slow")
    srv = Server(base / "data", base / "server.log", workers=1,
                 DLNSIM_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT), DLNSIM_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
                 DLNSIM_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT)).start()
    try:
        yield srv
    finally:
        srv.stop()


def api_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def open_sockets(server: Server, count: int, payload: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if payload:
            s.sendall(payload)
        socks.append(s)
    return socks


def wait_closed(socks: list[socket.socket], timeout: float) -> tuple[dict[socket.socket, float], dict]:
    """Read every socket until the server closes it; (close time per socket, what each received)."""
    started = time.monotonic()
    closed: dict[socket.socket, float] = {}
    received: dict[socket.socket, bytes] = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while len(closed) < len(socks) and time.monotonic() - started < timeout:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BlockingIOError) as exc:
                if isinstance(exc, BlockingIOError):
                    continue
                data = b""
            if data:
                received[s] += data
            else:
                closed[s] = time.monotonic() - started
                sel.unregister(s)
    sel.close()
    return closed, received


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def status_and_json(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, orjson.loads(body) if body else {}


def test_half_sent_headers_from_hundreds_of_sockets_are_closed_within_the_header_timeout(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        baseline = api_fds(server)
        socks = open_sockets(server, SLOW_SOCKETS, b"GET /v1/simulations HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        try:
            # the service keeps answering meanwhile (its own connection)
            assert c.get("/healthz").status_code == 200
            closed, received = wait_closed(socks, timeout=HEADER_TIMEOUT + 10)
        finally:
            close_all(socks)
        assert len(closed) == SLOW_SOCKETS, f"{SLOW_SOCKETS - len(closed)} sockets still open"
        assert max(closed.values()) < HEADER_TIMEOUT + 3, max(closed.values())
        status, headers, problem = status_and_json(next(iter(received.values())))
        assert (status, headers["connection"], problem["type"]) == (408, "close", "/problems/request-timeout")
        assert headers["content-type"] == "application/problem+json"
        time.sleep(0.5)
        assert api_fds(server) <= baseline + 5
        assert c.get("/healthz").status_code == 200


def test_a_body_sent_a_byte_at_a_time_is_cut_within_the_body_timeout(server):
    head = (b"POST /v1/simulations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{")
    socks = open_sockets(server, 50, head)
    started = time.monotonic()
    try:
        # a byte every 0.3 s from each: far below DLNSIM_MIN_BODY_RATE
        while time.monotonic() - started < BODY_TIMEOUT + 4:
            alive = 0
            for s in socks:
                try:
                    s.send(b" ")
                    alive += 1
                except OSError:
                    pass
            if not alive:
                break
            time.sleep(0.3)
        closed, received = wait_closed(socks, timeout=2)
    finally:
        close_all(socks)
    assert len(closed) == len(socks)
    assert time.monotonic() - started < BODY_TIMEOUT + 6
    answers = {status_and_json(raw)[0] for raw in received.values() if raw}
    assert answers <= {408}, answers


def test_a_large_body_at_a_fair_rate_is_not_cut(server):
    # 2 MB in 64 KB pieces every 20 ms (~3 MB/s) over ~0.7 s: well above DLNSIM_MIN_BODY_RATE
    body = orjson.dumps({"data": {"kind": "dataset", "x": [[0.5] * 8] * 40_000, "y": [[0.25] * 2] * 40_000},
                         "network": {"hidden": [4]}, "training": {"method": "gd", "learning_rate": 0.01,
                                                                   "steps": 10}})
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(b"POST /v1/simulations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        for i in range(0, len(body), 65536):
            s.sendall(body[i:i + 65536])
            time.sleep(0.02)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    finally:
        s.close()
    assert status_and_json(raw)[0] == 202, raw[:500]


def test_a_one_megabyte_header_and_twenty_thousand_header_fields_are_refused_431(server):
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000)) + b"\r\n"
    for payload in (huge, many):
        raw = send_raw(server.port, payload, timeout=10)
        status, headers, problem = status_and_json(raw)
        assert (status, problem["type"], headers["connection"]) == (431, "/problems/headers-too-large", "close")
    with httpx.Client(base_url=server.url, timeout=10) as c:  # an ordinary request is unaffected
        assert c.get("/healthz", headers={"X-Fine": "a" * 4000}).status_code == 200


def test_a_download_nobody_reads_is_dropped_after_the_send_timeout(server):
    request = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128},
               "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
               "training": {"method": "gd", "learning_rate": 0.001, "steps": 200},
               "record": {"points": 100, "weights": True}}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        job_id = post(c, request).json()["id"]
        assert poll(c, job_id, lambda s: s["status"] == "succeeded")
        size = len(c.get(f"/v1/simulations/{job_id}/trajectory").content)
    assert size > 20_000_000  # far more than the socket buffers hold
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    try:
        s.sendall(f"GET /v1/simulations/{job_id}/trajectory HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(SEND_TIMEOUT + 3)  # read nothing meanwhile
        s.settimeout(10)
        total, reset = 0, False
        try:
            while chunk := s.recv(1 << 20):
                total += len(chunk)
        except ConnectionResetError:
            reset = True
    finally:
        s.close()
    assert reset or total < size // 2, f"{total} of {size} bytes were still sent: the connection was never dropped"


@pytest.fixture
def capped(tmp_path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", tmp_path / "server.log", workers=1, DLNSIM_MAX_CONNECTIONS="64",
                 DLNSIM_HEADER_TIMEOUT_SECONDS="3").start()
    try:
        yield srv
    finally:
        srv.stop()


def test_connections_beyond_the_cap_are_answered_503_at_once_and_file_descriptors_stay_bounded(capped):
    baseline = api_fds(capped)
    socks = open_sockets(capped, SLOW_SOCKETS, b"")
    try:
        time.sleep(0.5)
        assert api_fds(capped) <= baseline + 64 + 5
        closed, received = wait_closed(socks, timeout=1.5)  # the refused ones are closed at once
        assert len(closed) >= SLOW_SOCKETS - 64
        status, headers, problem = status_and_json(next(raw for raw in received.values() if raw))
        assert (status, problem["type"], headers["retry-after"]) == (503, "/problems/unavailable", "1")
        # the idle ones inside the cap are released by the header timeout; then the service answers again
        closed, _ = wait_closed([s for s in socks if s not in closed], timeout=6)
    finally:
        close_all(socks)
    with httpx.Client(base_url=capped.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
