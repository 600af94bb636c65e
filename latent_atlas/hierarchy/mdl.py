"""MDL greedy merging of soft clusters by coactivation (after goodfire-ai/spd clustering).

Each soft cluster is a component; A[t, i] = membership[t, i] > tau says whether it is active on
token t. Groups of components are merged greedily by the change in total description length

    F(groups) = sum_g s_g * (log2 k + alpha * r_g)

where s_g = number of tokens on which group g is active (the OR of its members), r_g = number of
components in g and k = number of groups. Merging i and j changes F by exactly

    dF(i, j) = (S - s_i - s_j) log2((k-1)/k) + s_ij log2(k-1) - (s_i + s_j) log2 k
               + alpha (s_ij (r_i + r_j) - s_i r_i - s_j r_j),   s_ij = s_i + s_j - C_ij

with S = sum_l s_l and C = A^T A. Normalization: C holds COUNTS (not AᵀA/n), so F and dF are in
bits over the sample. Dividing by n scales F, dF and alpha's term alike, so greedy merges and
"range" sampling are unchanged; only the "mcmc" temperature is in the units of C.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from latent_atlas.hierarchy.ensemble import align_centers, partition_distance


@dataclass
class MergeConfig:
    """How soft clusters are merged."""

    activation_threshold: float = 0.1
    """tau: a cluster is active on a token when its membership is > tau."""
    alpha: float = 1.0
    """Weight of the rank term s_g * r_g (cost of describing which components a group holds)."""
    n_iters: int | None = None
    """Number of merges; None merges down to one group (k - 1 merges)."""
    sampling: str = "range"
    """Merge-pair sampling: "range" (uniform among near-best) or "mcmc" (Boltzmann)."""
    range_threshold: float = 0.0
    """t for "range": candidates have cost <= c_min + t (c_max - c_min); 0 is greedy."""
    temperature: float = 1.0
    """T for "mcmc": p(pair) proportional to exp(-(c - c_min) / T), in bits."""
    seed: int = 0
    """Seed of the pair sampler (ties and stochastic sampling)."""


@dataclass
class MergeHistory:
    """What merge_iteration did. Row t of group_idxs is the state after merge t."""

    group_idxs: np.ndarray  # [n_iters, n_components] group of every original cluster
    pairs: np.ndarray  # [n_iters, 2] merged group indices (i < j) in the state before the merge
    costs: np.ndarray  # [n_iters] dF of the merge taken
    k_groups: np.ndarray  # [n_iters] number of groups after the merge


def activation_mask(memberships: np.ndarray, tau: float) -> np.ndarray:
    """Binary activations A = memberships > tau: [n, k] -> bool [n, k]."""
    memberships = np.asarray(memberships)
    if memberships.ndim != 2:
        raise ValueError(f"memberships must be [n_tokens, n_clusters], got shape {memberships.shape}")
    return memberships > tau


def coactivation(active: np.ndarray) -> np.ndarray:
    """C = AᵀA in counts: bool [n, k] -> [k, k]; C_ii = tokens where i is active."""
    a = active.astype(np.float32)
    return (a.T @ a).astype(np.float64)  # float32 sums are exact up to 2^24 tokens


def description_length(group_active: np.ndarray, group_sizes: np.ndarray, alpha: float) -> float:
    """Total description length F (bits) of groups with activations bool [n, k] and sizes r [k]."""
    k = group_active.shape[1]
    s = group_active.sum(0).astype(np.float64)
    return float((s * (np.log2(k) + alpha * np.asarray(group_sizes, dtype=np.float64))).sum())


def merge_costs(coact: np.ndarray, group_sizes: np.ndarray, alpha: float) -> np.ndarray:
    """dF(i, j) for every pair of groups: C [k, k], r [k] -> [k, k]; diagonal is +inf."""
    k = coact.shape[0]
    if k < 2:
        raise ValueError(f"merge_costs needs at least 2 groups, got {k}")
    s = np.diag(coact)
    r = np.asarray(group_sizes, dtype=np.float64)
    s_ij = s[:, None] + s[None, :] - coact  # activations of the OR of i and j
    cost = ((s.sum() - s[:, None] - s[None, :]) * np.log2((k - 1) / k)
            + s_ij * np.log2(k - 1) - (s[:, None] + s[None, :]) * np.log2(k)
            + alpha * (s_ij * (r[:, None] + r[None, :]) - (s * r)[:, None] - (s * r)[None, :]))
    np.fill_diagonal(cost, np.inf)
    return cost


def sample_merge_pair(costs: np.ndarray, config: MergeConfig, rng: np.random.Generator) -> tuple[int, int]:
    """Pick (i, j), i < j, from a cost matrix [k, k] with config.sampling."""
    iu, ju = np.triu_indices(costs.shape[0], k=1)
    c = costs[iu, ju]
    c_min, c_max = c.min(), c.max()
    if config.sampling == "range":
        candidates = np.flatnonzero(c <= c_min + config.range_threshold * (c_max - c_min))
        pick = rng.choice(candidates)
    elif config.sampling == "mcmc":
        if config.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}")
        w = np.exp(-(c - c_min) / config.temperature)
        pick = rng.choice(len(c), p=w / w.sum())
    else:
        raise ValueError(f"sampling must be 'range' or 'mcmc', got {config.sampling!r}")
    return int(iu[pick]), int(ju[pick])


def merge_iteration(memberships: np.ndarray, config: MergeConfig) -> MergeHistory:
    """Greedy MDL merging of the clusters of memberships [n_tokens, n_clusters].

    Activations are kept per original column slot; a merged group lives in the slot of its lower
    index and its activation column becomes the OR of both, so C is updated exactly (one mat-vec).
    """
    active = activation_mask(memberships, config.activation_threshold).astype(np.float32)  # [n, k0]
    k0 = active.shape[1]
    n_iters = k0 - 1 if config.n_iters is None else config.n_iters
    if not 0 <= n_iters <= k0 - 1:
        raise ValueError(f"n_iters must be in [0, {k0 - 1}] for {k0} clusters, got {n_iters}")
    rng = np.random.default_rng(config.seed)
    coact = coactivation(active > 0)
    slots = np.arange(k0)  # slot of each group, ascending: group index = position in slots
    slot_of = np.arange(k0)  # slot of every original cluster
    sizes = np.ones(k0)
    group_idxs = np.zeros((n_iters, k0), dtype=np.int32)
    pairs = np.zeros((n_iters, 2), dtype=np.int32)
    costs = np.zeros(n_iters)
    for it in range(n_iters):
        cost = merge_costs(coact[np.ix_(slots, slots)], sizes[slots], config.alpha)
        i, j = sample_merge_pair(cost, config, rng)
        keep, drop = slots[i], slots[j]
        np.maximum(active[:, keep], active[:, drop], out=active[:, keep])
        row = active.T @ active[:, keep]  # [k0]; columns of dropped slots are stale, never read
        coact[keep, :] = row
        coact[:, keep] = row
        sizes[keep] += sizes[drop]
        slot_of[slot_of == drop] = keep
        slots = slots[slots != drop]
        group_idxs[it] = np.searchsorted(slots, slot_of)
        pairs[it] = (i, j)
        costs[it] = cost[i, j]
    return MergeHistory(group_idxs, pairs, costs, k0 - 1 - np.arange(n_iters))


def aligned_merge_histories(reference_centers: np.ndarray, member_centers: Mapping[str, np.ndarray],
                            memberships_of: Callable[[np.ndarray], np.ndarray],
                            config: MergeConfig) -> dict[str, MergeHistory]:
    """MDL merges of every ensemble member, its clusters first aligned to reference_centers [k, d] (the
    atlas's): column j of each member's memberships is its match of reference cluster j, so members' merge
    states (partitions of components) compare component by component. A run's cluster order is arbitrary;
    unaligned, even two identical runs would differ. memberships_of(centers [k, d]) -> memberships [n, k]
    of one shared sample under those centers."""
    return {name: merge_iteration(memberships_of(align_centers(centers, reference_centers)), config)
            for name, centers in member_centers.items()}


def history_distances(histories: Sequence[MergeHistory], method: str = "perm_invariant_hamming") -> np.ndarray:
    """Distances between ensemble members' group assignments at each iteration -> [n_iters, n_ens, n_ens].
    Component i must mean the same cluster in every member (see aligned_merge_histories)."""
    n_iters = {h.group_idxs.shape[0] for h in histories}
    if len(n_iters) != 1:
        raise ValueError(f"histories must have the same number of iterations, got {sorted(n_iters)}")
    merges = np.stack([h.group_idxs for h in histories], axis=1)  # [n_iters, n_ens, n_components]
    n_ens = merges.shape[1]
    out = np.zeros((merges.shape[0], n_ens, n_ens))
    for t in range(merges.shape[0]):
        for a in range(n_ens):
            for b in range(a + 1, n_ens):
                out[t, a, b] = out[t, b, a] = partition_distance(merges[t, a], merges[t, b], method)
    return out


def pair_distances(distances: np.ndarray) -> np.ndarray:
    """Each distinct pair's distance per iteration: [n_iters, n_ens, n_ens] -> [n_iters, n_pairs]."""
    iu, ju = np.triu_indices(distances.shape[1], k=1)
    return distances[:, iu, ju]


def histories_table(histories: dict[str, MergeHistory], distances: np.ndarray) -> pa.Table:
    """One row per (member, merge): what was merged at what cost, the groups after it, and the median and
    max distance between ensemble members at that merge (distances [n_iters, n_ens, n_ens])."""
    per_pair = pair_distances(distances)
    n_iters = {len(h.costs) for h in histories.values()}
    if n_iters != {len(per_pair)}:
        raise ValueError(f"histories have {sorted(n_iters)} merges but distances has {len(per_pair)} iterations")
    n = len(per_pair)
    median = np.median(per_pair, axis=1) if per_pair.size else np.zeros(n)
    worst = per_pair.max(axis=1) if per_pair.size else np.zeros(n)
    parts = [pa.table({
        "member": pa.array([name] * n, pa.string()), "iteration": np.arange(1, n + 1, dtype=np.int64),
        "k_groups": h.k_groups.astype(np.int64), "merged_i": h.pairs[:, 0].astype(np.int64),
        "merged_j": h.pairs[:, 1].astype(np.int64), "cost": h.costs.astype(np.float64),
        "distance_median": median.astype(np.float64), "distance_max": worst.astype(np.float64),
        "group_idxs": pa.FixedSizeListArray.from_arrays(h.group_idxs.astype(np.int32).ravel(),
                                                        h.group_idxs.shape[1]).cast(pa.list_(pa.int32())),
    }) for name, h in histories.items()]
    return pa.concat_tables(parts)


def plot_history_distances(distances: np.ndarray, path: str | Path, method: str = "perm_invariant_hamming") -> Path:
    """PNG of the distance between ensemble members per iteration (median and range over pairs)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    per_pair = pair_distances(distances)  # [n_iters, n_pairs]
    it = np.arange(1, distances.shape[0] + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(it, per_pair.min(1), per_pair.max(1), alpha=0.3, label="min-max over pairs")
    ax.plot(it, np.median(per_pair, axis=1), label="median")
    ax.set_xlabel("merge iteration")
    ax.set_ylabel(method)
    ax.set_title("Distance between ensemble members' merge histories")
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
