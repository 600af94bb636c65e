"""Bytes of one saved `chunk_stats` file at the user's width, part by part.

A synthetic chunk (latent_atlas.data.synthetic: planted mixture, d=2304 by default) with top-m soft
memberships; `ChunkStatistics.compute` then `save`, and the .npz members' compressed sizes are
printed by part. Run: .venv/bin/python benchmarks/chunk_stats_size.py [--dim 2304 --clusters 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig  # noqa: E402
from latent_atlas.clustering.memberships import SparseMemberships  # noqa: E402
from latent_atlas.data.chunks import DenseChunk  # noqa: E402
from latent_atlas.data.synthetic import mixture_directions, synthetic_chunk  # noqa: E402


def planted_memberships(arrays: dict, directions: np.ndarray, top_m: int) -> SparseMemberships:
    """Top-m softmax memberships of each token over the planted directions."""
    x = arrays["activations"].astype(np.float32)
    n_seq, seq_len, _ = x.shape
    logits = (x.reshape(-1, x.shape[-1]) / np.linalg.norm(x.reshape(-1, x.shape[-1]), axis=1, keepdims=True)) @ directions.T * 20
    top = np.argpartition(-logits, top_m, axis=1)[:, :top_m]
    vals = np.take_along_axis(logits, top, 1)
    p = np.exp(vals - vals.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = np.repeat(np.arange(n_seq * seq_len), top_m)
    s, q = np.divmod(rows, seq_len)
    tokens = arrays["token_ids"]
    return SparseMemberships(s.astype(np.int32), q.astype(np.int32), top.ravel().astype(np.int32),
                             p.ravel().astype(np.float32), tokens[s, q], n_seq, seq_len)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=2304)
    ap.add_argument("--clusters", type=int, default=512)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--top-m", type=int, default=8)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    directions = mixture_directions(args.clusters, args.dim)
    arrays = synthetic_chunk(directions, args.sequences, args.seq_len, 0.6, 0.1, rng)
    chunk = DenseChunk(arrays["activations"], arrays["attention_mask"], arrays["token_ids"])
    mem = planted_memberships(arrays, directions, args.top_m)
    stats = ChunkStatistics.compute("c0", mem, chunk, args.clusters, StatisticsConfig())
    with tempfile.TemporaryDirectory() as tmp:
        path = stats.save(Path(tmp) / "chunk_stats.npz")
        parts: dict[str, int] = defaultdict(int)
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts[info.filename.split(".")[0]] += info.compress_size
        total = path.stat().st_size
    print(f"chunk_stats of one chunk: {args.sequences} x {args.seq_len} tokens, d={args.dim}, k={args.clusters}, "
          f"top-{args.top_m} memberships")
    for name, size in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {size / 1e6:9.2f} MB")
    print(f"  {'total file':24s} {total / 1e6:9.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
