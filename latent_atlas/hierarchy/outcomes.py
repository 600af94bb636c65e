"""Outcome analysis: are a document's clusters (per tree depth) associated with its outcome?

Documents are annotated with their cluster path; at each depth a contingency table
clusters x outcomes gets a test of independence and Cramér's V, plain and bias-corrected.
The chi-squared approximation is unreliable where an expected count is below 5; there the p-value
comes from Fisher's exact test for a 2x2 table, and for a larger one from a seeded Monte Carlo
permutation test of the chi-squared statistic (outcomes shuffled over documents, margins fixed).
Each cluster-vs-rest x outcome-vs-rest 2x2 table gets an over/under-representation p-value (Fisher
where its expected counts are small, else chi-squared), adjusted for the many cells of a depth by
Benjamini-Hochberg. A depth with one cluster, one outcome or no documents tests nothing: its
statistics are NaN and `reason` says why, rather than a silent V of 0.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_EXPECTED = 5.0  # the usual validity rule of thumb for the chi-squared approximation
PERMUTATION_RESAMPLES = 9_999  # Monte Carlo resamples: the p-value's standard error is at most 0.005
MIN_DOCUMENTS = 10  # fewer documents than this and a depth's test is reported as too small to say much
# Permuted outcome vectors held at once by the permutation test: bounds its memory to ~32 MB.
_PERMUTATION_VALUES = 1 << 22


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
    p_adjusted: float = float("nan")  # Benjamini-Hochberg over all cells of the depth


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
    cramers_v: float  # plain Cramér's V: biased upward, > 0 on independent data of finite size
    cramers_v_corrected: float  # Bergsma (2013) bias-corrected V: ~0 on independent data
    test: str  # "chi2", "fisher" (2x2, an expected count < 5), "permutation" (larger, an expected count < 5) or "none"
    cells: list[CellResult]
    reason: str = ""  # why nothing was tested (test == "none"), e.g. "one outcome only"

    @property
    def n_documents(self) -> int:
        return int(self.table.sum())

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


def cluster_outcome_association(clusters: Sequence[str], outcomes: Sequence[str], depth: int = 1,
                                resamples: int = PERMUTATION_RESAMPLES, seed: int = 0) -> Association:
    """Test of independence and Cramér's V of clusters [n_docs] vs outcomes [n_docs].

    `resamples` and `seed` drive the permutation test (tables larger than 2x2 with an expected
    count below 5); the stream is seeded per depth, so results are reproducible.
    """
    from scipy.stats import chi2_contingency, fisher_exact  # where used: scipy.stats/sklearn cost every run process ~1 s to import
    from scipy.stats.contingency import association
    from sklearn.metrics.cluster import contingency_matrix
    if len(clusters) != len(outcomes):
        raise ValueError(f"clusters and outcomes must have the same length, got {len(clusters)} and {len(outcomes)}")
    cluster_ids, ci = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    outcome_ids, oi = np.unique(np.asarray(outcomes, dtype=str), return_inverse=True)
    table = contingency_matrix(ci, oi)  # [clusters, outcomes], rows and columns in the ids' order
    reason = _untestable_reason(cluster_ids, outcome_ids, table)
    if reason:
        expected, nan = table.astype(float), float("nan")
        return Association(depth, cluster_ids.tolist(), outcome_ids.tolist(), table, expected, nan, nan, nan, nan,
                           "none", _cells(table, expected, cluster_ids, outcome_ids), reason)
    chi2, p, _, expected = chi2_contingency(table, correction=False)
    test, statistic = "chi2", float(chi2)
    if expected.min() < MIN_EXPECTED and table.shape == (2, 2):
        test, (statistic, p) = "fisher", fisher_exact(table)
    elif expected.min() < MIN_EXPECTED:
        test, p = "permutation", permutation_chi2_p(ci, oi, resamples, np.random.default_rng([seed, depth]))
    return Association(depth, cluster_ids.tolist(), outcome_ids.tolist(), table, expected, float(statistic),
                       float(p), float(association(table, method="cramer", correction=False)),
                       bias_corrected_cramers_v(table), test, _cells(table, expected, cluster_ids, outcome_ids))


def permutation_chi2_p(cluster_index: np.ndarray, outcome_index: np.ndarray, resamples: int,
                       rng: np.random.Generator) -> float:
    """Monte Carlo p-value of the chi-squared statistic of independence: the share of random
    permutations of the outcomes over documents [n] (both margins fixed) with a statistic at least
    the observed one, counting the observed (p >= 1 / (resamples + 1)). Exact when n! <= resamples.
    Indices are 0 .. r - 1 and 0 .. k - 1 with every value present (np.unique's inverse).
    """
    from scipy.stats import permutation_test
    from sklearn.metrics.cluster import contingency_matrix
    table = contingency_matrix(cluster_index, outcome_index)  # [r, k]
    r, k = table.shape
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()

    def chi2(permuted: np.ndarray, axis: int = -1) -> np.ndarray:  # permuted: [..., n] outcome indices
        permuted = np.moveaxis(permuted, axis, -1)
        rows = permuted.reshape(-1, permuted.shape[-1])  # one permutation per row
        codes = cluster_index * k + rows + (np.arange(len(rows)) * (r * k))[:, None]
        tables = np.bincount(codes.ravel(), minlength=len(rows) * r * k).reshape(-1, r, k)
        return ((tables - expected) ** 2 / expected).sum((1, 2)).reshape(permuted.shape[:-1])

    result = permutation_test((outcome_index,), chi2, permutation_type="pairings", vectorized=True,
                              n_resamples=resamples, batch=max(1, _PERMUTATION_VALUES // len(outcome_index)),
                              alternative="greater", rng=rng)
    return float(result.pvalue)


def bias_corrected_cramers_v(table: np.ndarray) -> float:
    """Bergsma (2013) bias-corrected Cramér's V of a contingency table [r, k] (r, k >= 2).

    Plain V² = φ² / min(r − 1, k − 1) has expectation ~(r − 1)(k − 1) / (n − 1) / min(...) under
    independence; the correction subtracts that from φ² and shrinks r and k accordingly.
    """
    from scipy.stats import chi2_contingency
    n = table.sum()
    r, k = table.shape
    phi2 = chi2_contingency(table, correction=False)[0] / n
    phi2_corrected = max(0.0, phi2 - (r - 1) * (k - 1) / (n - 1))
    r_corrected, k_corrected = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denominator = min(r_corrected - 1, k_corrected - 1)
    return float(np.sqrt(phi2_corrected / denominator)) if denominator > 0 else 0.0


def association_by_depth(paths: Sequence[Sequence[str]], outcomes: Sequence[str], max_depth: int | None = None,
                         resamples: int = PERMUTATION_RESAMPLES, seed: int = 0) -> list[Association]:
    """cluster_outcome_association at each depth 1 .. max_depth of the documents' paths."""
    columns = annotate_documents(paths, max_depth)
    return [cluster_outcome_association(col, outcomes, depth=d, resamples=resamples, seed=seed)
            for d, col in enumerate(columns.values(), start=1)]


def association_is_testable(results: Sequence[Association], min_documents: int = MIN_DOCUMENTS) -> tuple[bool, dict[int, str]]:
    """(passed, {depth: problem}): every depth has more than one cluster and one outcome and at least
    `min_documents` documents, so its statistics say something. False when there are no depths."""
    problems = {a.depth: a.reason or f"only {a.n_documents} documents (need {min_documents})"
                for a in results if a.reason or a.n_documents < min_documents}
    return bool(results) and not problems, problems


def association_rows(results: Sequence[Association]) -> list[dict]:
    """One row per (depth, cluster, outcome) cell, with its depth's Cramér's V and test, for a table."""
    return [{"depth": a.depth, "cluster": c.cluster, "outcome": c.outcome, "observed": c.observed,
             "expected": c.expected, "residual": c.residual, "log_odds": c.log_odds, "p_value": c.p_value,
             "p_adjusted": c.p_adjusted, "test": c.test, "depth_cramers_v": a.cramers_v,
             "depth_cramers_v_corrected": a.cramers_v_corrected, "depth_p_value": a.p_value, "depth_test": a.test,
             "depth_reason": a.reason}
            for a in results for c in a.cells]


def association_markdown(results: Sequence[Association], top: int = 3) -> str:
    """Markdown table: per depth and outcome, the `top` most over- and under-represented clusters
    (a depth that tests nothing gets one row saying why)."""
    lines = ["| depth | outcome | over-represented | under-represented |", "|---|---|---|---|"]
    for a in results:
        if a.reason:
            lines.append(f"| {a.depth} | – | not tested: {a.reason} | |")
            continue
        for outcome in a.outcomes:
            over = ", ".join(f"{c.cluster} ({c.residual:+.1f})" for c in a.most_over(outcome, top))
            under = ", ".join(f"{c.cluster} ({c.residual:+.1f})" for c in a.most_under(outcome, top))
            lines.append(f"| {a.depth} | {outcome} | {over} | {under} |")
    return "\n".join(lines)


def _untestable_reason(cluster_ids: np.ndarray, outcome_ids: np.ndarray, table: np.ndarray) -> str:
    """Why a table supports no test of association ("" when it does)."""
    if table.sum() == 0:
        return "no documents"
    if len(outcome_ids) < 2:
        return f"one outcome only (all {table.sum()} documents are {str(outcome_ids[0])!r})"
    if len(cluster_ids) < 2:
        return f"one cluster only (all {table.sum()} documents are in {str(cluster_ids[0])!r})"
    return ""


def _cells(table: np.ndarray, expected: np.ndarray, clusters, outcomes) -> list[CellResult]:
    from scipy.stats import chi2_contingency, false_discovery_control, fisher_exact
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
    if cells:  # many cells are tested at once: BH keeps the expected share of false discoveries at the level
        for cell, adjusted in zip(cells, false_discovery_control([c.p_value for c in cells], method="bh")):
            cell.p_adjusted = float(adjusted)
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
