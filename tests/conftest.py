"""Suite-wide settings.

BLAS runs on one thread in the test process and in the processes it starts: the suite shares 2 cores with the Dask
workers and servers it launches, and a multi-threaded OpenBLAS spin-waiting at its barriers while another process
holds a core made small solves many times slower here (docs/performance.md#cores). Numerics do not depend on the
thread count beyond round-off, and results compared bit for bit are computed on one thread on both sides.
"""

import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # for the processes the tests start
# The host's core ledger (service/jobs/cores.py) of the suite's workers and servers: their own, so that a
# service running beside the tests (make run) and the suite do not count each other's jobs.
os.environ.setdefault("DLNSIM_CORES_DIR", tempfile.mkdtemp(prefix="dlnsim-cores-tests-"))

import numpy  # noqa: E402,F401  (load both OpenBLAS copies first: threadpoolctl only reaches loaded libraries)
import scipy.linalg  # noqa: E402,F401
from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(limits=1)
