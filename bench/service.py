"""Through the service: the first job after start, tiny-job round trips, and how a job uses the cores.

    python -m bench.service            the issue's figures (~7 min on a quiet 2-core machine)
    python -m bench.service --quick    smoke run: shorter jobs, fewer rounds (~1.5 min)

(``python -m bench`` runs this too.) Standalone, the "## through the service" section of bench/results.md is
replaced (or appended); the rest of the file is left as it is.

Everything runs against real ``python -m service`` processes on loopback (uvicorn, embedded Dask cluster with
one worker per core, SQLite store), started by this script:

* **first job** — a service started on an empty numba cache (``NUMBA_CACHE_DIR`` a new directory: a fresh clone
  whose install did not compile, or a new container volume): seconds until /readyz answers 200, then the
  round trip of the first tiny job (2,000 GD steps of an (8,16,8) net, ``Prefer: wait=120``), then the median
  round trip of 30 more. Bars: first job ≤ 3 s, median < 50 ms.
* **a lone large job** — a (300,300,300) GD job through the service (``Prefer: wait``, the whole round trip:
  validation, stepping, trajectory), steps/s as a fraction of the all-core GEMM bound measured in this process
  in the same run. Bar ≥ 0.8. Beside it the same job on a service whose workers are fixed at one BLAS thread
  (``DLNSIM_BLAS_THREADS=1``, the previous behaviour), and the same job run in this process (no HTTP, no Dask)
  in the same rounds: what the machine gave a job of that length at that moment. Notes: the cores the
  service's processes kept busy during the job (from /proc), and the service / in-process ratio per round.
* **two concurrent jobs** — two such jobs submitted together: their summed steps/s, cores shared
  (``auto``) against fixed at one thread each. Bar: no loss (≥ 0.97, the run-to-run noise of these rounds).

The two services run side by side and their rounds alternate (ABBA), so drift of the machine's speed over
the minutes of the run falls on both. Each round reports its best; notes give the median.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from service.dynamics.gd import step_flops
from service.jobs.cores import host_cores

from .common import Context, Row, run_standalone, settle, table
from .stepping import LEARNING_RATE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.md")
HEADING = "## through the service"
READY_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A ``python -m service`` process in its own session; ``ready_after`` = seconds from start to /readyz 200."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"service-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        # The service's defaults, not this process's thread settings: a Dask LocalCluster started earlier in this
        # process (the sweep rows) leaves its workers' pre-spawn environment in os.environ (DLNSIM_BLAS_THREADS=1,
        # OMP/OPENBLAS/NUMBA_NUM_THREADS=1), which would turn the cores-sharing service into a one-thread one.
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                  "DLNSIM_BLAS_THREADS")}
        full_env = {**inherited, "DLNSIM_PORT": str(self.port), "DLNSIM_DATA_DIR": str(workdir / f"data-{self.port}"),
                    "DLNSIM_LOG_LEVEL": "warning", "DLNSIM_CORES_DIR": str(workdir / "cores"),
                    "DLNSIM_MAX_WAIT_SECONDS": "300", **env}
        t0 = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready (see {self.log.name})")
            try:
                if self.client.get("/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.ready_after = time.perf_counter() - t0

    def run(self, body: bytes) -> float:
        """POST a simulation and wait for it; the round trip in seconds."""
        t0 = time.perf_counter()
        response = self.client.post("/v1/simulations", content=body,
                                    headers={"Content-Type": "application/json", "Prefer": "wait=300"})
        elapsed = time.perf_counter() - t0
        if response.status_code != 201 or response.json()["status"] != "succeeded":
            raise RuntimeError(f"job did not succeed: {response.status_code} {response.text[:300]}")
        return elapsed

    def wait_for_line(self, text: str, timeout: float = 600.0) -> float:
        """Wait until the service has printed a line containing ``text`` (e.g. "every kernel compiled", after its
        workers' background warm-up, service/ready.py); the seconds waited. RuntimeError after ``timeout``."""
        t0 = time.perf_counter()
        while text not in Path(self.log.name).read_text(errors="replace"):
            if self.process.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the service never printed {text!r} (see {self.log.name})")
            time.sleep(0.1)
        return time.perf_counter() - t0

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process of the service (API, scheduler, nannies, workers: its session)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_bytes().rsplit(b")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if int(fields[3]) == self.process.pid:  # session id (the service started its own session)
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, cores: float = 0.1, window: float = 1.0, timeout: float = 300.0) -> float:
        """Wait until the service's processes use less than ``cores`` CPUs over ``window`` s (its workers' background
        warm-up done: seconds with numba's cache warm, minutes after a kernel's source changed); the seconds waited.
        RuntimeError after ``timeout``."""
        t0 = time.perf_counter()
        while True:
            cpu0 = self.cpu_seconds()
            time.sleep(window)
            if self.cpu_seconds() - cpu0 < cores * window:
                return time.perf_counter() - t0
            if self.process.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the service stayed busy for {timeout:.0f} s (see {self.log.name})")

    def api_cpu_seconds(self) -> float:
        """CPU time used so far by the API process alone (the one this script started: uvicorn and the scheduler)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pause(self) -> None:
        """Freeze every process of the service (SIGSTOP to its session's group): not one wake-up while other work is
        timed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.client.close()
        self.resume()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def tiny_job(size: tuple[int, int, int] = (8, 16, 8), steps: int = 2000, learning_rate: float = 1e-4,
             points: int = 20) -> bytes:
    """A GD job on a random correlation problem of ``size`` (Σ11 = I)."""
    import orjson

    i, h, o = size
    rng = np.random.default_rng(0)
    return orjson.dumps({"data": {"kind": "correlations", "sigma11": np.eye(i).tolist(),
                                  "sigma31": rng.standard_normal((o, i)).tolist()},
                         "network": {"hidden": [h]}, "init": {"scheme": "gaussian", "scale": 0.1, "seed": 1},
                         "training": {"method": "gd", "learning_rate": learning_rate, "steps": steps},
                         "record": {"points": points}})


def large_job(steps: int, n: int = 300) -> bytes:
    """An (n,n,n) GD job on the random_teacher preset (Σ11 from 2n samples: dense, not whitened), built by the
    service from a small body; the learning rate is tiny so that every step runs (no early convergence)."""
    import orjson

    return orjson.dumps({"data": {"kind": "preset", "name": "random_teacher", "n_in": n, "n_out": n,
                                  "n_samples": 2 * n, "seed": 0},
                         "network": {"hidden": [n]}, "init": {"scheme": "gaussian", "scale": 0.05, "seed": 1},
                         "training": {"method": "gd", "learning_rate": LEARNING_RATE, "steps": steps},
                         "record": {"points": 2}})


def first_job(ctx: Context, workdir: Path) -> list[Row]:
    """A service on an empty kernel cache: time to ready, first tiny job, median tiny-job round trip."""
    service = Service(workdir, NUMBA_CACHE_DIR=str(workdir / "empty-numba-cache"))
    try:
        body = tiny_job()
        first = service.run(body)
        trips = [service.run(body) for _ in range(10 if ctx.quick else 30)]
    finally:
        service.stop()
    median = statistics.median(trips)
    return [Row("first tiny job after /readyz, empty kernel cache", "(8, 16, 8)", value=f"{first * 1e3:,.0f} ms",
                bar="≤ 3 s", passed=first <= 3.0,
                note=f"2,000 GD steps, Prefer: wait; /readyz answered 200 after {service.ready_after:.1f} s (the "
                     "workers compiled the GD kernels first)"),
            Row("tiny-job round trip, median", "(8, 16, 8)", value=f"{median * 1e3:.1f} ms", bar="< 50 ms",
                passed=median < 0.050,
                note=f"{len(trips)} jobs one after another (POST with Prefer: wait → 201 with the result); "
                     f"min {min(trips) * 1e3:.1f} ms, max {max(trips) * 1e3:.1f} ms")]


def in_process(body: bytes, threads: int):
    """A function running ``body`` in this process as a worker would (``task.simulate_request``: validation,
    building, stepping on ``threads`` BLAS threads, trajectory, compression), returning its wall time."""
    from service.dynamics.methods import Hooks
    from service.jobs.tasks import simulate_request

    hooks = Hooks(blas_threads=lambda: threads)

    def run() -> float:
        t0 = time.perf_counter()
        simulate_request(body, hooks)
        return time.perf_counter() - t0

    return run


def cores(ctx: Context, workdir: Path) -> list[Row]:
    """Lone and concurrent (300,300,300) jobs on a cores-sharing service and on a one-thread-per-worker one,
    and the same job run in this process over the same rounds."""
    n = 300
    flops = step_flops([n, n, n])
    # ~8 s a lone job: the job's fixed cost is a few per cent. A shared VM's 2-core speed has slow spells of a
    # few seconds (2-thread GEMMs a third slower, docs/performance.md#cores), and a job's round trip
    # is long enough to catch one, so the lone job gets more rounds than the pairs; each round also runs the
    # same job in this process, so a slow round shows as slow on both.
    steps = 400 if ctx.quick else 3000
    lone_rounds, pair_rounds = (2, 1) if ctx.quick else (10, 6)
    body = large_job(steps, n)
    services = {"auto": Service(workdir), "fixed": Service(workdir, DLNSIM_BLAS_THREADS="1")}
    local = in_process(body, ctx.threads)
    lone: dict[str, list[float]] = {k: [] for k in (*services, "local")}
    busy: list[float] = []  # cores the auto service's processes kept busy over a lone job's round trip
    pair: dict[str, list[float]] = {k: [] for k in services}
    try:
        short = large_job(10, n)
        for service in services.values():
            service.run(short)  # warm: the first large job allocates the worker's buffers
        in_process(short, ctx.threads)()
        overhead = statistics.median(services["auto"].run(short) for _ in range(5))
        for r in range(lone_rounds):
            order = ["auto", "local", "fixed"] if r % 2 == 0 else ["fixed", "local", "auto"]
            for name in order:
                settle()
                ctx.sample_gemm("float64")
                settle()
                if name == "local":
                    lone[name].append(steps / local())
                    continue
                cpu0 = services[name].cpu_seconds()
                elapsed = services[name].run(body)
                lone[name].append(steps / elapsed)
                if name == "auto":
                    busy.append((services[name].cpu_seconds() - cpu0) / elapsed)
        with ThreadPoolExecutor(2) as pool:
            for r in range(pair_rounds):
                for name in (["auto", "fixed"] if r % 2 == 0 else ["fixed", "auto"]):
                    settle()
                    t0 = time.perf_counter()
                    list(pool.map(services[name].run, [body, body]))
                    pair[name].append(2 * steps / (time.perf_counter() - t0))
    finally:
        for service in services.values():
            service.stop()
    loss = max(pair["auto"]) / max(pair["fixed"])
    versus_local = statistics.median(a / b for a, b in zip(lone["auto"], lone["local"], strict=True))
    rows = [Row("lone large job through the service, cores shared", f"({n}, {n}, {n})", flops=flops,
                measured=max(lone["auto"]), bar_fraction=0.8, median=statistics.median(lone["auto"]),
                note=f"{steps:,} GD steps, whole round trip (POST with Prefer: wait; a 10-step job takes "
                     f"{overhead * 1e3:.0f} ms: building the preset, validating, storing); best of {lone_rounds} "
                     f"rounds; ×{max(lone['auto']) / max(lone['fixed']):.2f} the same job with workers fixed at one "
                     f"BLAS thread; the service's processes kept {statistics.median(busy):.2f} of "
                     f"{host_cores()} cores busy over the round trip (median); per round ×{versus_local:.3f} the "
                     "same job run in the bench process (median)"),
            Row("the same job in the bench process, same rounds", f"({n}, {n}, {n})", flops=flops,
                measured=max(lone["local"]), median=statistics.median(lone["local"]),
                note=f"task.simulate_request on {ctx.threads} BLAS threads (validation, preset, stepping, trajectory, "
                     "compression; no HTTP, no Dask), interleaved with the service's rounds"),
            Row("lone large job through the service, one BLAS thread per worker", f"({n}, {n}, {n})", flops=flops,
                measured=max(lone["fixed"]), median=statistics.median(lone["fixed"]),
                note="DLNSIM_BLAS_THREADS=1 (the previous behaviour)"),
            Row("two concurrent large jobs, cores shared vs one thread each", f"({n}, {n}, {n})",
                value=f"×{loss:.3f} the summed steps/s", bar="≥ 0.97", passed=loss >= 0.97,
                note=f"summed steps/s, best of {pair_rounds} rounds: shared {max(pair['auto']):,.1f} (median "
                     f"{statistics.median(pair['auto']):,.1f}), fixed {max(pair['fixed']):,.1f} (median "
                     f"{statistics.median(pair['fixed']):,.1f})")]
    return rows


def service_speed(ctx: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="dlnsim-bench-service-") as tmp:
        workdir = Path(tmp)
        return first_job(ctx, workdir) + cores(ctx, workdir)


def section(rows: list[Row]) -> list[str]:
    return [HEADING, "",
            ("Real `python -m service` processes on loopback, started by the bench (bench/service.py). Round trips "
             "are client-side wall times of POST /v1/simulations with `Prefer: wait` (the job runs and its "
             "trajectory is stored and returned in that time). Large-job fractions: steps/s over the whole round "
             "trip / (best all-core GEMM rate of this run, measured in the bench process while the services were "
             "idle / FLOPs per step)."),
            "", *table(rows)]


def main(argv: list[str] | None = None) -> int:
    return run_standalone("bench.service", __doc__.split("\n")[0], "smoke run: shorter jobs, fewer rounds", HEADING,
                          RESULTS, service_speed, section, argv)


if __name__ == "__main__":
    sys.exit(main())
