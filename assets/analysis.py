"""Cluster analysis: per-chunk statistics merged exactly into cluster statistics, exemplars in
context, intervention vectors, and the results directory `ClusterAnalyzer` reads.

    chunk_stats (per chunk) -> merged_statistics -> cluster_stats, exemplars, intervention_vectors
                                                 -> cluster_summaries (ATLAS_HOME/results/)

The merge (a streaming fold over the chunk_stats files) runs once, in `merged_statistics`; the
three global assets each load the merged file. The statistics files keep the sampled tokens'
identities, not their vectors: `intervention_vectors` reads those back from the whitened chunk
files, as `exemplars` reads contexts back. `intervention_vectors` is an
`InterventionVectors` saved as one .npz by the tensor IO manager (vectors, diff_means [k, d];
AUROC against random and hard negatives with intervals, the weights behind them, d_prime,
within_variance [k]; cross_correlation [k, k]; shrinkage). Documents are held out whole (doc ids
from token_chunks), so exemplars and fits never see a token the scores are computed on.
"""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from assets.clustering import CLUSTERING_IN
from assets.configs import config_class, library_config
from assets.partitions import all_chunks, chunks
from assets.metadata import (histogram_markdown, marked_window, markdown_table, top_clusters, top_rows,
                             usage_curve_markdown)
from latent_atlas.analysis.cluster_stats import (center_cosines, cluster_measures, cluster_stats as stats_table,
                                                 normalised_coactivation)
from latent_atlas.analysis.exemplars import check_exemplars, fill_context, select_exemplars
from latent_atlas.analysis.intervention import InterventionVectors, check_vectors
from latent_atlas.analysis.null import NullConfig, with_separation_null
from latent_atlas.analysis.statistics import (ChunkStatistics, StatisticsConfig, check_usage, document_keys_for,
                                              heldout_documents, merge_statistics)
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk, read_chunk
from latent_atlas.data.paths import atlas_home
from latent_atlas.data.tables import _META_KEY  # the schema metadata key of this project's tables
from latent_atlas.hierarchy.ensemble import EnsembleResult, atlas_stability_columns
from latent_atlas.reading.clusters import results_summary, score_summary, write_results
from resources import CorpusResource, ModelResource

def _whitened_opener(whitened_activations: dict[str, Path]):
    """open_chunk(chunk_id) -> memory-mapped whitened DenseChunk, naming a chunk not materialized."""

    def open_chunk(chunk_id: str) -> DenseChunk:
        if chunk_id not in whitened_activations:
            raise ValueError(f"merged statistics sample chunk {chunk_id!r}, which has no materialized "
                             "whitened_activations: materialize it or rematerialize merged_statistics")
        return read_chunk(whitened_activations[chunk_id])

    return open_chunk


# The library's StatisticsConfig is the one source (exemplar candidates nested under `exemplars`,
# whose seed seeds every sampling stream: exemplars, held-out split, reservoirs).
ChunkStatsConfig = config_class(StatisticsConfig, name="ChunkStatsConfig")


# Eager: a new chunk upstream, or a refit global model, makes the partition due (once the UI's
# default automation sensor is switched on).
@dg.asset(partitions_def=chunks, automation_condition=dg.AutomationCondition.eager(),
          io_manager_key="tensor_io_manager", group_name="analysis", ins=CLUSTERING_IN, kinds={"numpy"})
