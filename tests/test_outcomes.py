"""Outcome analysis: effect sizes at the extremes, Fisher on small 2x2 tables, a permutation test on
larger ones (checked against brute-force enumeration), BH-adjusted cells, bias-corrected V, CSV errors."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency, false_discovery_control, fisher_exact
from scipy.stats.contingency import association

from latent_atlas.hierarchy.outcomes import (OutcomesError, annotate_documents, association_by_depth,
                                             association_is_testable, cluster_outcome_association, load_outcomes_csv,
                                             permutation_chi2_p)


def test_cramers_v_is_one_for_perfect_association():
    clusters = ["0"] * 40 + ["1"] * 40 + ["2"] * 40
    outcomes = ["sport"] * 40 + ["tech"] * 40 + ["politics"] * 40
    result = cluster_outcome_association(clusters, outcomes)
    assert result.cramers_v == pytest.approx(1.0)
    assert result.test == "chi2" and result.p_value < 1e-20
    top = result.most_over("tech", n=1)[0]
    assert top.cluster == "1" and top.residual > 5 and top.log_odds > 3
    assert result.most_under("tech", n=1)[0].residual < 0


def test_cramers_v_is_zero_for_independent_outcome():
    # every cluster has the same outcome mix: exactly independent
    clusters = [c for c in "abc" for _ in range(60)]
    outcomes = ["x", "y", "y"] * 60
    result = cluster_outcome_association(clusters, outcomes)
    assert result.cramers_v == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(1.0)
    assert all(abs(c.residual) < 1e-9 for c in result.cells)


def test_fisher_is_used_when_expected_counts_are_small():
    clusters = ["a"] * 4 + ["b"] * 4
    outcomes = ["ok", "ok", "ok", "bad", "bad", "bad", "bad", "ok"]
    result = cluster_outcome_association(clusters, outcomes)
    assert result.expected.min() < 5
    assert result.test == "fisher"
    table = np.array([[1, 3], [3, 1]])  # rows a, b; columns bad, ok (sorted)
    np.testing.assert_array_equal(result.table, table)
    assert result.p_value == pytest.approx(fisher_exact(table)[1])
    assert all(c.test == "fisher" for c in result.cells)


def test_large_cells_use_chi2_and_small_ones_fisher_in_the_same_table():
    clusters = ["big"] * 100 + ["big2"] * 100 + ["tiny"] * 3
    outcomes = ["x"] * 50 + ["y"] * 50 + ["x"] * 50 + ["y"] * 50 + ["x"] * 3
    cells = {(c.cluster, c.outcome): c for c in cluster_outcome_association(clusters, outcomes).cells}
    assert cells[("big", "x")].test == "chi2"
    assert cells[("tiny", "x")].test == "fisher"


def test_paths_are_annotated_per_depth_and_tested_per_depth():
    paths = [["0", "0.0"]] * 30 + [["0", "0.1"]] * 30 + [["1"]] * 30
    outcomes = ["a"] * 30 + ["b"] * 30 + ["a"] * 30
    columns = annotate_documents(paths)
    assert columns["cluster_depth_1"][:2] == ["0", "0"] and columns["cluster_depth_2"][-1] == "1"
    depth1, depth2 = association_by_depth(paths, outcomes)
    assert depth1.cramers_v < 0.8  # depth 1 merges the a/b split
    assert depth2.cramers_v == pytest.approx(1.0)


def test_load_outcomes_csv_and_its_errors(tmp_path):
    good = tmp_path / "outcomes.csv"
    good.write_text('text,label\n"hello, world",yes\nbye,no\n')
    assert load_outcomes_csv(good, "text", "label") == (["hello, world", "bye"], ["yes", "no"])
    with pytest.raises(OutcomesError, match=r"outcomes\.csv.*label_column 'category'"):
        load_outcomes_csv(good, "text", "category")
    empty_label = tmp_path / "gaps.csv"
    empty_label.write_text("text,label\nhi,\n")
    with pytest.raises(OutcomesError, match=r"gaps\.csv: line 2: column 'label'"):
        load_outcomes_csv(empty_label, "text", "label")
    with pytest.raises(OutcomesError, match="missing.csv"):
        load_outcomes_csv(tmp_path / "missing.csv", "text", "label")


def test_association_rows_and_markdown_cover_every_cell():
    from latent_atlas.hierarchy.outcomes import association_markdown, association_rows, parse_path, path_text

    paths = [["0", "0.0"]] * 6 + [["0", "0.1"]] * 4 + [["1"]] * 5
    outcomes = ["a"] * 6 + ["b"] * 4 + ["b"] * 5
    assert [parse_path(path_text(p)) for p in paths + [[]]] == paths + [[]] and path_text([]) == "root"
    results = association_by_depth(paths, outcomes, 2)
    rows = association_rows(results)
    for depth in (1, 2):  # every document counted once per depth
        assert sum(r["observed"] for r in rows if r["depth"] == depth) == len(paths)
    assert {r["depth_cramers_v"] for r in rows if r["depth"] == 2} == {results[1].cramers_v}
    markdown = association_markdown(results, top=1).splitlines()
    assert len(markdown) == 2 + 2 * 2  # header, rule, (depth, outcome) rows
    assert markdown[2].startswith("| 1 | a | 0 (+")


# 8 documents, 3 clusters x 4 outcomes: every expected count is below 5, and all 8! orderings of
# the outcomes can be enumerated for the exact permutation p-value.
SMALL_CLUSTERS = ["a", "a", "a", "b", "b", "b", "c", "c"]
SMALL_OUTCOMES = ["w", "x", "x", "y", "y", "z", "w", "z"]


def _chi2(clusters: np.ndarray, outcomes: np.ndarray) -> float:
    table = np.zeros((clusters.max() + 1, outcomes.max() + 1))
    np.add.at(table, (clusters, outcomes), 1)
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_small_3x4_table_uses_a_permutation_test_that_matches_enumeration():
    result = cluster_outcome_association(SMALL_CLUSTERS, SMALL_OUTCOMES)
    assert result.table.shape == (3, 4) and result.expected.max() < 5
    assert result.test == "permutation"
    clusters = np.unique(SMALL_CLUSTERS, return_inverse=True)[1]
    outcomes = np.unique(SMALL_OUTCOMES, return_inverse=True)[1]
    observed = _chi2(clusters, outcomes)
    assert result.statistic == pytest.approx(observed)
    null = [_chi2(clusters, np.array(order)) for order in itertools.permutations(outcomes)]
    exact = np.mean(np.array(null) >= observed - 1e-9)
    # 9,999 resamples: standard error sqrt(p(1 - p) / 9999) ~ 0.0044 at p ~ 0.26
    assert result.p_value == pytest.approx(exact, abs=0.02)
    assert abs(result.p_value - chi2_contingency(result.table)[1]) > 0.05  # the asymptotic p would mislead here
    again = cluster_outcome_association(SMALL_CLUSTERS, SMALL_OUTCOMES)
    assert again.p_value == result.p_value  # seeded


def test_permutation_p_agrees_with_fisher_on_a_symmetric_2x2():
    # equal margins: the hypergeometric law is symmetric about its mean, so ordering tables by
    # chi-squared (the permutation test) and by probability (Fisher) give the same p-value
    clusters = np.array([0] * 8 + [1] * 8)
    outcomes = np.array([0] + [1] * 7 + [0] * 7 + [1])
    fisher = fisher_exact([[1, 7], [7, 1]])[1]
    permuted = permutation_chi2_p(clusters, outcomes, 9_999, np.random.default_rng(0))
    assert permuted == pytest.approx(fisher, abs=0.005)  # standard error ~0.001 at p ~ 0.01


def test_cell_p_values_are_benjamini_hochberg_adjusted():
    rng = np.random.default_rng(3)
    clusters = rng.choice(list("abcd"), 300)
    outcomes = np.where(clusters == "a", "x", rng.choice(["x", "y", "z"], 300))
    result = cluster_outcome_association(clusters, outcomes)
    raw = [c.p_value for c in result.cells]
    np.testing.assert_allclose([c.p_adjusted for c in result.cells], false_discovery_control(raw, method="bh"))
    assert all(c.p_adjusted >= c.p_value for c in result.cells)


def test_bias_corrected_cramers_v_is_near_zero_on_independent_data():
    plain, corrected = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        clusters, outcomes = rng.integers(0, 10, 200).astype(str), rng.integers(0, 5, 200).astype(str)
        result = cluster_outcome_association(clusters, outcomes, resamples=99)
        assert result.cramers_v == pytest.approx(association(result.table, method="cramer"))
        plain.append(result.cramers_v)
        corrected.append(result.cramers_v_corrected)
    # plain V of 10 x 5 independent categories on 200 documents is ~sqrt(36 / 200 / 4) = 0.21 by bias
    assert min(plain) > 0.15
    # corrected: exactly 0 wherever chi-squared falls below its null mean, else the root of noise
    assert sum(v == 0.0 for v in corrected) >= 6 and np.mean(corrected) < 0.3 * np.mean(plain)
    perfect = cluster_outcome_association(["0"] * 40 + ["1"] * 40, ["x"] * 40 + ["y"] * 40)
    assert perfect.cramers_v_corrected == pytest.approx(1.0)


@pytest.mark.parametrize("clusters, outcomes, reason", [
    (["a", "b", "a", "b"], ["sport"] * 4, "one outcome only (all 4 documents are 'sport')"),
    (["root"] * 4, ["x", "y", "x", "y"], "one cluster only"),
    ([], [], "no documents"),
])
def test_a_depth_without_categories_says_why_instead_of_v_zero(clusters, outcomes, reason):
    result = cluster_outcome_association(clusters, outcomes)
    assert result.test == "none" and reason in result.reason
    assert math.isnan(result.cramers_v) and math.isnan(result.cramers_v_corrected) and math.isnan(result.p_value)
    passed, problems = association_is_testable([result])
    assert not passed and reason in problems[1]


def test_association_testable_passes_only_with_enough_documents_at_every_depth():
    paths = [["0", "0.0"]] * 30 + [["0", "0.1"]] * 30 + [["1"]] * 30
    outcomes = ["a"] * 30 + ["b"] * 30 + ["a"] * 30
    assert association_is_testable(association_by_depth(paths, outcomes)) == (True, {})
    pick = [0, 1, 2, 30, 31, 32, 88, 89]
    few = association_by_depth([paths[i] for i in pick], [outcomes[i] for i in pick])
    passed, problems = association_is_testable(few)
    assert not passed and problems == {1: "only 8 documents (need 10)", 2: "only 8 documents (need 10)"}
    assert association_is_testable([]) == (False, {})
