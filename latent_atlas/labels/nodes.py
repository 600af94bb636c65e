"""Labels for the nodes of the token and document trees: breadth-first, a parent's label in its
children's prompts, every depth's nodes labeled together (an LLM labeler runs them concurrently).

A tree node's members are sample tokens (token tree) or documents (document tree). Its shown
examples are its `top_k` members nearest its centroid; its held-out examples never share a
document with a shown one: members of other documents (positives), tokens or documents outside
the node (random negatives) and members of its siblings, or of the nearest other node at its depth
when it has none (hard negatives). The scores and confidence are those of the clusters'
(`pipeline.score_label`), so a node's confidence reads like a cluster's.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from latent_atlas.analysis.exemplars import Decode, fill_context
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.tree import ROOT, ClusterTree, TreeNode
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.examples import HeldoutExamples, OpenChunk, example_from_row
from latent_atlas.labels.pipeline import label_clusters
from latent_atlas.labels.records import CentroidExplanation, Example, Labeler, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig, embed


@dataclass(frozen=True)
class NodeExamplesConfig:
    """Which examples a tree node is shown and scored on."""

    top_k: int = 10
    """Members nearest the node's centroid shown to the labeler."""
    max_positives: int = 64
    """Held-out members scored per node (seeded sample)."""
    max_negatives: int = 64
    """Random negatives and, separately, hard negatives scored per node (seeded samples)."""
    window: int = 10
    """Token tree: context tokens each side of a member token."""
    excerpt_tokens: int = 64
    """Document tree: tokens of a document's opening shown as its example."""
    seed: int = 0
    """Seed of the held-out samples."""


@dataclass
class NodeTask:
    """One node to label: its request (parent label filled in when its depth is labeled) and held-out examples."""

    node: TreeNode
    request: LabelRequest
    heldout: HeldoutExamples


