"""Intervention vectors: Ledoit-Wolf against sklearn, pooled covariance, planted directions."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score

from latent_atlas.analysis.auroc import auroc_interval, weighted_auroc
from latent_atlas.analysis.intervention import (LdaMoments, VectorSample, check_vectors, intervention_vectors,
                                                shrunk_pooled_covariance, vector_norms)
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import DenseChunk


def sample_of(x, m):
    n = x.shape[0]
    return VectorSample(np.arange(n, dtype=np.float64), np.full(n, "c"), np.arange(n, dtype=np.int32),
                        np.zeros(n, np.int32), m.astype(np.float32), np.arange(n, dtype=np.uint64),
                        m.argmax(1).astype(np.int32), vector_norms(x), x)


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
    # the interval's own point estimate (rank-based, beside the influences) is the same number
    assert auroc_interval(scores, w, 1 - w, rng.integers(0, 50, 500))[0] == pytest.approx(expected, abs=1e-12)


def test_weighted_auroc_without_positives_or_negatives_is_nan():
    scores = np.arange(5.0)
    assert np.isnan(weighted_auroc(scores, np.zeros(5), np.ones(5)))
    assert np.isnan(weighted_auroc(scores, np.ones(5), np.zeros(5)))
    assert np.isnan(auroc_interval(scores, np.zeros(5), np.ones(5))[0])


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
    ok, details = check_vectors(result.vectors, stats.moments.cluster_weight)
    assert ok, details
    np.testing.assert_allclose(np.diag(result.cross_correlation), 1.0, atol=1e-6)


def test_auroc_interval_covers_the_true_auroc():
    """Scores mu * label + document effect + noise have true AUROC Phi(mu / sqrt(2 (1 + tau^2)))
    between documents; the cluster is topical (positives crowd into half the documents). Over 300
    seeded replicates of 40 documents x 10 tokens, the 95% interval with documents as groups
    covers it at about its level; counting tokens as independent evidence does not."""
    mu, tau, n_docs, per_doc = 1.0, 1.0, 40, 10
    truth = norm.cdf(mu / np.sqrt(2 * (1 + tau**2)))
    docs = np.repeat(np.arange(n_docs), per_doc)
    covered = {"documents": 0, "tokens": 0}
    widths = []
    for replicate in range(300):
        rng = np.random.default_rng(replicate)
        prevalence = np.where(rng.random(n_docs) < 0.5, 0.6, 0.05)
        label = (rng.random(docs.size) < prevalence[docs]).astype(np.float64)
        scores = mu * label + tau * rng.standard_normal(n_docs)[docs] + rng.standard_normal(docs.size)
        auc, low, high = auroc_interval(scores, label, 1 - label, docs)
        assert low <= auc <= high and auc == pytest.approx(weighted_auroc(scores, label, 1 - label))
        covered["documents"] += low <= truth <= high
        widths.append(high - low)
        _, low, high = auroc_interval(scores, label, 1 - label)
        covered["tokens"] += low <= truth <= high
    assert 0.9 <= covered["documents"] / 300 <= 0.99, covered
    assert covered["tokens"] / 300 < 0.85, covered  # tokens of one document are not independent evidence
    assert 0.05 < np.median(widths) < 0.5


def close_pair(config):
    """Clusters 0 and 1 close (center cosine 0.8), cluster 2 far and twice as used: (stats, centers)."""
    rng = np.random.default_rng(8)
    n_seq, seq_len, d, k = 150, 32, 8, 3
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].T
    centers = np.stack([basis[0], 0.8 * basis[0] + 0.6 * basis[1], basis[2]])
    labels = rng.choice(k, (n_seq, seq_len), p=[0.25, 0.25, 0.5])
    x = 2.0 * centers[labels] + rng.standard_normal((n_seq, seq_len, d)) * 0.6
    p = np.eye(k)[labels] * 0.9 + 0.1 / k
    s, q, c = np.nonzero(p > 0)
    mem = SparseMemberships(s.astype(np.int32), q.astype(np.int32), c.astype(np.int32),
                            p[s, q, c].astype(np.float32), np.zeros(s.size, np.int32), n_seq, seq_len)
    chunk = DenseChunk(x.astype(np.float16), np.ones((n_seq, seq_len), bool), np.zeros((n_seq, seq_len), np.int32))
    return ChunkStatistics.compute("close", mem, chunk, k, config), centers


def test_hard_negatives_score_lower_for_the_close_pair():
    """Against random negatives every cluster looks well separated; against hard negatives
    (members of the nearest cluster) the close pair clearly does not, and the far cluster still does."""
    stats, centers = close_pair(StatisticsConfig(heldout_fraction=0.3, hard_negative_clusters=1))
    result = stats.fit_intervention_vectors(centers)
    assert result.hard_negatives[:2, 0].tolist() == [1, 0]
    for cluster in (0, 1):
        assert result.auroc[cluster] > 0.8
        assert result.auroc_hard_ci[cluster, 1] < result.auroc_ci[cluster, 0]  # intervals apart
        assert result.auroc_hard[cluster] < result.auroc[cluster] - 0.05
        assert result.diff_means_auroc_hard[cluster] < result.diff_means_auroc[cluster] - 0.05
    assert result.auroc_hard[2] > 0.9
    for name in ("auroc", "auroc_hard", "diff_means_auroc", "diff_means_auroc_hard"):
        ci = getattr(result, f"{name}_ci")
        assert ((ci[:, 0] <= getattr(result, name)) & (getattr(result, name) <= ci[:, 1])).all(), name
    assert (result.positive_tokens >= 50).all() and (result.hard_negative_tokens >= 50).all()
    assert (result.hard_negative_weight < result.negative_weight).all()


def _unit(v):
    return v / np.linalg.norm(v)


def test_stratified_reservoir_scores_like_all_heldout_tokens():
    """A small uniform reservoir topped up per cluster, each token weighted for its stratum,
    gives the AUROC of all held-out tokens (to within its interval)."""
    full, centers = close_pair(StatisticsConfig(heldout_fraction=0.3, heldout_sample_size=10**6))
    small, _ = close_pair(StatisticsConfig(heldout_fraction=0.3, heldout_sample_size=60, heldout_per_cluster=80))
    assert small.heldout.priority.size < full.heldout.priority.size / 3
    want, got = full.fit_intervention_vectors(centers), small.fit_intervention_vectors(centers)
    for name in ("auroc", "auroc_hard"):
        ci = getattr(got, f"{name}_ci")
        assert ((ci[:, 0] - 0.01 <= getattr(want, name)) & (getattr(want, name) <= ci[:, 1] + 0.01)).all(), name
    # the weights stand for every held-out token: positives + negatives of a cluster = all of them
    np.testing.assert_allclose(got.positive_weight + got.negative_weight, full.heldout.priority.size, rtol=1e-9)


def test_scores_need_the_vectors_read_back():
    """A reservoir loaded from disk holds no vectors: scoring it says how to read them back
    instead of failing on None deep in the algebra."""
    stats, centers = close_pair(StatisticsConfig(heldout_fraction=0.3))
    bare = VectorSample.from_arrays(stats.heldout.to_arrays())
    assert bare.vectors is None
    np.testing.assert_array_equal(bare.memberships, stats.heldout.memberships)  # saved sparse, read back exact
    with pytest.raises(ValueError, match="held-out reservoir holds no vectors.*read_vectors"):
        intervention_vectors(stats.moments, stats.fit_sample, bare, centers)
