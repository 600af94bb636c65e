"""Hierarchy: a shared sample of the chunks and recursive trees of its tokens and of its documents.
The work lives in latent_atlas (sample_inputs, sample_trees; the ensemble and outcome assets built on the
same sample are in assets/ensemble.py and assets/outcomes.py).

Every asset here works on one bounded sample (`hierarchy_sample`) drawn by streaming over the chunks,
so the cost does not grow with the corpus.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.clustering import CLUSTERING_IN
from assets.configs import config_class, library_config
from assets.metadata import markdown_table
from assets.partitions import all_chunks
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.paths import atlas_home
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.sample_inputs import category_counts, draw_chunk_sample
from latent_atlas.hierarchy.sample_trees import build_sample_tree, tree_structure
from latent_atlas.hierarchy.tree_config import TreeConfig

# ---------------------------------------------------------------- the shared sample


class HierarchySampleConfig(dg.Config):
    sample_size: int = Field(default=5000, description="Token vectors kept in the reservoir")
    seed: int = Field(default=0, description="Seeds the reservoir (per chunk, so new chunks leave old draws alone)")
    document_vectors: bool = Field(default=True, description="Also stream per-document sums of unit token vectors")
    block_sequences: int = Field(default=64, description="Sequences read at a time for the document sums (bounds memory)")
    ensemble_tokens_per_cluster: int = Field(
        default=100, description="Tokens per atlas cluster kept for the ensemble: its sample is max(sample_size, this x k) "
        "tokens, the trees' sample the first sample_size of them (UMAP + HDBSCAN slow down with more)")


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="hierarchy",
    ins={"whitened_activations": all_chunks(), "token_chunks": all_chunks(), **CLUSTERING_IN},
    kinds={"numpy"},
)
def hierarchy_sample(config: HierarchySampleConfig, whitened_activations: dict[str, Path],
                     token_chunks: dict[str, Path], clustering: SequentialSoftClustering):
    """A seeded reservoir of whitened token vectors across all chunks, with chunk/sequence/position,
    doc id, category and centroid memberships; plus mean-poolable document vectors. One chunk in memory.
    The bounded sample the trees, the ensemble and the MDL merges are built on, so their cost does not
    grow with the corpus; the page shows what it holds per category."""
    sample, n_chunks = draw_chunk_sample(whitened_activations, token_chunks, clustering, config.sample_size,
                                         config.seed, config.document_vectors, config.block_sequences,
                                         config.ensemble_tokens_per_cluster)
    return dg.MaterializeResult(value=sample, metadata={
        "tokens": len(sample.vectors), "ensemble_tokens": len(sample.ensemble_vectors),
        "ensemble_tokens_per_cluster": round(len(sample.ensemble_vectors) / sample.n_clusters, 1),
        "tokens_seen": sample.tokens_seen, "documents": len(sample.doc_ids),
        "chunks": n_chunks, "dim": sample.vectors.shape[1], "categories": sorted(set(sample.category.tolist())),
        "version": sample.version, "per_category": markdown_table(category_counts(sample))})


# ---------------------------------------------------------------- the trees


# The library's TreeConfig is the one source of how a tree is built (its docstrings say why each default
# is what it is, e.g. silhouette_threshold=0.8); the asset adds its cache switch and check bound.
_TREE_ASSET_FIELDS = {
    "cache": (bool, Field(default=True, description="Reuse a tree built with the same config and sample version")),
    "max_root_noise_share": (float, Field(default=0.5, description="Check tree_has_structure: at most this share of "
                                          "the points left as HDBSCAN noise at the root split (more and the tree "
                                          "describes a minority of the sample)")),
}
TreeBuildConfig = config_class(TreeConfig, name="TreeBuildConfig", extra=_TREE_ASSET_FIELDS)
ClusterTreeConfig = config_class(TreeConfig, name="ClusterTreeConfig", extra={
    **_TREE_ASSET_FIELDS,
    "level": (str, Field(default="token", description="'token' (the sampled tokens) or 'document' (document vectors)"))})


def _tree_result(config: dg.Config, sample: HierarchySample, level: str) -> dg.MaterializeResult:
    """The tree of the sample at `level` (from the cache when built before), its page and its structure check."""
    built = build_sample_tree(sample, level, library_config(config),
                              atlas_home() / "cache" / "cluster_tree" if config.cache else None)
    passed, structure = tree_structure(built.tree, config.max_root_noise_share)
    return dg.MaterializeResult(
        value=built.tree,
        metadata={"level": level, "nodes": len(built.tree.nodes), "leaves": len(built.tree.leaves()),
                  "depth": built.depth, "points": built.points, "wall_seconds": round(built.seconds, 2),
                  "cached": built.cached, "tree": dg.MetadataValue.md(f"```\n{built.tree.render()}\n```")},
        check_results=[dg.AssetCheckResult(check_name="tree_has_structure", passed=passed, metadata=structure)],
    )


def _structure_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("tree_has_structure", asset=asset,
                             description="The root split into >= 2 clusters (when large enough to split), "
                                         "at most max_root_noise_share of it left as noise")


@dg.asset(io_manager_key="tensor_io_manager", group_name="hierarchy", check_specs=[_structure_check("cluster_tree")],
          kinds={"umap", "hdbscan"})
def cluster_tree(config: ClusterTreeConfig, hierarchy_sample: HierarchySample):
    """Recursive UMAP + HDBSCAN tree of the sampled tokens (or, with level='document', the documents),
    soft clusters mapped to nodes; cached by config and sample version. The token-level map of the
    atlas (node_labels names its nodes, the atlas_report shows it); the page renders the tree."""
    return _tree_result(config, hierarchy_sample, config.level)


@dg.asset(io_manager_key="tensor_io_manager", group_name="hierarchy", check_specs=[_structure_check("document_tree")],
          kinds={"umap", "hdbscan"})
def document_tree(config: TreeBuildConfig, hierarchy_sample: HierarchySample):
    """The same recursive UMAP + HDBSCAN tree on the sample's documents (each the sum of its unit token
    vectors, i.e. mean-pooled up to scale): the tree outcome analysis at document level reads; the
    page renders the tree."""
    return _tree_result(config, hierarchy_sample, "document")
