"""Hierarchy and stability: a shared sample, recursive trees of its tokens and of its documents, seeded
ensembles, MDL merges, and whether documents' tree paths are associated with an outcome (BBC category
or a CSV of labels). The algorithms live in latent_atlas (sample, tree, ensemble, mdl, outcomes).

Every asset here works on one bounded sample (`hierarchy_sample`) drawn by streaming over the chunks,
so the cost does not grow with the corpus.
"""

import hashlib
import json
import time
from dataclasses import fields
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from assets.metadata import crosstab_markdown, histogram_markdown, markdown_table, png_markdown
from latent_atlas.chunks import DenseChunk, read_chunk
from latent_atlas.clustering import SequentialSoftClustering
from latent_atlas.corpus import file_documents, tokenize_documents
from latent_atlas.device import batch_size_for_budget
from latent_atlas.ensemble import (MAX_UNSTABLE_SHARE, STABILITY_FLOOR, EnsembleResult, RunRegistry, fit_ensemble,
                                   soft_clustering_fit_fn, stability_floor)
from latent_atlas.mdl import (MergeConfig, aligned_merge_histories, histories_table, history_distances, merge_iteration,
                              pair_distances, plot_history_distances)
from latent_atlas.models import extract_activations
from latent_atlas.outcomes import (MIN_DOCUMENTS, PERMUTATION_RESAMPLES, annotate_documents, association_by_depth,
                                   association_is_testable, association_markdown, association_rows, load_outcomes_csv,
                                   parse_path, path_text)
from latent_atlas.paths import atlas_home
from latent_atlas.sample import HierarchySample, draw_sample, memberships_for_centers
from latent_atlas.tables import write_table
from latent_atlas.tree import ClusterTree, TreeConfig, min_split_size, build_tree, cache_key
from latent_atlas.whitening import Whitening
from resources import ModelResource, TorchDeviceResource

FAN_IN = {"partition_mapping": dg.AllPartitionMapping(), "metadata": {"allow_missing_partitions": True}}


# ---------------------------------------------------------------- the shared sample


class HierarchySampleConfig(dg.Config):
    sample_size: int = Field(default=5000, description="Token vectors kept in the reservoir")
    seed: int = Field(default=0, description="Seeds the reservoir (per chunk, so new chunks leave old draws alone)")
    document_vectors: bool = Field(default=True, description="Also stream per-document sums of unit token vectors")
    block_sequences: int = Field(default=64, description="Sequences read at a time for the document sums (bounds memory)")
    ensemble_tokens_per_cluster: int = Field(
        default=100, description="Tokens per atlas cluster kept for the ensemble: its sample is max(sample_size, this x k) "
        "tokens, the trees' sample the first sample_size of them (UMAP + HDBSCAN slow down with more)")


def _sample_chunks(keys: list[str], whitened_activations: dict[str, Path], token_chunks: dict[str, Path]):
    """(key, chunk, doc ids, categories) per chunk, read one at a time."""
    for key in keys:
        table = pq.read_table(token_chunks[key], columns=["doc_id", "category"])
        yield (key, read_chunk(whitened_activations[key]), table.column("doc_id").to_pylist(),
               table.column("category").to_pylist())


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="hierarchy",
    ins={"whitened_activations": dg.AssetIn(**FAN_IN), "token_chunks": dg.AssetIn(**FAN_IN)},
    kinds={"numpy"},
)
def hierarchy_sample(config: HierarchySampleConfig, whitened_activations: dict[str, Path],
                     token_chunks: dict[str, Path], centroids: SequentialSoftClustering):
    """A seeded reservoir of whitened token vectors across all chunks, with chunk/sequence/position,
    doc id, category and centroid memberships; plus mean-poolable document vectors. One chunk in memory.
    The bounded sample the trees, the ensemble and the MDL merges are built on, so their cost does not
    grow with the corpus; the page shows what it holds per category."""
    keys = [k for k in whitened_activations if k in token_chunks]
    if not keys:
        raise ValueError("no chunk has both whitened_activations and token_chunks materialized")
    k = int(centroids.cluster_centers_.shape[0])
    sample = draw_sample(_sample_chunks(keys, whitened_activations, token_chunks), config.sample_size, config.seed,
                         centroids, config.document_vectors, config.block_sequences,
                         ensemble_size=config.ensemble_tokens_per_cluster * k)
    return dg.MaterializeResult(value=sample, metadata={
        "tokens": len(sample.vectors), "ensemble_tokens": len(sample.ensemble_vectors),
        "ensemble_tokens_per_cluster": round(len(sample.ensemble_vectors) / k, 1),
        "tokens_seen": sample.tokens_seen, "documents": len(sample.doc_ids),
        "chunks": len(keys), "dim": sample.vectors.shape[1], "categories": sorted(set(sample.category.tolist())),
        "version": sample.version, "per_category": _sample_categories(sample)})


