"""Cluster and tree-node labels: every cluster named from its top exemplar windows, every tree node
from its most central members, each with a confidence measured on held-out examples (members
against random and hard negatives) the labeler never saw.

    exemplars, merged_statistics, intervention_vectors -> cluster_labels
                                                          (+ ATLAS_HOME/labels/clusters/centroid_<id>.json)
    hierarchy_sample, cluster_tree, document_tree      -> node_labels
                                                          (+ ATLAS_HOME/labels/nodes/<tree>/node_<index>.json)

The JSON files are the cache: a re-materialization with unchanged inputs makes no labeler calls,
and a run that fails half way keeps the labels it finished (latent_atlas.labels.pipeline).
"""

import dataclasses
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from assets.analysis import context_reader
from assets.configs import config_class, library_config
from assets.metadata import markdown_table
from assets.partitions import all_chunks
from latent_atlas.analysis.intervention import InterventionVectors
from latent_atlas.analysis.statistics import ChunkStatistics
from latent_atlas.data.paths import atlas_home
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.tree import ClusterTree
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.calibration import labels_beat_chance
from latent_atlas.labels.examples import HeldoutConfig, check_disjoint, heldout_examples, shown_examples
from latent_atlas.labels.nodes import (NodeExamplesConfig, NodeTask, category_accuracy, document_excerpts,
                                       document_node_tasks, label_tree, majority_categories, token_node_tasks)
from latent_atlas.labels.pipeline import label_clusters, median_confidence
from latent_atlas.labels.records import CentroidExplanation, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig
from resources import CorpusResource, LabelerResource, ModelResource

SCORERS = ("token_claim", "detection", "fuzzing", "embedding")


# The library's HeldoutConfig and ScorerConfig are the one source (one seed for both); the detection
# client comes from the labeler resource.
ClusterLabelsConfig = config_class(HeldoutConfig, ScorerConfig, exclude=("detection_client",), name="ClusterLabelsConfig",
                                   extra={"top_k": (int, Field(default=10, description="Top exemplar windows shown to "
                                                                "the labeler per cluster")),
                                          "label_dir": (str, Field(default="", description="Cache directory of "
                                                                   "the JSON records; '' = ATLAS_HOME/labels/clusters")),
                                          "max_clusters": (int, Field(default=0, description="Label only the most "
                                                                      "used clusters, this many (0 = all): a first "
                                                                      "look with a slow or paid LLM"))})


def label_rows(records: list[CentroidExplanation]) -> pa.Table:
    """One row per cluster: the label, its confidence and specificity with intervals and the scorer
    behind them, every scorer's measures with the counts they rest on, and the permutation null."""
    number = lambda values: pa.array([float(v) for v in values], pa.float64())  # noqa: E731
    measure = lambda r, scorer, name, key: r.scores.get(scorer, {}).get(name, {}).get(key, np.nan)  # noqa: E731
    columns = {
        "centroid_id": pa.array([r.centroid_id for r in records], pa.int32()),
        "label": [r.label for r in records], "explanation": [r.explanation for r in records],
        "scorer": [r.scorer for r in records],
        "confidence": number(r.confidence for r in records),
        "confidence_low": number(r.confidence_interval[0] for r in records),
        "confidence_high": number(r.confidence_interval[1] for r in records),
        "specificity": number(r.specificity for r in records),
        "specificity_low": number(r.specificity_interval[0] for r in records),
        "specificity_high": number(r.specificity_interval[1] for r in records),
        "n_shown": [int(r.scores.get("n_shown", 0)) for r in records],
    }
    for scorer in SCORERS:
        if not any(scorer in r.scores for r in records):
            continue
        for name in ("confidence", "specificity"):
            if not any(name in r.scores.get(scorer, {}) for r in records):
                continue
            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                columns[f"{scorer}_{name}{suffix}"] = number(measure(r, scorer, name, key) for r in records)
            for key in ("n_pos", "n_neg", "n_documents"):
                columns[f"{scorer}_{name}_{key}"] = pa.array([int(measure(r, scorer, name, key) if np.isfinite(
                    measure(r, scorer, name, key)) else 0) for r in records], pa.int64())
    columns["claimed_tokens"] = [list(r.scores.get("token_claim", {}).get("claims", [])) for r in records]
    null = lambda key: [r.scores.get("null", {}).get(key, np.nan) for r in records]  # noqa: E731
    columns.update(null_p=number(null("p")), null_percentile=number(null("percentile")),
                   null_median=number(null("null_median")), null_95=number(null("null_95")),
                   indistinguishable_from_null=[bool(r.scores.get("null", {}).get("indistinguishable_from_null", True))
                                                for r in records])
    columns.update(labeler=[r.metadata.get("labeler", "") for r in records],
                   model=[r.metadata.get("model", "") for r in records])
    return pa.table(columns)


