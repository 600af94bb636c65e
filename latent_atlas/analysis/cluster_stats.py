"""The `cluster_stats` table: one row per cluster, read off merged `ChunkStatistics`: usage, density,
membership moments and histogram, position distribution, top tokens, related clusters, and the measures a
researcher judges a cluster by (position artifacts, token entropy, near-duplicates).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from latent_atlas.analysis.exemplars import first_n_per_group
from latent_atlas.analysis.statistics import ChunkStatistics

def cluster_stats(stats: ChunkStatistics, centers: np.ndarray | None = None, decode=None,
                  top_tokens: int = 10, top_related: int = 5) -> pa.Table:
    """One row per cluster: usage, density, membership moments and histogram, position
    distribution, top tokens (weighted and hard counts, decoded), most coactivating clusters
    (coactivation normalised as m_i.m_j / (|m_i| |m_j|), so big clusters do not dominate), most
    similar clusters (cosine of `centers` [k, d]) and the measures of `cluster_measures`.
    `table.to_pylist()` is JSON-able."""
    k = stats.n_clusters
    active = np.maximum(stats.membership_count, 1)
    mean = stats.membership_sum / active
    std = np.sqrt(np.maximum(stats.membership_sumsq / active - mean**2, 0.0))
    usage = np.maximum(stats.usage, 1e-30)[:, None]
    cluster_of, token_of = stats.token_key >> 32, (stats.token_key & 0xFFFFFFFF).astype(np.int64)
    top = first_n_per_group(cluster_of, (-stats.token_weight, token_of), top_tokens)
    words = decode(token_of[top].tolist()) if decode is not None and top.size else [str(t) for t in token_of[top]]
    starts = np.searchsorted(cluster_of[top], np.arange(k + 1))
    per_cluster = lambda values: [values[a:b] for a, b in zip(starts[:-1], starts[1:])]  # noqa: E731
    coact, similar = normalised_coactivation(stats), None if centers is None else center_cosines(centers)
    columns = {
        "cluster": pa.array(np.arange(k, dtype=np.int32)),
        "total_usage": pa.array(stats.usage),
        "usage_fraction": pa.array(stats.usage / max(stats.n_tokens, 1)),
        "density": pa.array(stats.density_count / max(stats.n_tokens, 1)),
        "active_tokens": pa.array(stats.membership_count),
        "mean_membership": pa.array(mean),
        "std_membership": pa.array(std),
        "max_membership": pa.array(stats.membership_max.astype(np.float64)),
        "position_distribution": pa.array(list(stats.position_hist / usage), pa.list_(pa.float64())),
        "membership_histogram": pa.array(list(stats.membership_hist), pa.list_(pa.int64())),
        "top_token_ids": pa.array(per_cluster(token_of[top]), pa.list_(pa.int64())),
        "top_tokens": pa.array(per_cluster(words), pa.list_(pa.string())),
        "top_token_counts": pa.array(per_cluster(stats.token_weight[top]), pa.list_(pa.float64())),
        "top_token_hard_counts": pa.array(per_cluster(stats.token_hard[top]), pa.list_(pa.int64())),
    }
    for name, matrix in (("coactivating", coact), ("similar", similar)):
        if matrix is None:
            continue
        off = matrix.copy()
        np.fill_diagonal(off, -np.inf)
        n = min(top_related, k - 1)
        idx = np.argsort(-off, axis=1, kind="stable")[:, :n]
        columns[f"{name}_clusters"] = pa.array(list(idx), pa.list_(pa.int64()))
        columns[f"{name}_values"] = pa.array(list(np.take_along_axis(off, idx, axis=1)), pa.list_(pa.float64()))
    columns.update(cluster_measures(stats, similar, coact))
    return pa.table(columns)


def normalised_coactivation(stats: ChunkStatistics) -> np.ndarray:
    """m_i.m_j / (|m_i| |m_j|) over all tokens: 1 for two clusters with the same memberships.  # [k, k]"""
    norm = np.sqrt(np.maximum(np.diag(stats.coactivation), 1e-30))
    return stats.coactivation / norm[:, None] / norm[None, :]


def center_cosines(centers: np.ndarray) -> np.ndarray:
    """Cosine between cluster centers [k, d].  # [k, k]"""
    unit = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-30)
    return unit @ unit.T


def cluster_measures(stats: ChunkStatistics, similar: np.ndarray | None, coact: np.ndarray) -> dict[str, pa.Array]:
    """Columns a researcher judges a cluster by: position concentration (share of its weight in
    the first `position_window` positions, flagged `position_artifact` above
    `position_artifact_share`; normalised entropy of its position distribution), token entropy
    (normalised by the log of the distinct tokens seen; share of its top token) and
    near-duplicate partners (centroid cosine or normalised coactivation above the thresholds)."""
    cfg, k, seq_len = stats.config, stats.n_clusters, stats.position_hist.shape[1]
    usage = np.maximum(stats.usage, 1e-30)
    first_share = stats.position_hist[:, : cfg.position_window].sum(1) / usage
    cluster_of, token_of = stats.token_key >> 32, stats.token_key & 0xFFFFFFFF
    token_share = stats.token_weight / np.maximum(np.bincount(cluster_of, stats.token_weight, k), 1e-30)[cluster_of]
    vocabulary = max(np.unique(token_of).size, 2)
    top_share = np.zeros(k)
    np.maximum.at(top_share, cluster_of, token_share)
    partner = coact > cfg.near_duplicate_coactivation
    if similar is not None:
        partner |= similar > cfg.near_duplicate_cosine
    np.fill_diagonal(partner, False)
    return {
        "first_positions_share": pa.array(first_share),
        "position_entropy": pa.array(_entropy_rows(stats.position_hist) / np.log(max(seq_len, 2))),
        "position_artifact": pa.array(first_share > cfg.position_artifact_share),
        "token_entropy": pa.array(np.bincount(cluster_of, -_xlogx(token_share), k) / np.log(vocabulary)),
        "top_token_share": pa.array(top_share),
        "near_duplicate_partners": pa.array([np.flatnonzero(row) for row in partner], pa.list_(pa.int64())),
        "near_duplicate": pa.array(partner.any(axis=1)),
    }


def _xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def _entropy_rows(weights: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of non-negative weights [k, n].  # [k]"""
    p = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
    return -_xlogx(p).sum(axis=1)
