"""Intervention vectors: Ledoit-Wolf against sklearn, pooled covariance, planted directions."""

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score

from latent_atlas.chunks import DenseChunk
from latent_atlas.intervention import (
    LdaMoments, VectorSample, check_vectors, intervention_vectors, shrunk_pooled_covariance, weighted_auroc,
)
from latent_atlas.memberships import SparseMemberships
from latent_atlas.statistics import ChunkStatistics, StatisticsConfig


def sample_of(x, m):
    n = x.shape[0]
    return VectorSample(np.arange(n, dtype=np.float64), np.full(n, "c"), np.arange(n, dtype=np.int32),
                        np.zeros(n, np.int32), x, m.astype(np.float32))


@pytest.mark.parametrize("n, d", [(200, 20), (15, 30)])  # ordinary and n < d
def test_ledoit_wolf_matches_sklearn(n, d):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 2.0
    ones = np.ones((n, 1))
    moments = LdaMoments.zeros(1, d)
    moments.update(x[: n // 2], ones[: n // 2])  # two updates: the moments are mergeable
    moments.update(x[n // 2:], ones[n // 2:])
    ours, shrinkage = shrunk_pooled_covariance(moments, sample_of(x, ones))
    theirs, their_shrinkage = ledoit_wolf(x)
    assert shrinkage == pytest.approx(their_shrinkage, abs=1e-9)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_pooled_covariance_with_hard_memberships():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 6))
    labels = rng.integers(0, 3, 300)
    moments = LdaMoments.zeros(3, 6)
    moments.update(x, np.eye(3)[labels])
    centred = x - np.stack([x[labels == c].mean(0) for c in range(3)])[labels]
    np.testing.assert_allclose(moments.pooled_covariance(), centred.T @ centred / 300, atol=1e-12)
    rest = [x[labels != c].mean(0) for c in range(3)]
    np.testing.assert_allclose(moments.negative_means(), np.stack(rest), atol=1e-12)


def test_weighted_auroc_matches_sklearn():
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal(500), 1)  # ties on purpose
    w = rng.random(500)
    expected = roc_auc_score(np.r_[np.ones(500), np.zeros(500)], np.r_[scores, scores], sample_weight=np.r_[w, 1 - w])
    assert weighted_auroc(scores, w, 1 - w) == pytest.approx(expected, abs=1e-12)


def test_planted_direction_beats_random_on_heldout():
    """A cluster planted along a direction is separated by LDA on held-out tokens far better
    than by a random direction, and better than difference-of-means under anisotropic noise."""
    rng = np.random.default_rng(5)
    n_seq, seq_len, d, k = 120, 32, 16, 4
    centers = np.linalg.qr(rng.standard_normal((d, k)))[0].T  # [k, d] orthonormal
    nuisance = _unit(centers[0] + centers[1] + rng.standard_normal(d) * 0.3)
    labels = rng.integers(0, k, (n_seq, seq_len))
    x = 1.2 * centers[labels] + rng.standard_normal((n_seq, seq_len, d)) * 0.5
    x += rng.standard_normal((n_seq, seq_len, 1)) * 3.0 * nuisance  # strong shared noise direction
    p = np.eye(k)[labels] * 0.85 + 0.15 / k  # soft memberships around the planted labels
    s, q, c = np.nonzero(p > 0)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32),
                            p[s, q, c].astype(np.float32), np.zeros(s.size, np.int32), n_seq, seq_len)
    chunk = DenseChunk(x.astype(np.float16), np.ones((n_seq, seq_len), bool), np.zeros((n_seq, seq_len), np.int32))
    stats = ChunkStatistics.compute("planted", mem, chunk, k, StatisticsConfig(heldout_fraction=0.3))
    result = intervention_vectors(stats.moments, stats.fit_sample, stats.heldout, centers)
    held = stats.heldout
    random_dir = _unit(rng.standard_normal(d))
    for cluster in range(k):
        m = held.memberships[:, cluster].astype(np.float64)
        random_auroc = weighted_auroc(held.vectors.astype(np.float64) @ random_dir, m, 1 - m)
        assert result.auroc[cluster] > max(random_auroc, 1 - random_auroc) + 0.2
        assert result.auroc[cluster] > 0.85  # soft labels cap AUROC below 1 (positives are part negative)
        assert result.d_prime[cluster] > 1.5
        assert float(result.vectors[cluster] @ centers[cluster]) > 0  # sign-aligned with the center
    assert result.auroc[0] > result.diff_means_auroc[0]  # the nuisance direction hurts plain means
    assert 0 < result.shrinkage < 1
    ok, details = check_vectors(result.vectors)
    assert ok, details
    np.testing.assert_allclose(np.diag(result.cross_correlation), 1.0, atol=1e-6)


def test_check_vectors_flags_bad_rows():
    v = np.eye(3, dtype=np.float32)
    v[1] *= 2
    v[2, 0] = np.nan
    ok, details = check_vectors(v)
    assert not ok and details["bad_clusters"] == [1, 2]


def _unit(v):
    return v / np.linalg.norm(v)
