"""Exact cosine kNN: the same neighbours and distances as a brute-force search, self first."""

import numpy as np
import pytest

from latent_atlas.hierarchy.neighbors import cosine_knn


def brute_force(queries, reference, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    dist = 1.0 - q.astype(np.float64) @ r.astype(np.float64).T
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def test_matches_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2500, 24)).astype(np.float32) * rng.lognormal(size=(2500, 1))  # > one block
    queries = rng.normal(size=(1100, 24)).astype(np.float32)
    indices, distances = cosine_knn(queries, reference, 7)
    want_idx, want_dist = brute_force(queries, reference, 7)
    assert indices.shape == distances.shape == (1100, 7)
    np.testing.assert_allclose(distances, want_dist, atol=1e-5)
    assert (indices == want_idx).mean() > 0.999  # float32 vs float64 may swap near-ties only
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_self_first_even_with_duplicates():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[150:] = x[:150]  # every row has an exact duplicate
    indices, distances = cosine_knn(x, x, 5, self_first=True)
    np.testing.assert_array_equal(indices[:, 0], np.arange(300))
    assert np.all(distances[:, 0] == 0) and np.all(distances[:, 1] < 1e-6)  # the duplicate comes next
    np.testing.assert_array_equal(indices[:150, 1], np.arange(150, 300))


def test_k_equal_to_reference_and_bad_k():
    x = np.random.default_rng(2).normal(size=(10, 4))
    indices, _ = cosine_knn(x, x, 10, self_first=True)
    assert all(sorted(row) == list(range(10)) for row in indices.tolist())
    with pytest.raises(ValueError, match="k must be in"):
        cosine_knn(x, x, 11)
    with pytest.raises(ValueError, match="self_first"):
        cosine_knn(x[:3], x, 2, self_first=True)
