"""Which BLAS the GD kernels call: numpy's bundled OpenBLAS where numpy has it (one thread pool per process),
else scipy's through numba (the portable path, also forced by DLNSIM_KERNEL_BLAS=scipy); both give the same
runs to round-off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from service.dynamics import gd_loop

ROOT = Path(__file__).resolve().parents[2]

# A run both paths take: two layers, weight decay, 3,000 steps (checked and fused steps), float64.
RUN = """
import json, numpy as np
from service.dynamics import gd_loop
from service.dynamics.gd import run_gd
from service.dynamics.methods import GradientDescent
from service.dynamics.problem import Problem
rng = np.random.default_rng(7)
x = rng.standard_normal((6, 12))
problem = Problem(x @ x.T / 12 + 0.1 * np.eye(6), rng.standard_normal((4, 6)))
w0 = [0.3 * rng.standard_normal((9, 6)), 0.3 * rng.standard_normal((4, 9))]
run = run_gd(problem, w0, GradientDescent(0.02, 3000, weight_decay=0.01), np.array([0, 3000]))
print(json.dumps({"blas": gd_loop.BLAS, "outcome": run.outcome,
                  "weights": [w[-1].tolist() for w in run.weights]}))
"""


def run_in_subprocess(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def numpy_bundles_scipy_openblas64() -> bool:
    return any(lib.get("internal_api") == "openblas" and "scipy_openblas64_" in os.path.basename(lib["filepath"])
               for lib in threadpool_info())


def test_kernels_call_numpys_openblas_when_numpy_bundles_it():
    expected = "numpy" if numpy_bundles_scipy_openblas64() and not os.environ.get("DLNSIM_KERNEL_BLAS") else "scipy"
    assert gd_loop.BLAS == expected
    assert (gd_loop.NUMPY_CBLAS_PATH is not None) == (expected == "numpy")
    assert gd_loop.CACHE == (expected == "numpy")  # a cache is only ever written under numpy's BLAS


def test_portable_scipy_blas_path_gives_the_same_run_to_round_off():
    here = run_in_subprocess()
    portable = run_in_subprocess(DLNSIM_KERNEL_BLAS="scipy")
    assert portable["blas"] == "scipy"
    assert here["outcome"] == portable["outcome"] == "completed"
    # Two OpenBLAS builds may order a product's sums differently (a few ulps per product); 3,000 contracting
    # GD steps (weight decay, learning rate well under the stability bound) keep that at round-off: 1e-12.
    for a, b in zip(here["weights"], portable["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
