"""Hierarchy assets materialized in process on a tiny real corpus (MiniLM on BBC News)."""

import csv

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from assets.ensemble import EnsembleConfig
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.hierarchy.ensemble import EnsembleResult, RunRegistry, cluster_stability, stability_floor
from latent_atlas.hierarchy.ensemble_runs import fit_atlas_ensemble
from latent_atlas.hierarchy.sample_trees import tree_structure
from latent_atlas.hierarchy.tree import ClusterTree, TreeNode
from latent_atlas.hierarchy.tree_config import TreeConfig
from resources import CorpusResource
from tests.conftest import check_metadata, check_results, materialized
from tests.test_asset_metadata import assert_readable_pages

HIERARCHY = ["hierarchy_sample", "cluster_tree", "document_tree", "ensemble", "merge_hierarchy", "document_paths", "outcome_association"]
SMALL_TREE = {"max_depth": 2, "min_split_size": 40, "min_cluster_size_floor": 8, "hdbscan_min_samples": 5,
              "umap_n_components": 5, "umap_n_neighbors": 10, "umap_n_epochs": 100, "silhouette_threshold": 1.0}


def _run_config(seeds, **document_paths):
    return {"ops": {
        "centroids": {"config": {"n_clusters": 16, "n_epochs": 2}},
        "hierarchy_sample": {"config": {"sample_size": 600}},
        "cluster_tree": {"config": SMALL_TREE},
        "document_tree": {"config": SMALL_TREE},
        "ensemble": {"config": {"seeds": seeds, "n_epochs": 10}},
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
        assert ens.stability.shape == (3, 16) and ens.atlas.stability.shape == (16,)
        assert ens.labels.shape[1] > 600  # the ensemble's own, larger sample (up to 100 tokens per cluster)
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
        in_range = [v for r in association for v in (r["depth_cramers_v"], r["p_value"]) if v is not None and v == v]
        assert all(0 <= v <= 1 for v in in_range)  # NaN where a depth is untestable
        for depth in {r["depth"] for r in association}:  # every document counted once per depth
            assert sum(r["observed"] for r in association if r["depth"] == depth) == 15

        checks = check_results(instance)
        assert checks["tree_has_structure"] and "association_testable" in checks
        # the checks say what the stored ensemble says (their verdicts are tested on planted input in
        # test_ensemble and test_checks)
        [floor_check] = check_metadata(instance, "atlas_stability_floor")
        assert floor_check["clusters_below_floor"] == int(np.sum(~(ens.atlas.stability >= floor_check["floor"])))
        [converged] = check_metadata(instance, "ensemble_members_converged")
        np.testing.assert_allclose(converged["final_shift"], ens.final_shift, atol=1e-6)
        # every asset materialized here shows a table or plot on its Dagster UI page
        assert set(HIERARCHY) <= set(assert_readable_pages(defs, instance))

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


def _node(node_id, parent, size, children=(), noise=0):
    return TreeNode(node_id, parent, 0 if parent is None else 1, size, float("nan"), np.zeros(4), np.arange(size),
                    noise=np.arange(noise), children=list(children))


def test_tree_has_structure_fails_on_a_tree_without_structure():
    config = TreeConfig(min_split_size=50)
    split = ClusterTree({"root": _node("root", None, 500, ["0", "1"], noise=100),
                         "0": _node("0", "root", 250), "1": _node("1", "root", 150)}, config)
    assert tree_structure(split, 0.5)[0]
    unsplit = ClusterTree({"root": _node("root", None, 500)}, config)  # HDBSCAN found one cluster or only noise
    passed, metadata = tree_structure(unsplit, 0.5)
    assert not passed and metadata["root_children"] == 0 and metadata["root_can_split"]
    noisy = ClusterTree({"root": _node("root", None, 500, ["0", "1"], noise=400),
                         "0": _node("0", "root", 60), "1": _node("1", "root", 40)}, config)
    passed, metadata = tree_structure(noisy, 0.5)
    assert not passed and metadata["root_noise_share"] == 0.8
    too_small = ClusterTree({"root": _node("root", None, 30)}, config)  # a leaf by configuration
    assert tree_structure(too_small, 0.5)[0]


def test_ensemble_defaults_converge_and_find_the_planted_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(16, 32))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.permutation(np.repeat(np.arange(16), 100))  # the default 100 tokens per cluster
    x = (centers[labels] + 0.3 * rng.normal(size=(len(labels), 32))).astype(np.float32)
    atlas = SequentialSoftClustering(16, seed=100, max_points=len(x), n_epochs=30).fit(x)
    config = EnsembleConfig()
    result = fit_atlas_ensemble(x, atlas, config.seeds, config.points_per_step, config.n_epochs,
                                config.refine_iters).result
    assert result.final_shift.max() <= config.max_final_shift, result.final_shift
    assert stability_floor(result.atlas.stability, config.stability_floor, config.max_unstable_share).passed
    assert np.median(result.atlas.stability) > 0.95 and np.median(result.atlas.agreement) > 0.9
