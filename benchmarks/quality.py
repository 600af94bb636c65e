"""Clustering quality on a synthetic mixture with known labels: ours vs faiss spherical k-means.

    .venv/bin/python benchmarks/quality.py --clusters 512

The tests check k=64 (tests/test_clustering.py); this runs the issue's second size, k=512, at
d=2304, which is too slow for the test suite. Prints the adjusted Rand index of hard assignments.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.synthetic import labelled_tokens, write_synthetic_chunks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=512)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=256, help="sequences of 128 tokens per chunk")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--duplicate-cosine", type=float, default=0.95, help="SequentialSoftClustering duplicate_cosine")
    args = parser.parse_args()
    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_chunks(tmp, n_chunks=args.chunks, n_sequences=args.sequences, seq_len=128,
                                       dim=args.dim, n_clusters=args.clusters, seed=0)
        X, y = labelled_tokens(paths)
        print(f"synthetic mixture: {len(X):,} tokens, d={args.dim}, k={args.clusters} "
              f"(~{len(X) // args.clusters} per cluster), {args.chunks} chunks")
        for init in ("kmeans++", "random"):
            start = time.perf_counter()
            model = SequentialSoftClustering(n_clusters=args.clusters, n_epochs=args.epochs, init=init,
                                             max_points=100_000, seed=0,
                                             duplicate_cosine=args.duplicate_cosine).fit_chunks(paths)
            ari = adjusted_rand_score(y, model.predict(X))
            print(f"  ours ({init} init, {args.epochs} epochs, duplicate_cosine={args.duplicate_cosine}): ARI {ari:.4f}  ({time.perf_counter() - start:.1f} s)")
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        start = time.perf_counter()
        kmeans = faiss.Kmeans(args.dim, args.clusters, spherical=True, seed=1234, niter=20,
                              max_points_per_centroid=len(X))
        kmeans.train(unit)
        faiss_ari = adjusted_rand_score(y, kmeans.index.search(unit, 1)[1][:, 0])
        print(f"  faiss.Kmeans(spherical=True, niter=20): ARI {faiss_ari:.4f}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
