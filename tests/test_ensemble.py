"""Distances between runs and per-cluster stability, checked against hand-computed cases."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from latent_atlas.ensemble import (
    EnsembleResult,
    RunRegistry,
    adjusted_rand,
    cluster_stability,
    fit_ensemble,
    matching_distance,
    pairwise_partition_distances,
    perm_invariant_hamming,
    soft_clustering_fit_fn,
)

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
        return centers, km.labels_

    return fit


def test_stability_is_one_for_identical_runs():
    x = _blobs()
    centers, _ = _spherical_kmeans(5)(x, 0)
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
    clustering = pytest.importorskip("latent_atlas.clustering")
    if not hasattr(clustering, "SequentialSoftClustering"):
        pytest.skip("latent_atlas.clustering has no SequentialSoftClustering yet")
    x = _blobs(n_per=100)
    result = fit_ensemble(x, seeds=[0, 1], fit_fn=soft_clustering_fit_fn(5))
    assert result.stability.shape == (2, 5)
    assert result.stability.min() > 0.9


def test_registry_records_runs(tmp_path):
    registry = RunRegistry(tmp_path / "registry.db")
    run_id = registry.add_run("ens-1", seed=3, config={"k": 5}, data_version="v1", paths={"centers": "a.npz"})
    registry.add_run("ens-2", seed=4, config={"k": 6})
    runs = registry.runs("ens-1")
    assert [r["run_id"] for r in runs] == [run_id]
    assert runs[0]["seed"] == 3 and runs[0]["config"] == {"k": 5} and runs[0]["paths"] == {"centers": "a.npz"}
    assert len(RunRegistry(tmp_path / "registry.db").runs()) == 2
