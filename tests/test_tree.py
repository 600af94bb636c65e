"""Cluster tree: a planted two-level hierarchy is recovered over data and layout seeds (by the current
build, the previous one and the subsample fit); determinism, cache, gate, paths, small inputs, config
errors."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import latent_atlas.hierarchy.tree as tree_module
from latent_atlas.hierarchy.node_split import split_node
from latent_atlas.hierarchy.tree import ROOT, ClusterTree, build_tree
from latent_atlas.hierarchy.tree_config import TreeConfig

CONFIG = TreeConfig(max_depth=3, base_pct=0.15, silhouette_threshold=0.8, min_split_size=60,
                    umap_n_components=5, umap_n_neighbors=15, umap_n_epochs=200, seed=0)


def planted_hierarchy(seed=2, n=110, d=48):
    """3 top groups far apart, each with 3 subgroups; returns x [9n, d], top [9n], leaf [9n].

    Subgroup centers sit 0.17 * sqrt(2d) apart with per-point noise 0.2: close enough that a
    top group is one connected blob in the root's neighbour graph, far enough that its own
    re-embedding separates the subgroups (the case recursive clustering is for).
    """
    rng = np.random.default_rng(seed)
    tops = rng.normal(size=(3, d))
    x, top, leaf = [], [], []
    for a in range(3):
        for b in range(3):
            center = tops[a] + 0.17 * rng.normal(size=d)
            x.append(center + 0.2 * rng.normal(size=(n, d)))
            top += [a] * n
            leaf += [3 * a + b] * n
    return np.concatenate(x).astype(np.float32), np.array(top), np.array(leaf)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    x, top, leaf = planted_hierarchy()
    cache = tmp_path_factory.mktemp("tree-cache")
    tree = build_tree(x, CONFIG, soft_clusters=leaf, cache_dir=cache, data_version="planted-v1")
    return x, top, leaf, tree, cache


def test_planted_two_level_hierarchy_is_recovered_over_seeds():
    # UMAP's layout is numba code whose rounding follows the CPU, and the gate reads each node's
    # silhouette on one layout: a planted top group scored 0.37-0.82 over 10 data seeds x 2 layout
    # seeds (median 0.53-0.55; the highest 0.71-0.82 by CPU path, 0.817 once, on an Intel CPU with
    # numba and OpenBLAS capped at AVX2). So every tree must keep the top groups apart, and the
    # second level must be recovered in at least 9 of the 10 trees here, not in one seed's tree
    recovered = []
    for data_seed in range(5):
        x, top, leaf = planted_hierarchy(seed=data_seed)
        for layout_seed in (0, 1):
            tree = build_tree(x, TreeConfig(**{**CONFIG.__dict__, "seed": layout_seed}))
            assert_keeps_top_groups_apart(x, top, tree)
            try:
                assert_recovers_planted(x, top, leaf, tree)
                recovered.append((data_seed, layout_seed))
            except AssertionError:
                pass
    assert len(recovered) >= 9, recovered


@pytest.mark.parametrize("variant", [
    {"knn": "umap", "umap_n_epochs": None},  # the build before issue 12: UMAP's own kNN search, its epochs
    {"umap_fit_size": 600},  # the option for large samples: fit on 600 of 990, label the rest by neighbours
])
def test_other_builds_recover_the_planted_hierarchy(planted, variant):
    x, top, leaf, _, _ = planted
    assert_recovers_planted(x, top, leaf, build_tree(x, TreeConfig(**{**CONFIG.__dict__, **variant})))


def top_level_ari(top, tree) -> float:
    """ARI of the root's children against the planted top groups (noise at the root excluded)."""
    found_top = np.full(len(top), -1)
    for k, node in enumerate(tree.children(ROOT)):
        found_top[node.members] = k
    return adjusted_rand_score(top[found_top >= 0], found_top[found_top >= 0])


