"""``python -m bench.load`` (``make load``): a bounded load test of a real service on loopback.

    python -m bench.load                          50 clients for 30 s (the figures in the report)
    python -m bench.load --clients 20 --seconds 5 the CI size (tests/faults/test_load.py)

Starts ``python -m service`` (embedded cluster) on a free 127.0.0.1 port with a low DLNSIM_MAX_QUEUED,
saturates its workers with simulations that run for hours, then runs N concurrent closed-loop clients
(an httpx.AsyncClient each, one event loop) for T seconds, each sending as soon as its previous answer arrived
(or after a random pause of mean --think seconds):

    60 %  GET /v1/simulations/{id}      a status read of a random known simulation (timed)
    20 %  POST /v1/simulations          a long simulation: 202 while the queue has room, else 429
    10 %  GET /v1/simulations           the first page of the list
    10 %  DELETE /v1/simulations/{id}   one of the client's own simulations (frees a queue slot; a status
                                        read instead while it has none)

It prints the answers by status code, transport errors, status-read p50/p99/max, and whether every
429/503 carried Retry-After. Every loop is bounded in time and in requests; every request goes to 127.0.0.1.
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

import httpx
import psutil

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


def _http(url: str) -> httpx.AsyncClient:
    # One connection per client, as separate users have. (One AsyncClient shared by all clients spent most
    # of the load generator's CPU in httpcore's connection-pool bookkeeping, which grows with the pool.)
    # verify=False: plain HTTP on loopback; otherwise every client loads the CA bundle (~30 ms of CPU).
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, verify=False,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def _client(i: int, url: str, known: list[str], deadline: float, report: LoadReport, seed: int,
                  think: float) -> None:
    async with _http(url) as http:
        await _client_loop(i, http, known, deadline, report, seed, think)


async def _client_loop(i: int, http: httpx.AsyncClient, known: list[str], deadline: float, report: LoadReport,
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
                response = await http.post("/v1/simulations", json=long_request(seed * 100_000 + i * 1000 + n))
                if response.status_code == 202:
                    own.append(response.json()["id"])
                    known.append(own[-1])
            elif op < 0.3:
                response = await http.get("/v1/simulations", params={"page_size": 20})
            elif op < 0.4 and own:
                job_id = own.pop(rng.randrange(len(own)))
                known.remove(job_id)  # other clients stop reading it (a read may still race the delete)
                response = await http.delete(f"/v1/simulations/{job_id}")
            else:
                job_id = known[rng.randrange(len(known))]
                started = time.perf_counter()
                response = await http.get(f"/v1/simulations/{job_id}")
                report.status_reads.append(time.perf_counter() - started)
        except httpx.HTTPError as exc:
            report.errors[type(exc).__name__] += 1
            continue
        report.codes[f"{response.request.method} {response.status_code}"] += 1
        if response.status_code in (429, 503):
            report.refusals += 1
            if not response.headers.get("retry-after", "").isdigit():
                report.refusals_without_retry_after += 1


async def run_load(url: str, clients: int, seconds: float, *, saturating_jobs: int, seed: int = 0,
                   think: float = 0.0) -> LoadReport:
    """Saturate the workers, then ``clients`` concurrent clients for ``seconds``; the figures. ``think``: mean
    pause between a client's requests (0: closed loop, each sends as soon as it has its answer)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the load test only runs against 127.0.0.1")
    report = LoadReport(clients=clients, seconds=seconds)
    async with _http(url) as http:
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
    args = parser.parse_args(argv)

    from tests.e2e.conftest import Server  # the e2e tests' server process (free port, own session)

    with tempfile.TemporaryDirectory(prefix="dlnsim-load-") as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", workers=args.workers,
                        DLNSIM_MAX_QUEUED=str(args.max_queued)).start()
        try:
            api = psutil.Process(server.process.pid)
            api_cpu, own_cpu = sum(api.cpu_times()[:2]), time.process_time()
            report = asyncio.run(run_load(server.url, args.clients, args.seconds,
                                          saturating_jobs=args.workers + 1, think=args.think))
            api_cpu, own_cpu = sum(api.cpu_times()[:2]) - api_cpu, time.process_time() - own_cpu
        finally:
            server.stop()
    print(f"python -m bench.load --clients {args.clients} --seconds {args.seconds:g} --workers {args.workers} "
          f"--max-queued {args.max_queued} --think {args.think:g}")
    for line in report.lines():
        print("  " + line)
    # Where the time went: latencies on a machine whose cores are all busy measure the scheduler too.
    print(f"  CPU: API process {api_cpu:.1f} s ({1000 * api_cpu / max(report.requests, 1):.2f} ms/request), "
          f"load generator {own_cpu:.1f} s, over {report.elapsed:.1f} s on {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
