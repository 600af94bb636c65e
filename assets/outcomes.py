"""Outcomes: documents' paths down a tree of the hierarchy sample, and whether those paths are associated
with an outcome (the corpus category or a CSV of labels). The work lives in latent_atlas
(outcome_documents, outcomes)."""

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.metadata import crosstab_markdown
from latent_atlas.data.paths import atlas_home
from latent_atlas.data.whitening import Whitening
from latent_atlas.hierarchy.outcome_documents import (TextEmbedding, csv_document_paths, document_paths_table,
                                                      sample_document_paths)
from latent_atlas.hierarchy.outcomes import (MIN_DOCUMENTS, PERMUTATION_RESAMPLES, association_by_depth,
                                             association_is_testable, association_markdown, association_rows,
                                             parse_path)
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.tree import ClusterTree
from resources import ModelResource, TorchDeviceResource


class DocumentPathsConfig(dg.Config):
    tree: str = Field(default="document", description="'document' (document_tree, built on document vectors) or "
                      "'token' (cluster_tree, built on sampled tokens)")
    method: str = Field(default="mean", description="'mean' (path of the mean-pooled document vector) or 'majority'")
    outcomes_csv: str = Field(default="", description="CSV of texts and labels; empty = the corpus documents and their category")
    text_column: str = Field(default="text", description="Column of the CSV holding the text")
    label_column: str = Field(default="label", description="Column of the CSV holding the outcome label")
    documents_per_batch: int = Field(default=64, description="CSV texts embedded at a time (bounds memory)")


@dg.asset(io_manager_key="parquet_io_manager", group_name="hierarchy", kinds={"parquet"})
def document_paths(config: DocumentPathsConfig, hierarchy_sample: HierarchySample, document_tree: ClusterTree,
                   cluster_tree: ClusterTree, whitening: Whitening, model: ModelResource, device: TorchDeviceResource):
    """Each document's path down the tree (one column per depth) and its outcome: the corpus category,
    or the label of a CSV row. The document tree by default: documents meet a tree built on documents.
    What outcome_association tests; the page counts documents per first-level cluster and outcome."""
    trees = {"document": document_tree, "token": cluster_tree}
    if config.tree not in trees:
        raise ValueError(f"tree must be 'document' or 'token', got {config.tree!r}")
    tree = trees[config.tree]
    if config.outcomes_csv:  # the CSV's texts go through the chunks' model, layer and whitening
        loaded = model.load(device.torch_device(), device.torch_dtype())
        embedding = TextEmbedding(loaded, model.layer_of(loaded), whitening, hierarchy_sample.sequence_length,
                                  device.memory_budget_mb)
        paths, outcomes = csv_document_paths(config.outcomes_csv, config.text_column, config.label_column, tree,
                                             config.method, embedding, config.documents_per_batch,
                                             atlas_home() / "outcomes")
    else:
        paths, outcomes = sample_document_paths(hierarchy_sample, tree, config.method)
    table = document_paths_table(paths, outcomes, tree)
    # the table always has cluster_depth_1: the first split, per outcome
    first_level = crosstab_markdown([str(c) for c in table.column("cluster_depth_1").to_pylist()],
                                    [str(o) for o in table.column("outcome").to_pylist()], "cluster_depth_1")
    return dg.MaterializeResult(value=table, metadata={
        "documents": table.num_rows, "outcomes": config.outcomes_csv or "corpus category", "tree": config.tree,
        "method": config.method, "depths": sum(c.startswith("cluster_depth_") for c in table.column_names),
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
