"""Outcome analysis: are a document's clusters (per tree depth) associated with its outcome?

Documents are annotated with their cluster path; at each depth a contingency table
clusters x outcomes gets a chi-squared test and Cramér's V. Cells whose expected count is below 5
make the chi-squared approximation unreliable, so there (and for 2x2 tables) Fisher's exact test
is used instead: on the whole table when it is 2x2, and on each cluster-vs-rest x outcome-vs-rest
2x2 table for the per-cell over/under-representation p-values.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import chi2_contingency, fisher_exact

MIN_EXPECTED = 5.0  # the usual validity rule of thumb for the chi-squared approximation


class OutcomesError(ValueError):
    """An outcomes file is unusable; the message names the file and the column."""


@dataclass
class CellResult:
    """One (cluster, outcome) cell: how over- or under-represented the outcome is in the cluster."""

    cluster: str
    outcome: str
    observed: int
    expected: float
    residual: float  # adjusted standardized residual; |r| > 2 is notable
    log_odds: float  # log odds ratio of outcome inside vs outside the cluster (0.5 added to each cell)
    p_value: float
    test: str  # "fisher" (some expected count < 5) or "chi2"


@dataclass
class Association:
    """Association between clusters and outcomes at one depth."""

    depth: int
    clusters: list[str]
    outcomes: list[str]
    table: np.ndarray  # [n_clusters, n_outcomes] document counts
    expected: np.ndarray  # [n_clusters, n_outcomes] under independence
    statistic: float  # chi-squared (no continuity correction), or the odds ratio when test == "fisher"
    p_value: float
    cramers_v: float
    test: str  # "chi2" or "fisher" (2x2 with an expected count < 5)
    cells: list[CellResult]

    def most_over(self, outcome: str, n: int = 3) -> list[CellResult]:
        """Clusters where `outcome` is most over-represented (largest residual)."""
        return sorted((c for c in self.cells if c.outcome == outcome), key=lambda c: -c.residual)[:n]

    def most_under(self, outcome: str, n: int = 3) -> list[CellResult]:
        """Clusters where `outcome` is most under-represented (most negative residual)."""
        return sorted((c for c in self.cells if c.outcome == outcome), key=lambda c: c.residual)[:n]


def cluster_at_depth(paths: Sequence[Sequence[str]], depth: int) -> list[str]:
    """Node id of each path at `depth` (1 = top clusters); a path ending earlier keeps its leaf."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (the root is depth 0), got {depth}")
    return [p[min(depth, len(p)) - 1] if p else "root" for p in paths]


def annotate_documents(paths: Sequence[Sequence[str]], max_depth: int | None = None) -> dict[str, list[str]]:
    """Columns cluster_depth_1 .. cluster_depth_D of the documents' paths (ready for a table)."""
    max_depth = max_depth or max((len(p) for p in paths), default=1)
    return {f"cluster_depth_{d}": cluster_at_depth(paths, d) for d in range(1, max_depth + 1)}


def path_text(path: Sequence[str]) -> str:
    """A path as one string, "0/0.1" ("root" for the empty path), for a table column."""
    return "/".join(path) or "root"


def parse_path(text: str) -> list[str]:
    """Inverse of path_text."""
    return [] if text == "root" else text.split("/")


def cluster_outcome_association(clusters: Sequence[str], outcomes: Sequence[str], depth: int = 1) -> Association:
    """Chi-squared / Fisher test and Cramér's V of clusters [n_docs] vs outcomes [n_docs]."""
    if len(clusters) != len(outcomes):
        raise ValueError(f"clusters and outcomes must have the same length, got {len(clusters)} and {len(outcomes)}")
    cluster_ids, ci = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    outcome_ids, oi = np.unique(np.asarray(outcomes, dtype=str), return_inverse=True)
    table = np.zeros((len(cluster_ids), len(outcome_ids)), dtype=np.int64)
    np.add.at(table, (ci, oi), 1)
    n = int(table.sum())
    if min(table.shape) < 2:
        # one cluster or one outcome: nothing can be associated
        expected = table.astype(float)
        return Association(depth, cluster_ids.tolist(), outcome_ids.tolist(), table, expected,
                           0.0, 1.0, 0.0, "none", _cells(table, expected, cluster_ids, outcome_ids))
    chi2, p, _, expected = chi2_contingency(table, correction=False)
    cramers_v = float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))
    test, statistic = "chi2", float(chi2)
    if table.shape == (2, 2) and expected.min() < MIN_EXPECTED:
        test, (statistic, p) = "fisher", fisher_exact(table)
    return Association(depth, cluster_ids.tolist(), outcome_ids.tolist(), table, expected, float(statistic),
                       float(p), cramers_v, test, _cells(table, expected, cluster_ids, outcome_ids))


