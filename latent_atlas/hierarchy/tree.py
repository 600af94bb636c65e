"""Cluster tree by recursive embedding and clustering (Spotify style): UMAP, then HDBSCAN, per node.

Every node re-embeds its own members with a fresh UMAP, so structure hidden in a global embedding
shows up when zooming in. A child is split further only when its silhouette (mean silhouette of
its members in the split that made it, on that split's embedding, noise excluded) is BELOW
`silhouette_threshold`: a poorly separated cluster is heterogeneous and worth splitting, a well
separated one is kept whole. HDBSCAN noise stays at the level it was found (the parent's `noise`)
and is never recursed into.

Node ids are paths: the root is "root", its children "0", "1", ..., their children "0.0", "0.1".
The root has depth 0; a child of a depth-d node has depth d + 1.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latent_atlas.clustering.rows import unit_rows
from latent_atlas.data.atomic import write_atomically
from latent_atlas.data.tables import save_npz, write_npz
from latent_atlas.hierarchy.neighbors import cosine_knn

ROOT = "root"


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


@dataclass
class TreeNode:
    """One cluster of the tree (or the root)."""

    id: str
    parent: str | None
    depth: int
    size: int
    silhouette: float  # mean silhouette of the members in the parent's split; NaN for the root
    centroid: np.ndarray  # [d] mean of unit-normalized members, re-normalized, original space
    members: np.ndarray  # [size] indices into the sample
    noise: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # members HDBSCAN left as noise
    children: list[str] = field(default_factory=list)
    soft_clusters: dict[int, float] = field(default_factory=dict)  # soft cluster -> fraction of it in this node

    @property
    def noise_count(self) -> int:
        return len(self.noise)


@dataclass
class ClusterTree:
    """The tree: nodes by id, the config that built it."""

    nodes: dict[str, TreeNode]
    config: TreeConfig

    def children(self, node_id: str) -> list[TreeNode]:
        return [self.nodes[c] for c in self.nodes[node_id].children]

    def leaves(self) -> list[TreeNode]:
        return [n for n in self.nodes.values() if not n.children]

    def sample_leaf_ids(self, n: int) -> list[str | None]:
        """Leaf id of each of the n sample points; None for points left as noise at some level."""
        out: list[str | None] = [None] * n
        for leaf in self.leaves():
            for i in leaf.members:
                out[i] = leaf.id
        return out

    def assign_paths(self, x: np.ndarray) -> list[list[str]]:
        """Path of node ids for each vector of x [m, d]: from the root, the child whose centroid is
        nearest by cosine at each depth, down to a leaf (the root is not in the path)."""
        unit = unit_rows(np.asarray(x, dtype=np.float32))
        paths: list[list[str]] = [[] for _ in range(len(unit))]
        frontier = {ROOT: np.arange(len(unit))}
        while frontier:
            deeper = {}
            for node_id, idx in frontier.items():
                kids = self.nodes[node_id].children
                if not kids or not len(idx):
                    continue
                centroids = np.stack([self.nodes[k].centroid for k in kids])  # [c, d]
                best = np.argmax(unit[idx] @ centroids.T, axis=1)
                for c, kid in enumerate(kids):
                    deeper[kid] = idx[best == c]
                    for i in deeper[kid]:
                        paths[i].append(kid)
            frontier = deeper
        return paths

    def assign_document_paths(self, x: np.ndarray, doc_ids: np.ndarray, method: str = "mean") -> dict:
        """Path per document from token vectors x [m, d] with doc_ids [m].

        "mean": path of the mean-pooled unit token vectors. "majority": descend from the root
        taking, at each depth, the most common child among the document's tokens still on the path.
        """
        doc_ids = np.asarray(doc_ids)
        docs, inverse = np.unique(doc_ids, return_inverse=True)
        if method == "mean":
            unit = unit_rows(np.asarray(x, dtype=np.float32))
            pooled = np.zeros((len(docs), unit.shape[1]), np.float64)
            np.add.at(pooled, inverse, unit)
            return dict(zip(docs.tolist(), self.assign_paths(pooled)))
        if method != "majority":
            raise ValueError(f"method must be 'mean' or 'majority', got {method!r}")
        token_paths = self.assign_paths(x)
        out = {}
        for d, doc in enumerate(docs.tolist()):
            paths = [token_paths[i] for i in np.flatnonzero(inverse == d)]
            chosen: list[str] = []
            while paths and len(paths[0]) > len(chosen):
                level = [p[len(chosen)] for p in paths]
                ids, counts = np.unique(level, return_counts=True)
                chosen.append(str(ids[np.argmax(counts)]))
                paths = [p for p in paths if p[len(chosen) - 1] == chosen[-1]]
            out[doc] = chosen
        return out

    def render(self) -> str:
        """The tree as indented text: id, depth, size, silhouette, noise and mapped soft clusters."""
        lines = []

        def visit(node_id: str, indent: str) -> None:
            n = self.nodes[node_id]
            sil = "-" if np.isnan(n.silhouette) else f"{n.silhouette:.2f}"
            soft = ", ".join(f"{c}:{f:.2f}" for c, f in sorted(n.soft_clusters.items())[:8])
            lines.append(f"{indent}{n.id}  depth={n.depth} size={n.size} silhouette={sil} "
                         f"noise={n.noise_count}" + (f"  soft=[{soft}]" if soft else ""))
            for kid in n.children:
                visit(kid, indent + "  ")

        visit(ROOT, "")
        return "\n".join(lines)

    def save(self, json_path: str | Path) -> Path:
        """Nodes to JSON, arrays (centroids, members, noise) to an .npz beside it; no pickle.
        A path ending in .npz gets one file holding both (the JSON as a string array)."""
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        ids = list(self.nodes)
        arrays = {"centroids": np.stack([self.nodes[i].centroid for i in ids])}
        for key in ("members", "noise"):
            parts = [getattr(self.nodes[i], key).astype(np.int64) for i in ids]
            arrays[key] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            arrays[f"{key}_offsets"] = np.cumsum([0] + [len(p) for p in parts])
        meta = {"config": asdict(self.config), "nodes": [
            {"id": n.id, "parent": n.parent, "depth": n.depth, "size": n.size,
             "silhouette": None if np.isnan(n.silhouette) else n.silhouette, "children": n.children,
             "soft_clusters": {str(c): f for c, f in n.soft_clusters.items()}} for n in self.nodes.values()]}
        if json_path.suffix == ".npz":  # one self-contained file (the tensor IO manager stores .npz artifacts)
            return write_npz(json_path, arrays, meta)
        save_npz(json_path.with_suffix(".npz"), arrays)
        write_atomically(json_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))  # json last: marks complete
        return json_path

    @classmethod
    def load(cls, json_path: str | Path) -> ClusterTree:
        json_path = Path(json_path)
        npz_path = json_path if json_path.suffix == ".npz" else json_path.with_suffix(".npz")
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else json.loads(json_path.read_text())
        nodes = {}
        for i, m in enumerate(meta["nodes"]):
            span = {k: arrays[k][arrays[f"{k}_offsets"][i]:arrays[f"{k}_offsets"][i + 1]] for k in ("members", "noise")}
            nodes[m["id"]] = TreeNode(
                m["id"], m["parent"], m["depth"], m["size"],
                float("nan") if m["silhouette"] is None else m["silhouette"], arrays["centroids"][i],
                span["members"], span["noise"], m["children"], {int(c): f for c, f in m["soft_clusters"].items()})
        # files before issue 12 were built by UMAP's kNN, files before refine_iterations without it
        return cls(nodes, TreeConfig(**{"knn": "umap", "refine_iterations": 0, **meta["config"]}))


def build_tree(x: np.ndarray, config: TreeConfig | None = None, soft_clusters: np.ndarray | None = None,
               cache_dir: str | Path | None = None, data_version: str | None = None) -> ClusterTree:
    """Recursive UMAP + HDBSCAN tree of a sample x [n, d] (token, sequence or document vectors).

    soft_clusters: hard labels [n] or memberships [n, k] of the soft clustering on the same sample,
    mapped onto nodes. With cache_dir, the tree is cached under a hash of the config and
    data_version (or of x's bytes) and loaded from there on the next call.
    """
    config = config or TreeConfig()
    check_config(config)
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty [n, d] array, got shape {x.shape}")
    if soft_clusters is not None and len(soft_clusters) != len(x):
        raise ValueError(f"soft_clusters must have one row per vector of x ({len(x)}), got {len(soft_clusters)}")
    cache_path = None if cache_dir is None else tree_cache_path(cache_dir, x, config, soft_clusters, data_version)
    if cache_path is not None and cache_path.exists():
        return ClusterTree.load(cache_path)
    unit = unit_rows(x.astype(np.float32))
    soft = _soft_mass(soft_clusters)
    root = _make_node(ROOT, None, 0, np.arange(len(x)), float("nan"), unit, soft, config)
    nodes = {ROOT: root}
    stack = [root]
    while stack:
        node = stack.pop()
        if node.id != ROOT and not (node.silhouette < config.silhouette_threshold):
            continue
        if node.depth >= config.max_depth or node.size < min_split_size(config):
            continue
        labels, silhouettes = split_node(x[node.members], node.depth, config)  # [size], {label: sil}
        if len(silhouettes) < 2:
            continue  # HDBSCAN found one cluster (or only noise): a leaf
        node.noise = node.members[labels < 0]
        # largest child first, so "0" is the biggest at every level
        order = sorted(silhouettes, key=lambda c: -int((labels == c).sum()))
        for rank, c in enumerate(order):
            child_id = str(rank) if node.id == ROOT else f"{node.id}.{rank}"
            child = _make_node(child_id, node.id, node.depth + 1, node.members[labels == c],
                               silhouettes[c], unit, soft, config)
            nodes[child_id] = child
            node.children.append(child_id)
        stack.extend(reversed([nodes[c] for c in node.children]))
    tree = ClusterTree(dict(sorted(nodes.items(), key=lambda kv: _sort_key(kv[0]))), config)
    if cache_path is not None:
        tree.save(cache_path)
    return tree


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
    knn = cosine_knn(x[fitted], x[fitted], min(config.umap_n_neighbors, len(fitted)), self_first=True)
    embedding = embed_node(x[fitted], config, knn if config.knn == "exact" else None)
    min_cluster_size = max(config.min_cluster_size_floor, int(len(x) * config.base_pct * config.decay**depth))
    if len(fitted) < len(x):  # the same share of the node, counted on the subsample
        min_cluster_size = max(config.min_cluster_size_floor, round(min_cluster_size * len(fitted) / len(x)))
    fit_labels = hdbscan.HDBSCAN(min_cluster_size=max(min_cluster_size, 2), min_samples=config.hdbscan_min_samples,
                                 cluster_selection_method=config.cluster_selection_method).fit_predict(embedding)
    if config.refine_iterations:
        fit_labels = cut_along_components(x[fitted], fit_labels, graph_components(knn[0]), min_cluster_size)
    labels = fit_labels if len(fitted) == len(x) else _label_by_fitted_neighbours(x, fitted, fit_labels, config)
    labels = refine_in_original_space(x, labels, config.refine_iterations)
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


def cut_along_components(x: np.ndarray, labels: np.ndarray, components: np.ndarray, min_size: int) -> np.ndarray:
    """labels [m] (-1 = noise) of the rows of x [m, d] made to respect the kNN graph's components [m]:
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
    unit = unit_rows(np.asarray(x, dtype=np.float32))
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


def refine_in_original_space(x: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """labels [m] (-1 = noise) after up to `iterations` rounds of: each labelled row of x [m, d] moves to
    the label whose centroid (mean unit row) is nearest by cosine. Stops when nothing moves; a label
    left empty disappears; noise is never moved."""
    labels = labels.copy()
    kept = np.flatnonzero(labels >= 0)
    if not iterations or not len(kept):
        return labels
    unit = unit_rows(np.asarray(x[kept], dtype=np.float32))  # [r, d]
    current = labels[kept]
    for _ in range(iterations):
        clusters = np.unique(current)
        centroids = unit_rows(np.stack([unit[current == c].mean(0) for c in clusters]))  # [c, d]
        nearest = clusters[np.argmax(unit @ centroids.T, axis=1)]
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


def tree_cache_path(cache_dir: str | Path, x: np.ndarray, config: TreeConfig, soft_clusters: np.ndarray | None,
                    data_version: str | None) -> Path:
    """Where build_tree caches the tree of these inputs under cache_dir."""
    return Path(cache_dir) / f"tree-{cache_key(x, config, soft_clusters, data_version)}.json"


def cache_key(x: np.ndarray, config: TreeConfig, soft_clusters: np.ndarray | None, data_version: str | None) -> str:
    """Hash of the config and the data version (or of x's bytes when no version is given)."""
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    if data_version is not None:
        h.update(f"version:{data_version}".encode())
    else:
        h.update(f"{x.shape}{x.dtype}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    if soft_clusters is not None:
        h.update(np.ascontiguousarray(soft_clusters).tobytes())
    return h.hexdigest()[:16]


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


def _make_node(node_id, parent, depth, members, silhouette, unit, soft, config) -> TreeNode:
    centroid = unit[members].mean(0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    mapped = {}
    if soft is not None:
        mass, total = soft
        frac = np.asarray(mass[members].sum(0)).ravel() / np.maximum(total, 1e-12)  # [k]
        mapped = {int(c): round(float(frac[c]), 4) for c in np.flatnonzero(frac >= config.soft_cluster_min_fraction)}
    return TreeNode(node_id, parent, depth, len(members), float(silhouette), centroid, members, soft_clusters=mapped)


def _soft_mass(soft_clusters):
    """Membership mass per (point, cluster) and per cluster, from labels [n] or memberships [n, k]."""
    if soft_clusters is None:
        return None
    soft = np.asarray(soft_clusters)
    if soft.ndim == 1:
        from scipy.sparse import csr_matrix

        labels = soft.astype(np.int64)
        mass = csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    else:
        mass = soft.astype(np.float64)
    return mass, np.asarray(mass.sum(0)).ravel()


def _sort_key(node_id: str) -> tuple:
    return () if node_id == ROOT else tuple(int(p) for p in node_id.split("."))