def _markdown(records: list[CentroidExplanation], n: int = 10) -> dg.MetadataValue:
    return markdown_table({"cluster": r.centroid_id, "label": r.label, "scorer": r.scorer, "confidence": r.confidence,
                           "95% interval": f"[{r.confidence_interval[0]:.2f}, {r.confidence_interval[1]:.2f}]",
                           "specificity": r.specificity, "null p": r.scores.get("null", {}).get("p", np.nan),
                           "explanation": r.explanation} for r in records[:n])


@dg.asset(io_manager_key="parquet_io_manager", group_name="labels",
          ins={"memberships": all_chunks(), "whitened_activations": all_chunks()},
          check_specs=[dg.AssetCheckSpec("labels_beat_chance", asset="cluster_labels",
                                         description="At least half of the labels stand out from their permutation "
                                                     "null (p <= 0.05: scored on the other clusters' held-out sets) "
                                                     "and the median confidence interval lies above chance")],
          kinds={"parquet"})
def cluster_labels(context: dg.AssetExecutionContext, config: ClusterLabelsConfig, exemplars: pa.Table,
                   merged_statistics: ChunkStatistics, intervention_vectors: InterventionVectors,
                   memberships: dict[str, Path], whitened_activations: dict[str, Path],
                   corpus: CorpusResource, model: ModelResource, labeler: LabelerResource):
    """Label, explanation and measured confidence per cluster; one JSON record per cluster in the
    label directory (reused when its inputs are unchanged). The names the atlas_report and
    ClusterAnalyzer show, with how far to trust each; the page lists the first labels."""

    open_chunk = context_reader(memberships, whitened_activations, "held-out")

    k = int(intervention_vectors.vectors.shape[0])
    shown = shown_examples(exemplars, config.top_k)
    held = heldout_examples(merged_statistics.heldout, intervention_vectors.hard_negatives, open_chunk,
                            corpus.token_decoder(model), library_config(config, HeldoutConfig))
    check_disjoint(shown, held)
    client = labeler.chat_client()  # None for keywords; one client serves labeling and detection
    chosen = labeler.labeler(client)
    scorer = library_config(config, ScorerConfig, detection_client=client if labeler.score_with_llm else None)
    cache = LabelCache(config.label_dir or None)
    chosen_ids = range(k) if config.max_clusters <= 0 else sorted(
        np.argsort(-merged_statistics.usage, kind="stable")[:config.max_clusters].tolist())
    records, stats = label_clusters(
        [LabelRequest(c, shown.get(c, [])) for c in chosen_ids], held, chosen, cache, scorer,
        {"layer": model.layer or "middle", "activation_type": "whitened residual stream", "model_name": model.name},
        force_regenerate=labeler.force_regenerate, batch_size=labeler.batch_size)
    table = label_rows(records)
    passed, check = labels_beat_chance(records)
    context.log.info(f"labeled {stats['new_labels']} clusters, {stats['cache_hits']} from the cache")
    return dg.MaterializeResult(
        value=table,
        metadata={"labeler": chosen.name, "model": chosen.model, "prompt_version": chosen.prompt_version,
                  "labeler_config": labeler.public_config(), "label_dir": dg.MetadataValue.path(str(cache.directory)),
                  "clusters": k, "labeled_clusters": len(records), **{name: stats[name] for name in ("cache_hits", "new_labels", "fallbacks", "prompt_tokens",
                                                                   "completion_tokens", "requests")},
                  "seconds_per_cluster": float(stats["seconds_per_cluster"]),
                  "median_confidence": median_confidence(records),
                  "median_specificity": median_confidence(records, "specificity"),
                  "scorers": dict(Counter(r.scorer or "none" for r in records)), **check,
                  "first_labels": _markdown(records)},
        check_results=[dg.AssetCheckResult(check_name="labels_beat_chance", passed=passed, metadata=check)],
    )


