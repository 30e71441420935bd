"""``python -m bench.attacks`` (in ``make load``): issue 19's attacks against a real service on loopback, with the
service's default limits, and what they cost it, read from /proc.

    python -m bench.attacks                        all three rows
    python -m bench.attacks --only slow            one of: slow, downloads, refused

Rows (README "Slow clients", "Downloads", "Admission"; bench/results.md):

* slow clients: N sockets (default 2,000) that send half a request header, and 200 that send a body a byte a second:
  how long until the service has closed every one (the header deadline, DLNSIM_HEADER_TIMEOUT_SECONDS, and the body's),
  the API's open file descriptors meanwhile, and /healthz's latency meanwhile;
* downloads: 4 concurrent .npz downloads of the largest trajectory the limits allow (DLNSIM_MAX_TRAJECTORY_VALUES
  float64 in one array: 400 MB, random so that it does not compress), the API's resident memory (VmRSS) above its
  baseline against the stated bound, DLNSIM_DOWNLOAD_MEMORY_BYTES + 128 MiB, and /healthz's latency meanwhile;
* refused requests: the API process's CPU time (utime + stime) spent on each request the issue lists, one at a time
  on an idle service, against the 0.5 s target; and, for comparison, what an admitted validation may cost (the most
  expensive kind: a request just under DLNSIM_MAX_VALIDATION_FLOPS that validation then refuses).

Every request goes to 127.0.0.1; every loop is bounded. A full run (no --only) replaces the "## Attacks (issue 19)"
section of bench/results.md.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from service import codec
from service.jobs.database import Database
from service.jobs.store import JobStore
from service.main import STORE_FILE
from service.settings import Settings

MB = 1 << 20
DEFAULTS = Settings()
RESULTS = Path(__file__).with_name("results.md")
HEADING = "## Attacks (issue 19)"


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Prober:
    """/healthz every 50 ms on its own connection, and the API's RSS and descriptors every 10 ms, in threads."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.latencies: list[float] = []
        self.peak_rss = rss(pid)
        self.peak_fds = fds(pid)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._probe), threading.Thread(target=self._sample)]

    def __enter__(self) -> Prober:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    c.get("/healthz")
                    self.latencies.append(time.monotonic() - started)
                except httpx.HTTPError:
                    self.latencies.append(float("inf"))
                time.sleep(0.05)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss(self.pid))
            self.peak_fds = max(self.peak_fds, fds(self.pid))
            time.sleep(0.01)

    def latency(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        return f"/healthz p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms over {len(ms)} probes"


# ------------------------------------------------------------------------------------------------
# slow clients


def wait_closed(socks: dict[socket.socket, float], timeout: float) -> dict[socket.socket, tuple[float, int]]:
    """Read every socket until the service closes it: per socket, (seconds from its opening to its close, the status
    the service answered, 0 for none)."""
    out: dict[socket.socket, tuple[float, int]] = {}
    received: dict[socket.socket, bytes] = dict.fromkeys(socks, b"")
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while len(out) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                received[s] += data
                continue
            raw = received[s]
            out[s] = (time.monotonic() - socks[s], int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0)
            sel.unregister(s)
    sel.close()
    return out


def _summary(closed: dict[socket.socket, tuple[float, int]], total: int) -> str:
    by_status: dict[int, list[float]] = {}
    for seconds, status in closed.values():
        by_status.setdefault(status, []).append(seconds)
    parts = [f"{len(v)} answered {k or 'nothing'} and closed within {max(v):.1f} s of opening"
             for k, v in sorted(by_status.items())]
    return f"{len(closed)} of {total} closed by the service: " + "; ".join(parts)


def slow_clients(server, sockets: int) -> list[str]:
    pid = server.process.pid
    base_fds = fds(pid)
    with Prober(server.url, pid) as probe:
        heads: dict[socket.socket, float] = {}
        for _ in range(sockets):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            heads[s] = time.monotonic()
            s.sendall(b"GET /v1/simulations HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        closed_heads = wait_closed(heads, DEFAULTS.header_timeout_seconds + 30)
        for s in heads:
            s.close()
        bodies: dict[socket.socket, float] = {}
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            bodies[s] = time.monotonic()
            s.sendall(b"POST /v1/simulations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{")
        dribble_stop = threading.Event()

        def dribble() -> None:
            while not dribble_stop.is_set():
                for s in bodies:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
                time.sleep(1.0)

        dribbler = threading.Thread(target=dribble)
        dribbler.start()
        closed_bodies = wait_closed(bodies, DEFAULTS.body_timeout_seconds + 30)
        dribble_stop.set()
        dribbler.join()
        for s in bodies:
            s.close()
    time.sleep(0.5)
    return [
        f"{sockets} sockets sending half a header: {_summary(closed_heads, sockets)} "
        f"(DLNSIM_MAX_CONNECTIONS={DEFAULTS.max_connections}: 503 at once beyond it; "
        f"DLNSIM_HEADER_TIMEOUT_SECONDS={DEFAULTS.header_timeout_seconds:g}: 408)",
        f"200 sockets sending a body a byte a second: {_summary(closed_bodies, 200)} "
        f"(DLNSIM_BODY_TIMEOUT_SECONDS={DEFAULTS.body_timeout_seconds:g} + bytes / DLNSIM_MIN_BODY_RATE="
        f"{DEFAULTS.min_body_rate})",
        f"API file descriptors: {base_fds} before, at most {probe.peak_fds} meanwhile, {fds(pid)} after; "
        f"{probe.latency()}",
    ]


# ------------------------------------------------------------------------------------------------
# downloads


def store_largest(data_dir: Path, values: int) -> str:
    """A succeeded simulation whose trajectory is ``values`` float64 in one product array (random: incompressible)."""
    store = JobStore(Database(data_dir / STORE_FILE))
    try:
        row, _ = store.create(b'{"largest": true}', "h")
        store.mark_running(row.id)
        records, n = 100, 1000
        product = np.random.default_rng(0).standard_normal((records, values // (records * n), n))
        blob = codec.pack({"time": np.arange(float(records)), "product": product})
        del product
        store.finish(row.id, blob, "completed")
        return row.id
    finally:
        store.db.close()


def downloads(server, values: int, concurrent: int) -> list[str]:
    pid = server.process.pid
    job_id = store_largest(server.data_dir, values)
    base = rss(pid)
    sizes, errors = [], []

    def fetch() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=600) as c, \
                    c.stream("GET", f"/v1/simulations/{job_id}/trajectory.npz") as r:
                if r.status_code != 200:
                    errors.append(r.status_code)
                    return
                sizes.append(sum(len(piece) for piece in r.iter_raw(1 << 20)))
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)

    with Prober(server.url, pid) as probe:
        started = time.monotonic()
        threads = [threading.Thread(target=fetch) for _ in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        elapsed = time.monotonic() - started
    bound = DEFAULTS.download_memory_bytes + 128 * MB
    grown = probe.peak_rss - base
    return [
        f"{concurrent} concurrent .npz downloads of a {values * 8 / 1e6:.0f} MB trajectory (one float64 array of "
        f"DLNSIM_MAX_TRAJECTORY_VALUES={values}): {len(sizes)} complete ({min(sizes, default=0) / 1e6:.0f} MB each), "
        f"errors {errors or 'none'}, {elapsed:.1f} s",
        f"API RSS {base / MB:.0f} MiB before, peak {probe.peak_rss / MB:.0f} MiB: +{grown / MB:.0f} MiB, bound "
        f"DLNSIM_DOWNLOAD_MEMORY_BYTES + 128 MiB = {bound / MB:.0f} MiB: {'within' if grown < bound else 'ABOVE'}; "
        f"{probe.latency()}",
    ]


# ------------------------------------------------------------------------------------------------
# refused requests


def big(**training) -> dict:
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 2000, "n_out": 2000, "n_samples": 1000},
            "network": {"hidden": [2000] * 7}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 1000, **training}, "record": {"points": 2}}