def chunk_stats(context: dg.AssetExecutionContext, config: ChunkStatsConfig, memberships: pa.Table,
                whitened_activations: DenseChunk, token_chunks: pa.Table, clustering: SequentialSoftClustering):
    """Mergeable statistics of one chunk: usage, position and membership histograms, token counts,
    coactivation, LDA moments, exemplar candidates and held-out / fitting reservoirs (documents
    held out whole, by their doc id). The map step of the analysis: merged exactly into
    merged_statistics, so a new chunk costs one chunk's work; the page shows what this chunk adds
    to its most used clusters."""
    doc_ids = token_chunks.column("doc_id").to_pylist()
    if len(doc_ids) != whitened_activations.n_sequences:
        raise ValueError(f"chunk {context.partition_key}: token_chunks has {len(doc_ids)} sequences, "
                         f"whitened_activations {whitened_activations.n_sequences}: rematerialize them together")
    stats = ChunkStatistics.compute(context.partition_key, SparseMemberships.from_table(memberships),
                                    whitened_activations, clustering.cluster_centers_.shape[0],
                                    library_config(config), document_keys=document_keys_for(doc_ids))
    return dg.MaterializeResult(value=stats, metadata={
        "tokens": stats.n_tokens, "total_usage": float(stats.usage.sum()),
        "exemplar_candidates": int(stats.candidates.kind.size), "heldout_tokens": int(stats.heldout.priority.size),
        "heldout_documents": len(np.unique(stats.heldout.group)),
        "top_clusters": _statistics_table(stats),
    })


def _statistics_table(stats: ChunkStatistics, n: int = 10) -> dg.MetadataValue:
    """The most used clusters of `stats`: usage and density shares, exemplar candidates, held-out
    tokens whose hard cluster it is (what its held-out AUROC will rest on)."""
    k, tokens = stats.n_clusters, max(stats.n_tokens, 1)
    candidates = np.bincount(stats.candidates.cluster, minlength=k)
    return markdown_table({"cluster": int(c), "usage_fraction": stats.usage[c] / tokens,
                           "density": stats.density_count[c] / tokens, "exemplar_candidates": int(candidates[c]),
                           "heldout_tokens": int(stats.heldout_count[c])} for c in top_clusters(stats.usage, n))


@dg.asset(io_manager_key="tensor_io_manager", group_name="analysis", ins={"chunk_stats": all_chunks()},
          kinds={"numpy"})
def merged_statistics(chunk_stats: dict[str, Path]):
    """chunk_stats of every materialized chunk merged exactly, one file loaded at a time: the one
    merge cluster_stats, exemplars and intervention_vectors all read. The page shows the most used
    clusters and how many held-out tokens each cluster has for its held-out scores."""
    if not chunk_stats:
        raise ValueError("no materialized chunk_stats partitions to merge")
    merged = merge_statistics(chunk_stats.values())
    return dg.MaterializeResult(value=merged, metadata={
        "chunks": len(merged.chunk_ids), "tokens": merged.n_tokens, "clusters": merged.n_clusters,
        "fitting_tokens": int(merged.moments.n_tokens), "heldout_tokens": int(merged.heldout.priority.size),
        "clusters_with_50_heldout_tokens": int(np.sum(np.bincount(merged.heldout.stratum, minlength=merged.n_clusters + 1)
                                                              [: merged.n_clusters] >= 50)),
        "top_clusters": _statistics_table(merged),
        "heldout_tokens_per_cluster": histogram_markdown(
            merged.heldout_count[: merged.n_clusters], "held-out tokens per cluster", "tokens (hard cluster)",
            reference=50),
    })


@dg.asset(io_manager_key="parquet_io_manager", group_name="analysis", ins={**CLUSTERING_IN, "memberships": all_chunks()},
          check_specs=[dg.AssetCheckSpec("usage_matches_memberships", asset="cluster_stats",
                                         description="Merged usage per cluster equals the sum of stored memberships")],
          kinds={"parquet"})
