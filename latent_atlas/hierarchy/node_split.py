"""One node of the cluster tree split in two or more: its members re-embedded with a fresh UMAP and clustered
by HDBSCAN, the clusters cut along the components of the node's kNN graph and refined in the original space
(TreeConfig.refine_iterations), each with its silhouette on the embedding.
"""

from __future__ import annotations

import functools

import numpy as np

from latent_atlas.clustering.rows import unit_rows
from latent_atlas.hierarchy.neighbors import cosine_knn
from latent_atlas.hierarchy.tree_config import TreeConfig

def split_node(x: np.ndarray, depth: int, config: TreeConfig) -> tuple[np.ndarray, dict[int, float]]:
    """Re-embed one node's members x [m, d] with UMAP and cluster with HDBSCAN.

    Returns labels [m] (-1 = noise: HDBSCAN's, cut along the kNN graph's components and refined in the
    original space, see TreeConfig.refine_iterations) and each cluster's mean silhouette on the
    embedding, noise excluded; fewer than two clusters gives an empty dict. With umap_fit_size below
    m, both are fitted on a seeded subsample and the other members labelled by their nearest fitted
    ones.
    """
    import hdbscan  # imported here: UMAP/numba take seconds to load, path assignment needs neither
    from sklearn.metrics import silhouette_samples

    fitted = _fitted_members(len(x), config)  # [f] indices into x
    knn = None  # the exact graph: UMAP's input (knn="exact") and where the components are read
    if config.knn == "exact" or config.refine_iterations:
        knn = cosine_knn(x[fitted], x[fitted], min(config.umap_n_neighbors, len(fitted)), self_first=True)
    embedding = embed_node(x[fitted], config, knn if config.knn == "exact" else None)
    min_cluster_size = max(config.min_cluster_size_floor, int(len(x) * config.base_pct * config.decay**depth))
    if len(fitted) < len(x):  # the same share of the node, counted on the subsample
        min_cluster_size = max(config.min_cluster_size_floor, round(min_cluster_size * len(fitted) / len(x)))
    fit_labels = hdbscan.HDBSCAN(min_cluster_size=max(min_cluster_size, 2), min_samples=config.hdbscan_min_samples,
                                 cluster_selection_method=config.cluster_selection_method).fit_predict(embedding)
    if config.refine_iterations:
        unit = unit_rows(np.asarray(x, dtype=np.float32))  # [m, d], once for both steps
        fit_labels = cut_along_components(unit[fitted], fit_labels, graph_components(knn[0]), min_cluster_size)
    labels = fit_labels if len(fitted) == len(x) else _label_by_fitted_neighbours(x, fitted, fit_labels, config)
    if config.refine_iterations:
        labels = refine_in_original_space(unit, labels, config.refine_iterations)
    fit_labels = labels[fitted]
    kept = fit_labels >= 0
    clusters = np.unique(fit_labels[kept])
    if len(clusters) < 2:
        return labels, {}
    per_point = silhouette_samples(embedding[kept], fit_labels[kept])
    return labels, {int(c): float(per_point[fit_labels[kept] == c].mean()) for c in clusters}