def refused(server) -> list[str]:
    pid = server.process.pid
    sweep = {"base": {"data": {"kind": "preset", "name": "random_teacher", "n_in": 1000, "n_out": 1000,
                               "n_samples": 1000}, "network": {"hidden": [1000]},
                      "training": {"method": "gd", "learning_rate": 1e-4, "steps": 10}, "record": {"points": 2}},
             "grid": {"data.n_samples": list(range(1000, 1200))}}
    years = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 256},
             "network": {"hidden": [4000, 4000]}, "training": {"method": "gd", "learning_rate": 1e-6,
                                                               "steps": 10_000_000}, "record": {"points": 2}}
    # admitted by the cost model (estimate 3.5e9, under DLNSIM_MAX_VALIDATION_FLOPS=4e9), then refused by validation:
    # a 700² random teacher at an unstable learning rate
    edge = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 700, "n_out": 700, "n_samples": 700},
            "network": {"hidden": [700]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
            "training": {"method": "gd", "learning_rate": 100.0, "steps": 10}, "record": {"points": 2}}
    cases = [
        ("POST 8 layers of 2000×2000 (valid)", "POST", "/v1/simulations", big()),
        ("POST the same at an unstable learning rate, ×4 concurrent", "POST4", "/v1/simulations",
         big(learning_rate=10.0)),
        ("GET /v1/presets/random_teacher?n_in=4000&n_out=4000&n_samples=1000", "GET",
         "/v1/presets/random_teacher?n_in=4000&n_out=4000&n_samples=1000", None),
        ("POST a sweep of 200 points at n = 1000, each with its own data", "POST", "/v1/sweeps", sweep),
        ("POST a job of 10⁷ steps of 4000-wide layers (years)", "POST", "/v1/simulations", years),
        ("a 1 MB request header", "RAW", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MB + b"\r\n\r\n",
         None),
        ("20,000 request header fields", "RAW",
         b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000)) + b"\r\n", None),
        ("a 33 MiB body (over DLNSIM_MAX_BODY_BYTES)", "BODY", "/v1/simulations", b"[" + b"0," * (33 * MB // 2)
         + b"0]"),
        ("a 31 MiB dataset whose last key repeats one (parsed, then refused)", "BODY", "/v1/simulations",
         dataset_body(31 * MB)),
        ("POST a 700² random teacher at an unstable learning rate (admitted by the cost model, then refused)", "POST",
         "/v1/simulations", edge),
    ]
    lines, worst = [], 0.0
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, method, target, body in cases:
            time.sleep(0.5)
            before = cpu_seconds(pid)
            if method == "GET":
                statuses = [c.get(target).status_code]
            elif method == "POST":
                statuses = [c.post(target, json=body).status_code]
            elif method == "BODY":
                statuses = [c.post(target, content=body, headers={"content-type": "application/json"}).status_code]
            elif method == "POST4":
                results: list[int] = []

                def post(url: str = server.url + target, payload: object = body, out: list = results) -> None:
                    out.append(httpx.post(url, json=payload, timeout=120).status_code)

                threads = [threading.Thread(target=post) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                statuses = results
            else:
                statuses = [raw_status(server.port, target)]
            time.sleep(0.2)
            spent = cpu_seconds(pid) - before
            worst = max(worst, spent)
            lines.append(f"{name}: {statuses} in {spent * 1000:.0f} ms of API CPU")
    lines.append(f"most expensive refused request: {worst * 1000:.0f} ms of API CPU (target < 500 ms): "
                 f"{'met' if worst < 0.5 else 'MISSED'}")
    return lines


def dataset_body(size: int) -> bytes:
    """A JSON dataset request of about ``size`` bytes whose last key repeats one (so it is refused once parsed)."""
    rows = size // 400
    x = np.random.default_rng(1).standard_normal((rows, 18)).round(12)
    return (b'{"data": {"kind": "dataset", "x": ' + orjson_dumps(x) + b', "y": ' + orjson_dumps(np.ascontiguousarray(x[:, :2]))
            + b'}, "network": {"hidden": [8]}, "training": {"method": "gd", "learning_rate": 0.01, "steps": 10},'
            b' "network": {"hidden": [4]}}')


def orjson_dumps(a: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY)


def raw_status(port: int, payload: bytes) -> int:
    from tests.support.server import send_raw

    raw = send_raw(port, payload)
    return int(raw.split(b" ", 2)[1]) if raw else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("slow", "downloads", "refused"))
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--values", type=int, default=DEFAULTS.max_trajectory_values,
                        help="float64 values of the downloaded trajectory (default: DLNSIM_MAX_TRAJECTORY_VALUES)")
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args(argv)

    from tests.support.server import Server  # the e2e tests' server process (free port, own session)

    rows: list[tuple[str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="dlnsim-attacks-") as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", workers=1).start()
        try:
            if args.only in (None, "slow"):
                rows.append(("slow clients", slow_clients(server, args.sockets)))
            if args.only in (None, "refused"):
                rows.append(("refused requests", refused(server)))
            if args.only in (None, "downloads"):
                rows.append(("downloads", downloads(server, args.values, args.concurrent)))
        finally:
            server.stop()
    stamp = (f"python -m bench.attacks ({time.strftime('%Y-%m-%d %H:%M:%S')}, defaults; {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.2f})")
    print(stamp)
    for title, lines in rows:
        print(f"  {title}:")
        for line in lines:
            print(f"    {line}")
    if args.only is None:
        from bench.common import write_section

        body = [f"- **{title}**\n" + "\n".join(f"  - {line}" for line in lines) for title, lines in rows]
        write_section(RESULTS, HEADING, [HEADING, "", f"Run `{stamp}`.", "", *body, ""])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