def cluster_stats(merged_statistics: ChunkStatistics, clustering: SequentialSoftClustering,
                  memberships: dict[str, Path], ensemble: EnsembleResult, corpus: CorpusResource, model: ModelResource):
    """One row per cluster: usage, density, membership moments and histogram, position
    distribution, top tokens, most coactivating and most similar clusters, the measures a cluster is
    judged by (position concentration, token entropy, near-duplicates) and its stability across the
    ensemble's re-fits (matched cosine, agreement of token assignments). The table a researcher
    sorts the clusters by; the page lists the most used ones and the usage curve over all."""
    stats = merged_statistics
    missing = sorted(set(stats.chunk_ids) - set(memberships))
    if missing:
        raise ValueError(f"memberships missing for merged chunks {missing[:5]}: rematerialize them")
    table = stats_table(stats, clustering.cluster_centers_, corpus.token_decoder(model))
    stability = atlas_stability_columns(ensemble)
    if len(stability["cluster"]) != table.num_rows:
        raise ValueError(f"the ensemble's stability covers {len(stability['cluster'])} clusters, the atlas has "
                         f"{table.num_rows}: rematerialize ensemble")
    for name, values in stability.items():
        if name != "cluster":
            table = table.append_column(name, pa.array(values))
    # Streams the memberships files of the merged chunks: one loaded at a time.
    passed, check_meta = check_usage(stats, (SparseMemberships.load(memberships[c]) for c in stats.chunk_ids))
    usage = stats.usage / max(stats.n_tokens, 1)
    return dg.MaterializeResult(
        value=table,
        metadata={"clusters": stats.n_clusters, "tokens": stats.n_tokens,
                  "median_stability": float(np.nanmedian(stability["stability"])),
                  "clusters_below_stability_0.8": int(np.sum(~(stability["stability"] >= 0.8))),
                  "max_usage_fraction": float(usage.max()), "unused_clusters": int(np.sum(stats.usage == 0)),
                  "top_clusters": top_rows(table, ("cluster", "usage_fraction", "density", "stability",
                                                        "assignment_agreement", "token_entropy", "top_tokens")),
                  "usage_by_rank": usage_curve_markdown(usage)},
        check_results=[dg.AssetCheckResult(check_name="usage_matches_memberships", passed=passed, metadata=check_meta)],
    )


def context_reader(memberships: dict[str, Path], whitened_activations: dict[str, Path], what: str):
    """open_chunk(chunk id) -> (token ids with -1 outside the text, memberships) for fill_context."""

    def open_chunk(chunk_id: str) -> tuple[np.ndarray, SparseMemberships]:
        if chunk_id not in memberships or chunk_id not in whitened_activations:
            raise ValueError(f"{what} chunk {chunk_id!r} has no materialized memberships / whitened_activations")
        chunk = read_chunk(whitened_activations[chunk_id])
        # Padding and special tokens are not text: contexts stop there.
        return np.where(chunk.attention_mask, chunk.token_ids, -1), SparseMemberships.load(memberships[chunk_id])

    return open_chunk


def heldout_sequences(table: pa.Table, token_chunks: dict[str, Path], config) -> set[tuple[str, int]]:
    """(chunk id, sequence) of every held-out sequence of the chunks the exemplars come from, split
    anew from the documents' ids (not the sampled held-out reservoir, which holds only some of them)."""
    out = set()
    for chunk_id in set(table.column("chunk_id").to_pylist()):
        if chunk_id not in token_chunks:
            raise ValueError(f"exemplar chunk {chunk_id!r} has no materialized token_chunks")
        doc_ids = pq.read_table(token_chunks[chunk_id], columns=["doc_id"]).column("doc_id").to_pylist()
        held = heldout_documents(document_keys_for(doc_ids), config)
        out.update((chunk_id, int(i)) for i in np.flatnonzero(held))
    return out


class ExemplarsConfig(dg.Config):
    window: int = Field(default=10, description="Context tokens kept on each side of an exemplar")


@dg.asset(io_manager_key="parquet_io_manager", group_name="analysis",
          ins={"memberships": all_chunks(), "whitened_activations": all_chunks(), "token_chunks": all_chunks()},
          check_specs=[dg.AssetCheckSpec("exemplars_match_chunks", asset="exemplars",
                                         description="Each exemplar's token and membership equal its chunk files' at "
                                                     "its position; none repeated; none in a held-out sequence")],
          kinds={"parquet"})
