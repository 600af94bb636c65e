"""Where the soft clustering moves clusters that do not pull their weight (pure functions).

A cluster is due for reseeding when it is dead (too little usage over its window) or redundant (a
near duplicate of one with more usage); it moves onto poorly explained points of the step. A
cluster that explains little may also be swapped onto a group of poorly explained points that
would gain more than it explains (a stream kept in topic order can leave a mode without a
cluster and put two on another, and no cluster ever dies). `plan_moves` decides both; the
estimator applies them.
"""

from __future__ import annotations

import numpy as np

from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.rows import unit_rows


def plan_moves(candidates: np.ndarray, candidate_scores: np.ndarray, centers: np.ndarray, due: np.ndarray,
               swappable: np.ndarray, loss: np.ndarray, config: ClusteringConfig
               ) -> tuple[np.ndarray, np.ndarray, list[int], list[np.ndarray]]:
    """(reseeded clusters, their new centroids [r, d], swapped clusters, their new centroids).

    candidates [n, d] unit rows, the step's most poorly explained points, and candidate_scores [n]
    their max cosine; due: clusters to reseed; swappable [k] bool: clusters that may be swapped;
    loss [k]: what each cluster explains per epoch (its removal loss).

    Picks go farthest first: each is the candidate least similar to all centroids kept so far and
    to earlier picks, so several moved clusters do not land on the same uncovered mode. A moved
    centroid is the mean of its pick and the pick's nearest candidates.
    """
    n_swaps = config.swaps_per_step if config.swap_margin > 0 else 0
    picks = farthest_picks(candidates, np.delete(centers, due, axis=0), len(due) + 4 * n_swaps)
    seeds = seeds_near(candidates, picks, config.reseed_neighbors)
    due = due[: len(picks)]
    if not n_swaps or len(seeds) <= len(due):
        return due, seeds[: len(due)], [], []
    # what each further seed would add to the cosine of the candidates it explains better
    best = np.maximum(candidate_scores, (candidates @ seeds[: len(due)].T).max(axis=1, initial=-1.0))
    offers = candidates @ seeds[len(due):].T  # [r, p]
    order = np.flatnonzero(swappable)[np.argsort(loss[swappable], kind="stable")]
    moved, targets = [], []
    while len(moved) < min(n_swaps, len(order)):
        gains = np.maximum(offers - best[:, None], 0).sum(axis=0)
        j = int(np.argmax(gains))
        if gains[j] <= config.swap_margin * loss[order[len(moved)]]:
            break
        moved.append(order[len(moved)])
        targets.append(seeds[len(due) + j])
        best = np.maximum(best, offers[:, j])  # the next seed gains only what this one leaves
    return due, seeds[: len(due)], moved, targets


def farthest_picks(candidates: np.ndarray, kept: np.ndarray, n: int) -> list[int]:
    """Up to n candidates, each the least similar to the kept centroids and to the earlier picks."""
    closest = (candidates @ kept.T).max(axis=1) if len(kept) else np.full(len(candidates), -1.0, np.float32)
    picks = []
    for _ in range(min(n, len(candidates))):
        best = int(np.argmin(closest))  # first minimum: deterministic
        picks.append(best)
        closest = np.maximum(closest, candidates @ candidates[best])
        closest[best] = np.inf
    return picks


def seeds_near(candidates: np.ndarray, picks: list[int], neighbors: int) -> np.ndarray:
    """[p, d] unit means of each pick and its nearest candidates (`neighbors` in all): in high
    dimensions one noisy point is far from its mode, the mean of a few from one mode is not."""
    if not picks:
        return np.zeros((0, candidates.shape[1]), np.float32)
    q = min(neighbors, len(candidates))
    near = np.argsort(-(candidates[picks] @ candidates.T), axis=1, kind="stable")[:, :q]  # [p, q], the pick first
    seeds = candidates[near].mean(axis=1)
    return unit_rows(seeds)


def duplicates(centers: np.ndarray, usage: np.ndarray, max_cosine: float) -> np.ndarray:
    """Indices of centroids within `max_cosine` of a centroid with more usage (ties: lower index wins)."""
    if max_cosine >= 1:
        return np.zeros(0, np.int64)
    rank = np.lexsort((np.arange(len(usage)), -usage))  # most used first
    cos = centers[rank] @ centers[rank].T  # [k, k]
    close = np.triu(cos > max_cosine, k=1)
    redundant = np.zeros(len(usage), bool)
    for j in np.flatnonzero(close.any(axis=0)):  # few columns; keeps a chain a~b~c from dropping a
        redundant[j] = bool((close[:j, j] & ~redundant[:j]).any())
    return np.sort(rank[redundant])
