"""What the E-step's exps cost by numpy (one thread, the same bits for every element) against torch's
exp_ (its thread pool), beside the block's GEMM, on one 2048 x 512 block at d=2304.

    python benchmarks/estep_exp.py

Prints the best of 50 of each, the extra time per block and its share of the GEMM.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.clustering import timed  # noqa: E402
from latent_atlas.clustering.estep import exp_  # noqa: E402
from latent_atlas.clustering.gemm import fp32_gemm, fp32_mm  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402


def best(run, rounds: int = 50) -> float:
    """Best of `rounds` after one warm-up run (buffers, kernels)."""
    run()
    return timed(run, rounds)


def main() -> None:
    print(describe())
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2048, 2304), dtype=np.float32))
    centers_t = torch.from_numpy(rng.standard_normal((2304, 512), dtype=np.float32))
    sims = torch.empty(2048, 512)
    source = torch.from_numpy(-rng.random((2048, 512), dtype=np.float32) * 30)
    work = torch.empty_like(source)
    copy = best(lambda: work.copy_(source))
    numpy_exp = best(lambda: exp_(work.copy_(source))) - copy
    torch_exp = best(lambda: work.copy_(source).exp_()) - copy
    gemm = best(lambda: fp32_mm(x, centers_t, sims), 10)
    print(f"one 2048 x 512 block: exp by numpy {numpy_exp * 1e3:.3f} ms, torch exp_ {torch_exp * 1e3:.3f} ms, "
          f"GEMM ({fp32_gemm()}) {gemm * 1e3:.2f} ms")
    print(f"  numpy's exp costs {(numpy_exp - torch_exp) * 1e3:+.3f} ms a block, "
          f"{(numpy_exp - torch_exp) / gemm:+.1%} of the GEMM")


if __name__ == "__main__":
    main()
