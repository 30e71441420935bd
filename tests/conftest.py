"""Suite-wide settings.

BLAS runs on one thread in the test process: the suite shares 2 cores with the Dask workers and servers
it starts, and a multi-threaded OpenBLAS spin-waiting at its barriers while another process holds a core
made small solves ~100× slower here. Numerics do not depend on the thread count beyond round-off, and
results compared bit for bit are computed on one thread on both sides.
"""

from threadpoolctl import threadpool_limits

threadpool_limits(limits=1)
