"""Cluster analysis figures on a materialized atlas (run `latent-atlas demo` first).

    ATLAS_HOME=/tmp/atlas-issue4 python benchmarks/analysis.py [--clusters 3] [--repeat 2] [--threads 1]

Prints: the ClusterAnalyzer overview of ATLAS_HOME/results; three clusters' summaries with
exemplars in context (plain mode); the median held-out AUROC of LDA vs difference-of-means
directions; and the wall time of the statistics pass (`ChunkStatistics.compute`, what the
chunk_stats asset calls) over every chunk as a ratio to the membership pass
(`SequentialSoftClustering.transform`, what the memberships asset calls) on the same chunks,
best of `--repeat` interleaved runs, both in this run with the chunks in the page cache.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import threadpoolctl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig  # noqa: E402
from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk  # noqa: E402
from latent_atlas.data.paths import atlas_home  # noqa: E402
from latent_atlas.reading.clusters import ClusterAnalyzer  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compact(value):
    """JSON of `value` on one line, floats to 4 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def print_summary(summary: dict) -> None:
    """get_cluster_summary, one line per field (without the per-position and histogram lists)."""
    for key, value in summary.items():
        if key == "statistics":
            for name, stat in value.items():
                if name not in ("position_distribution", "membership_histogram"):
                    print(f"  statistics.{name}: {json.dumps(compact(stat), ensure_ascii=False)}")
        elif key == "exemplars":
            for kind, rows in value.items():
                for row in rows:
                    print(f"  exemplars.{kind}: {json.dumps(compact(row), ensure_ascii=False)}")
        else:
            print(f"  {key}: {json.dumps(compact(value), ensure_ascii=False)}")


def print_clusters(analyzer: ClusterAnalyzer, n_clusters: int, n_examples: int) -> None:
    print(analyzer)
    order = sorted(range(analyzer.n_clusters), key=lambda c: -analyzer.stats_[c]["total_usage"])
    for c in order[:n_clusters]:  # the most used clusters
        print(f"\n=== get_cluster_summary({c}) ===")
        print_summary(analyzer.get_cluster_summary(c, n_examples))
        for i in range(min(n_examples, len(analyzer.exemplars(c, "top_k")))):
            print(analyzer.visualize_cluster_context(c, i, color=False))
        for i in range(min(2, len(analyzer.exemplars(c, "quantile")))):  # the lowest band
            print(analyzer.visualize_cluster_context(c, i, kind="quantile", color=False))


def print_auroc(analyzer: ClusterAnalyzer) -> None:
    lda = np.array([r["auroc"] for r in analyzer.intervention_], float)
    diff = np.array([r["diff_means_auroc"] for r in analyzer.intervention_], float)
    print(f"\nheld-out AUROC over {lda.size} clusters ({analyzer.summary_['heldout_tokens']} held-out tokens): "
          f"LDA median {np.nanmedian(lda):.3f}, difference-of-means median {np.nanmedian(diff):.3f}; "
          f"LDA better on {int(np.sum(lda > diff))}/{lda.size}")


def _blas_threads() -> int:
    return max((pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"), default=0)


def time_passes(home: Path, repeat: int) -> None:
    chunk_dirs = sorted(p for p in (home / "tensors" / "whitened_activations").iterdir() if p.is_dir()
                        and not p.name.startswith("."))
    model = SequentialSoftClustering.load(home / "tensors" / "centroids.npz")
    k = model.cluster_centers_.shape[0]
    config = StatisticsConfig()  # the asset's defaults (derived from it)
    chunks = [read_chunk(p) for p in chunk_dirs]
    for chunk in chunks:  # into the page cache, for both passes alike
        np.asarray(chunk.activations).sum()
    model.transform(chunks[0])  # warm-up (torch kernels, buffers), not timed
    t_mem = t_stats = float("inf")
    for _ in range(repeat):  # interleaved, so a change in the machine's load hits both passes
        seconds, memberships = timed(lambda: [model.transform(c) for c in chunks])
        t_mem = min(t_mem, seconds)
        seconds, _ = timed(lambda: [ChunkStatistics.compute(p.name, m, c, k, config)
                                    for p, m, c in zip(chunk_dirs, memberships, chunks)])
        t_stats = min(t_stats, seconds)
    tokens = sum(c.n_tokens for c in chunks)
    print(f"\n{len(chunks)} chunks, {tokens} tokens, d={chunks[0].dim}, k={k}; best of {repeat}, interleaved "
          f"({torch.get_num_threads()} torch / {_blas_threads()} BLAS threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    print(f"  membership pass (transform):        {t_mem:7.2f} s  ({tokens / t_mem:,.0f} tokens/s)")
    print(f"  statistics pass (ChunkStatistics):  {t_stats:7.2f} s  ({tokens / t_stats:,.0f} tokens/s)")
    print(f"  statistics / membership: {t_stats / t_mem:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=3, help="clusters whose summaries are printed")
    parser.add_argument("--examples", type=int, default=3, help="top_k exemplars shown per cluster")
    parser.add_argument("--repeat", type=int, default=2, help="timing runs; the best is kept")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and BLAS threads for both passes (0 = their defaults); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpoolctl.threadpool_limits(args.threads)
    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with
    home = atlas_home()
    analyzer = ClusterAnalyzer(home / "results")
    print_clusters(analyzer, args.clusters, args.examples)
    print_auroc(analyzer)
    time_passes(home, args.repeat)


if __name__ == "__main__":
    main()