def association_by_depth(paths: Sequence[Sequence[str]], outcomes: Sequence[str],
                         max_depth: int | None = None) -> list[Association]:
    """cluster_outcome_association at each depth 1 .. max_depth of the documents' paths."""
    columns = annotate_documents(paths, max_depth)
    return [cluster_outcome_association(col, outcomes, depth=d)
            for d, col in enumerate(columns.values(), start=1)]


def association_rows(results: Sequence[Association]) -> list[dict]:
    """One row per (depth, cluster, outcome) cell, with its depth's Cramér's V and test, for a table."""
    return [{"depth": a.depth, "cluster": c.cluster, "outcome": c.outcome, "observed": c.observed,
             "expected": c.expected, "residual": c.residual, "log_odds": c.log_odds, "p_value": c.p_value,
             "test": c.test, "depth_cramers_v": a.cramers_v, "depth_p_value": a.p_value, "depth_test": a.test}
            for a in results for c in a.cells]


def association_markdown(results: Sequence[Association], top: int = 3) -> str:
    """Markdown table: per depth and outcome, the `top` most over- and under-represented clusters."""
    lines = ["| depth | outcome | over-represented | under-represented |", "|---|---|---|---|"]
    for a in results:
        for outcome in a.outcomes:
            over = ", ".join(f"{c.cluster} ({c.residual:+.1f})" for c in a.most_over(outcome, top))
            under = ", ".join(f"{c.cluster} ({c.residual:+.1f})" for c in a.most_under(outcome, top))
            lines.append(f"| {a.depth} | {outcome} | {over} | {under} |")
    return "\n".join(lines)


def _cells(table: np.ndarray, expected: np.ndarray, clusters, outcomes) -> list[CellResult]:
    n = table.sum()
    row, col = table.sum(1), table.sum(0)
    cells = []
    for i, cluster in enumerate(clusters):
        for j, outcome in enumerate(outcomes):
            a = int(table[i, j])
            two_by_two = np.array([[a, row[i] - a], [col[j] - a, n - row[i] - col[j] + a]])
            e = np.outer(two_by_two.sum(1), two_by_two.sum(0)) / max(n, 1)
            denom = np.sqrt(expected[i, j] * (1 - row[i] / n) * (1 - col[j] / n)) if n else 0.0
            residual = float((a - expected[i, j]) / denom) if denom > 0 else 0.0
            log_odds = float(np.log((two_by_two[0, 0] + 0.5) * (two_by_two[1, 1] + 0.5))
                             - np.log((two_by_two[0, 1] + 0.5) * (two_by_two[1, 0] + 0.5)))
            if e.min() < MIN_EXPECTED:
                test, p = "fisher", float(fisher_exact(two_by_two)[1])
            elif min(two_by_two.sum(1).min(), two_by_two.sum(0).min()) == 0:
                test, p = "chi2", 1.0
            else:
                test, p = "chi2", float(chi2_contingency(two_by_two, correction=False)[1])
            cells.append(CellResult(str(cluster), str(outcome), a, float(expected[i, j]), residual, log_odds, p, test))
    return cells


def load_outcomes_csv(path: str | Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and labels from a CSV with a header row; errors name the file and the column."""
    path = Path(path)
    if not path.is_file():
        raise OutcomesError(f"{path}: outcomes file not found")
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for name, column in (("text_column", text_column), ("label_column", label_column)):
            if column not in header:
                raise OutcomesError(f"{path}: {name} {column!r} is not a column; the header has {header}")
        texts, labels = [], []
        for line, row in enumerate(reader, start=2):
            label = row.get(label_column)
            if label is None or not label.strip():
                raise OutcomesError(f"{path}: line {line}: column {label_column!r} is empty; every row needs a label")
            texts.append(row.get(text_column) or "")
            labels.append(label.strip())
    if not texts:
        raise OutcomesError(f"{path}: no rows under the header; expected columns {text_column!r} and {label_column!r}")
    return texts, labels
