"""What the atlas viewer shows, read from a finished ATLAS_HOME: the results directory (through
`ClusterAnalyzer`), the label records, the token and document trees, the documents' tree paths and
the outcome association. Only the results directory is required; every other artifact is optional
and is None (or empty) when it has not been materialized, so the site says so instead of failing.

    ATLAS_HOME/results/                       ClusterAnalyzer (stats, exemplars, vectors, centers)
    ATLAS_HOME/labels/clusters/*.json         labels (LabelCache, through the analyzer)
    ATLAS_HOME/tensors/cluster_tree.npz       token tree (ClusterTree)
    ATLAS_HOME/tensors/document_tree.npz      document tree
    ATLAS_HOME/tables/document_paths.parquet  doc_id, outcome, path per document
    ATLAS_HOME/tables/outcome_association.parquet  Cramér's V per depth, cells per node and outcome
    ATLAS_HOME/tables/node_labels.parquet     tree node labels with their confidence (node_labels)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from latent_atlas.hierarchy.outcomes import parse_path
from latent_atlas.hierarchy.tree import ROOT, ClusterTree
from latent_atlas.reading.clusters import ClusterAnalyzer


@dataclass
class AtlasContents:
    """Everything one site is rendered from."""

    home: Path
    analyzer: ClusterAnalyzer
    token_tree: ClusterTree | None  # tree of token vectors; nodes map atlas clusters (soft_clusters)
    document_tree: ClusterTree | None
    document_paths: list[dict] = field(default_factory=list)  # doc_id, outcome, path ("0/0.1")
    outcome_rows: list[dict] = field(default_factory=list)  # outcome_association rows
    node_labels: dict[tuple[str, str], dict] = field(default_factory=dict)  # (tree, node id) -> label, confidence
    missing: list[str] = field(default_factory=list)  # optional artifacts that were not found, for the page footer

    @property
    def n_clusters(self) -> int:
        return self.analyzer.n_clusters

    def centers(self) -> np.ndarray | None:
        """Cluster centers [k, d] (unit rows) as the results directory stored them."""
        return self.analyzer.arrays_.get("centers")


def load_contents(home: str | Path) -> AtlasContents:
    """Read a finished home. Raises FileNotFoundError naming the results directory if it is absent."""
    home = Path(home)
    analyzer = ClusterAnalyzer(home / "results", home / "labels" / "clusters")
    missing: list[str] = []
    trees = {}
    for name in ("cluster_tree", "document_tree"):
        path = home / "tensors" / f"{name}.npz"
        trees[name] = ClusterTree.load(path) if path.exists() else None
        if trees[name] is None:
            missing.append(str(path.relative_to(home)))
    tables = {}
    for name in ("document_paths", "outcome_association"):
        path = home / "tables" / f"{name}.parquet"
        tables[name] = pq.read_table(path).to_pylist() if path.exists() else []
        if not path.exists():
            missing.append(str(path.relative_to(home)))
    if not analyzer.labels():
        missing.append("labels/clusters")
    nodes = home / "tables" / "node_labels.parquet"  # optional and not an input of atlas_report: shown when there
    node_labels = {(r["tree"], r["node_id"]): {"label": r["label"], "confidence": r.get("confidence")}
                   for r in (pq.read_table(nodes).to_pylist() if nodes.exists() else [])}
    return AtlasContents(home, analyzer, trees["cluster_tree"], trees["document_tree"],
                         tables["document_paths"], tables["outcome_association"], node_labels, missing)


def cluster_tree_paths(tree: ClusterTree | None, n_clusters: int) -> list[str]:
    """Each atlas cluster's node in the token tree ("0.0.2"; "" when the tree does not map it):
    from the root, the child holding the largest share of the cluster's members, while one does."""
    if tree is None:
        return [""] * n_clusters
    out = []
    for c in range(n_clusters):
        node, path = ROOT, ""
        while True:
            holding = [(kid.soft_clusters[c], kid.id) for kid in tree.children(node) if c in kid.soft_clusters]
            if not holding:
                break
            node = path = max(holding)[1]
        out.append(path)
    return out


def branch_of(path: str) -> str:
    """Depth-1 node of a tree path ("0.0.2" -> "0"); "" for an unmapped cluster."""
    return path.split(".")[0] if path else ""


def document_node_outcomes(document_paths: list[dict]) -> dict[str, Counter]:
    """Outcome counts of the documents under every document-tree node (the root included)."""
    counts: dict[str, Counter] = {}
    for row in document_paths:
        for node in [ROOT, *parse_path(row["path"])]:
            counts.setdefault(node, Counter())[str(row.get("outcome", ""))] += 1
    return counts


def outcome_by_depth(rows: list[dict], alpha: float = 0.05) -> list[dict]:
    """Per depth: Cramér's V (and its test) and, per outcome category, the document-tree nodes where
    it is over- and under-represented (adjusted p < alpha), strongest first."""
    depths: dict[int, dict] = {}
    for r in rows:
        d = depths.setdefault(int(r["depth"]), {
            "depth": int(r["depth"]), "cramers_v": r.get("depth_cramers_v"),
            "cramers_v_corrected": r.get("depth_cramers_v_corrected"), "p_value": r.get("depth_p_value"),
            "test": r.get("depth_test", ""), "reason": r.get("depth_reason", ""), "categories": {}})
        category = d["categories"].setdefault(str(r["outcome"]), {"over": [], "under": []})
        p = r.get("p_adjusted")
        if p is not None and np.isfinite(p) and p < alpha:
            cell = {"node": str(r["cluster"]), "observed": r["observed"], "expected": r["expected"],
                    "residual": r["residual"], "p_adjusted": p}
            category["over" if r["residual"] > 0 else "under"].append(cell)
    for d in depths.values():
        for category in d["categories"].values():
            category["over"].sort(key=lambda cell: -cell["residual"])
            category["under"].sort(key=lambda cell: cell["residual"])
    return [depths[k] for k in sorted(depths)]
