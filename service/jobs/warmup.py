"""Warming a worker up: compile (or load from numba's disk cache) every kernel a job can reach, and import what a
job imports, in two tiers: the default jobs' kernels before the worker takes its first job, the rest just after.

    warm_up_eager()                       # a worker joining: before it counts as warm (/readyz)
    warm_up_rest()                        # then, in the background, one process on the host at a time
    warm_up()                             # both, in one go (the tests)
    python -m service.jobs.warmup         # make run: compile EAGER into numba's cache, each step announced
    python -m service.jobs.warmup --all   # make test, make install: every step

Why: numba compiles a kernel on its first call for each argument type. On a clone with an empty cache the
first 2,000-step (8,16,8) GD job took 21.4 s through the service, compiling in the worker while the user
waited; a process that finds the cache loads the kernels in a second or two. So the install fills the cache,
and each worker runs these requests as it joins the cluster (restarted workers too); /readyz answers 200
only once every worker has warmed up the eager tier.

Two tiers (issue 21, a fresh start in 90 s): compiling everything takes about 90 s of CPU in one process (40 s
before the sweeps' SIMD lanes), the longest silent stretch of a fresh ``make run`` if it all came first. ``EAGER``
is what a default job reaches: float64 GD (two-layer and deep), the float64 sweep batch on the one-by-one loop,
gradient flow, the exact solutions and task sequences, about 22 s of CPU, compiled by ``make run`` before the
service starts. The rest (the sweeps' SIMD lanes, float32, momentum and SGD, the sharpness's Hessian products and
Lanczos, the linearised loss: about 70 s) is compiled by the workers after they report warm, in the background, one
worker process at a time (a file lock; the others then load it from the cache): the service is ready sooner, and a
job that needs one of those kernels in the first minute of a fresh install compiles it itself (numba's compile lock:
it waits for the warm-up's compile in progress, then finds what it needs or compiles it). After both tiers a worker
compiles nothing (tests/jobs/test_warmup.py). The warm-up's tiny runs leave the process's BLAS thread counts alone
(``gd.leave_blas_alone``): the rest tier runs beside jobs, whose counts are theirs.

The requests are tiny versions of what jobs run, through the job's own code (``task.simulate_request``, and
``simulate_batch`` as a sweep chunk calls it), so that every kernel a job can reach is typed the way the job
types it: both dtypes, two-layer and deeper nets (the kernel's two step paths; for sweeps, the SIMD lanes and
the one-by-one loop), weight decay, gradient flow, the exact solutions (whose theory overlay uses the exact GD
maps), batched sweeps, momentum and SGD, the sharpness (Hessian products, Lanczos), the linearised loss, task
sequences; then the core's own warm-ups of the SGD and Hessian kernels reach the variants one request would not
(every gradient source, deeper nets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

# (8,16,8)-like problems shrunk to a few units: compile time does not depend on the sizes.
_CORRELATIONS = {"kind": "correlations", "sigma11": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                 "sigma31": [[1.5, 0.0, 0.0], [0.0, 0.5, 0.0]], "sigma33": [[2.5, 0.0], [0.0, 0.5]]}
_GD = {"method": "gd", "learning_rate": 0.05, "steps": 40}
# Six samples of three inputs whose Σ11 is not a multiple of I, two outputs.
_DATASET = {"kind": "dataset", "x": [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.0, 1.0],
                                     [0.0, 0.5, 1.0], [1.0, 0.0, 0.0]],
            "y": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]]}
_SGD = {"method": "sgd", "learning_rate": 0.05, "batch_size": 4, "epochs": 4, "momentum": 0.5}

WARMUP_REQUESTS: list[dict] = [
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "training": _GD, "record": {"points": 5}},
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "training": {**_GD, "weight_decay": 0.01},
     "record": {"points": 5, "weights": True, "similarity": True}, "dtype": "float32"},
    {"data": _CORRELATIONS, "network": {"hidden": [4, 4]}, "init": {"scheme": "aligned", "strength": 0.01},
     "training": _GD, "record": {"points": 5}},
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "init": {"scheme": "aligned", "strength": 0.01},
     "training": _GD, "record": {"points": 5}, "dtype": "float32"},
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "training": {"method": "flow", "t_max": 1.0},
     "record": {"points": 5}},
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "training": {"method": "flow", "t_max": 1.0},
     "record": {"points": 5}, "dtype": "float32"},
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "init": {"scheme": "aligned", "strength": 0.01},
     "training": {"method": "exact", "t_max": 1.0}, "record": {"points": 5}},
    # issue 20: momentum and SGD (each dtype), the sharpness at every solver (dense eigvalsh below 64 weights, the
    # compiled Lanczos above, ARPACK for k > 1), the linearised loss on inputs that are not whitened (its "rows"
    # route, compiled), a task sequence
    {"data": _CORRELATIONS, "network": {"hidden": [4]}, "training": {**_GD, "momentum": 0.9, "nesterov": True},
     "record": {"points": 5}},
    {"data": _DATASET, "network": {"hidden": [4]}, "training": _SGD, "record": {"points": 5}},
    {"data": _DATASET, "network": {"hidden": [4]}, "training": _SGD, "record": {"points": 5}, "dtype": "float32"},
    # the one-hot presets keep x read-only and y as a transposed view (which SGD copies): the same typing as the
    # dataset above since the kernel takes read-only x and y (sgd._read_only), kept here in case that changes
    {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [4]}, "training": _SGD,
     "record": {"points": 5}},
    {"data": _DATASET, "network": {"hidden": [4]}, "training": _GD,
     "record": {"points": 5, "sharpness": True, "linearized": True}},
    {"data": _DATASET, "network": {"hidden": [12]}, "training": _GD, "record": {"points": 5, "sharpness": True}},
    {"data": _DATASET, "network": {"hidden": [16]}, "training": {"method": "flow", "t_max": 1.0},
     "record": {"points": 3, "sharpness": True, "sharpness_k": 2, "linearized": True}},
    {"data": {"kind": "sequence", "phases": [{"data": _CORRELATIONS, "until": 1.0}, {"data": _CORRELATIONS}]},
     "network": {"hidden": [4]}, "training": _GD, "record": {"points": 5}},
]


# Sweep groups that take each path of ``simulate_batch``: a small two-layer net (the SIMD-lane kernel,
# service/dynamics/gd_lanes.py) and a deeper one (the one-by-one loop)
LANES, ONE_BY_ONE = ([4],), ([4, 4],)


def _warm_batch(dtypes: tuple[str, ...] = ("float64", "float32"), nets: tuple[list[int], ...] = LANES + ONE_BY_ONE
                ) -> None:
    """The sweep chunk's paths: ``simulate_batch`` over a group of GD points, in each dtype, for each of ``nets``
    (hidden widths)."""
    from service.build import build_run
    from service.dynamics.batch import SweepPoint, simulate_batch
    from service.schemas import SimulationRequest

    for dtype in dtypes:
        for hidden in nets:
            points = []
            for seed in (0, 1):
                request = SimulationRequest.model_validate_json(orjson.dumps(
                    {**WARMUP_REQUESTS[0], "network": {"hidden": hidden},
                     "init": {"scheme": "gaussian", "scale": 0.1, "seed": seed}, "dtype": dtype}))
                s = build_run(request)
                points.append(SweepPoint(s.problem, s.weights0, s.method, s.record, dtype=s.dtype))
            simulate_batch(points)


def _requests(*indices: int) -> Callable[[], None]:
    def run() -> None:
        from .tasks import simulate_request

        for i in indices:
            simulate_request(orjson.dumps(WARMUP_REQUESTS[i]))
    return run


def _sgd(dtype: str, *indices: int) -> Callable[[], None]:
    def run() -> None:
        import numpy as np

        from service.dynamics import sgd

        _requests(*indices)()
        sgd.warm_up((np.dtype(dtype).type,))
    return run


def _hessian() -> None:
    from service.dynamics import sharpness

    sharpness.warm_up()


# Every step of a warm-up, in the order a worker runs them: (what it compiles, how). Together they are every
# request above, ``_warm_batch`` in both dtypes, and the core's own warm-ups of the momentum/SGD loop (every
# gradient source, both dtypes, shallow and deep) and of the Hessian product (the depths its plans distinguish).
# CPU seconds with an empty cache, one process, on a quiet 2-core VM (2026-12-07): 18.2, 2.3, 1.3 | 21.4, 4.4, 7.6,
# 0.6, 12.1, 20.7, 4.6, 0.0 (the SIMD-lane kernels, unrolled and SLP-vectorised, are the slowest: hence after /readyz).
STEPS: list[tuple[str, Callable[[], None]]] = [
    ("float64 GD", _requests(0, 2)),
    ("float64 sweep batches", lambda: _warm_batch(("float64",), ONE_BY_ONE)),
    ("flow, exact and task sequences", _requests(4, 6, 14)),
    ("float64 sweep batches in SIMD lanes", lambda: _warm_batch(("float64",), LANES)),
    ("float64 momentum and SGD", _sgd("float64", 7, 8, 10)),
    ("Hessian products and Lanczos", _hessian),
    ("sharpness and linearised-loss jobs", _requests(11, 12, 13)),
    ("float32 GD", _requests(1, 3)),
    ("float32 sweep batches", lambda: _warm_batch(("float32",))),
    ("float32 momentum and SGD", _sgd("float32", 9)),
    ("float32 flow", _requests(5)),
]
# What a default job reaches (float64 GD, sweeps, flow, exact, sequences): before a worker counts as warm.
EAGER: tuple[int, ...] = (0, 1, 2)
REST: tuple[int, ...] = tuple(i for i in range(len(STEPS)) if i not in EAGER)


def _announce(message: str) -> None:
    print(f"dlnsim: {message}", flush=True)


def run_steps(indices: Iterable[int], *, announce: bool = False) -> float:
    """Run these steps in this process (announcing each when asked); the seconds it took. The steps' tiny runs
    leave the process's BLAS thread counts as they are (jobs may be running beside them)."""
    from service.dynamics.gd import leave_blas_alone

    start = time.perf_counter()
    with leave_blas_alone():
        for i in indices:
            label, step = STEPS[i]
            if announce:
                _announce(f"compiling the kernels ({i + 1}/{len(STEPS)}: {label})…")
            step()
    return time.perf_counter() - start


