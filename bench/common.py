"""Shared pieces of the benchmarks: the run context (threads, GEMM rates, environment), rows and the table.

Every speed figure is a ratio measured side by side in one run: steps/s divided by the bound
GEMM rate / FLOPs per step, with the GEMM rate (numpy matmul, n = 2000) sampled between the rows and
the best sample used. Runs and GEMMs are timed best-of-N: on a shared machine the best repetition is
the one least disturbed by other processes, for both sides of the ratio.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GEMM_N = 2000
# OpenBLAS's idle threads spin for ~0.1 s (2^28 cycles) after a multi-threaded call before they sleep (torch's
# OpenMP pool alike). A timing that starts right after another pool's call shares the cores with its spinning
# threads: another library in this process (scipy's OpenBLAS, which the GD kernel calls on its portable path;
# torch), or this process's own pool while Dask worker processes run a sweep: measured with the kernel on
# scipy's OpenBLAS, GD steps right after a numpy matmul took about twice as long as 0.2 s later
# (docs/performance.md#one-blas). Every timed measurement starts after this pause, so each code path is timed
# in its steady state, as in a long run.
BLAS_SETTLE_SECONDS = 0.2


# glibc malloc thresholds of the service's cluster workers (docker-compose.yml): arrays up to 32 MiB come from
# the heap, which is trimmed only past 64 MiB free. Left to glibc's dynamic threshold, whether a run's
# returned records (400 KB at (8,16,8) with 200 records) are fresh mmaps, page-faulted in on every run,
# depends on the process's allocation history, and bar (d) flipped between runs by more than the effect it
# measures (docs/performance.md#bench-settings).
MALLOC_MMAP_THRESHOLD = 32 * 2 ** 20
MALLOC_TRIM_THRESHOLD = 64 * 2 ** 20


def use_service_malloc_settings() -> bool:
    """Apply the workers' malloc thresholds to this process (glibc only); True if applied."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
                and libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))


def settle() -> None:
    """Let the BLAS thread pools of earlier calls go to sleep before the next timing (BLAS_SETTLE_SECONDS)."""
    time.sleep(BLAS_SETTLE_SECONDS)


ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "DLNSIM_BLAS_THREADS")


@dataclass
class Row:
    """One line of the table. Speed rows give ``flops``, ``measured`` (steps/s) and ``bar_fraction``; the
    bound, fraction and verdict are filled in by ``Context.finalize`` from the best GEMM rate of the run.
    Other rows set ``value`` (already formatted), ``bar`` and ``passed`` themselves."""

    benchmark: str
    case: str
    dtype: str = "float64"
    flops: int | None = None
    measured: float | None = None
    bar_fraction: float | None = None
    value: str = ""
    bar: str = ""
    passed: bool | None = None  # None: informational or skipped
    note: str = ""
    baseline: float | None = None  # steps/s of a plain numpy loop on the same case, for comparison
    median: float | None = None    # median steps/s over the rounds (``measured`` is the best), for the note
    bound: float | None = None
    fraction: float | None = None


@dataclass
class Context:
    quick: bool
    threads: int
    gemm_samples: dict = field(default_factory=lambda: {"float64": [], "float32": []})
    _operands: dict = field(default_factory=dict)

    @property
    def target_seconds(self) -> float:
        """Duration of one timed repetition."""
        return 0.05 if self.quick else 0.25

    @property
    def repetitions(self) -> int:
        return 2 if self.quick else 6

    def sample_gemm(self, dtype: str = "float64") -> float:
        """Time one n = 2000 matmul (after a warm-up the first time) and keep the rate; returns it."""
        if dtype not in self._operands:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((GEMM_N, GEMM_N)).astype(dtype)
            self._operands[dtype] = (a, a.T.copy(), np.empty_like(a))
            np.matmul(*self._operands[dtype][:2], out=self._operands[dtype][2])  # warm-up
        a, b, c = self._operands[dtype]
        settle()
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        rate = 2 * GEMM_N ** 3 / (time.perf_counter() - t0)
        self.gemm_samples[dtype].append(rate)
        return rate

    def gemm_rate(self, dtype: str) -> float:
        if not self.gemm_samples[dtype]:
            self.sample_gemm(dtype)
        return max(self.gemm_samples[dtype])

    def finalize(self, rows: list[Row]) -> None:
        for row in rows:
            if row.flops is None or row.measured is None:
                continue
            row.bound = self.gemm_rate(row.dtype) / row.flops
            row.fraction = row.measured / row.bound
            if row.bar_fraction is not None:
                row.bar = f"≥ {row.bar_fraction:g}"
                row.passed = row.fraction >= row.bar_fraction
            if row.median is not None:
                row.note += f"{'; ' if row.note else ''}median round {row.median / row.bound:.3f} of bound"
            if row.baseline is not None:
                row.note += (f"{'; ' if row.note else ''}plain numpy loop: {row.baseline:,.0f} steps/s = {row.baseline / row.bound:.3f} "
                             f"of bound (ours ×{row.measured / row.baseline:.1f})")