def graph_components(neighbours: np.ndarray) -> np.ndarray:
    """Connected component [m] of each row in the (undirected) kNN graph neighbours [m, k]."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    m, k = neighbours.shape
    graph = csr_matrix((np.ones(m * k), (np.repeat(np.arange(m), k), neighbours.ravel())), shape=(m, m))
    return connected_components(graph, directed=False)[1]


def cut_along_components(unit: np.ndarray, labels: np.ndarray, components: np.ndarray, min_size: int) -> np.ndarray:
    """labels [m] (-1 = noise) of the unit rows `unit` [m, d] made to respect the kNN graph's components [m]:
    points that share no neighbours are not one cluster, wherever UMAP (which places disconnected
    pieces arbitrarily) put them. Every piece of a cluster in one component becomes a cluster, and so
    does every component in which HDBSCAN clustered fewer than min_size members, noise included; then,
    smallest first, a cluster of fewer than min_size members merges into the one whose centroid is
    nearest by cosine in the original space."""
    out = np.full(len(labels), -1, np.int64)
    clustered = labels >= 0
    whole = np.bincount(components[clustered], minlength=int(components.max()) + 1)[components] < min_size
    keys = np.where(whole, -1, labels).astype(np.int64) * (int(components.max()) + 1) + components
    picked = clustered | whole
    _, out[picked] = np.unique(keys[picked], return_inverse=True)
    sums = np.zeros((int(out.max()) + 1, unit.shape[1]), np.float64)
    np.add.at(sums, out[picked], unit[picked])
    sizes = np.bincount(out[picked], minlength=len(sums))
    alive = sizes > 0
    while alive.sum() > 1 and sizes[alive].min() < min_size:
        small = np.flatnonzero(alive)[np.argmin(sizes[alive])]
        others = np.flatnonzero(alive & (np.arange(len(sizes)) != small))
        into = others[np.argmax(unit_rows(sums[others]) @ unit_rows(sums[small:small + 1])[0])]
        out[out == small] = into
        sums[into] += sums[small]
        sizes[into] += sizes[small]
        alive[small] = False
    return out


def refine_in_original_space(unit: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """labels [m] (-1 = noise) after up to `iterations` rounds of: each labelled row of `unit` [m, d] (unit
    rows) moves to the label whose centroid (mean row) is nearest by cosine. Stops when nothing moves; a
    label left empty disappears; noise is never moved."""
    labels = labels.copy()
    kept = np.flatnonzero(labels >= 0)
    if not iterations or not len(kept):
        return labels
    rows, current = unit[kept], labels[kept]  # [r, d], [r]
    for _ in range(iterations):
        clusters = np.unique(current)
        centroids = unit_rows(np.stack([rows[current == c].mean(0) for c in clusters]))  # [c, d]
        nearest = clusters[np.argmax(rows @ centroids.T, axis=1)]
        if np.array_equal(nearest, current):
            break
        current = nearest
    labels[kept] = current
    return labels


def embed_node(x: np.ndarray, config: TreeConfig, knn: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """[m, umap_n_components] UMAP embedding of x [m, d] (cosine), seeded: the same x and config give the
    same embedding. knn: x's exact cosine kNN graph (cosine_knn, self first) if already computed."""
    import warnings

    import umap

    _cache_umap_kernels()
    if config.knn == "exact" and knn is None:
        knn = cosine_knn(x, x, min(config.umap_n_neighbors, len(x)), self_first=True)
    given = {"precomputed_knn": knn} if config.knn == "exact" else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # random_state forces 1 thread: wanted
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # no transform needed: no search index
        return umap.UMAP(n_components=config.umap_n_components, n_neighbors=config.umap_n_neighbors,
                         min_dist=config.umap_min_dist, metric="cosine", n_epochs=config.umap_n_epochs,
                         random_state=config.seed, **given).fit_transform(x)


@functools.cache
def _cache_umap_kernels() -> None:
    """Turn numba's on-disk cache on for UMAP's module-level kernels (umap leaves it off): the first
    process compiles them, later ones load them (a fresh process's import + 500-point tree: 11-20 s
    compiling, 3.6-6.1 s loading, benchmarks/tree_speed.py). The compiled code is the same."""
    from numba.core.dispatcher import Dispatcher
    from umap import distances, layouts, spectral, umap_, utils

    for module in (umap_, layouts, spectral, utils, distances):
        for kernel in vars(module).values():
            if isinstance(kernel, Dispatcher) and type(kernel._cache).__name__ == "NullCache" and not kernel.overloads:
                try:
                    kernel.enable_caching()
                except RuntimeError:  # no writable cache directory: compile in memory, as umap does
                    return


def _fitted_members(m: int, config: TreeConfig) -> np.ndarray:
    """Indices of the members a node's UMAP and HDBSCAN are fitted on: all, or a seeded subsample."""
    if config.umap_fit_size is None or m <= config.umap_fit_size:
        return np.arange(m)
    return np.sort(np.random.default_rng([config.seed, m]).choice(m, config.umap_fit_size, replace=False))


def _label_by_fitted_neighbours(x: np.ndarray, fitted: np.ndarray, fit_labels: np.ndarray,
                                config: TreeConfig) -> np.ndarray:
    """Labels [m] of all members: the fitted keep theirs, the others take the most common label (ties: the
    smallest) among their umap_n_neighbors nearest fitted members."""
    labels = np.empty(len(x), np.int64)
    labels[fitted] = fit_labels
    rest = np.setdiff1d(np.arange(len(x)), fitted)
    neighbours, _ = cosine_knn(x[rest], x[fitted], min(config.umap_n_neighbors, len(fitted)))  # [r, k]
    votes = fit_labels[neighbours] + 1  # noise (-1) -> 0
    counts = np.zeros((len(rest), int(votes.max()) + 1), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(rest)), votes.shape[1]), votes.ravel()), 1)
    labels[rest] = np.argmax(counts, axis=1) - 1
    return labels
