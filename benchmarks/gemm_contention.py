"""Why numpy's OpenBLAS, the fastest bare fp32 GEMM on some CPUs, loses inside the E-step.

`python benchmarks/gemm_contention.py`: one 2048 x 2304 x 512 block (the E-step's), each GEMM alone and
followed by the few torch elementwise ops the E-step runs after it ([2048, 512] scale, exp, sum),
best of 5 rounds of 30 calls:
- torch's MKL (shares torch's OpenMP pool);
- numpy's OpenBLAS with its own threads;
- OpenBLAS limited to one thread (threadpoolctl) with the rows split over two Python threads, so
  that no OpenBLAS thread is left spinning after the GEMM.
The gap between 'alone' and 'with torch ops' is the cost of two thread pools taking turns on the
same cores (torch's OpenMP workers spin after each parallel region).
"""

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402

ROWS, DIM, K, ROUNDS, CALLS = 2048, 2304, 512, 5, 30


def main() -> None:
    print(describe())
    gen = torch.Generator().manual_seed(0)
    x, centers_t, out = torch.randn(ROWS, DIM, generator=gen), torch.randn(DIM, K, generator=gen), torch.empty(ROWS, K)
    after = torch.randn(ROWS, K, generator=gen)
    xn, cn, on = x.numpy(), centers_t.numpy(), out.numpy()
    pool = ThreadPoolExecutor(2)
    half = ROWS // 2

    def split_openblas():
        for job in [pool.submit(np.matmul, xn[lo:hi], cn, out=on[lo:hi]) for lo, hi in ((0, half), (half, ROWS))]:
            job.result()

    def torch_ops():
        after.mul_(1.0).exp_().sum()
        after.log_()

    gemms = {"torch (MKL)": lambda: torch.mm(x, centers_t, out=out),
             "numpy OpenBLAS": lambda: np.matmul(xn, cn, out=on),
             "OpenBLAS 1 thread x 2 Python threads": split_openblas}
    best: dict = {}
    for _ in range(ROUNDS):
        for name, gemm in gemms.items():
            limit = threadpool_limits(1, user_api="blas") if "Python" in name else threadpool_limits(None)
            with limit:
                for mode, fn in (("alone", gemm), ("with torch ops", lambda g=gemm: (g(), torch_ops()))):
                    best[name, mode] = min(best.get((name, mode), float("inf")), _timed(fn))
    alone_ops = min(_timed(torch_ops) for _ in range(ROUNDS))
    print(f"[fp32 GEMM {ROWS} x {DIM} x {K}] best of {ROUNDS} rounds of {CALLS}; the torch ops alone: {alone_ops * 1e3:.2f} ms")
    for name in gemms:
        alone, mixed = best[name, "alone"], best[name, "with torch ops"]
        print(f"  {name:38s} alone {alone * 1e3:6.2f} ms   with torch ops {mixed * 1e3:6.2f} ms"
              f"   cost of the mix {(mixed - alone - alone_ops) * 1e3:+6.2f} ms")


def _timed(fn) -> float:
    """Mean seconds of CALLS calls after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - start) / CALLS


if __name__ == "__main__":
    main()
