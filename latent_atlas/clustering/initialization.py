"""Initial centroids of the soft spherical clustering: uniform on the sphere, or k-means++ on a
sample drawn evenly from every chunk (`ClusteringConfig.init`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.rows import open_rows, sample_positions, unit_rows


def random_centers(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] float32, uniform on the unit sphere."""
    centers = rng.standard_normal((k, d)).astype(np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] float32 k-means++ seeds for unit points [n, d] under the distance 1 - cos."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least n_clusters={k} points, the sample has {n}")
    chosen = [int(rng.integers(n))]
    distance = (1.0 - x @ x[chosen[0]]).clamp_min_(0).double()
    for _ in range(1, k):
        total = float(distance.sum())
        if total <= 0:  # fewer distinct points than clusters: pick any not yet chosen
            nxt = int(np.setdiff1d(np.arange(n), chosen)[0])
        else:
            nxt = int(np.searchsorted(np.cumsum(distance.numpy()), rng.random() * total, side="right"))
            nxt = min(nxt, n - 1)
        chosen.append(nxt)
        distance = torch.minimum(distance, (1.0 - x @ x[nxt]).clamp_min_(0).double())
    return x[chosen].numpy().copy()


def unit_sample(sources: Sequence[Any], config: ClusteringConfig, n: int) -> np.ndarray:
    """About n unit rows [~n, d] drawn evenly from every chunk (one open at a time): a stream kept in
    topic order has only a few topics in its first chunk, and seeds drawn there would all sit on them."""
    per_chunk = max(1, -(-n // len(sources)))
    parts = []
    for i, source in enumerate(sources):
        rows, _ = open_rows(source, config.npz_keys)
        picked = sample_positions(rows, per_chunk, np.random.default_rng([config.seed, 2, i]))
        parts.append(np.asarray(rows[picked], dtype=np.float32))
    x = np.concatenate(parts)
    return unit_rows(x)


def initial_centers(sources: Sequence[Any], config: ClusteringConfig, d: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] float32 unit rows to start a fit from, as `config.init` asks."""
    if config.init == "random":
        return random_centers(config.n_clusters, d, rng)
    return kmeans_plus_plus(unit_sample(sources, config, config.init_points), config.n_clusters, rng)
