"""Distances between runs and per-cluster stability, checked against hand-computed cases."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from latent_atlas.hierarchy.ensemble import (EnsembleResult, RunRegistry, adjusted_rand, align_centers,
                                             atlas_cluster_stability, atlas_stability_table, cluster_stability,
                                             fit_ensemble, matching_distance, pairwise_partition_distances,
                                             perm_invariant_hamming, refine_centers, soft_clustering_fit_fn,
                                             stability_floor)

A = np.array([0, 0, 0, 1, 1, 2])
B = np.array([1, 1, 0, 0, 0, 0])


def test_identical_and_relabelled_partitions_are_at_distance_zero():
    relabelled = np.array([7, 7, 7, 3, 3, 5])  # A with labels permuted and renamed
    for other in (A, relabelled):
        assert perm_invariant_hamming(A, other) == 0
        assert matching_distance(A, other) == 0
        assert adjusted_rand(A, other) == pytest.approx(1.0)


def test_hand_computed_small_case():
    # contingency A x B: {0: (b1: 2, b0: 1), 1: (b0: 2), 2: (b0: 1)}; best matching 0<->1, 1<->0
    # keeps 2 + 2 items, so 6 - 4 = 2 items disagree.
    assert perm_invariant_hamming(A, B) == 2
    # pairs together in A: (0,1) (0,2) (1,2) (3,4)
    # pairs together in B: (0,1) (2,3) (2,4) (2,5) (3,4) (3,5) (4,5)
    # only in A: (0,2) (1,2); only in B: (2,3) (2,4) (2,5) (3,5) (4,5) -> 7
    assert matching_distance(A, B) == 7
    # ARI: index 2, expected 4 * 7 / 15, max (4 + 7) / 2
    expected = 4 * 7 / 15
    assert adjusted_rand(A, B) == pytest.approx((2 - expected) / (5.5 - expected))
    assert adjusted_rand(A, B) == pytest.approx(adjusted_rand_score(A, B))


def test_matching_distance_equals_pair_count_on_random_partitions():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 60), rng.integers(0, 5, 60)
    together_a = a[:, None] == a[None, :]
    together_b = b[:, None] == b[None, :]
    brute = int(np.triu(together_a != together_b, k=1).sum())
    assert matching_distance(a, b) == brute
    d = pairwise_partition_distances(np.stack([a, b, a]), "matching_dist")
    assert d[0, 1] == brute and d[0, 2] == 0 and d[1, 0] == brute


def _blobs(n_per=150, k=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = np.concatenate([c + 0.15 * rng.normal(size=(n_per, d)) for c in centers])
    return x.astype(np.float32)


def _spherical_kmeans(k):
    def fit(sample, seed):
        unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
        km = KMeans(k, n_init=1, random_state=seed).fit(unit)
        centers = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
        return centers, km.labels_, 0.0  # Lloyd's iterations ran to convergence

    return fit


def test_stability_is_one_for_identical_runs():
    x = _blobs()
    centers = _spherical_kmeans(5)(x, 0)[0]
    stability = cluster_stability([centers, centers.copy(), centers[::-1].copy()])
    np.testing.assert_allclose(stability, 1.0, atol=1e-6)
    random = np.random.default_rng(1).normal(size=(5, 16))
    assert cluster_stability([centers, random]).max() < 0.9


def test_fit_ensemble_on_separated_blobs_agrees_across_seeds(tmp_path):
    x = _blobs()
    result = fit_ensemble(x, seeds=[0, 1, 2], fit_fn=_spherical_kmeans(5))
    assert result.labels.shape == (3, 750) and result.centers.shape == (3, 5, 16)
    assert np.all(result.distances["perm_invariant_hamming"] == 0)
    assert np.all(result.distances["matching_dist"] == 0)
    np.testing.assert_allclose(result.distances["ari"], 1.0)
    assert result.stability.min() > 0.99
    loaded = EnsembleResult.load(result.save(tmp_path / "ens.npz"))
    np.testing.assert_array_equal(loaded.labels, result.labels)
    assert loaded.seeds == [0, 1, 2]


def test_fit_ensemble_with_the_real_soft_clustering():
    clustering = pytest.importorskip("latent_atlas.clustering.model")
    if not hasattr(clustering, "SequentialSoftClustering"):
        pytest.skip("latent_atlas.clustering.model has no SequentialSoftClustering yet")
    x = _blobs(n_per=100)
    result = fit_ensemble(x, seeds=[0, 1], fit_fn=soft_clustering_fit_fn(5))
    assert result.stability.shape == (2, 5)
    assert result.stability.min() > 0.9
    assert result.final_shift.shape == (2,) and result.atlas is None


def _planted(k=8, d=32, n_per=120, noise=0.15, seed=0):
    """A well-separated mixture: x [k * n_per, d] around k random unit centers, shuffled; (x, labels, centers)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.permutation(np.repeat(np.arange(k), n_per))
    return (centers[labels] + noise * rng.normal(size=(len(labels), d))).astype(np.float32), labels, centers