def assert_keeps_top_groups_apart(x, top, tree):
    """The root's split is the planted top groups, no leaf mixes two, new points are routed as the sample is."""
    assert top_level_ari(top, tree) >= 0.9
    for node in tree.leaves():
        assert len(np.unique(top[node.members])) == 1
    leaf_ids = tree.sample_leaf_ids(len(x))
    paths = tree.assign_paths(x)
    assert np.mean([p[-1] == i for p, i in zip(paths, leaf_ids) if i is not None]) > 0.95


def assert_recovers_planted(x, top, leaf, tree):
    leaf_ids = tree.sample_leaf_ids(len(x))
    kept = np.array([i is not None for i in leaf_ids])
    assert kept.mean() > 0.6  # HDBSCAN may leave points as noise; they are excluded below
    found = np.array([i for i in leaf_ids if i is not None])
    # 0.8: one planted pair merged still passes (0.885), two merged (0.79) or a group unsplit (0.71) fail
    assert adjusted_rand_score(leaf[kept], found) >= 0.8
    assert max(n.depth for n in tree.nodes.values()) >= 2  # the second level was used
    for node in tree.leaves():
        assert len(np.unique(top[node.members])) == 1  # no leaf mixes top groups
    paths = tree.assign_paths(x)  # a new point is routed to the leaf its sample neighbours are in
    assert np.mean([p[-1] == i for p, i in zip(paths, leaf_ids) if i is not None]) > 0.95
    # the top level is the planted top groups; each is mixed (silhouette well under the gate) and split
    for node in tree.children(ROOT):
        assert node.silhouette < CONFIG.silhouette_threshold and node.children
    assert top_level_ari(top, tree) >= 0.9


def test_nodes_are_consistent(planted):
    x, _, leaf, tree, _ = planted
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for node in tree.nodes.values():
        assert node.size == len(node.members)
        if node.parent is not None:
            assert node.id in tree.nodes[node.parent].children
            assert node.depth == tree.nodes[node.parent].depth + 1
            assert np.isin(node.members, tree.nodes[node.parent].members).all()
        if node.children:  # children + noise partition the parent
            parts = np.concatenate([tree.nodes[c].members for c in node.children] + [node.noise])
            np.testing.assert_array_equal(np.sort(parts), np.sort(node.members))
            assert node.depth == 0 or node.silhouette < CONFIG.silhouette_threshold  # the gate
        expected = unit[node.members].mean(0)
        np.testing.assert_allclose(node.centroid, expected / np.linalg.norm(expected), atol=1e-5)
    # a leaf that holds all of a planted subgroup maps to that soft cluster with fraction 1
    for node in tree.leaves():
        if node.depth == 2 and node.size == 110:
            assert node.soft_clusters == {int(leaf[node.members[0]]): 1.0}
    assert tree.nodes[ROOT].soft_clusters == {c: 1.0 for c in range(9)}
    text = tree.render()
    assert text.splitlines()[0].startswith("root  depth=0 size=990")
    assert all(f"{node.id}  depth={node.depth} size={node.size}" in text for node in tree.nodes.values())


def test_second_call_loads_from_cache(planted, monkeypatch):
    x, _, leaf, tree, cache = planted

    def no_split(*args, **kwargs):
        raise AssertionError("a cached tree was rebuilt")

    monkeypatch.setattr(tree_module, "split_node", no_split)  # no UMAP may run: asserted, not timed
    again = build_tree(x, CONFIG, soft_clusters=leaf, cache_dir=cache, data_version="planted-v1")
    assert list(again.nodes) == list(tree.nodes)
    for node_id, node in tree.nodes.items():
        np.testing.assert_array_equal(again.nodes[node_id].members, node.members)
        np.testing.assert_array_equal(again.nodes[node_id].noise, node.noise)
        np.testing.assert_allclose(again.nodes[node_id].centroid, node.centroid)
        assert again.nodes[node_id].soft_clusters == node.soft_clusters
    assert again.render() == tree.render()
    assert len(list(cache.glob("tree-*.json"))) == 1 and not list(cache.glob(".*tmp*"))