def labeled_nodes(tree: ClusterTree) -> list[TreeNode]:
    """Every node but the root (which holds everything), in a fixed order (depth, then id)."""
    return sorted((n for n in tree.nodes.values() if n.id != ROOT), key=lambda n: (n.depth, n.id))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _central(members: np.ndarray, unit_vectors: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Members ordered from nearest to farthest from the centroid (cosine), ties by index."""
    members = np.asarray(members, np.int64)
    cosine = unit_vectors[members] @ np.asarray(centroid, np.float32)
    return members[np.lexsort((members, -cosine))]


def _pick(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if rows.size <= n else np.sort(rng.choice(rows, n, replace=False))


def _hard_pool(node: TreeNode, tree: ClusterTree, nodes: Sequence[TreeNode]) -> np.ndarray:
    """Members of the node's siblings; with none, of the other node at its depth nearest its centroid."""
    siblings = [tree.nodes[s] for s in tree.nodes[node.parent].children if s != node.id] if node.parent else []
    if not siblings:
        same_depth = [n for n in nodes if n.depth == node.depth and n.id != node.id]
        if same_depth:
            siblings = [max(same_depth, key=lambda n: float(n.centroid @ node.centroid))]
    return np.unique(np.concatenate([s.members for s in siblings])) if siblings else np.zeros(0, np.int64)


def node_picks(tree: ClusterTree, unit_vectors: np.ndarray, documents: np.ndarray, config: NodeExamplesConfig
               ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per node id: (shown, positives, random negatives, hard negatives) as indices into the tree's
    points. `documents[i]` names point i's document: no held-out point shares a document with a
    shown point of the same node (a document is its own document in the document tree)."""
    rng = np.random.default_rng(config.seed)
    nodes = labeled_nodes(tree)
    everything = np.arange(len(unit_vectors))
    out = {}
    for node in nodes:
        shown = _central(node.members, unit_vectors, node.centroid)[:config.top_k]
        unseen = ~np.isin(documents, documents[shown])
        inside = np.zeros(len(unit_vectors), bool)
        inside[node.members] = True
        positives = _pick(np.flatnonzero(inside & unseen), config.max_positives, rng)
        randoms = _pick(everything[~inside & unseen], config.max_negatives, rng)
        hard = _hard_pool(node, tree, nodes)
        hard = _pick(hard[~inside[hard] & unseen[hard]], config.max_negatives, rng)
        out[node.id] = (shown, positives, randoms, hard)
    return out


def token_node_tasks(tree: ClusterTree, sample: HierarchySample, open_chunk: OpenChunk, decode: Decode,
                     config: NodeExamplesConfig = NodeExamplesConfig()) -> list[NodeTask]:
    """Tasks for the token tree (built on `sample.vectors`): every member shown in its context
    window, shaded by the membership of the token's own top cluster. Each chunk is read once."""
    picks = node_picks(tree, _unit(sample.vectors), np.asarray(sample.doc_id).astype(str), config)
    needed = np.unique(np.concatenate([np.concatenate(p) for p in picks.values()] or [np.zeros(0, np.int64)]))
    selected = {"cluster": np.asarray(sample.member_clusters)[needed, 0].astype(np.int32),
                "chunk_id": np.asarray(sample.chunk)[needed].astype(str),
                "sequence": np.asarray(sample.sequence)[needed], "position": np.asarray(sample.position)[needed]}
    rows = fill_context(selected, open_chunk, decode, config.window).to_pylist() if needed.size else []
    examples = {int(i): example_from_row(row) for i, row in zip(needed, rows)}
    return _tasks(tree, picks, examples, "token")


def document_excerpts(token_tables: Iterable[tuple[str, pa.Table]], wanted: set[str], decode: Decode,
                      n_tokens: int) -> dict[str, Example]:
    """The opening `n_tokens` of each wanted document, from `token_chunks` tables (chunk id, table
    with doc_id, window, token_ids), read one table at a time. Every token of the excerpt is the
    example's (membership 1): a document node is about whole documents, not one token."""
    out: dict[str, Example] = {}
    for chunk_id, table in token_tables:
        doc_ids = table.column("doc_id").to_pylist()
        windows = table.column("window").to_pylist()
        for row, (doc, window) in enumerate(zip(doc_ids, windows)):
            if doc in wanted and doc not in out and window == 0:
                ids = [int(t) for t in table.column("token_ids")[row].as_py()[:n_tokens] if t >= 0]
                tokens = decode(ids)
                out[doc] = Example(tokens=tokens, memberships=[1.0] * len(tokens), position=0, cluster=-1,
                                   chunk_id=f"document:{doc}", sequence=0, token_position=0, excerpt=True)
    missing = sorted(wanted - set(out))
    if missing:
        raise ValueError(f"{len(missing)} documents of the document tree are in no token chunk's first window "
                         f"(first: {missing[:3]}): rematerialize token_chunks and hierarchy_sample together")
    return out


def document_node_tasks(tree: ClusterTree, sample: HierarchySample, excerpts: Callable[[set[str]], dict[str, Example]],
                        config: NodeExamplesConfig = NodeExamplesConfig()) -> list[NodeTask]:
    """Tasks for the document tree (built on `sample.doc_vectors`): documents shown by their opening
    (`excerpts(doc ids) -> {doc id: Example}`, e.g. `document_excerpts` over the token chunks)."""
    doc_ids = np.asarray(sample.doc_ids).astype(str)
    picks = node_picks(tree, _unit(sample.doc_vectors), doc_ids, config)
    needed = np.unique(np.concatenate([np.concatenate(p) for p in picks.values()] or [np.zeros(0, np.int64)]))
    texts = excerpts({doc_ids[i] for i in needed})
    return _tasks(tree, picks, {int(i): texts[doc_ids[i]] for i in needed}, "document")


def _tasks(tree: ClusterTree, picks: dict, examples: dict[int, Example], unit: str) -> list[NodeTask]:
    tasks = []
    for index, node in enumerate(labeled_nodes(tree)):
        shown, positives, randoms, hard = ([examples[int(i)] for i in part] for part in picks[node.id])
        tasks.append(NodeTask(node, LabelRequest(index, shown, node_id=node.id, unit=unit),
                              HeldoutExamples(positives, randoms, hard)))
    return tasks


def label_tree(tasks: Sequence[NodeTask], labeler: Labeler, cache: LabelCache, scorer_config: ScorerConfig,
               metadata: dict[str, Any] | None = None, force_regenerate: bool = False, batch_size: int = 8
               ) -> tuple[list[CentroidExplanation], dict[str, Any]]:
    """Label the tasks breadth-first: depth 1 first, then each depth with its parents' labels in
    the requests. Each depth is one `label_clusters` call (its batches run concurrently in an LLM
    labeler; a keyword labeler's c-TF-IDF compares the nodes of one depth). Records in task order."""
    labels: dict[str, str] = {}
    records: dict[str, CentroidExplanation] = {}
    totals: dict[str, Any] = {}
    for depth in sorted({t.node.depth for t in tasks}):
        level = [t for t in tasks if t.node.depth == depth]
        requests = [dataclasses.replace(t.request, parent_label=labels.get(t.node.parent or "", "")) for t in level]
        made, stats = label_clusters(requests, {r.centroid_id: t.heldout for r, t in zip(requests, level)}, labeler,
                                     cache, scorer_config, {**(metadata or {}), "depth": depth},
                                     force_regenerate, batch_size)
        for task, record in zip(level, made):
            labels[task.node.id] = record.label
            records[task.node.id] = record
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + value
    new = totals.get("new_labels", 0)
    totals["seconds_per_cluster"] = (totals.get("labeling_seconds", 0.0) + totals.get("scoring_seconds", 0.0)) / new \
        if new else 0.0
    return [records[t.node.id] for t in tasks], totals


def majority_categories(tree: ClusterTree, categories: np.ndarray) -> dict[str, tuple[str, float]]:
    """Per node id (root left out): its most common category and that category's share of its
    members, where the share is over half (nodes without a majority are left out)."""
    out = {}
    for node in labeled_nodes(tree):
        counts = Counter(np.asarray(categories)[node.members].astype(str).tolist())
        if counts:
            category, n = counts.most_common(1)[0]
            if n > len(node.members) / 2:
                out[node.id] = (category, n / len(node.members))
    return out


def category_accuracy(labels: dict[str, str], majorities: dict[str, tuple[str, float]],
                      category_names: Sequence[str]) -> dict[str, Any]:
    """Label quality against known categories: for every node with a majority category, is its
    label nearer (MiniLM cosine) to that category's name than to every other category's?
    Returns accuracy, n (nodes with a majority and a label), and per node the nearest category."""
    names = sorted(set(category_names))
    judged = [node for node in majorities if labels.get(node)]
    if not judged or len(names) < 2:
        return {"accuracy": float("nan"), "n": 0, "nodes": {}}
    similarity = embed([labels[n] for n in judged]) @ embed(names).T
    nearest = {node: names[int(np.argmax(row))] for node, row in zip(judged, similarity)}
    hits = [nearest[n] == majorities[n][0] for n in judged]
    return {"accuracy": float(np.mean(hits)), "n": len(judged),
            "nodes": {n: {"majority": majorities[n][0], "share": majorities[n][1], "nearest": nearest[n]}
                      for n in judged}}