# as the ensemble asset runs re-fits: full-batch online steps, then batch EM to the fixed point
FULL_BATCH = {"max_points": 10**9, "n_epochs": 10, "refine_iters": 100}


def test_atlas_clusters_of_a_planted_mixture_are_stable():
    from latent_atlas.clustering.model import SequentialSoftClustering

    x, _, _ = _planted()
    atlas = SequentialSoftClustering(8, seed=100, max_points=10**9, n_epochs=30).fit(x)
    result = fit_ensemble(x, [0, 1, 2], soft_clustering_fit_fn(8, **FULL_BATCH),
                          atlas_centers=atlas.cluster_centers_, atlas_labels=atlas.predict(x))
    a = result.atlas
    assert np.all(result.final_shift <= 1e-3)
    assert a.stability.min() > 0.95 and a.stability_min.min() > 0.95, a.stability
    assert a.agreement.min() > 0.9 and a.jaccard.min() > 0.9, a.agreement
    assert a.tokens.sum() == len(x) and a.tokens.min() >= 100
    assert stability_floor(a.stability).passed


def test_a_cluster_the_data_lacks_is_unstable_and_fails_the_floor():
    x, _, centers = _planted()
    extra = np.random.default_rng(9).normal(size=(1, 32))
    atlas_centers = np.vstack([centers, extra / np.linalg.norm(extra)])  # 8 real directions and 1 random one
    atlas_labels = np.argmax(x @ atlas_centers.T, axis=1)
    result = fit_ensemble(x, [0, 1, 2], soft_clustering_fit_fn(9, **FULL_BATCH),
                          atlas_centers=atlas_centers, atlas_labels=atlas_labels)
    a = result.atlas
    assert a.stability[:8].min() > 0.95 and a.stability[8] < 0.5, a.stability
    assert a.tokens[8] == 0 and np.isnan(a.agreement[8]) and np.isnan(a.jaccard[8])
    verdict = stability_floor(a.stability, floor=0.8, max_share=0.0)
    assert not verdict.passed and verdict.n_below == 1
    assert stability_floor(a.stability, floor=0.8, max_share=0.2).passed  # 1 of 9 is within a 20% allowance


def test_atlas_stability_floor_fails_for_a_random_centers_atlas():
    x, _, _ = _planted()
    random_centers = np.random.default_rng(3).normal(size=(8, 32))
    atlas_labels = np.argmax(x @ random_centers.T, axis=1)
    result = fit_ensemble(x, [0, 1], soft_clustering_fit_fn(8, **FULL_BATCH),
                          atlas_centers=random_centers, atlas_labels=atlas_labels)
    verdict = stability_floor(result.atlas.stability, floor=0.8, max_share=0.2)
    assert not verdict.passed and verdict.n_below == 8 and verdict.median < 0.8


