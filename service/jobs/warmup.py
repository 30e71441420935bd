"""Warming a worker up: compile (or load from numba's disk cache) every GD kernel, and import what a job
imports, before the worker takes its first job.

    seconds = warm_up()              # in a worker: the engine's worker plugin calls it once per process
    python -m service.jobs.warmup    # at install (make install): fills numba's cache for every later process

Why: numba compiles a kernel on its first call for each argument type. On a clone with an empty cache the
first 2,000-step (8,16,8) GD job took 21.4 s through the service, compiling in the worker while the user
waited; a process that finds the cache loads the kernels in a second or two. So the install fills the cache,
and each worker runs these requests as it joins the cluster (restarted workers too); /readyz answers 200
only once every worker has.

The requests are tiny versions of what jobs run, through the job's own code (``task.simulate_request``, and
``simulate_batch`` as a sweep chunk calls it), so that every kernel a job can reach is typed the way the job
types it: both dtypes, two-layer and deeper nets (the kernel's two step paths; for sweeps, the SIMD lanes and
the one-by-one loop), weight decay, gradient flow, the exact solutions (whose theory overlay uses the exact GD
maps), batched sweeps, momentum and SGD, the sharpness (Hessian products, Lanczos), the linearised loss, task
sequences; then the core's own warm-ups of the SGD and Hessian kernels reach the variants one request would not
(every gradient source, deeper nets).
"""

from __future__ import annotations

import time

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
    # the one-hot presets keep x read-only and y as a transposed view, which SGD copies: a typing of its own
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


def _warm_batch() -> None:
    """The sweep chunk's paths: ``simulate_batch`` over a group of GD points, in both dtypes, for a two-layer
    net (the SIMD-lane kernel, service/dynamics/gd_lanes.py) and a deeper one (the one-by-one loop)."""
    from service.build import build_run
    from service.dynamics.batch import SweepPoint, simulate_batch
    from service.schemas import SimulationRequest

    for dtype in ("float64", "float32"):
        for hidden in ([4], [4, 4]):
            points = []
            for seed in (0, 1):
                request = SimulationRequest.model_validate_json(orjson.dumps(
                    {**WARMUP_REQUESTS[0], "network": {"hidden": hidden},
                     "init": {"scheme": "gaussian", "scale": 0.1, "seed": seed}, "dtype": dtype}))
                s = build_run(request)
                points.append(SweepPoint(s.problem, s.weights0, s.method, s.record, dtype=s.dtype))
            simulate_batch(points)


def warm_up() -> float:
    """Run every warm-up request in this process, then the core's own warm-ups of the momentum/SGD loop (every
    gradient source, both dtypes, shallow and deep) and of the Hessian product (the depths its compiled plans
    distinguish); return the seconds it took."""
    from service.dynamics import sgd, sharpness

    from .tasks import simulate_request

    start = time.perf_counter()
    for request in WARMUP_REQUESTS:
        simulate_request(orjson.dumps(request))
    _warm_batch()
    sgd.warm_up()
    sharpness.warm_up()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"dlnsim: GD kernels compiled and cached in {warm_up():.1f} s")
