"""The test suite. Under pytest-xdist (scripts/check.sh runs one worker per core) each worker
and the processes it starts get their share of the cores for torch's and BLAS's threads, set
here before anything imports torch: two workers with two threads each on a 2-core machine
spend their time fighting over the cores. scripts/check.sh runs other passes beside the main
one and sets ``TADA_TEST_PROCESSES`` to the number of test processes running at once."""

import os

_WORKERS = int(
    os.environ.get("TADA_TEST_PROCESSES") or os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
)
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _SHARE)