def _sample_categories(sample: HierarchySample) -> dg.MetadataValue:
    """Sampled tokens and documents per category: a category missing here is missing from every tree."""
    token_categories, token_counts = np.unique(np.asarray(sample.category).astype(str), return_counts=True)
    doc_counts = dict(zip(*np.unique(np.asarray(sample.doc_categories).astype(str), return_counts=True)))
    return markdown_table({"category": c or "(none)", "sampled_tokens": int(n), "documents": int(doc_counts.get(c, 0))}
                          for c, n in zip(token_categories, token_counts))


# ---------------------------------------------------------------- the trees


_TREE = TreeConfig()  # one set of defaults: the library's (see TreeConfig for why each is what it is)


class TreeBuildConfig(dg.Config):
    """How a tree is built (latent_atlas.tree.TreeConfig). The user's rule: a cluster is split further only
    when its silhouette is BELOW silhouette_threshold. The default 0.8 (not 0.3) gives a tree on the demo:
    silhouettes are taken on each node's own UMAP embedding, where even mixed clusters score 0.5-0.8
    (SmolLM2/BBC: top token clusters 0.52 and 0.77, top document clusters 0.57, 0.87, 0.90), so at 0.3
    nothing is split and both trees stop at depth 1; at 0.8 the mixed clusters are split and the clean ones
    (sport, entertainment documents) kept whole. max_depth=3 bounds the cost: on the demo the token
    tree (5,000 sampled tokens, 40 nodes) takes ~80 s on 2 busy cores (+~20 s of numba compilation once
    per process), 7x the depth-1 tree of 0.3; the document tree (200 documents) ~1 s."""

    max_depth: int = Field(default=_TREE.max_depth, description="Deepest node depth (root is 0)")
    base_pct: float = Field(default=_TREE.base_pct, description="HDBSCAN min_cluster_size at the root, fraction of the node")
    min_cluster_size_floor: int = Field(default=_TREE.min_cluster_size_floor, description="Lower bound of HDBSCAN min_cluster_size")
    hdbscan_min_samples: int = Field(default=_TREE.hdbscan_min_samples, description="HDBSCAN min_samples")
    silhouette_threshold: float = Field(default=_TREE.silhouette_threshold,
                                        description="Split a cluster only when its silhouette is below this")
    min_split_size: int = Field(default=_TREE.min_split_size, description="Clusters smaller than this are leaves")
    umap_n_components: int = Field(default=_TREE.umap_n_components, description="Dimensions of each node's UMAP embedding")
    umap_n_neighbors: int = Field(default=_TREE.umap_n_neighbors, description="UMAP n_neighbors")
    umap_n_epochs: int = Field(default=_TREE.umap_n_epochs or 0, description="UMAP epochs; 0 lets UMAP choose")
    seed: int = Field(default=_TREE.seed, description="random_state of every UMAP")
    cache: bool = Field(default=True, description="Reuse a tree built with the same config and sample version")
    max_root_noise_share: float = Field(
        default=0.5, description="Check tree_has_structure: at most this share of the points left as HDBSCAN noise at the "
        "root split (more and the tree describes a minority of the sample)")


