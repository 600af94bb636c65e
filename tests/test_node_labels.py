"""Tree-node labels: examples disjoint by document, breadth-first labeling through a real HTTP
server (parents first, parent labels in children's prompts, one depth in flight at once), the
category accuracy measure, and node_labels materialized on a tiny real corpus."""

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from latent_atlas.hierarchy.tree import ClusterTree, TreeNode
from latent_atlas.hierarchy.tree_config import TreeConfig
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.examples import HeldoutExamples
from latent_atlas.labels.llm import LLMLabeler, OpenAIChatClient
from latent_atlas.labels.nodes import (NodeExamplesConfig, NodeTask, category_accuracy, label_tree, labeled_nodes,
                                       majority_categories, node_picks)
from latent_atlas.labels.records import Example, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig
from resources import CorpusResource
from tests.conftest import materialized
from tests.test_asset_metadata import assert_readable_pages
from tests.openai_server import OpenAITestServer

DIM = 8


def _tree() -> tuple[ClusterTree, np.ndarray, np.ndarray]:
    """root -> a, b; a -> a.0, a.1: 40 points in 4 tight groups of 10, five documents per group."""
    rng = np.random.default_rng(0)
    centers = np.eye(DIM)[:4]
    x = np.repeat(centers, 10, axis=0) + 0.01 * rng.standard_normal((40, DIM))
    documents = np.repeat([f"doc{i}" for i in range(20)], 2)

    def node(node_id, parent, depth, members, children=()):
        centroid = x[members].mean(0)
        return TreeNode(node_id, parent, depth, len(members), 0.5, centroid / np.linalg.norm(centroid),
                        np.asarray(members), children=list(children))

    nodes = {"root": node("root", None, 0, np.arange(40), ["a", "b"]),
             "a": node("a", "root", 1, np.arange(20), ["a.0", "a.1"]), "b": node("b", "root", 1, np.arange(20, 40)),
             "a.0": node("a.0", "a", 2, np.arange(10)), "a.1": node("a.1", "a", 2, np.arange(10, 20))}
    return ClusterTree(nodes, TreeConfig()), x, documents


def test_shown_and_heldout_examples_never_share_a_document():
    tree, x, documents = _tree()
    picks = node_picks(tree, x / np.linalg.norm(x, axis=1, keepdims=True), documents,
                       NodeExamplesConfig(top_k=3, max_positives=10, max_negatives=10))
    assert set(picks) == {"a", "b", "a.0", "a.1"}  # the root is not labeled
    for node_id, (shown, positives, randoms, hard) in picks.items():
        members = set(tree.nodes[node_id].members.tolist())
        assert len(shown) == 3 and set(shown) <= members
        held = np.concatenate([positives, randoms, hard]).astype(int)
        assert not set(documents[held]) & set(documents[shown]), node_id
        assert set(positives) <= members and not set(randoms) & members and not set(hard) & members
        assert len(positives) > 0 and len(randoms) > 0
    # hard negatives are the siblings' members: a.0 against a.1, a against b
    assert set(picks["a.0"][3]) <= set(tree.nodes["a.1"].members.tolist()) and len(picks["a.0"][3]) > 0
    assert set(picks["a"][3]) <= set(tree.nodes["b"].members.tolist())


def _example(word: str, key: int) -> Example:
    return Example(tokens=[" the", f" {word}", " is"], memberships=[0.0, 0.9, 0.0], position=1, cluster=0,
                   chunk_id="c", sequence=key, token_position=1)


def test_tree_is_labeled_breadth_first_with_parent_labels_through_a_real_server(tmp_path):
    tree, _, _ = _tree()
    words = {"a": "Alpha", "b": "Beta", "a.0": "Gamma", "a.1": "Delta"}
    tasks = []
    for index, node in enumerate(labeled_nodes(tree)):
        shown = [_example(words[node.id], 10 * index + i) for i in range(3)]
        heldout = HeldoutExamples([_example(words[node.id], 1000 + 10 * index + i) for i in range(4)],
                                  [_example("chair", 2000 + 10 * index + i) for i in range(4)])
        tasks.append(NodeTask(node, LabelRequest(index, shown, node_id=node.id), heldout))
    with OpenAITestServer() as server:
        server.state.answer_delay = 0.3  # requests of one depth overlap
        client = OpenAIChatClient(server.base_url, "test-model", "sk-test", concurrency=4, timeout=10.0)
        records, stats = label_tree(tasks, LLMLabeler(client, name="openai"), LabelCache(tmp_path, prefix="node"),
                                    ScorerConfig(n_bootstrap=20))
        prompts = [r.body["messages"][-1]["content"] for r in server.state.requests]
        max_in_flight = server.state.max_in_flight
        n_requests = server.state.count
    by_node = {t.node.id: r for t, r in zip(tasks, records)}
    assert by_node["a"].label == "Alpha words" and by_node["a.0"].label == "Gamma words"
    assert n_requests == 4 and stats["new_labels"] == 4
    depth_of = lambda prompt: 2 if ("Gamma" in prompt or "Delta" in prompt) else 1  # noqa: E731
    order = [depth_of(p) for p in prompts]
    assert order == sorted(order), order  # every depth-1 request before any depth-2 one
    assert max_in_flight >= 2  # one depth's nodes in flight together
    for prompt in prompts:
        if depth_of(prompt) == 2:
            assert 'parent feature "Alpha words"' in prompt
    assert by_node["a.1"].metadata["parent_label"] == "Alpha words" and by_node["a.1"].metadata["node_id"] == "a.1"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"node_{i}.json" for i in range(4)]
    assert json.loads((tmp_path / "node_2.json").read_text())["metadata"]["depth"] == 2


