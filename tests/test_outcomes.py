"""Outcome analysis: effect sizes at the extremes, Fisher on small tables, CSV errors."""

import numpy as np
import pytest
from scipy.stats import fisher_exact

from latent_atlas.outcomes import (
    OutcomesError,
    annotate_documents,
    association_by_depth,
    cluster_outcome_association,
    load_outcomes_csv,
)


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
    from latent_atlas.outcomes import association_markdown, association_rows, parse_path, path_text

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