NodeLabelsConfig = config_class(NodeExamplesConfig, ScorerConfig, exclude=("detection_client",), name="NodeLabelsConfig",
                                extra={"label_dir": (str, Field(default="", description="Cache root; '' = "
                                                                "ATLAS_HOME/labels/nodes (one folder per tree)")),
                                       "trees": (list[str], Field(default=["cluster_tree", "document_tree"],
                                                                  description="Trees whose nodes are labeled"))})


TREES = ("cluster_tree", "document_tree")


def node_rows(tree_name: str, tasks: list[NodeTask], records: list[CentroidExplanation],
              majorities: dict[str, tuple[str, float]], nearest: dict[str, dict]) -> pa.Table:
    """One row per node: where it sits, its label and measured confidence, and for the document
    tree its majority category and the category its label is nearest to."""
    table = label_rows(records).drop_columns(["centroid_id"])
    nodes = [t.node for t in tasks]
    columns = {"tree": [tree_name] * len(nodes), "node_id": [n.id for n in nodes],
               "depth": pa.array([n.depth for n in nodes], pa.int32()), "parent": [n.parent or "" for n in nodes],
               "size": pa.array([n.size for n in nodes], pa.int64()),
               "parent_label": [r.metadata.get("parent_label", "") for r in records],
               "majority_category": [majorities.get(n.id, ("", 0.0))[0] for n in nodes],
               "majority_share": pa.array([majorities.get(n.id, ("", np.nan))[1] for n in nodes], pa.float64()),
               "nearest_category": [nearest.get(n.id, {}).get("nearest", "") for n in nodes]}
    for name in table.column_names:
        columns[name] = table.column(name)
    return pa.table(columns)


def _node_markdown(table: pa.Table, per_tree: int = 8) -> dg.MetadataValue:
    """The first `per_tree` nodes (breadth-first: root side first) of each tree with label and confidence;
    document-tree nodes with their majority and nearest categories (equal when the label names it)."""
    rows, all_rows = [], table.to_pylist()
    for tree in dict.fromkeys(r["tree"] for r in all_rows):
        mine = [r for r in all_rows if r["tree"] == tree]
        rows += [{"tree": tree, "node": r["node_id"], "depth": r["depth"], "size": r["size"], "label": r["label"],
                  "confidence": r["confidence"], "majority_category": r["majority_category"] or "–",
                  "nearest_category": r["nearest_category"] or "–"} for r in mine[:per_tree]]
    return markdown_table(rows)


@dg.asset(io_manager_key="parquet_io_manager", group_name="labels",
          ins={"memberships": all_chunks(), "whitened_activations": all_chunks(), "token_chunks": all_chunks()},
          kinds={"parquet"})
