"""``python -m bench`` (``make bench``): performance of the simulation engines as one table.

    python -m bench            full run (a few minutes)
    python -m bench --quick    smoke run: small sizes, short timings (~20 s)

The table is printed and written to bench/results.md (overwritten). To add a benchmark, write a function
``(ctx: Context) -> list[Row]`` and append it to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

# Import the engines first: the GD kernel loads the BLAS it calls (numpy's OpenBLAS, or scipy's on its
# portable path), and the thread pin below only reaches libraries already loaded.
from service.dynamics import gd_loop

from . import pace, science, sweeps
from . import service as through_service
from .common import (
    BLAS_SETTLE_SECONDS,
    MALLOC_MMAP_THRESHOLD,
    MALLOC_TRIM_THRESHOLD,
    Context,
    environment,
    table,
    use_service_malloc_settings,
)
from .downloads import downloads
from .exact import exact_cost
from .recording import (
    analysis_recording_overhead,
    linearized_overhead,
    live_records_overhead,
    sequence_overhead,
    sharpness_recording_overhead,
)
from .sgd import sgd_speed
from .stepping import gd_recording_overhead, gd_speed, gd_speed_float32, gd_vs_torch

BENCHMARKS = [gd_speed, gd_speed_float32, gd_recording_overhead, analysis_recording_overhead, linearized_overhead,
              sequence_overhead, sharpness_recording_overhead, live_records_overhead, sgd_speed, gd_vs_torch,
              exact_cost, downloads]
RESULTS = Path(__file__).with_name("results.md")
# Sections of results.md that other scripts write and this run does not measure: carried over as they are.
KEPT_SECTIONS = ("## Fresh start", "## Fresh start before issue 21",  # python3 bench/fresh_start.py --write
                 "## Attacks (issue 19)")  # make load (bench.attacks)


def kept_sections(text: str) -> str:
    """The ``KEPT_SECTIONS`` of an earlier results.md (each up to the next "## " heading), to append."""
    out = []
    for heading in KEPT_SECTIONS:
        start = text.find(f"\n{heading}\n")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            out.append(text[start + 1:end + 1 if end >= 0 else len(text)].rstrip("\n") + "\n")
    return "".join("\n" + block for block in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run on small sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="BLAS threads for the GEMM reference and large runs (default: all CPUs)")
    args = parser.parse_args(argv)

    malloc = use_service_malloc_settings()
    ctx = Context(quick=args.quick, threads=args.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads, user_api="blas"):
        env = environment(args.threads)
        rows = []
        for bench in BENCHMARKS:
            print(f"running {bench.__name__} …", file=sys.stderr, flush=True)
            rows.extend(bench(ctx))
        print("running sweeps.sweep_speed …", file=sys.stderr, flush=True)
        sweep_rows = sweeps.sweep_speed(ctx)  # its own table, under "## sweeps"
        print("running service.service_speed …", file=sys.stderr, flush=True)
        service_rows = through_service.service_speed(ctx)  # its own table, under "## through the service"
        print("running science.science_speed …", file=sys.stderr, flush=True)
        science_rows = science.science_speed(ctx)  # its own table, under "## issue 20 through the service"
        print("running pace.pace …", file=sys.stderr, flush=True)
        pace_rows = pace.pace(ctx)  # its own table, under "## Speed as users get it (issue 21)"
        ctx.sample_gemm("float64")
        ctx.finalize(rows + sweep_rows + service_rows + science_rows + pace_rows)
    # The load at the end counts this run's own threads; the spread of the GEMM samples shows how much the
    # machine's speed moved during the run (on a shared VM it does, by tens of per cent).
    samples = ctx.gemm_samples["float64"]
    gemm_median = float(np.median(samples)) / max(samples)
    lines = [f"# dlnsim benchmark ({'quick' if args.quick else 'full'} run, {started}, "
             f"{time.perf_counter() - t0:.0f} s)", "", *env,
             f"- GEMM n = {2000} float64: best {ctx.gemm_rate('float64') / 1e9:.1f} GFLOP/s over "
             f"{len(ctx.gemm_samples['float64'])} samples (worst {min(ctx.gemm_samples['float64']) / 1e9:.1f})"
             + (f"; float32: best {ctx.gemm_rate('float32') / 1e9:.1f} GFLOP/s"
                if ctx.gemm_samples["float32"] else ""),
             f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (this run's own "
             f"threads included)",
             *([f"- **WARNING: the machine was busy or its speed varied (1-min load {load_start:.2f} before the "
                f"run on {os.cpu_count()} CPUs; median GEMM sample {gemm_median:.0%} of the best). Other "
                "processes slow the 2-thread runs most (OpenBLAS spin-waits); rerun on a quiet machine before "
                "reading the fractions.**"] if load_start > 0.5 or gemm_median < 0.85 else []),
             "- bound steps/s = best GEMM rate / FLOPs per step (cheapest product order); fraction = measured / "
             "bound. Small nets run on one BLAS thread (service policy, SINGLE_THREAD_MAX_FLOPS) and are compared "
             "with the all-thread GEMM rate: a conservative yardstick.",
             (f"- malloc: the service workers' glibc thresholds (mmap {MALLOC_MMAP_THRESHOLD >> 20} MiB, trim "
              f"{MALLOC_TRIM_THRESHOLD >> 20} MiB; docker-compose.yml), so that page faults on returned records do "
              "not depend on this process's allocation history (bench/common.py)" if malloc else
              "- malloc: glibc's defaults (the workers' thresholds could not be set)"),
             f"- GD kernel BLAS: {gd_loop.BLAS}'s ({gd_loop.NUMPY_CBLAS_PATH or 'numba_xxgemm'}). Every timing "
             f"starts {BLAS_SETTLE_SECONDS} s after the previous BLAS call: a thread pool keeps its idle threads "
             "spinning ~0.1 s after a call, on the cores the next timing needs (bench/common.py "
             "BLAS_SETTLE_SECONDS).",
             "", *table(rows), "", *sweeps.section(sweep_rows), "", *through_service.section(service_rows), "",
             *science.section(science_rows), "", *pace.section(pace_rows), ""]
    text = "\n".join(lines)
    print(text)
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    RESULTS.write_text(text + kept_sections(previous))
    failed = [r for r in rows + sweep_rows + service_rows + science_rows + pace_rows if r.passed is False]
    if failed:
        print(f"{len(failed)} bar(s) missed (a busy machine lowers every fraction: see the load average)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