def exemplars(config: ExemplarsConfig, merged_statistics: ChunkStatistics, memberships: dict[str, Path],
              whitened_activations: dict[str, Path], token_chunks: dict[str, Path], corpus: CorpusResource,
              model: ModelResource):
    """Top-k, seeded random-k and quantile-band exemplars per cluster, with context (tokens and
    this cluster's membership around each) read back from the chunk files, each opened once. What
    a person reads to understand a cluster and what the labeler is shown; the page shows the top
    windows of the most used clusters, the token marked ⟦like this⟧."""

    open_chunk = context_reader(memberships, whitened_activations, "exemplar")
    decode = corpus.token_decoder(model)
    table = fill_context(select_exemplars(merged_statistics.candidates), open_chunk, decode, config.window)
    table = table.replace_schema_metadata({_META_KEY: json.dumps({"window": config.window}).encode()})
    passed, check_meta = check_exemplars(table, heldout_sequences(table, token_chunks, merged_statistics.config))
    kinds = table.column("kind").to_numpy(zero_copy_only=False)
    return dg.MaterializeResult(
        value=table,
        metadata={"exemplars": table.num_rows, "window": config.window,
                  **{f"{kind}_rows": int(np.sum(kinds == kind)) for kind in ("top_k", "random_k", "quantile")},
                  "top_windows": _exemplar_windows(table, merged_statistics.usage)},
        check_results=[dg.AssetCheckResult(check_name="exemplars_match_chunks", passed=passed, metadata=check_meta)],
    )


def _exemplar_windows(table: pa.Table, usage: np.ndarray, clusters: int = 5, per_cluster: int = 3,
                     window: int = 6) -> dg.MetadataValue:
    """The top `per_cluster` windows of the `clusters` most used clusters, `window` tokens each side,
    the exemplar's token in ⟦ ⟧."""
    top = table.filter(pc.equal(table.column("kind"), "top_k"))
    rows = top.select(["cluster", "rank", "membership", "token", "context_tokens", "context_start", "position"]).to_pylist()
    by_cluster: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["cluster"], r["rank"])):
        by_cluster.setdefault(row["cluster"], []).append(row)
    out = []
    for c in top_clusters(usage, len(usage)):
        if len(out) >= clusters * per_cluster:
            break
        for row in by_cluster.get(int(c), [])[:per_cluster]:
            at = row["position"] - row["context_start"]
            context = marked_window(row["context_tokens"], at, window)
            out.append({"cluster": int(c), "rank": row["rank"], "membership": row["membership"],
                        "token": repr(row["token"]), "context": context})
    return markdown_table(out)


def _finite_or(value: float, default: float) -> float:
    return value if np.isfinite(value) else default


# The null's size, repeats, held-out share, level and seed (NullConfig is the one source).
InterventionVectorsConfig = config_class(NullConfig, name="InterventionVectorsConfig")


@dg.asset(io_manager_key="tensor_io_manager", group_name="analysis", ins={**CLUSTERING_IN, "whitened_activations": all_chunks()},
          check_specs=[dg.AssetCheckSpec("vectors_finite_and_unit_norm", asset="intervention_vectors",
                                         description="Every vector finite, unit norm and fitted from some tokens "
                                                     "(a dead cluster's vector is named, not passed)")],
          kinds={"numpy"})
