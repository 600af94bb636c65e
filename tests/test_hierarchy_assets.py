"""Hierarchy assets materialized in process on a tiny real corpus (MiniLM on BBC News)."""

import csv

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from latent_atlas.ensemble import EnsembleResult, RunRegistry, cluster_stability
from latent_atlas.tree import ClusterTree
from resources import CorpusResource
from tests.conftest import check_results, materialized

HIERARCHY = ["hierarchy_sample", "cluster_tree", "document_tree", "ensemble", "merge_hierarchy", "document_paths", "outcome_association"]
SMALL_TREE = {"max_depth": 2, "min_split_size": 40, "min_cluster_size_floor": 8, "hdbscan_min_samples": 5,
              "umap_n_components": 5, "umap_n_neighbors": 10, "umap_n_epochs": 100, "silhouette_threshold": 1.0}


def _run_config(seeds, **document_paths):
    return {"ops": {
        "centroids": {"config": {"n_clusters": 16, "n_epochs": 2}},
        "hierarchy_sample": {"config": {"sample_size": 600}},
        "cluster_tree": {"config": SMALL_TREE},
        "document_tree": {"config": SMALL_TREE},
        "ensemble": {"config": {"seeds": seeds, "points_per_step": 200}},
        "document_paths": {"config": document_paths},
    }}


def test_hierarchy_assets_on_minilm(atlas_home, tmp_path):
    corpus = CorpusResource(documents_per_category=3, sequences_per_chunk=12)
    # centroids with a small k for speed: materialized with the hierarchy below, with a run config
    with materialized(atlas_home, corpus, ["whitened_activations"]) as (defs, instance, keys, report):
        assert report.failed == {}
        result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                selection=dg.AssetSelection.assets("centroids", *HIERARCHY),
                                run_config=_run_config([0, 0, 1]))
        assert result.success

        tree = ClusterTree.load(atlas_home / "tensors" / "cluster_tree.npz")
        assert len(tree.nodes) > 1, tree.render()
        for node in tree.nodes.values():
            if node.children:
                assert sum(c.size for c in tree.children(node.id)) + node.noise_count == node.size
        assert tree.nodes["root"].size == 600
        document_tree = ClusterTree.load(atlas_home / "tensors" / "document_tree.npz")
        assert document_tree.nodes["root"].size == 15  # every document of the corpus, not a sample

        ens = EnsembleResult.load(atlas_home / "tensors" / "ensemble.npz")
        assert ens.stability.shape == (3, 16)
        assert np.all(ens.stability >= -1 - 1e-6) and np.all(ens.stability <= 1 + 1e-6)
        # seeds 0 and 0: the same run, so the same partition and the same centers
        assert ens.distances["ari"][0, 1] == 1.0 and ens.distances["perm_invariant_hamming"][0, 1] == 0
        np.testing.assert_allclose(ens.centers[0], ens.centers[1], atol=1e-6)
        np.testing.assert_allclose(cluster_stability(list(ens.centers[:2])), 1.0, atol=1e-5)
        assert len(RunRegistry(atlas_home / "registry" / "ensembles.sqlite").runs()) == 3

        merges = pq.read_table(atlas_home / "tables" / "merge_hierarchy.parquet").to_pylist()
        assert {r["member"] for r in merges} == {"centroids", "seed=0", "seed=1"}
        assert {r["member"] for r in merges if r["k_groups"] == 1} == {"centroids", "seed=0", "seed=1"}
        assert (atlas_home / "plots" / "merge_history_distances.png").stat().st_size > 1000

        docs = pq.read_table(atlas_home / "tables" / "document_paths.parquet").to_pydict()
        assert len(docs["doc_id"]) == 15 and len(set(docs["outcome"])) == 5
        association = pq.read_table(atlas_home / "tables" / "outcome_association.parquet").to_pylist()
        assert all(0 <= r["depth_cramers_v"] <= 1 and 0 <= r["p_value"] <= 1 for r in association)
        for depth in {r["depth"] for r in association}:  # every document counted once per depth
            assert sum(r["observed"] for r in association if r["depth"] == depth) == 15

        checks = check_results(instance)
        assert checks["tree_sizes_consistent"] and checks["ensemble_distances_valid"] and checks["cramers_v_in_range"]

        # a CSV of texts and labels instead of the corpus categories, on the token tree
        outcomes = tmp_path / "outcomes.csv"
        with outcomes.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["body", "sentiment"])
            writer.writerows([["Shares rallied after strong quarterly profits.", "pos"],
                              ["The film was a dull and tiresome mess.", "neg"],
                              ["Voters praised the new minister's plan.", "pos"]])
        result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                selection=dg.AssetSelection.assets("document_paths", "outcome_association"),
                                run_config={"ops": {"document_paths": {"config": {
                                    "outcomes_csv": str(outcomes), "text_column": "body", "label_column": "sentiment",
                                    "tree": "token"}}}})
        assert result.success
        docs = pq.read_table(atlas_home / "tables" / "document_paths.parquet").to_pydict()
        assert docs["doc_id"] == ["line2", "line3", "line4"] and docs["outcome"] == ["pos", "neg", "pos"]
        depth = max(n.depth for n in tree.nodes.values())  # token tree paths: one column per depth of that tree
        assert sum(c.startswith("cluster_depth_") for c in docs) == depth
        assert all(p == "root" or p.split("/")[0] in tree.nodes for p in docs["path"])