def test_paths_follow_nearest_centroids(planted):
    x, top, _, tree, _ = planted
    paths = tree.assign_paths(x)
    leaf_ids = tree.sample_leaf_ids(len(x))
    agree = [p[-1] == leaf_id for p, leaf_id in zip(paths, leaf_ids) if leaf_id is not None]
    assert np.mean(agree) > 0.95
    for p in paths:
        assert all(child.startswith(parent + ".") for parent, child in zip(p, p[1:]))
    # documents: 10 tokens each from one planted leaf group
    doc_ids = np.repeat(np.arange(len(x) // 10), 10)
    by_mean = tree.assign_document_paths(x, doc_ids, method="mean")
    by_vote = tree.assign_document_paths(x, doc_ids, method="majority")
    assert len(by_mean) == len(x) // 10
    assert np.mean([by_mean[d] == by_vote[d] for d in by_mean]) > 0.9


def test_silhouette_gate_and_depth_limit_stop_recursion():
    x, _, _, = planted_hierarchy(seed=2, n=60)
    never = TreeConfig(**{**CONFIG.__dict__, "silhouette_threshold": -1.0})
    tree = build_tree(x, never)
    assert max(n.depth for n in tree.nodes.values()) == 1  # no child had silhouette < -1
    shallow = TreeConfig(**{**CONFIG.__dict__, "max_depth": 0})
    assert list(build_tree(x, shallow).nodes) == [ROOT]


def test_small_inputs_give_a_single_leaf(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1, 5, 20):
        tree = build_tree(rng.normal(size=(n, 8)), CONFIG, cache_dir=tmp_path)
        assert list(tree.nodes) == [ROOT] and tree.nodes[ROOT].size == n
        assert tree.assign_paths(rng.normal(size=(3, 8))) == [[], [], []]
    with pytest.raises(ValueError, match="x must be"):
        build_tree(np.zeros((0, 4)), CONFIG)
    with pytest.raises(ValueError, match="soft_clusters"):
        build_tree(rng.normal(size=(10, 4)), CONFIG, soft_clusters=np.zeros(3))
    assert isinstance(ClusterTree.load(next(tmp_path.glob("tree-*.json"))), ClusterTree)


def test_same_config_and_seed_give_the_same_tree():
    x, _, _ = planted_hierarchy(seed=3, n=60)
    first, second = build_tree(x, CONFIG), build_tree(x, CONFIG)
    assert first.render() == second.render() and len(first.nodes) > 1
    for node_id, node in first.nodes.items():
        np.testing.assert_array_equal(second.nodes[node_id].members, node.members)
        np.testing.assert_array_equal(second.nodes[node_id].noise, node.noise)


def test_subsample_fit_labels_every_member_like_its_fitted_neighbours():
    x, top, _ = planted_hierarchy(seed=4, n=60)  # 540 points
    config = TreeConfig(**{**CONFIG.__dict__, "umap_fit_size": 200})
    labels, silhouettes = split_node(x, 0, config)
    assert labels.shape == (len(x),) and len(silhouettes) >= 2
    kept = labels >= 0
    assert kept.mean() > 0.6 and adjusted_rand_score(top[kept], labels[kept]) >= 0.9  # the rest follow the fit


def test_bad_config_fields_are_named():
    x = np.random.default_rng(0).normal(size=(100, 8))
    with pytest.raises(ValueError, match="TreeConfig.knn must be 'exact' or 'umap', got 'faiss'"):
        build_tree(x, TreeConfig(knn="faiss"))
    with pytest.raises(ValueError, match="TreeConfig.umap_fit_size must be None or at least 50"):
        build_tree(x, TreeConfig(umap_fit_size=20))


def test_a_tree_saved_before_the_knn_field_loads_as_built_by_umaps_search(planted, tmp_path):
    _, _, _, tree, _ = planted
    path = tree.save(tmp_path / "tree.json")
    meta = json.loads(path.read_text())
    assert ClusterTree.load(path).config == CONFIG  # a current file: its own knn
    del meta["config"]["knn"], meta["config"]["umap_fit_size"]
    path.write_text(json.dumps(meta))
    assert ClusterTree.load(path).config == TreeConfig(**{**CONFIG.__dict__, "knn": "umap"})
