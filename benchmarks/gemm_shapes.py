"""The E-step's fp32 GEMM libraries at several (d, k): which one the CPU should get.

`python benchmarks/gemm_shapes.py`: 2048-row blocks (the E-step's), d in {576 (SmolLM2-135M), 2304,
4096}, k in {64, 512, 2048}; best of 5 interleaved rounds of 10 calls per library through
`gemm.fp32_mm` (oneDNN's matmul, torch's MKL, numpy's OpenBLAS), and the ratio oneDNN / MKL.
Run it plainly and under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (set from outside) to
see both paths of one CPU; `gemm.fp32_gemm` gives oneDNN only where it runs AVX-512.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.gemm import FP32_GEMMS, fp32_gemm, fp32_mm, use_fp32_gemm  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402

SHAPES = ((576, 64), (576, 512), (2304, 512), (2304, 2048), (4096, 512))
ROWS, ROUNDS, CALLS = 2048, 5, 10


def main() -> None:
    print(describe())
    print(f"[fp32 GEMM] {ROWS} x d x k, best of {ROUNDS} rounds of {CALLS} calls; the E-step here uses: {fp32_gemm()}")
    gen = torch.Generator().manual_seed(0)
    for d, k in SHAPES:
        x, centers_t, out = torch.randn(ROWS, d, generator=gen), torch.randn(d, k, generator=gen), torch.empty(ROWS, k)
        best = dict.fromkeys(FP32_GEMMS, float("inf"))
        for _ in range(ROUNDS):
            for library in FP32_GEMMS:
                with use_fp32_gemm(library):
                    fp32_mm(x, centers_t, out)  # warm: oneDNN builds its primitive for the shape
                    start = time.perf_counter()
                    for _ in range(CALLS):
                        fp32_mm(x, centers_t, out)
                    best[library] = min(best[library], (time.perf_counter() - start) / CALLS)
        times = "  ".join(f"{library} {seconds * 1e3:6.2f} ms" for library, seconds in best.items())
        print(f"  d={d:5d} k={k:5d}: {times}   oneDNN / MKL speed {best['torch'] / best['onednn']:.2f}x")


if __name__ == "__main__":
    main()