def test_category_accuracy_counts_labels_nearest_their_majority_category():
    tree, _, _ = _tree()
    categories = np.array(["business"] * 10 + ["sport"] * 10 + ["politics"] * 20)
    majorities = majority_categories(tree, categories)
    assert majorities["b"] == ("politics", 1.0) and majorities["a.0"] == ("business", 1.0)
    assert "a" not in majorities  # half business, half sport: no majority
    right = category_accuracy({"b": "Elections and parliament", "a.0": "Company profits and shares",
                               "a.1": "Football matches"}, majorities, ["business", "politics", "sport"])
    assert right["accuracy"] == 1.0 and right["n"] == 3
    wrong = category_accuracy({"b": "Football matches", "a.0": "Elections and parliament",
                               "a.1": "Company profits and shares"}, majorities, ["business", "politics", "sport"])
    assert wrong["accuracy"] == 0.0


SMALL_TREE = {"max_depth": 2, "min_split_size": 40, "min_cluster_size_floor": 8, "hdbscan_min_samples": 5,
              "umap_n_components": 5, "umap_n_neighbors": 10, "umap_n_epochs": 100, "silhouette_threshold": 1.0}
RUN_CONFIG = {"ops": {"hierarchy_sample": {"config": {"sample_size": 600}}, "cluster_tree": {"config": SMALL_TREE},
                      "document_tree": {"config": SMALL_TREE},
                      "node_labels": {"config": {"max_positives": 16, "max_negatives": 16, "n_bootstrap": 50}}}}


def test_node_labels_asset_names_every_node_of_both_trees(atlas_home):
    corpus = CorpusResource(documents_per_category=3, sequences_per_chunk=12)
    with materialized(atlas_home, corpus, ["memberships"]) as (defs, instance, keys, report):
        assert report.failed == {}
        run = lambda: dg.materialize(  # noqa: E731
            list(defs.assets), instance=instance, resources=defs.resources, run_config=RUN_CONFIG,
            selection=dg.AssetSelection.assets("hierarchy_sample", "cluster_tree", "document_tree", "node_labels"))
        first = run().asset_materializations_for_node("node_labels")[0].metadata
        second = run().asset_materializations_for_node("node_labels")[0].metadata
        assert "node_labels" in assert_readable_pages(defs, instance)  # its UI page shows the first labels
    rows = pq.read_table(atlas_home / "tables" / "node_labels.parquet").to_pylist()
    for name in ("cluster_tree", "document_tree"):
        tree = ClusterTree.load(atlas_home / "tensors" / f"{name}.npz")
        mine = {r["node_id"]: r for r in rows if r["tree"] == name}
        assert set(mine) == set(tree.nodes) - {"root"}
        for node_id, row in mine.items():
            assert row["label"] and row["explanation"]
            parent = tree.nodes[node_id].parent
            assert row["parent_label"] == (mine[parent]["label"] if parent != "root" else "")
        records = LabelCache(atlas_home / "labels" / "nodes" / name, prefix="node").all()
        assert len(records) == len(mine)
        assert first[f"{name}_new_labels"].value == len(mine) and second[f"{name}_new_labels"].value == 0
    documents = [r for r in rows if r["tree"] == "document_tree"]
    if any(r["majority_category"] for r in documents):  # BBC categories: the labels are judged against them
        accuracy = first["category_accuracy"].value
        assert 0.0 <= accuracy <= 1.0 and first["category_accuracy_nodes"].value >= 1


def test_cluster_analyzer_reads_node_labels_by_node_id(tmp_path):
    from latent_atlas.labels.records import CentroidExplanation
    from latent_atlas.reading.clusters import ClusterAnalyzer

    cache = LabelCache(tmp_path / "labels" / "nodes" / "document_tree", prefix="node")
    cache.put(CentroidExplanation(0, "Elections", "Politics news.", 0.5, (0.3, 0.7), {}, [], "2026-12-01T00:00:00",
                                  {"node_id": "2", "depth": 1}))
    analyzer = ClusterAnalyzer.__new__(ClusterAnalyzer)  # the label view needs no results files
    analyzer.labels_path = tmp_path / "labels" / "clusters"
    assert {k: v.label for k, v in analyzer.node_labels("document_tree").items()} == {"2": "Elections"}
    assert analyzer.node_labels("cluster_tree") == {}
