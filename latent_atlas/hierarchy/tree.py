"""Cluster tree by recursive embedding and clustering (Spotify style): UMAP, then HDBSCAN, per node.

Every node re-embeds its own members with a fresh UMAP, so structure hidden in a global embedding
shows up when zooming in. A child is split further only when its silhouette (mean silhouette of
its members in the split that made it, on that split's embedding, noise excluded) is BELOW
`silhouette_threshold`: a poorly separated cluster is heterogeneous and worth splitting, a well
separated one is kept whole. HDBSCAN noise stays at the level it was found (the parent's `noise`)
and is never recursed into.

Node ids are paths: the root is "root", its children "0", "1", ..., their children "0.0", "0.1".
The root has depth 0; a child of a depth-d node has depth d + 1. How one node is split: `node_split`;
the settings: `tree_config.TreeConfig`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latent_atlas.clustering.rows import unit_rows
from latent_atlas.data.atomic import write_atomically
from latent_atlas.data.tables import save_npz, write_npz
from latent_atlas.hierarchy.node_split import split_node
from latent_atlas.hierarchy.tree_config import TreeConfig, check_config, min_split_size

ROOT = "root"


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
