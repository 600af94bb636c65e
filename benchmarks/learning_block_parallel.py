"""Issue 29's "block-parallel workers" route for the learning pass, measured against the pass as it is.

    python benchmarks/learning_block_parallel.py [--chunks 4] [--sequences 512] [--rounds 3]

The learning E-step of every chunk (synthetic fp16 chunk dirs, d=2304, k=512, all points), three ways,
interleaved in one process, beside one faiss spherical k-means iteration on the same rows in memory:
- sequential: blocks one after the other, each torch op and GEMM on every core (the default);
- sequential, OpenBLAS: the same with numpy's OpenBLAS GEMM (use_fp32_gemm('openblas'));
- block-parallel: one block per core at once (Python threads, torch and OpenBLAS at 1 thread each, so
  no OpenMP region between ops and no GEMM lock: OpenBLAS's path takes none), reduced in block order.
The block-parallel sums are reduced in block order (deterministic), yet not the sequential OpenBLAS
pass's bits: OpenBLAS's 1-thread and 2-thread kernels round differently (the largest difference is printed).
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.clustering import load_unit_rows  # noqa: E402
from latent_atlas.clustering.config import ClusteringConfig  # noqa: E402
from latent_atlas.clustering.estep_sums import chunk_estep_sums  # noqa: E402
from latent_atlas.clustering.gemm import use_fp32_gemm  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.synthetic import write_synthetic_chunks  # noqa: E402

DIM, K = 2304, 512


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    cores = torch.get_num_threads()
    config = ClusteringConfig(n_clusters=K, max_points=10**9, seed=0, learn_precision="float32")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_chunks(Path(tmp), n_chunks=args.chunks, n_sequences=args.sequences, seq_len=128,
                                       dim=DIM, n_clusters=K, seed=0, format="dir")
        X = load_unit_rows(paths)
        centers = X[np.random.default_rng(0).choice(len(X), K, replace=False)]
        pool = ThreadPoolExecutor(cores, initializer=torch.set_num_threads, initargs=(1,))  # per thread: OpenMP's
        # thread count is each thread's own setting

        def estep(map_blocks=map):
            return [chunk_estep_sums((p, 0, i), centers, config, map_blocks) for i, p in enumerate(paths)]

        def sequential_openblas():
            with use_fp32_gemm("openblas"):
                return estep()

        def block_parallel():
            with use_fp32_gemm("openblas"), threadpool_limits(1, user_api="blas"):
                return estep(pool.map)

        def faiss_iteration(niter):
            def run():
                faiss.Kmeans(DIM, K, niter=niter, spherical=True, seed=1, max_points_per_centroid=len(X),
                             verbose=False).train(X)
            return run

        ways = {"sequential (default GEMM)": estep, "sequential, OpenBLAS GEMM": sequential_openblas,
                f"block-parallel, {cores} threads, OpenBLAS": block_parallel,
                "faiss niter=1": faiss_iteration(1), "faiss niter=3": faiss_iteration(3)}
        best, results = {name: float("inf") for name in ways}, {}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                start = time.perf_counter()
                results[name] = fn()
                best[name] = min(best[name], time.perf_counter() - start)
    faiss_iter = min(best["faiss niter=1"], (best["faiss niter=3"] - best["faiss niter=1"]) / 2)
    print(f"learning E-step over {len(X):,} vectors in {args.chunks} chunks, d={DIM}, k={K}; "
          f"{cores} cores (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); best of {args.rounds}")
    for name in list(ways)[:3]:
        print(f"  {name:<36} {best[name]:7.3f} s   {faiss_iter / best[name]:.2f}x of a faiss iteration")
    print(f"  faiss spherical iteration (rows in memory)  {faiss_iter:7.3f} s")
    diff = max(float(np.abs(a.sums - b.sums).max() / np.abs(a.sums).max())
               for a, b in zip(results["sequential, OpenBLAS GEMM"], results[list(ways)[2]]))
    print(f"  block-parallel sums vs sequential with the same library: largest relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
