"""Trees of the hierarchy sample: the vectors a tree is built on at each level (sampled tokens or
documents), a build that reuses the cache and says so, and whether the tree found any structure."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.tree import ClusterTree, build_tree, tree_cache_path
from latent_atlas.hierarchy.tree_config import TreeConfig, min_split_size

LEVELS = ("token", "document")


def tree_inputs(sample: HierarchySample, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectors [n, d] and dense soft memberships [n, k] the tree is built on, at `level`."""
    if level == "token":
        return sample.vectors, sample.memberships()
    if level == "document":
        if not len(sample.doc_vectors):
            raise ValueError("level='document' needs hierarchy_sample with document_vectors=True")
        return sample.doc_vectors, sample.doc_memberships()
    raise ValueError(f"level must be 'token' or 'document', got {level!r}")


@dataclass
class SampleTree:
    """A tree of the sample and how it was come by."""

    tree: ClusterTree
    level: str
    points: int  # vectors the tree was built on
    cached: bool  # loaded from the cache, not built
    seconds: float

    @property
    def depth(self) -> int:
        return max(n.depth for n in self.tree.nodes.values())


def build_sample_tree(sample: HierarchySample, level: str, config: TreeConfig, cache_dir: Path | None) -> SampleTree:
    """The tree of the sample at `level`; with cache_dir, keyed by the config and the sample's version
    (so a new sample, or another config, builds anew)."""
    x, soft = tree_inputs(sample, level)
    version = f"{sample.version}:{level}"
    cached = cache_dir is not None and tree_cache_path(cache_dir, x, config, soft, version).exists()
    start = time.perf_counter()
    tree = build_tree(x, config, soft_clusters=soft, cache_dir=cache_dir, data_version=version)
    return SampleTree(tree, level, len(x), cached, time.perf_counter() - start)


def tree_structure(tree: ClusterTree, max_root_noise_share: float) -> tuple[bool, dict]:
    """(passed, facts): a root large enough to split has split into at least two clusters, with at
    most max_root_noise_share of its points left as noise. Fails on a sample UMAP + HDBSCAN found no
    structure in, or where most points fell out as noise (the tree then describes a minority)."""
    root = tree.nodes["root"]
    can_split = tree.config.max_depth >= 1 and root.size >= min_split_size(tree.config)
    noise_share = root.noise_count / max(root.size, 1)
    passed = not can_split or (len(root.children) >= 2 and noise_share <= max_root_noise_share)
    silhouettes = [n.silhouette for n in tree.leaves() if n.id != "root"]
    return passed, {"root_can_split": can_split, "root_children": len(root.children),
                    "root_noise_share": round(noise_share, 4), "max_root_noise_share": max_root_noise_share,
                    "split_nodes": sum(1 for n in tree.nodes.values() if n.children),
                    "median_leaf_silhouette": float(np.median(silhouettes)) if silhouettes else float("nan")}
