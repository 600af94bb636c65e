"""The statistics merge (`merged_statistics`) costs O(N) for N chunks: time per chunk, N = 8, 32, 128.

    .venv/bin/python benchmarks/statistics_merge.py [--sizes 8 32 128] [--repeat 3]

Synthetic chunk statistics at a small width (d=16, k=64; 256 x 32 tokens a chunk, token ids
from a 50k vocabulary, so the merged (cluster, token) table keeps growing with N as it does on
real text). Both merges run in this process on the same in-memory statistics: the baseline is a
copy of the pairwise fold merge_statistics used to be (`ChunkStatistics.merge` re-uniques the
whole growing token table at every chunk), the new one is `merge_statistics`. Prints seconds per
chunk for each N (flat = linear) and the ratio; the results are checked equal, field by field.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig, merge_statistics  # noqa: E402
from latent_atlas.clustering.memberships import SparseMemberships  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import DenseChunk  # noqa: E402

DIM, CLUSTERS, SEQUENCES, SEQ_LEN, TOP_M, VOCAB = 16, 64, 256, 32, 4, 50_000


def baseline_merge(items) -> ChunkStatistics:
    """merge_statistics before the fix: a pairwise fold, O(N) uniques of the growing table."""
    total = None
    for stats in items:
        total = stats if total is None else total.merge(stats)
    return total


def chunk_statistics(index: int, config: StatisticsConfig) -> ChunkStatistics:
    rng = np.random.default_rng([index, 1])
    x = rng.standard_normal((SEQUENCES, SEQ_LEN, DIM)).astype(np.float16)
    tokens = rng.integers(0, VOCAB, (SEQUENCES, SEQ_LEN)).astype(np.int32)
    n = SEQUENCES * SEQ_LEN
    clusters = np.argsort(rng.random((n, CLUSTERS)), axis=1)[:, :TOP_M]
    values = rng.dirichlet(np.full(TOP_M, 0.7), n).astype(np.float32)
    s, q = np.divmod(np.repeat(np.arange(n), TOP_M), SEQ_LEN)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), clusters.ravel().astype(np.int32),
                            values.ravel(), tokens[s, q], SEQUENCES, SEQ_LEN)
    chunk = DenseChunk(x, np.ones((SEQUENCES, SEQ_LEN), bool), tokens)
    return ChunkStatistics.compute(f"chunk-{index:04d}", mem, chunk, CLUSTERS, config)


def best_of(repeat: int, fn) -> tuple[float, ChunkStatistics]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def same(a: ChunkStatistics, b: ChunkStatistics) -> bool:
    plain = all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ChunkStatistics._PLAIN)
    moments = all(np.array_equal(x, y) for x, y in zip(a.moments.to_arrays().values(), b.moments.to_arrays().values()))
    return plain and moments and a.chunk_ids == b.chunk_ids and a.n_tokens == b.n_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    config = StatisticsConfig(heldout_sample_size=256, fit_sample_size=256, heldout_per_cluster=4)
    print(describe())
    print(f"chunk statistics: d={DIM}, k={CLUSTERS}, {SEQUENCES} x {SEQ_LEN} tokens, top-{TOP_M}, vocabulary {VOCAB}")
    items = [chunk_statistics(i, config) for i in range(max(args.sizes))]
    print(f"{'N':>5} {'token rows':>11} {'baseline ms/chunk':>18} {'new ms/chunk':>13} {'ratio':>6}  equal")
    for n in args.sizes:
        t_old, old = best_of(args.repeat, lambda: baseline_merge(items[:n]))
        t_new, new = best_of(args.repeat, lambda: merge_statistics(items[:n]))
        print(f"{n:5d} {new.token_key.size:11,d} {1e3 * t_old / n:18.2f} {1e3 * t_new / n:13.2f} "
              f"{t_old / t_new:6.2f}  {same(old, new)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
