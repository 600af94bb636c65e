"""Where the library calls scikit-learn or SciPy in place of a formula it once wrote by hand, or
keeps its own vectorised form of a library's number, the two agree: each case recomputes the
textbook formula by brute force on random data with ties and weights, and compares it to the
library call and to our function."""

import itertools

import numpy as np
import pytest
from scipy.stats import false_discovery_control
from scipy.stats.contingency import association
from sklearn.metrics import adjusted_rand_score, balanced_accuracy_score, roc_auc_score

from latent_atlas.analysis.auroc import auroc_interval, weighted_auroc
from latent_atlas.hierarchy.ensemble import adjusted_rand, contingency
from latent_atlas.hierarchy.outcomes import cluster_outcome_association
from latent_atlas.labels.measures import resampled_separations

SEEDS = range(5)


def brute_contingency(a, b):
    rows, cols = sorted(set(a.tolist())), sorted(set(b.tolist()))
    return np.array([[sum(1 for x, y in zip(a, b) if x == r and y == c) for c in cols] for r in rows])


def brute_ari(a, b):
    """Hubert & Arabie (1985) from the pair counts of all n (n - 1) / 2 item pairs."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    both = sum(a[i] == a[j] and b[i] == b[j] for i, j in pairs)
    in_a = sum(a[i] == a[j] for i, j in pairs)
    in_b = sum(b[i] == b[j] for i, j in pairs)
    expected = in_a * in_b / len(pairs)
    top = (in_a + in_b) / 2
    return 1.0 if top == expected else (both - expected) / (top - expected)


def brute_weighted_auroc(scores, pos_weight, neg_weight):
    """Sum over every (positive, negative) pair of weight x [win + tie / 2], over the total weight."""
    wins = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    return float(pos_weight @ wins @ neg_weight / (pos_weight.sum() * neg_weight.sum()))


def brute_cramers_v(table):
    n = table.sum()
    expected = np.outer(table.sum(1), table.sum(0)) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return np.sqrt(chi2 / n / (min(table.shape) - 1))


def brute_benjamini_hochberg(p):
    """p_(i) * m / i, made monotone from the largest p down, capped at 1, in the input order."""
    order = np.argsort(p)
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_contingency_and_adjusted_rand_match_the_pair_count_formula(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 60) * 10 - 7  # labels need not be 0..k-1
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 6, 60))
    np.testing.assert_array_equal(contingency(a, b), brute_contingency(a, b))
    assert adjusted_rand(a, b) == pytest.approx(brute_ari(a, b), abs=1e-12)
    assert adjusted_rand(a, b) == adjusted_rand_score(a, b)


def test_adjusted_rand_of_trivial_partitions():
    ones, singletons = np.zeros(8, int), np.arange(8)
    assert adjusted_rand(ones, ones) == brute_ari(ones, ones) == 1.0
    assert adjusted_rand(singletons, singletons) == brute_ari(singletons, singletons) == 1.0
    assert adjusted_rand(ones, singletons) == pytest.approx(brute_ari(ones, singletons), abs=1e-12)
    with pytest.raises(ValueError, match="partitions must be 1-D and the same length"):
        adjusted_rand(ones, singletons[:-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_auroc_and_its_interval_match_the_pairwise_formula(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.standard_normal(300), 1)  # many ties
    m = np.where(rng.random(300) < 0.2, 0.0, rng.random(300))  # soft memberships, some exactly 0
    expected = brute_weighted_auroc(scores, m, 1 - m)
    assert weighted_auroc(scores, m, 1 - m) == pytest.approx(expected, abs=1e-12)
    assert auroc_interval(scores, m, 1 - m, rng.integers(0, 30, 300))[0] == pytest.approx(expected, abs=1e-12)
    hard = (1 - m) * (rng.random(300) < 0.3)  # a subset of the negatives, as the hard negatives are
    assert weighted_auroc(scores, m, hard) == pytest.approx(brute_weighted_auroc(scores, m, hard), abs=1e-12)
    assert auroc_interval(scores, m, hard)[0] == pytest.approx(brute_weighted_auroc(scores, m, hard), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_resampled_separations_match_sklearn_with_counts_as_weights(seed):
    rng = np.random.default_rng(seed)
    pos, neg = np.round(rng.normal(0.5, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)  # ties across and within
    pos_counts = rng.multinomial(pos.size, np.full(pos.size, 1 / pos.size), 20)
    neg_counts = rng.multinomial(neg.size, np.full(neg.size, 1 / neg.size), 20)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    expected = [roc_auc_score(labels, np.r_[pos, neg], sample_weight=np.r_[p, n]) for p, n in zip(pos_counts, neg_counts)]
    np.testing.assert_allclose(resampled_separations(pos, neg, pos_counts, neg_counts),
                               2 * np.array(expected) - 1, rtol=0, atol=1e-12)
    hits, alarms = (pos > 0.5).astype(float), (neg > 0.5).astype(float)  # a yes/no predicate: 2 BA - 1
    expected = [2 * balanced_accuracy_score(labels, np.r_[hits, alarms], sample_weight=np.r_[p, n]) - 1
                for p, n in zip(pos_counts, neg_counts)]
    np.testing.assert_allclose(resampled_separations(hits, alarms, pos_counts, neg_counts, binary=True),
                               expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_cramers_v_and_fdr_match_their_formulas(seed):
    rng = np.random.default_rng(seed)
    clusters = rng.choice(["a", "b", "c", "d"], 200)
    outcomes = np.where(rng.random(200) < 0.3, np.char.add("o", clusters), rng.choice(["x", "y", "z"], 200))
    result = cluster_outcome_association(clusters.tolist(), outcomes.tolist(), resamples=99)
    np.testing.assert_array_equal(result.table, brute_contingency(clusters, outcomes))
    assert result.cramers_v == pytest.approx(brute_cramers_v(result.table), abs=1e-12)
    assert result.cramers_v == pytest.approx(association(result.table, method="cramer", correction=False), abs=1e-12)
    raw = np.array([c.p_value for c in result.cells])
    np.testing.assert_allclose([c.p_adjusted for c in result.cells], brute_benjamini_hochberg(raw), rtol=0, atol=1e-12)
    np.testing.assert_allclose(false_discovery_control(raw, method="bh"), brute_benjamini_hochberg(raw), rtol=0, atol=1e-12)