def test_atlas_stability_by_hand():
    atlas = np.eye(3)
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    # run 1: the atlas's clusters in another order, same tokens; run 2: cluster 0 loses a token to cluster 1
    run1 = (atlas[[2, 0, 1]], np.array([1, 1, 1, 1, 2, 2, 0, 0]))
    run2 = (0.8 * atlas + 0.6 * np.roll(atlas, 1, axis=1), np.array([0, 0, 0, 1, 1, 1, 2, 2]))
    one = atlas_cluster_stability(atlas, labels, [run1[0]], [run1[1]])
    np.testing.assert_allclose([one.stability, one.agreement, one.jaccard], 1.0)
    two = atlas_cluster_stability(atlas, labels, [run2[0]], [run2[1]])
    np.testing.assert_allclose(two.stability, 0.8)  # cos(e_i, 0.8 e_i + 0.6 e_i+1)
    np.testing.assert_allclose(two.agreement, [3 / 4, 1, 1])  # 3 of cluster 0's 4 tokens stay together
    np.testing.assert_allclose(two.jaccard, [3 / 4, 2 / 3, 1])  # cluster 1's match also took a token of 0
    both = atlas_cluster_stability(atlas, labels, [run1[0], run2[0]], [run1[1], run2[1]])
    np.testing.assert_allclose(both.stability, 0.9)  # median of 1 and 0.8
    np.testing.assert_allclose(both.stability_min, 0.8)
    np.testing.assert_array_equal(both.tokens, [4, 2, 2])
    np.testing.assert_allclose(align_centers(run1[0], atlas), atlas)
    with pytest.raises(ValueError, match="labels"):
        atlas_cluster_stability(atlas, labels, [run1[0]], [run1[1][:5]])


def test_atlas_stability_is_saved_and_tabled(tmp_path):
    x, _, centers = _planted(k=5, d=16, n_per=60)
    result = fit_ensemble(x, [0, 1], _spherical_kmeans(5), atlas_centers=centers,
                          atlas_labels=np.argmax(x @ centers.T, axis=1))
    loaded = EnsembleResult.load(result.save(tmp_path / "ens.npz"))
    for name in ("stability", "stability_min", "agreement", "jaccard", "tokens"):
        np.testing.assert_array_equal(getattr(loaded.atlas, name), getattr(result.atlas, name))
    np.testing.assert_array_equal(loaded.final_shift, result.final_shift)
    table = atlas_stability_table(loaded).to_pydict()
    assert table["cluster"] == [0, 1, 2, 3, 4]
    assert table["stability"] == result.atlas.stability.tolist()
    assert table["assignment_agreement"] == result.atlas.agreement.tolist()
    assert set(table) == {"cluster", "stability", "stability_min", "assignment_agreement", "assignment_jaccard",
                          "stability_tokens"}


def test_registry_records_runs(tmp_path):
    registry = RunRegistry(tmp_path / "registry.db")
    run_id = registry.add_run("ens-1", seed=3, config={"k": 5}, data_version="v1", paths={"centers": "a.npz"})
    registry.add_run("ens-2", seed=4, config={"k": 6})
    runs = registry.runs("ens-1")
    assert [r["run_id"] for r in runs] == [run_id]
    assert runs[0]["seed"] == 3 and runs[0]["config"] == {"k": 5} and runs[0]["paths"] == {"centers": "a.npz"}
    assert len(RunRegistry(tmp_path / "registry.db").runs()) == 2


def test_refine_centers_reaches_the_batch_em_fixed_point():
    from latent_atlas.clustering.model import SequentialSoftClustering

    x, _, _ = _planted(noise=0.3)
    model = SequentialSoftClustering(8, n_epochs=1, max_points=200, seed=0).fit(x)  # a rough online fit
    shift = refine_centers(model, x, max_iters=200, tol=1e-5)
    assert shift <= 1e-5
    # fixed point: each center is the normalized sum of unit rows weighted by the kept memberships
    clusters, values = model.soft_memberships(x)
    dense = np.zeros((len(x), 8))
    for slot in range(clusters.shape[1]):
        kept = clusters[:, slot] >= 0
        dense[np.nonzero(kept)[0], clusters[kept, slot]] = values[kept, slot]
    sums = dense.T @ (x / np.linalg.norm(x, axis=1, keepdims=True))
    cosine = np.sum(model.cluster_centers_ * sums, axis=1) / np.linalg.norm(sums, axis=1)
    assert np.all(cosine >= 1 - 1e-4), cosine  # moves by <= tol per pass at the fixed point