def warm_up_eager() -> float:
    """The kernels of the default jobs (``EAGER``); the seconds it took."""
    return run_steps(EAGER)


@contextlib.contextmanager
def _one_process_at_a_time() -> Iterator[None]:
    """An exclusive lock shared by the processes of this installation on this host (the workers of one cluster):
    the first compiles, the next ones wait and then load what it cached (without ``fcntl``, no lock: each compiles)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    key = hashlib.sha256(f"{Path(__file__).resolve()}|{os.environ.get('NUMBA_CACHE_DIR', '')}".encode()).hexdigest()
    with open(Path(tempfile.gettempdir()) / f"dlnsim-warm-up-{key[:16]}.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def warm_up_rest() -> float:
    """The other kernels (``REST``), one process of this installation at a time; the seconds it took (waiting
    included)."""
    start = time.perf_counter()
    with _one_process_at_a_time():
        run_steps(REST)
    return time.perf_counter() - start


def warm_up() -> float:
    """Every warm-up step in this process; return the seconds it took."""
    return run_steps(range(len(STEPS)))


def main(argv: list[str]) -> int:
    every = argv[:1] == ["--all"]
    steps = range(len(STEPS)) if every else EAGER
    what = "every kernel" if every else "the kernels of the default jobs (float64 GD, sweeps, flow, exact)"
    _announce(f"compiling {what} into numba's cache, once per install (about "
              f"{'90' if every else '22'} s of CPU)…")
    seconds = run_steps(steps, announce=True)
    _announce(f"compiled and cached in {seconds:.1f} s" + ("" if every else "; the others (sweeps in SIMD lanes, "
              "float32, momentum and SGD, sharpness) compile in the background once the service is ready"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
