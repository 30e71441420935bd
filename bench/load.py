"""``python -m bench.load`` (``make load``): a bounded load test of a real service on loopback.

    python -m bench.load                          50 clients for 30 s, closed loop
    python -m bench.load --think 0.1              50 polling clients (a pause of mean 0.1 s between requests)
    python -m bench.load --clients 20 --seconds 5 the CI size (tests/faults/test_load.py)

Starts ``python -m service`` (embedded cluster) on a free 127.0.0.1 port with a low DLNSIM_MAX_QUEUED,
saturates its workers with simulations that run for hours, then runs N concurrent clients for T seconds, each
with its own keep-alive HTTP/1.1 connection (``Connection``; all on one uvloop event loop), each sending as
soon as its previous answer arrived (or after a random pause of mean --think seconds):

    60 %  GET /v1/simulations/{id}      a status read of a random known simulation (timed)
    20 %  POST /v1/simulations          a long simulation: 202 while the queue has room, else 429
    10 %  GET /v1/simulations           the first page of the list
    10 %  DELETE /v1/simulations/{id}   one of the client's own simulations (frees a queue slot; a status
                                        read instead while it has none)

It prints the answers by status code, transport errors, status-read p50/p99/max, whether every 429/503
carried Retry-After, and the CPU time of the API, the busy workers and itself. Every loop is bounded in time
and in requests; every request goes to 127.0.0.1.

--think 0 is a throughput test (50 clients that never pause keep 50 requests in flight, so by Little's law the
mean time in the system is 50 / throughput whatever a request costs); --think 0.1 is a polling client ten times
more eager than the service asks (Retry-After: 1), the figure for "how long does a status read take while the
workers are saturated". The figures measured so far, and how to read them: docs/performance.md#load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import orjson
import psutil
import uvloop

from service.settings import Settings

# Per-client cap on requests: the time bound ends a run long before it unless responses are ~instant.
MAX_REQUESTS_PER_CLIENT = 100_000
REQUEST_TIMEOUT = 10.0


def long_request(seed: int) -> dict:
    """A GD run of hours (10⁶ steps of a 128-256-128 network): it holds a worker as long as the test runs."""
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 128, "n_out": 128, "n_samples": 256},
            "network": {"hidden": [256]}, "init": {"scheme": "gaussian", "scale": 0.001, "seed": seed},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 1_000_000}, "record": {"points": 10}}


@dataclass
class LoadReport:
    clients: int
    seconds: float
    codes: Counter = field(default_factory=Counter)      # "POST 202", "GET 200", ...
    errors: Counter = field(default_factory=Counter)     # transport errors by exception type
    status_reads: list[float] = field(default_factory=list)  # seconds
    refusals: int = 0                 # 429/503 answers
    refusals_without_retry_after: int = 0
    elapsed: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code.split()[1].startswith("5"))

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    def quantile(self, q: float) -> float:
        reads = sorted(self.status_reads)
        if not reads:
            return float("nan")
        return reads[min(int(q * len(reads)), len(reads) - 1)]

    def lines(self) -> list[str]:
        ms = 1000.0
        return [
            f"{self.clients} clients for {self.elapsed:.1f} s: {self.requests} requests "
            f"({self.requests / max(self.elapsed, 1e-9):.0f}/s), transport errors {sum(self.errors.values())}"
            + (f" {dict(self.errors)}" if self.errors else ""),
            "answers: " + ", ".join(f"{code} ×{n}" for code, n in sorted(self.codes.items())),
            (f"5xx: {self.server_errors}; 429/503: {self.refusals}, "
             f"{self.refusals_without_retry_after} of them without Retry-After"),
            f"status reads: {len(self.status_reads)}, p50 {self.quantile(0.50) * ms:.1f} ms, "
            f"p99 {self.quantile(0.99) * ms:.1f} ms, max {max(self.status_reads, default=float('nan')) * ms:.1f} ms"
            + (f", mean {statistics.fmean(self.status_reads) * ms:.1f} ms" if self.status_reads else ""),
        ]


async def saturate(client: httpx.AsyncClient, jobs: int) -> list[str]:
    """Submit ``jobs`` never-ending simulations (enough to keep every worker busy) and return their ids."""
    ids = []
    for i in range(jobs):
        response = await client.post("/v1/simulations", json=long_request(10_000 + i))
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]   # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class _Collector:
    """httptools' callbacks: one response's headers and body."""

    __slots__ = ("chunks", "done", "headers")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        self.done = True


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, as each separate user has, with a minimal client:
    the request written in one piece, the response parsed by httptools (uvicorn's parser: status, headers,
    Content-Length or chunked body). Why not httpx: its CPU cost per request on the generator's one event loop
    queued 50 clients' answers behind each other, and the measured latency was mostly the load generator's
    (docs/performance.md#load). This client costs about a tenth as much.
    An error closes the connection; the next request opens a new one."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        if host != "127.0.0.1":
            raise ValueError("the load test only runs against 127.0.0.1")
        self.host, self.port = host, int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await self._exchange(method, path, body)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, method: str, path: str, body: bytes | None) -> Answer:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: */*\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        answer = _Collector()
        parser = httptools.HttpResponseParser(answer)
        while not answer.done:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionResetError("the server closed the connection before the answer was complete")
            parser.feed_data(data)
        if answer.headers.get("connection", "").lower() == "close":  # (llhttp's should_keep_alive() is
            self.close()                                                # False once a message is complete)
        return Answer(parser.get_status_code(), answer.headers, b"".join(answer.chunks))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


TRANSPORT_ERRORS = (OSError, TimeoutError, httptools.HttpParserError)


async def _client(i: int, url: str, known: list[str], deadline: float, report: LoadReport, seed: int,
                  think: float) -> None:
    http = Connection(url)
    try:
        await _client_loop(i, http, known, deadline, report, seed, think)
    finally:
        http.close()


async def _client_loop(i: int, http: Connection, known: list[str], deadline: float, report: LoadReport,
                       seed: int, think: float) -> None:
    rng = random.Random(seed * 1000 + i)
    own: list[str] = []
    for n in range(MAX_REQUESTS_PER_CLIENT):
        if think:
            await asyncio.sleep(rng.uniform(0, 2 * think))
        if time.monotonic() >= deadline:
            return
        op = rng.random()
        try:
            if op < 0.2:
                method = "POST"
                response = await http.request(method, "/v1/simulations",
                                              orjson.dumps(long_request(seed * 100_000 + i * 1000 + n)))
                if response.status_code == 202:
                    own.append(response.json()["id"])
                    known.append(own[-1])
            elif op < 0.3:
                method = "GET"
                response = await http.request(method, "/v1/simulations?page_size=20")
            elif op < 0.4 and own:
                job_id = own.pop(rng.randrange(len(own)))
                known.remove(job_id)  # other clients stop reading it (a read may still race the delete)
                method = "DELETE"
                response = await http.request(method, f"/v1/simulations/{job_id}")
            else:
                job_id = known[rng.randrange(len(known))]
                method = "GET"
                started = time.perf_counter()
                response = await http.request(method, f"/v1/simulations/{job_id}")
                report.status_reads.append(time.perf_counter() - started)
        except TRANSPORT_ERRORS as exc:
            report.errors[type(exc).__name__] += 1
            continue
        report.codes[f"{method} {response.status_code}"] += 1
        if response.status_code in (429, 503):
            report.refusals += 1
            if not response.headers.get("retry-after", "").isdigit():
                report.refusals_without_retry_after += 1


def worker_processes(api: psutil.Process) -> list[psutil.Process]:
    """The embedded cluster's worker processes of the service ``api`` (multiprocessing spawn children; not
    its resource tracker)."""
    return [p for p in api.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


async def run_load(url: str, clients: int, seconds: float, *, saturating_jobs: int, seed: int = 0,
                   think: float = 0.0) -> LoadReport:
    """Saturate the workers, then ``clients`` concurrent clients for ``seconds``; the figures. ``think``: mean
    pause between a client's requests (0: closed loop, each sends as soon as it has its answer)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the load test only runs against 127.0.0.1")
    report = LoadReport(clients=clients, seconds=seconds)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as http:
        known = await saturate(http, saturating_jobs)
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.wait_for(asyncio.gather(*(_client(i, url, known, deadline, report, seed, think)
                                            for i in range(clients))),
                           timeout=seconds + 2 * think + 2 * REQUEST_TIMEOUT + 5)
    report.elapsed = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1,
                        help="embedded cluster's worker processes, all kept busy (leave a core for the API and "
                             "this load generator: on 2 cores, 1)")
    parser.add_argument("--max-queued", type=int, default=8, help="DLNSIM_MAX_QUEUED of the service")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean pause (s) between a client's requests; 0 = closed loop, as fast as answers come")
    parser.add_argument("--worker-nice", type=int, default=Settings.model_fields["worker_nice"].default,
                        help="DLNSIM_WORKER_NICE of the service (0: workers at the API's priority)")
    args = parser.parse_args(argv)

    from tests.support.server import (
        Server,  # the e2e tests' server process (free port, own session)
    )

    with tempfile.TemporaryDirectory(prefix="dlnsim-load-") as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", workers=args.workers,
                        DLNSIM_MAX_QUEUED=str(args.max_queued), DLNSIM_WORKER_NICE=str(args.worker_nice)).start()
        try:
            api = psutil.Process(server.process.pid)
            workers = worker_processes(api)
            api_cpu, own_cpu = sum(api.cpu_times()[:2]), time.process_time()
            workers_cpu = sum(sum(w.cpu_times()[:2]) for w in workers)
            report = uvloop.run(run_load(server.url, args.clients, args.seconds,
                                         saturating_jobs=args.workers + 1, think=args.think))
            api_cpu, own_cpu = sum(api.cpu_times()[:2]) - api_cpu, time.process_time() - own_cpu
            workers_cpu = sum(sum(w.cpu_times()[:2]) for w in workers) - workers_cpu
        finally:
            server.stop()
    print(f"python -m bench.load --clients {args.clients} --seconds {args.seconds:g} --workers {args.workers} "
          f"--max-queued {args.max_queued} --think {args.think:g} --worker-nice {args.worker_nice}")
    for line in report.lines():
        print("  " + line)
    # Where the time went: latencies on a machine whose cores are all busy measure the scheduler too.
    print(f"  CPU: API process {api_cpu:.1f} s ({1000 * api_cpu / max(report.requests, 1):.2f} ms/request), "
          f"busy workers {workers_cpu:.1f} s, load generator {own_cpu:.1f} s, over {report.elapsed:.1f} s on "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