def best_time(fn: Callable[[], object], repetitions: int) -> float:
    """Shortest wall time of ``repetitions`` calls."""
    best = float("inf")
    for _ in range(repetitions):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def environment(threads: int) -> list[str]:
    """Lines describing the machine, libraries, BLAS pools and the relevant environment variables."""
    import numba
    import scipy
    from threadpoolctl import threadpool_info

    lines = [f"- host: {platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}; "
             f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
             f"- python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
             f"numba {numba.__version__}",
             f"- BLAS threads pinned to {threads} for the whole run (threadpoolctl); GEMM rates measured with "
             "the same pin"]
    for lib in threadpool_info():
        lines.append(f"  - {lib['user_api']}/{lib['internal_api']} {lib.get('version')} "
                     f"({os.path.basename(lib['filepath'])}, {lib.get('architecture')}): "
                     f"{lib['num_threads']} threads")
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    lines.append("- environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                                      "none of " + ", ".join(ENV_VARS) + " set"))
    return lines


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return ""
    if x >= 1e5 or x < 1e-2:
        return f"{x:.{digits}g}"
    return f"{x:,.{digits}g}" if x < 1000 else f"{x:,.0f}"


def table(rows: list[Row]) -> list[str]:
    head = ["benchmark", "(i,h,o)", "dtype", "FLOPs/step", "bound steps/s", "measured", "fraction of bound",
            "bar", "pass", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        measured = r.value or (f"{_fmt(r.measured)} steps/s" if r.measured is not None else "")
        verdict = {True: "PASS", False: "FAIL", None: "–"}[r.passed]
        cells = [r.benchmark, r.case, r.dtype, _fmt(r.flops) if r.flops else "", _fmt(r.bound), measured,
                 f"{r.fraction:.3f}" if r.fraction is not None else "", r.bar, verdict, r.note]
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_section(path: Path, heading: str, lines: list[str]) -> None:
    """Replace the section ``heading`` ("## …") of ``path`` (up to the next "## " heading), or append it."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines).rstrip("\n") + "\n"
    match = re.search(rf"^{re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    if match is None:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    else:
        nxt = re.search(r"^## ", text[match.end():], flags=re.MULTILINE)
        end = match.end() + nxt.start() if nxt else len(text)
        text = text[:match.start()] + block + ("\n" + text[end:] if nxt else "")
    path.write_text(text)


def run_standalone(module: str, description: str, quick_help: str, heading: str, results: Path,
                   speed: Callable[[Context], list[Row]], section: Callable[[list[Row]], list[str]],
                   argv: list[str] | None = None) -> int:
    """``python -m bench.<module>``: run one group of benchmarks, print its section and replace it in ``results``
    (the rest of the file is left as it is)."""
    import argparse

    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="BLAS threads for the GEMM reference (default: all CPUs)")
    args = parser.parse_args(argv)
    use_service_malloc_settings()
    ctx = Context(quick=args.quick, threads=args.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads, user_api="blas"):
        ctx.sample_gemm()  # the machine's pace at the start, stated beside every section's figures
        rows = speed(ctx)
        ctx.finalize(rows)
    lines = section(rows)
    samples = ctx.gemm_samples["float64"]
    lines[2:2] = [(f"Standalone run `python -m {module}{' --quick' if args.quick else ''}` ({started}, "
                   f"{time.perf_counter() - t0:.0f} s): GEMM n = 2000 on {args.threads} threads best "
                   f"{max(samples) / 1e9:.1f} GFLOP/s over {len(samples)} samples (worst {min(samples) / 1e9:.1f}); "
                   f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}."), ""]
    print("\n".join(lines))
    write_section(results, heading, lines)
    return 0