def intervention_vectors(config: InterventionVectorsConfig, merged_statistics: ChunkStatistics,
                         clustering: SequentialSoftClustering, whitened_activations: dict[str, Path]):
    """Per-cluster LDA steering directions (Ledoit-Wolf shrunk pooled covariance), sign-aligned
    with the centroids, with held-out AUROC (and interval) against random and hard negatives and
    d', beside difference-of-means directions, and the null of those AUROCs: the same steps refit
    on Gaussian data of the fitting tokens' mean and covariance (a direction fit on a cluster's
    members separates them even in noise). The reservoirs' vectors are read back from the whitened
    chunk files (memory-mapped, only the sampled rows, one chunk at a time). The page shows the
    AUROC distributions beside the null's; the evidence is auroc_hard's margin over it."""
    stats, centers = merged_statistics, clustering.cluster_centers_
    vectors = stats.fit_intervention_vectors(centers, open_chunk=_whitened_opener(whitened_activations))
    vectors = with_separation_null(vectors, stats.moments, clustering.config, stats.config, library_config(config))
    passed, check_meta = check_vectors(vectors.vectors, stats.moments.cluster_weight)
    flags = pa.table(cluster_measures(stats, center_cosines(centers), normalised_coactivation(stats)))
    return dg.MaterializeResult(
        value=vectors,
        metadata={"clusters": int(vectors.vectors.shape[0]), "shrinkage": float(vectors.shrinkage),
                  **score_summary(vectors, flags), "median_d_prime": float(np.nanmedian(vectors.d_prime)),
                  "median_positive_tokens": float(np.median(vectors.positive_tokens)),
                  "heldout_auroc": histogram_markdown({"hard negatives": vectors.auroc_hard,
                                                       "null (hard negatives)": vectors.auroc_hard_null},
                                                      "held-out AUROC of the LDA directions beside the null's", "AUROC",
                                                      bins=20, reference=_finite_or(score_summary(vectors, flags)["auroc_hard_null_high"], 0.5))},
        check_results=[dg.AssetCheckResult(check_name="vectors_finite_and_unit_norm", passed=passed, metadata=check_meta)],
    )


# cluster_stats columns the cluster_summaries index carries (those present), then score columns.
INDEX_COLUMNS = ("cluster", "usage_fraction", "density", "first_positions_share", "position_entropy",
                 "position_artifact", "token_entropy", "top_token_share", "near_duplicate", "near_duplicate_partners",
                 "stability", "stability_min", "assignment_agreement", "top_tokens")
INDEX_SCORES = ("auroc", "auroc_low", "auroc_high", "auroc_null", "auroc_hard", "auroc_hard_low", "auroc_hard_high",
                "auroc_hard_null", "auroc_hard_null_high", "auroc_hard_margin", "auroc_hard_p", "diff_means_auroc", "diff_means_auroc_hard", "positive_tokens", "hard_negative_tokens")


@dg.asset(io_manager_key="parquet_io_manager", group_name="analysis", ins=CLUSTERING_IN, kinds={"parquet"})
def cluster_summaries(cluster_stats: pa.Table, exemplars: pa.Table, intervention_vectors: InterventionVectors,
                      merged_statistics: ChunkStatistics, clustering: SequentialSoftClustering):
    """Writes the results directory ATLAS_HOME/results (read it with
    `ClusterAnalyzer(results_path)`, or browse it in the atlas_report site); the table is its index,
    one row per cluster, statistics and held-out scores side by side."""
    vectors, stats = intervention_vectors, merged_statistics
    window = json.loads((exemplars.schema.metadata or {})[_META_KEY])["window"]
    path = write_results(atlas_home() / "results", cluster_stats, exemplars, vectors, clustering.cluster_centers_,
                         stats.coactivation, results_summary(stats, window))
    per_cluster = np.bincount(exemplars.column("cluster").to_numpy(), minlength=stats.n_clusters)
    scores = vectors.per_cluster_columns()
    index = pa.table({
        **{name: cluster_stats.column(name) for name in INDEX_COLUMNS if name in cluster_stats.column_names},
        **{name: pa.array(scores[name]) for name in INDEX_SCORES},
        "exemplars": pa.array(per_cluster),
    })
    return dg.MaterializeResult(value=index, metadata={
        "results_path": dg.MetadataValue.path(str(path)), "clusters": stats.n_clusters,
        "top_clusters": top_rows(index, ("cluster", "usage_fraction", "density", "auroc_hard", "auroc_hard_margin",
                                              "stability", "exemplars", "top_tokens"))})
