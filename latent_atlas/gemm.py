"""The E-step's GEMMs: which library multiplies fp32 on this CPU, and the precision switches.

torch's fp32 matmul runs on MKL, or on oneDNN when oneDNN's own precision hint is set; where oneDNN
stays fp32 (a probe says so, onednn_fp32_is_exact) it is the faster of the two on AVX-512 CPUs
without AMX. Precision settings are process-wide, so every switch and every GEMM that must not see
another thread's switch runs under GEMM_LOCK. oneDNN caches a primitive per row count: it only ever
sees multiples of GEMM_ROW_STEP rows, and MKL (which caches nothing) takes the rest. A row's fp32
result may therefore differ in the last bit with its place in a block: deterministic for a given
blocking, not across blockings.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from latent_atlas.cpu import native_bf16


def fp32_mm(x: torch.Tensor, centers_t: torch.Tensor, out: torch.Tensor) -> None:
    """out = x @ centers_t in fp32 on the CPU, with the library fp32_gemm() names."""
    library = fp32_gemm()
    if library == "openblas":
        np.matmul(x.numpy(), centers_t.numpy(), out=out.numpy())  # zero-copy views of the tensors
    elif library == "onednn":
        # oneDNN (fp32 here: onednn_fp32_is_exact) takes a multiple of GEMM_ROW_STEP
        # rows, so it caches few shapes; MKL the few rows left (it caches none): two calls a block
        lo = onednn_rows(x.shape[0])
        if lo:
            with _onednn_fp32():
                torch.mm(x[:lo], centers_t, out=out[:lo])
        if lo < x.shape[0]:
            with GEMM_LOCK:
                torch.mm(x[lo:], centers_t, out=out[lo:])
    else:
        with GEMM_LOCK:  # never under another thread's 'medium' (bf16 on AMX)
            torch.mm(x, centers_t, out=out)


_FP32_GEMM_OVERRIDE: list[str] = []
FP32_GEMMS = ("onednn", "torch", "openblas")


def fp32_gemm() -> str:
    """The library of the E-step's fp32 CPU GEMM: oneDNN's where it computes fp32 exactly
    (onednn_fp32_is_exact; faster than MKL's on AVX-512 without AMX), else torch's default (MKL),
    unless a benchmark or test picks another under use_fp32_gemm. Never numpy's OpenBLAS by default:
    its bare GEMM can be as fast, but inside the pass its thread pool and torch's OpenMP pool take
    turns on the same cores and the passes after the GEMM slow down (`benchmarks/clustering.py`,
    figures in docs/benchmarks.md)."""
    if _FP32_GEMM_OVERRIDE:
        return _FP32_GEMM_OVERRIDE[-1]
    return "onednn" if onednn_fp32_is_exact() else "torch"


@lru_cache(maxsize=1)
def onednn_fp32_is_exact() -> bool:
    """Whether torch's fp32 matmul under oneDNN's bf16 hint (which sends it to oneDNN on AVX-512
    CPUs) still multiplies in fp32 on this CPU. oneDNN then multiplies in bf16 only where it has such
    a kernel (AMX; the bf16 learning path uses it there), elsewhere it runs its own fp32 GEMM.

    Decided by a probe against float64, not by the CPU's name, so that a oneDNN that learns bf16
    products on more ISAs, or caps set from outside, are seen: bf16 products err by ~1e-3 of the
    largest entry, fp32 ones by ~1e-6. Where torch keeps MKL under the hint (a CPU without AVX-512)
    the probe gives MKL's very bits, and MKL stays the named GEMM."""
    if native_bf16()[0] == "AMX-BF16" or not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 2304, generator=gen), torch.randn(2304, 512, generator=gen)
    with _onednn_fp32():
        routed = torch.mm(a, b)
    with GEMM_LOCK:
        plain = torch.mm(a, b)
    exact = a.double() @ b.double()
    error = float((routed.double() - exact).abs().max() / exact.abs().max())
    return error < 1e-5 and not torch.equal(routed, plain)


@contextmanager
def use_fp32_gemm(library: str):
    """Run the fp32 CPU GEMMs inside with 'onednn', 'torch' (MKL) or 'openblas' (benchmarks and tests
    compare them)."""
    if library not in FP32_GEMMS:
        raise ValueError(f"fp32 GEMM library must be one of {FP32_GEMMS}, not {library!r}")
    _FP32_GEMM_OVERRIDE.append(library)
    try:
        yield
    finally:
        _FP32_GEMM_OVERRIDE.pop()


GEMM_ROW_STEP = 64
"""oneDNN GEMMs take whole multiples of this many rows at once (see gemm_pieces)."""


def onednn_rows(b: int) -> int:
    """The rows of a b-row GEMM that oneDNN takes: the largest multiple of GEMM_ROW_STEP."""
    return b - b % GEMM_ROW_STEP


def gemm_pieces(b: int, onednn: bool) -> list[tuple[int, int]]:
    """Row ranges for a GEMM of b rows. oneDNN (`onednn`: the bf16 path) caches a primitive of
    ~0.7 MB per distinct row count, and every chunk ends on a different one: one piece
    of a multiple of GEMM_ROW_STEP rows, then power-of-two pieces for the rest, bound the shapes it
    ever sees to b_max / 64 + 6, so memory stays flat over thousands of chunks. (Power-of-two pieces
    alone cost a 1,830-row block six GEMM calls.) MKL's fp32 GEMM caches nothing; oneDNN's fp32 GEMM
    takes the same multiple and leaves the rest to MKL (fp32_mm)."""
    if not onednn:
        return [(0, b)]
    lo = onednn_rows(b)
    pieces = [(0, lo)] if lo else []
    for bit in reversed(range((b - lo).bit_length())):
        if (b - lo) & (1 << bit):
            pieces.append((lo, lo + (1 << bit)))
            lo += 1 << bit
    return pieces


GEMM_LOCK = threading.Lock()


@contextmanager
def matmul_precision(dtype: torch.dtype):
    """fp32 matmuls inside multiply in bf16 (fp32 accumulation and output) when dtype is bfloat16
    and the device supports it; fp32 otherwise.

    The switch (torch.set_float32_matmul_precision) is process-wide, so every E-step GEMM runs under
    one lock: two threads (in-process Dask workers) never see each other's setting. Each GEMM uses
    every core anyway, so serializing them costs nothing.
    """
    with GEMM_LOCK:
        if dtype == torch.float32:
            yield
            return
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)


@contextmanager
def _onednn_fp32():
    """torch's fp32 matmuls inside go to oneDNN (its own bf16 hint: only oneDNN's setting changes,
    never CUDA's, and the legacy global precision API is not touched), restored after, under the lock."""
    with GEMM_LOCK:
        settings = torch.backends.mkldnn.matmul
        previous = settings.fp32_precision
        settings.fp32_precision = "bf16"
        try:
            yield
        finally:
            settings.fp32_precision = previous
