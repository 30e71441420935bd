"""The worker warm-up (service/jobs/warmup.py) types every compiled kernel a job can reach, so a worker that
has warmed up (both tiers: the default jobs' kernels before /readyz, the others just after, in the background)
compiles nothing when jobs arrive."""

from __future__ import annotations

import json
import subprocess
import sys

# Runs in a fresh process (the test process has compiled whatever earlier tests needed): warm up, note every
# numba dispatcher's compiled signatures, run a broad set of jobs and sweep chunks, and print what was
# compiled after the warm-up.
SCRIPT = r"""
import json, sys
import numba, orjson
from service.jobs.warmup import warm_up
from service.jobs.tasks import simulate_request
from service.dynamics.batch import SweepPoint, simulate_batch
from service.build import build_run
from service.schemas import SimulationRequest

def dispatchers():
    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("service.") and module is not None:
            for attr, value in vars(module).items():
                if isinstance(value, numba.core.registry.CPUDispatcher):
                    found[f"{value.__module__}.{value.__name__}"] = value
    return found

warm_up()
before = {name: set(map(str, d.signatures)) for name, d in dispatchers().items()}
requests = json.loads(sys.argv[1])
for request in requests:
    simulate_request(orjson.dumps(request))
for dtype in ("float64", "float32"):
    specs = [build_run(SimulationRequest.model_validate_json(orjson.dumps({**r, "dtype": dtype})))
             for r in requests if r["training"]["method"] == "gd"]
    simulate_batch([SweepPoint(s.problem, s.weights0, s.method, s.record, dtype=s.dtype) for s in specs])
after = {name: set(map(str, d.signatures)) for name, d in dispatchers().items()}
print(json.dumps({"kernels": len(before), "signatures": {n: len(s) for n, s in after.items()},
                  "new": {n: sorted(after[n] - before.get(n, set())) for n in after if after[n] - before.get(n, set())}}))
"""

HIERARCHY = {"kind": "preset", "name": "hierarchy", "depth": 3}
DATASET = {"kind": "dataset", "x": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "y": [[1.0], [-1.0], [0.0]]}
GD = {"method": "gd", "learning_rate": 0.05, "steps": 300}
JOBS = [
    {"data": HIERARCHY, "network": {"hidden": [16]}, "training": GD},
    {"data": HIERARCHY, "network": {"hidden": [16]}, "init": {"scheme": "aligned", "strength": 0.001},
     "training": GD, "record": {"points": 50, "weights": True, "similarity": True}},
    {"data": HIERARCHY, "network": {"hidden": [8, 8, 8]}, "init": {"scheme": "orthogonal", "scale": 0.1},
     "training": {**GD, "weight_decay": 0.001}},
    {"data": DATASET, "network": {"hidden": []}, "training": GD, "record": {"points": 7, "spacing": "log"}},
    {"data": DATASET, "network": {"hidden": [2]}, "init": {"scheme": "lambda_balanced", "lambda": -0.5},
     "training": {**GD, "learning_rate": 0.3, "allow_unstable": True}},
    {"data": HIERARCHY, "network": {"hidden": [16]}, "training": {"method": "flow", "t_max": 5.0}},
    {"data": HIERARCHY, "network": {"hidden": [16]}, "init": {"scheme": "aligned", "strength": 0.001},
     "training": {"method": "exact", "t_max": 5.0}},
    # issue 20: momentum, sgd (on the hierarchy's eight one-hot samples), the sharpness (the dense solver below 64
    # weights, the compiled Lanczos above, ARPACK for k > 1), the linearised loss (Σ11 not whitened: the "rows" route
    # with its compiled tridiagonalisation), a task sequence
    {"data": HIERARCHY, "network": {"hidden": [16]}, "training": {**GD, "momentum": 0.9, "nesterov": True}},
    {"data": HIERARCHY, "network": {"hidden": [8, 8]},
     "training": {"method": "sgd", "learning_rate": 0.05, "batch_size": 3, "epochs": 20, "momentum": 0.5},
     "record": {"points": 10, "sharpness": True}},
    {"data": DATASET, "network": {"hidden": [3]}, "training": GD,
     "record": {"points": 10, "sharpness": True, "sharpness_k": 2, "linearized": True}},
    {"data": HIERARCHY, "network": {"hidden": [16]}, "training": {"method": "flow", "t_max": 2.0},
     "record": {"points": 5, "sharpness": True, "sharpness_k": 3, "linearized": True}},
    {"data": {"kind": "sequence", "phases": [{"data": HIERARCHY, "until": 5.0}, {"data": HIERARCHY}]},
     "network": {"hidden": [16]}, "training": GD},
]


def test_a_warmed_up_worker_compiles_no_kernel_for_jobs_or_sweeps():
    jobs = JOBS + [{**job, "dtype": "float32"} for job in JOBS if job["training"]["method"] != "exact"]
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                            timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kernels"] >= 5  # the GD kernels were found at all
    assert report["new"] == {}
    # one momentum/SGD loop per dtype: x and y reach it read-only whatever the dataset's layout (sgd._read_only);
    # each writeability had been a variant of its own, about 5 s of compile each
    assert report["signatures"]["service.dynamics.sgd_loop.momentum_chunk"] == 2


def test_the_warm_up_announces_each_step_it_compiles(capsys, monkeypatch):
    from service.jobs import warmup

    ran = []
    monkeypatch.setattr(warmup, "STEPS", [(f"step {i}", lambda i=i: ran.append(i)) for i in range(3)])
    warmup.run_steps([2, 0], announce=True)
    assert ran == [2, 0]
    assert capsys.readouterr().out.splitlines() == ["dlnsim: compiling the kernels (3/3: step 2)…",
                                                    "dlnsim: compiling the kernels (1/3: step 0)…"]
