"""How a cluster tree is built (`TreeConfig`), and which settings cannot work (`check_config`)."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass
class TreeConfig:
    """How the tree is built. Defaults follow the Spotify-style plan (seed 002)."""

    max_depth: int = 3
    """Deepest node depth (root is 0); max_depth=2 gives two levels of clusters."""
    base_pct: float = 0.05
    """HDBSCAN min_cluster_size at the root, as a fraction of the node's size."""
    decay: float = 0.7
    """min_cluster_size = max(min_cluster_size_floor, int(n * base_pct * decay**depth))."""
    min_cluster_size_floor: int = 10
    """Lower bound of min_cluster_size, so deep nodes don't split into specks."""
    hdbscan_min_samples: int | None = 10
    """HDBSCAN min_samples (density smoothing), kept constant across depths; None = min_cluster_size."""
    cluster_selection_method: str = "eom"
    """HDBSCAN cluster selection: "eom" (fewer, larger clusters) or "leaf" (finer)."""
    silhouette_threshold: float = 0.8
    """Recurse into a cluster only when its silhouette is below this (poorly separated = heterogeneous).

    0.8, not 0.3: silhouettes are measured on each node's UMAP embedding with min_dist=0, which packs
    every HDBSCAN cluster tightly, so even mixed clusters score 0.4-0.8 there. On the demo (SmolLM2-135M
    on BBC News) the top token clusters score 0.52 and 0.77 and the top document clusters 0.57, 0.87 and
    0.90: at 0.3 no node is split and both trees stop at depth 1. At 0.8 the mixed clusters (the bulk of
    the tokens; business, politics and tech documents together) are split and the clean ones (sport,
    entertainment documents) stay whole, which is what the rule is for."""
    min_split_size: int = 50
    """Clusters smaller than this are leaves."""
    umap_n_components: int = 10
    """Dimensions of each node's UMAP embedding."""
    umap_n_neighbors: int = 15
    """UMAP n_neighbors (local vs global structure); a node needs more members than this to split."""
    umap_min_dist: float = 0.0
    """UMAP min_dist; 0 packs clusters tightly, which suits density clustering."""
    umap_n_epochs: int | None = 200
    """UMAP optimisation epochs; None lets UMAP choose (500 up to 10,000 points, 200 above: the default
    before issue 12). 200: the layout epochs are most of a node's cost once the kNN graph is exact, and
    fewer of them keep the planted-hierarchy ARI of the previous build (benchmarks/tree_speed.py)."""
    knn: str = "exact"
    """Neighbour graph of each node's UMAP: "exact" (cosine kNN by blocked matrix products, handed to UMAP
    as precomputed_knn) or "umap" (UMAP's own search: exact below 4,096 points, NN-descent above; the
    behaviour before issue 12). NN-descent's numba kernels compile in every new process, most of the
    cost of a 5,000-token tree (36-45 s of 54-68 s, benchmarks/tree_speed.py); the exact graph is at
    least as accurate."""
    umap_fit_size: int | None = None
    """For very large samples: a node with more members than this fits UMAP and HDBSCAN on a seeded
    subsample of this many; every other member takes the label most common among its umap_n_neighbors
    nearest fitted members (cosine, noise counts as a label). None fits every node on all its members:
    the exact kNN graph costs O(m^2 d) for a node of m members (benchmarks/tree_speed.py --large 20000:
    umap_fit_size=5000 builds a 20,000-point tree 2.6x faster at the same leaf ARI)."""
    refine_iterations: int = 10
    """After HDBSCAN splits a node on its UMAP embedding, no child may span two connected components of
    the node's kNN graph (cut_along_components), and at most this many rounds move each clustered
    member to the child whose centroid is nearest by cosine in the original space (a Lloyd step seeded
    by HDBSCAN's clusters; noise stays noise). Where the kNN graph falls apart into pieces (subgroups
    with no neighbours across), UMAP places the pieces arbitrarily and HDBSCAN can join one to the
    wrong group, differently with each CPU's rounding of the layout; in the original space it is
    nearest its own group. The children are then the cells that `assign_paths` sends new points to.
    0 keeps HDBSCAN's labels as they are, uncut (the build before this field; benchmarks/tree_planted.py)."""
    soft_cluster_min_fraction: float = 0.5
    """A soft cluster is mapped to a node when at least this fraction of its members fall in it."""
    seed: int = 0
    """random_state of every UMAP: deterministic (and single-threaded)."""


def check_config(config: TreeConfig) -> None:
    """Raise ValueError naming the TreeConfig field whose value cannot work."""
    if config.knn not in ("exact", "umap"):
        raise ValueError(f"TreeConfig.knn must be 'exact' or 'umap', got {config.knn!r}")
    if config.umap_fit_size is not None and config.umap_fit_size < min_split_size(config):
        raise ValueError(f"TreeConfig.umap_fit_size must be None or at least {min_split_size(config)} "
                         f"(min_split_size: a smaller fit cannot split), got {config.umap_fit_size!r}")


def min_split_size(config: TreeConfig) -> int:
    # UMAP needs more points than neighbours, and spectral init more than n_components + 1
    return max(config.min_split_size, config.umap_n_neighbors + 2, config.umap_n_components + 2)
