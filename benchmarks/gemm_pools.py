"""Why the E-step keeps torch's fp32 GEMM although numpy's OpenBLAS multiplies faster on AMD.

    python benchmarks/gemm_pools.py

30 blocks of 4096 x 2304 x 512: the GEMM alone, the GEMM then the E-step's first torch passes (max,
subtract, scale, exp, row sum), and those passes alone, for each library; then the block split over two
Python threads with one-thread OpenBLAS (threadpoolctl) and one-thread torch, so no thread pool hands
the cores to another. Printed figures: docs/benchmarks.md, "Which fp32 GEMM".
"""
import time

import numpy as np
import torch
torch.manual_seed(0)
b, d, k = 4096, 2304, 512
x = torch.randn(b, d); c = torch.randn(d, k); out = torch.empty(b, k)
def post(s):
    m = s.max(1, keepdim=True).values
    e = torch.exp((s - m) / 0.05); e.sum(1)
def run(lib, n=30):
    t = time.perf_counter()
    for _ in range(n):
        if lib == "np": np.matmul(x.numpy(), c.numpy(), out=out.numpy())
        else: torch.matmul(x, c, out=out)
        post(out)
    return time.perf_counter() - t
def gemm_only(lib, n=30):
    t = time.perf_counter()
    for _ in range(n):
        if lib == "np": np.matmul(x.numpy(), c.numpy(), out=out.numpy())
        else: torch.matmul(x, c, out=out)
    return time.perf_counter() - t
def post_only(n=30):
    t = time.perf_counter()
    for _ in range(n): post(out)
    return time.perf_counter() - t
for lib in ["np", "torch"]*2:
    print(lib, "gemm", round(gemm_only(lib),3), "gemm+post", round(run(lib),3), "post", round(post_only(),3))
from threadpoolctl import threadpool_limits
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)
xn, cn, on = x.numpy(), c.numpy(), out.numpy()
h = b // 2
def split_gemm():
    list(pool.map(lambda s: np.matmul(xn[s], cn, out=on[s]), [slice(0, h), slice(h, b)]))
def run2(n=30, post_on=True):
    t = time.perf_counter()
    for _ in range(n):
        split_gemm()
        if post_on: post(out)
    return time.perf_counter() - t
with threadpool_limits(1, user_api="blas"):
    for _ in range(2):
        print("split1thr gemm", round(run2(post_on=False),3), "gemm+post", round(run2(),3))
def half(s, lib):
    if lib == "np": np.matmul(xn[s], cn, out=on[s])
    else: torch.matmul(x[s], c, out=out[s])
    post(out[s])
def run3(lib, n=30):
    t = time.perf_counter()
    for _ in range(n):
        list(pool.map(lambda s: half(s, lib), [slice(0, h), slice(h, b)]))
    return time.perf_counter() - t
torch.set_num_threads(1)
with threadpool_limits(1, user_api="blas"):
    for _ in range(2):
        print("2 py threads, np gemm+post", round(run3("np"),3), " torch gemm+post", round(run3("torch"),3))
