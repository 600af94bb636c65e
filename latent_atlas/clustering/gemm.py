"""The E-step's GEMMs: which library multiplies fp32 on this CPU, and the precision switches.

torch's fp32 matmul runs on MKL. On AVX-512 CPUs without AMX, where oneDNN computes fp32 exactly (a
probe says so, onednn_fp32_is_exact), the E-step calls oneDNN's matmul directly
(torch.ops.mkldnn._linear_pointwise, the op inductor emits for a linear layer; no precision switch):
0.99-2.2x MKL there, 1.57x at d=2304, k=512. Its AVX2 kernels are not: 0.57-1.12x MKL under AVX2
caps, by shape (benchmarks/gemm_shapes.py, an AMD EPYC), so AVX2 CPUs keep MKL. Precision settings
are process-wide, so every switch and every GEMM that must not see another thread's switch runs
under GEMM_LOCK. oneDNN caches a primitive per row count: it only ever sees multiples of
GEMM_ROW_STEP rows, and MKL (which caches nothing) takes the rest. A row's fp32 result may therefore
differ in the last bit with its place in a block: deterministic for a given blocking, not across
blockings.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from latent_atlas.compute.cpu import native_bf16, onednn_avx512


def fp32_mm(x: torch.Tensor, centers_t: torch.Tensor, out: torch.Tensor) -> None:
    """out = x @ centers_t in fp32 on the CPU, with the library fp32_gemm() names."""
    library = fp32_gemm()
    if library == "openblas":
        np.matmul(x.numpy(), centers_t.numpy(), out=out.numpy())  # zero-copy views of the tensors
    elif library == "onednn":
        # oneDNN (fp32 here: onednn_fp32_is_exact) takes a multiple of GEMM_ROW_STEP
        # rows, so it caches few shapes; MKL the few rows left (it caches none): two calls a block
        lo = onednn_rows(x.shape[0])
        with GEMM_LOCK:  # oneDNN reads torch's precision settings too
            if lo:
                out[:lo].copy_(_onednn_mm(x[:lo], centers_t))
            if lo < x.shape[0]:
                torch.mm(x[lo:], centers_t, out=out[lo:])
    else:
        with GEMM_LOCK:  # never under another thread's 'medium' (bf16 on AMX)
            torch.mm(x, centers_t, out=out)


_FP32_GEMM_OVERRIDE: list[str] = []
FP32_GEMMS = ("onednn", "torch", "openblas")


def fp32_gemm() -> str:
    """The library of the E-step's fp32 CPU GEMM: oneDNN's where it runs AVX-512 and computes fp32
    exactly (onednn_fp32_is_exact), else torch's default (MKL), unless a benchmark or test picks
    another under use_fp32_gemm. Never numpy's OpenBLAS by default: its bare GEMM can be the fastest,
    but inside the pass torch's OpenMP workers spin after each parallel region and take the cores
    from OpenBLAS's threads (+6-17 ms a 2048-row block, `benchmarks/gemm_contention.py`)."""
    if _FP32_GEMM_OVERRIDE:
        return _FP32_GEMM_OVERRIDE[-1]
    return _default_fp32_gemm()


@lru_cache(maxsize=1)
def _default_fp32_gemm() -> str:
    """fp32_gemm's choice, decided once per process (it is asked once a block)."""
    return "onednn" if onednn_avx512() and onednn_fp32_is_exact() else "torch"


def _onednn_mm(x: torch.Tensor, centers_t: torch.Tensor) -> torch.Tensor:
    """x @ centers_t by oneDNN's matmul primitive, on whatever ISA oneDNN finds (AVX2 included)."""
    return torch.ops.mkldnn._linear_pointwise(x, centers_t.t(), None, "none", [], "")


@lru_cache(maxsize=1)
def onednn_fp32_is_exact() -> bool:
    """Whether oneDNN's matmul is there and multiplies fp32 in fp32 on this CPU. Never on AMX, where
    fp32 oneDNN is unmeasured against MKL and the bf16 learning path owns oneDNN's bf16 kernels.

    Decided by a probe against float64, not by the CPU's name, so that a torch built without this op
    or a oneDNN that multiplies fp32 in bf16 is seen: bf16 products err by ~1e-3 of the largest
    entry, fp32 ones by ~1e-6."""
    if native_bf16()[0] == "AMX-BF16" or not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 2304, generator=gen), torch.randn(2304, 512, generator=gen)
    try:
        with GEMM_LOCK:
            routed = _onednn_mm(a, b)
    except (AttributeError, NotImplementedError, RuntimeError):  # no such op in this torch build
        return False
    exact = a.double() @ b.double()
    return float((routed.double() - exact).abs().max() / exact.abs().max()) < 1e-5


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