class ClusterTreeConfig(TreeBuildConfig):
    level: str = Field(default="token", description="'token' (the sampled tokens) or 'document' (document vectors)")


def tree_config(config: TreeBuildConfig) -> TreeConfig:
    values = config.model_dump(exclude={"level", "cache", "max_root_noise_share"})
    return TreeConfig(**{**values, "umap_n_epochs": values["umap_n_epochs"] or None})


def tree_inputs(sample: HierarchySample, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and dense soft memberships the tree is built on, at `level`."""
    if level == "token":
        return sample.vectors, sample.memberships()
    if level == "document":
        if not len(sample.doc_vectors):
            raise ValueError("level='document' needs hierarchy_sample with document_vectors=True")
        return sample.doc_vectors, sample.doc_memberships()
    raise ValueError(f"level must be 'token' or 'document', got {level!r}")


def _tree_result(config: TreeBuildConfig, sample: HierarchySample, level: str) -> dg.MaterializeResult:
    """Build (or load from the cache) the tree of the sample at `level`, with metadata and its size check."""
    x, soft = tree_inputs(sample, level)
    cfg = tree_config(config)
    cache_dir = atlas_home() / "cache" / "cluster_tree" if config.cache else None
    version = f"{sample.version}:{level}"
    cached = cache_dir is not None and (cache_dir / f"tree-{cache_key(x, cfg, soft, version)}.json").exists()
    start = time.perf_counter()
    tree = build_tree(x, cfg, soft_clusters=soft, cache_dir=cache_dir, data_version=version)
    seconds = time.perf_counter() - start
    passed, structure = tree_structure_check(tree, config.max_root_noise_share)
    return dg.MaterializeResult(
        value=tree,
        metadata={"level": level, "nodes": len(tree.nodes), "leaves": len(tree.leaves()),
                  "depth": max(n.depth for n in tree.nodes.values()), "points": len(x),
                  "wall_seconds": round(seconds, 2), "cached": cached,
                  "tree": dg.MetadataValue.md(f"```\n{tree.render()}\n```")},
        check_results=[dg.AssetCheckResult(check_name="tree_has_structure", passed=passed, metadata=structure)],
    )


def tree_structure_check(tree: ClusterTree, max_root_noise_share: float) -> tuple[bool, dict]:
    """(passed, metadata): a root large enough to split has split into at least two clusters, with at
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


# ---------------------------------------------------------------- the ensemble


class EnsembleConfig(dg.Config):
    """Seeded re-fits of the atlas's clustering on the hierarchy sample's ensemble_vectors: online steps
    over the whole sample (init, dead-cluster reseeding), then batch EM passes to the fixed point. Members
    that have not converged make every cluster look unstable: the old 1,000-row steps on 5,000 tokens (15
    steps) left the demo's runs moving by up to 0.04 per step, mutual best-match cosine 0.86 with 10th
    percentile 0.19; 10 full-batch steps + batch EM reach shifts < 1e-4 and a mutual cosine of 0.94."""

    seeds: list[int] = Field(default=[0, 1, 2], description="One re-fit of the soft clustering per seed")
    points_per_step: int = Field(default=0, description="Sample rows per online step; 0 = the whole ensemble sample")
    n_epochs: int = Field(default=10, description="Online passes over the ensemble sample (steps when points_per_step is 0)")
    refine_iters: int = Field(default=100, description="Then at most this many batch EM passes, stopping once no "
                              "center moves by more than 1e-4 (1 - cosine)")
    stability_floor: float = Field(default=STABILITY_FLOOR, description="Check atlas_stability_floor: an atlas cluster is unstable "
                                   "when its median best-match cosine to the runs is below this")
    max_unstable_share: float = Field(default=MAX_UNSTABLE_SHARE, description="Check atlas_stability_floor: at most this share of the "
                                      "atlas clusters unstable")
    max_final_shift: float = Field(default=1e-3, description="Check ensemble_members_converged: every run's last pass "
                                   "moved no center by more than this (1 - cosine)")


def ensemble_fit_params(model: SequentialSoftClustering, config: EnsembleConfig, n_rows: int) -> dict:
    """The centroids' clustering config for a re-fit on the sample: same k and kernel, another seed, the
    ensemble's steps."""
    params = {f.name: getattr(model.config, f.name) for f in fields(model.config) if f.name not in ("n_clusters", "seed")}
    return {**params, "max_points": config.points_per_step or n_rows, "n_epochs": config.n_epochs}


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="hierarchy",
    check_specs=[dg.AssetCheckSpec("atlas_stability_floor", asset="ensemble",
                                   description="At most max_unstable_share of the atlas clusters have stability "
                                               "(median best-match cosine to the runs) below stability_floor"),
                 dg.AssetCheckSpec("ensemble_members_converged", asset="ensemble",
                                   description="Every run's last pass moved no center by more than max_final_shift")],
    kinds={"torch"},
)
def ensemble(config: EnsembleConfig, hierarchy_sample: HierarchySample, centroids: SequentialSoftClustering):
    """Seeded re-fits of the soft clustering (the centroids' config) on the sample's ensemble_vectors:
    distances between runs, and each atlas cluster's stability (best-match cosine to every run, share of
    its tokens a run keeps together); runs recorded in a SQLite registry under ATLAS_HOME. Says which
    clusters are real (found again from other seeds) and which an artifact of one seed; the page
    shows the atlas clusters' stability distribution and the runs' pairwise agreement."""
    x = np.ascontiguousarray(hierarchy_sample.ensemble_vectors, np.float32)
    params = ensemble_fit_params(centroids, config, len(x))
    k = int(centroids.cluster_centers_.shape[0])
    start = time.perf_counter()
    result = fit_ensemble(x, config.seeds, soft_clustering_fit_fn(k, config.refine_iters, **params),
                          atlas_centers=centroids.cluster_centers_, atlas_labels=centroids.predict(x))
    seconds = time.perf_counter() - start
    registry = RunRegistry(atlas_home() / "registry" / "ensembles.sqlite")
    run_config = {"n_clusters": k, **{n: v for n, v in params.items() if n != "npz_keys"}}
    ensemble_id = hashlib.sha256(json.dumps([run_config, config.seeds, hierarchy_sample.version],
                                            sort_keys=True).encode()).hexdigest()[:16]
    for seed in config.seeds:
        registry.add_run(ensemble_id, seed, {**run_config, "seed": seed}, hierarchy_sample.version,
                         {"ensemble": atlas_home() / "tensors" / "ensemble.npz"})
    off = ~np.eye(len(config.seeds), dtype=bool)
    floor = stability_floor(result.atlas.stability, config.stability_floor, config.max_unstable_share)
    shifts = [round(float(s), 6) for s in result.final_shift]
    n = len(x)
    return dg.MaterializeResult(
        value=result,
        metadata={"seeds": config.seeds, "n_clusters": k, "sample": n, "sample_tokens_per_cluster": round(n / k, 1),
                  "ensemble_id": ensemble_id, "online_steps_per_run": config.n_epochs * -(-n // params["max_points"]),
                  "median_atlas_stability": floor.median,
                  "atlas_clusters_below_floor": floor.n_below,
                  "median_assignment_agreement": float(np.nanmedian(result.atlas.agreement)),
                  "median_run_cluster_stability": float(np.median(result.stability)),
                  "mean_pairwise_ari": float(result.distances["ari"][off].mean()),
                  "mean_pairwise_hamming_fraction": float(result.distances["perm_invariant_hamming"][off].mean() / n),
                  "wall_seconds": round(seconds, 2),
                  "registry": dg.MetadataValue.path(str(registry.path)),
                  "atlas_stability": histogram_markdown(
                      {"stability (median cosine)": result.atlas.stability,
                       "assignment agreement": result.atlas.agreement},
                      "atlas clusters across the runs", "value", bins=20, reference=config.stability_floor),
                  "pairwise_runs": markdown_table(
                      {"run_a": f"seed={config.seeds[i]}", "run_b": f"seed={config.seeds[j]}",
                       "ari": float(result.distances["ari"][i, j]),
                       "hamming_fraction": float(result.distances["perm_invariant_hamming"][i, j] / n)}
                      for i in range(len(config.seeds)) for j in range(i + 1, len(config.seeds)))},
        check_results=[
            dg.AssetCheckResult(check_name="atlas_stability_floor", passed=floor.passed, metadata={
                "clusters_below_floor": floor.n_below, "share_below_floor": round(floor.share_below, 4),
                "median_stability": floor.median, "floor": floor.floor, "max_unstable_share": floor.max_share}),
            dg.AssetCheckResult(check_name="ensemble_members_converged",
                                passed=bool(np.all(result.final_shift <= config.max_final_shift)),
                                metadata={"final_shift": shifts, "max_final_shift": config.max_final_shift}),
        ],
    )


# ---------------------------------------------------------------- MDL merges


class MergeHierarchyConfig(dg.Config):
    activation_threshold: float = Field(default=0.1, description="A cluster is active on a token when its membership is > this")
    alpha: float = Field(default=1.0, description="Weight of the rank term of the description length")
    sampling: str = Field(default="range", description="'range' (greedy at threshold 0) or 'mcmc'")
    range_threshold: float = Field(default=0.0, description="Near-best band for 'range' sampling")
    temperature: float = Field(default=1.0, description="Temperature for 'mcmc' sampling (bits)")
    distance: str = Field(default="perm_invariant_hamming", description="Distance between members' merge states")


@dg.asset(io_manager_key="parquet_io_manager", group_name="hierarchy", kinds={"parquet"})
def merge_hierarchy(config: MergeHierarchyConfig, hierarchy_sample: HierarchySample,
                    centroids: SequentialSoftClustering, ensemble: EnsembleResult):
    """Greedy MDL merges of the soft clusters by coactivation on the sample, for the centroids and for
    every ensemble member, each member's clusters aligned to the centroids' first (so component j is the
    same cluster in every member); one row per (member, merge) with the distance between members at that merge.
    A coarser-to-finer view of the clusters, and whether it is stable across seeds (the page plots the
    members' distance at each merge)."""
    merge = MergeConfig(**config.model_dump(exclude={"distance"}))
    members = {f"seed={seed}": centers for seed, centers in zip(ensemble.seeds, ensemble.centers)}
    ensemble_histories = aligned_merge_histories(
        centroids.cluster_centers_, members,
        lambda centers: memberships_for_centers(hierarchy_sample.vectors, centers, centroids), merge)
    histories = {"centroids": merge_iteration(hierarchy_sample.memberships(), merge), **ensemble_histories}
    distances = history_distances(list(ensemble_histories.values()), config.distance)  # [n_iters, n_ens, n_ens]
    per_pair = pair_distances(distances)  # [n_iters, n_pairs]
    plot = plot_history_distances(distances, atlas_home() / "plots" / "merge_history_distances.png", config.distance)
    table = histories_table(histories, distances)
    return dg.MaterializeResult(value=table, metadata={
        "members": list(histories), "merges_per_member": int(distances.shape[0]),
        "median_distance_at_half": float(np.median(per_pair[len(per_pair) // 2])) if len(per_pair) else 0.0,
        "plot_path": dg.MetadataValue.path(str(plot)),
        "distances": png_markdown(plot.read_bytes(), "merge history distances")})


# ---------------------------------------------------------------- outcomes


class DocumentPathsConfig(dg.Config):
    tree: str = Field(default="document", description="'document' (document_tree, built on document vectors) or "
                      "'token' (cluster_tree, built on sampled tokens)")
    method: str = Field(default="mean", description="'mean' (path of the mean-pooled document vector) or 'majority'")
    outcomes_csv: str = Field(default="", description="CSV of texts and labels; empty = the corpus documents and their category")
    text_column: str = Field(default="text", description="Column of the CSV holding the text")
    label_column: str = Field(default="label", description="Column of the CSV holding the outcome label")
    documents_per_batch: int = Field(default=64, description="CSV texts embedded at a time (bounds memory)")


def csv_documents(config: DocumentPathsConfig) -> tuple[Path, dict[str, str]]:
    """The CSV's texts as a Parquet text file the corpus reader takes, and each row's label by doc id."""
    texts, labels = load_outcomes_csv(config.outcomes_csv, config.text_column, config.label_column)
    path = atlas_home() / "outcomes" / f"{hashlib.sha256(Path(config.outcomes_csv).read_bytes()).hexdigest()[:16]}.parquet"
    ids = [f"line{i + 2}" for i in range(len(texts))]  # the CSV line; the header is line 1
    write_table(pa.table({"id": ids, "text": texts, "category": labels}), path)
    return path, dict(zip(ids, labels))


def text_token_vectors(text_file: Path, config: DocumentPathsConfig, whitening: Whitening, model: ModelResource,
                       device: TorchDeviceResource, sequence_length: int):
    """Whitened token vectors of a text file's documents, a batch of documents at a time: yields (x [m, d], doc ids [m])."""
    docs = file_documents(text_file)
    loaded = model.load(device.torch_device(), device.torch_dtype())
    layer = model.layer_of(loaded)
    batch = batch_size_for_budget(device.memory_budget_mb, sequence_length, loaded.hidden_size, layer)
    for start in range(0, len(docs), config.documents_per_batch):
        tokens = tokenize_documents(docs[start:start + config.documents_per_batch], model.tokenizer(), sequence_length)
        acts = extract_activations(loaded, tokens.token_ids, tokens.model_mask, layer, batch)
        whitened = whitening.transform_chunk(DenseChunk(acts, tokens.analysis_mask, tokens.token_ids))
        seq, pos = np.nonzero(tokens.analysis_mask)
        yield whitened[seq, pos].astype(np.float32), np.asarray(tokens.doc_ids)[seq]


@dg.asset(io_manager_key="parquet_io_manager", group_name="hierarchy", kinds={"parquet"})
def document_paths(config: DocumentPathsConfig, hierarchy_sample: HierarchySample, document_tree: ClusterTree,
                   cluster_tree: ClusterTree, whitening: Whitening, model: ModelResource, device: TorchDeviceResource):
    """Each document's path down the tree (one column per depth) and its outcome: the corpus category,
    or the label of a CSV row. The document tree by default: documents meet a tree built on documents.
    What outcome_association tests; the page counts documents per first-level cluster and outcome."""
    if config.method not in ("mean", "majority"):
        raise ValueError(f"method must be 'mean' or 'majority', got {config.method!r}")
    trees = {"document": document_tree, "token": cluster_tree}
    if config.tree not in trees:
        raise ValueError(f"tree must be 'document' or 'token', got {config.tree!r}")
    tree = trees[config.tree]
    if config.outcomes_csv:
        text_file, outcomes = csv_documents(config)
        paths = {}
        for x, docs in text_token_vectors(text_file, config, whitening, model, device, hierarchy_sample.sequence_length):
            paths.update(tree.assign_document_paths(x, docs, config.method))
        source = config.outcomes_csv
    else:
        outcomes = dict(zip(hierarchy_sample.doc_ids.tolist(), hierarchy_sample.doc_categories.tolist()))
        if config.method == "mean" and len(hierarchy_sample.doc_vectors):
            paths = dict(zip(hierarchy_sample.doc_ids.tolist(), tree.assign_paths(hierarchy_sample.doc_vectors)))
        else:  # majority over the sampled tokens of each document
            paths = tree.assign_document_paths(hierarchy_sample.vectors, hierarchy_sample.doc_id, "majority")
            outcomes.update(zip(hierarchy_sample.doc_id.tolist(), hierarchy_sample.category.tolist()))
        source = "corpus category"
    doc_ids = [d for d in outcomes if d in paths]
    max_depth = max((n.depth for n in tree.nodes.values()), default=1) or 1
    ordered = [paths[d] for d in doc_ids]
    table = pa.table({"doc_id": doc_ids, "outcome": [outcomes[d] for d in doc_ids],
                      "path": [path_text(p) for p in ordered], **annotate_documents(ordered, max_depth)})
    # annotate_documents always gives cluster_depth_1 (max_depth >= 1): the first split, per outcome
    first_level = crosstab_markdown([str(c) for c in table.column("cluster_depth_1").to_pylist()],
                                    [str(outcomes[d]) for d in doc_ids], "cluster_depth_1")
    return dg.MaterializeResult(value=table, metadata={"documents": len(doc_ids), "outcomes": source, "tree": config.tree,
                                                       "method": config.method, "depths": max_depth,
                                                       "documents_by_cluster": first_level})


class OutcomeAssociationConfig(dg.Config):
    top: int = Field(default=3, description="Most over- and under-represented clusters listed per outcome")
    permutation_resamples: int = Field(default=PERMUTATION_RESAMPLES, description="Monte Carlo resamples of the "
                                       "permutation test (tables larger than 2x2 with an expected count below 5)")
    seed: int = Field(default=0, description="Seed of the permutation test (one stream per depth)")
    min_documents: int = Field(default=MIN_DOCUMENTS, description="Documents a depth needs for the "
                               "association_testable check to pass")


@dg.asset(
    io_manager_key="parquet_io_manager",
    group_name="hierarchy",
    check_specs=[dg.AssetCheckSpec("association_testable", asset="outcome_association",
                                   description="Every depth has more than one cluster, more than one outcome and "
                                   "enough documents, so its test and Cramér's V say something")],
    kinds={"parquet"},
)
def outcome_association(config: OutcomeAssociationConfig, document_paths: pa.Table):
    """Association of the documents' clusters with their outcome at each depth (chi-squared; Fisher's exact
    test on a 2x2 table, a permutation test on a larger one where expected counts are small; Cramér's V plain
    and bias-corrected; cell p-values BH-adjusted): one row per (depth, cluster, outcome). Whether the
    atlas's branches track an outcome a person cares about; the page lists the over- and
    under-represented clusters per outcome."""
    paths = [parse_path(p) for p in document_paths.column("path").to_pylist()]
    outcomes = document_paths.column("outcome").to_pylist()
    depths = sum(1 for c in document_paths.column_names if c.startswith("cluster_depth_"))
    results = association_by_depth(paths, outcomes, depths, config.permutation_resamples, config.seed)
    rows = association_rows(results)
    passed, problems = association_is_testable(results, config.min_documents)
    # a depth that tests nothing reports why, not a NaN (or a silent 0) as its V
    return dg.MaterializeResult(
        value=pa.Table.from_pylist(rows) if rows else pa.table({"depth": pa.array([], pa.int64())}),
        metadata={**{f"cramers_v_depth_{a.depth}": a.reason or float(a.cramers_v) for a in results},
                  **{f"cramers_v_corrected_depth_{a.depth}": a.reason or float(a.cramers_v_corrected) for a in results},
                  **{f"p_value_depth_{a.depth}": a.reason or float(a.p_value) for a in results},
                  **{f"test_depth_{a.depth}": a.test for a in results},
                  "documents": len(outcomes),
                  "clusters_by_outcome": dg.MetadataValue.md(association_markdown(results, config.top))},
        check_results=[dg.AssetCheckResult(
            check_name="association_testable", passed=passed,
            metadata={"problems": dg.MetadataValue.json({str(d): why for d, why in problems.items()}),
                      "depths": len(results), "min_documents": config.min_documents})],
    )