def node_labels(context: dg.AssetExecutionContext, config: NodeLabelsConfig, hierarchy_sample: HierarchySample,
                cluster_tree: ClusterTree, document_tree: ClusterTree, memberships: dict[str, Path],
                whitened_activations: dict[str, Path], token_chunks: dict[str, Path],
                corpus: CorpusResource, model: ModelResource, labeler: LabelerResource):
    """Label, explanation and measured confidence of every node of the token and document trees,
    labeled breadth-first with each parent's label in its children's prompts; on the document tree
    the labels are also checked against the corpus categories (category_accuracy). The names of the
    trees' branches in the atlas_report; the page lists the first nodes of each tree and, on the
    document tree, each node's majority category beside the category its label is nearest to."""
    decode = corpus.token_decoder(model)
    examples = library_config(config, NodeExamplesConfig)
    read_excerpts = lambda wanted: document_excerpts(  # noqa: E731 - one token chunk in memory at a time
        ((key, pq.read_table(path, columns=["doc_id", "window", "token_ids"])) for key, path in token_chunks.items()),
        wanted, decode, config.excerpt_tokens)
    unknown = set(config.trees) - set(TREES)
    if unknown:
        raise ValueError(f"node_labels: unknown trees {sorted(unknown)}; choose from {TREES}")
    tasks = {}
    if "cluster_tree" in config.trees:
        tasks["cluster_tree"] = token_node_tasks(cluster_tree, hierarchy_sample,
                                                 context_reader(memberships, whitened_activations, "tree sample"),
                                                 decode, examples)
    if "document_tree" in config.trees:
        tasks["document_tree"] = document_node_tasks(document_tree, hierarchy_sample, read_excerpts, examples)
    client = labeler.chat_client()
    chosen = labeler.labeler(client)
    scorer = library_config(config, ScorerConfig, detection_client=client if labeler.score_with_llm else None)
    root = Path(config.label_dir) if config.label_dir else atlas_home() / "labels" / "nodes"
    categories = np.asarray(hierarchy_sample.doc_categories).astype(str)
    parts, metadata = [], {}
    for name, tree in (("cluster_tree", cluster_tree), ("document_tree", document_tree)):
        if name not in tasks:
            continue
        records, stats = label_tree(
            tasks[name], chosen, LabelCache(root / name, prefix="node"),
            scorer if name == "cluster_tree" else dataclasses.replace(scorer, score_window=None),
            {"layer": model.layer or "middle", "activation_type": "whitened residual stream",
             "model_name": model.name, "tree": name}, labeler.force_regenerate, labeler.batch_size)
        majorities = majority_categories(tree, categories) if name == "document_tree" and (categories != "").any() else {}
        accuracy = category_accuracy({t.node.id: r.label for t, r in zip(tasks[name], records)}, majorities,
                                     sorted(set(categories) - {""}))
        parts.append(node_rows(name, tasks[name], records, majorities, accuracy["nodes"]))
        metadata.update({f"{name}_nodes": len(records), f"{name}_new_labels": stats.get("new_labels", 0),
                         f"{name}_cache_hits": stats.get("cache_hits", 0), f"{name}_fallbacks": stats.get("fallbacks", 0),
                         f"{name}_median_confidence": median_confidence(records),
                         f"{name}_seconds_per_node": float(stats.get("seconds_per_cluster", 0.0)),
                         **{f"{name}_{k}": int(stats.get(k, 0)) for k in ("prompt_tokens", "completion_tokens",
                                                                         "requests")}})
        if name == "document_tree":
            metadata.update(category_accuracy=accuracy["accuracy"], category_accuracy_nodes=accuracy["n"])
    table = pa.concat_tables(parts, promote_options="permissive")  # a tree may lack a component the other has
    metadata["first_labels"] = _node_markdown(table)
    context.log.info(f"labeled {table.num_rows} tree nodes; category accuracy {metadata.get('category_accuracy')}")
    return dg.MaterializeResult(value=table, metadata={
        "labeler": chosen.name, "model": chosen.model, "prompt_version": chosen.prompt_version,
        "labeler_config": labeler.public_config(), "label_dir": dg.MetadataValue.path(str(root)), **metadata})
