"""Documents with outcomes: a CSV becomes a text file the corpus reader takes, and paths meet outcomes
in one table (one row per document with both, one column per depth of the tree)."""

import csv

import numpy as np
import pytest

from latent_atlas.data.documents import file_documents, read_text
from latent_atlas.hierarchy.outcome_documents import csv_document_paths, csv_text_file, document_paths_table
from latent_atlas.hierarchy.outcomes import OutcomesError
from latent_atlas.hierarchy.tree import ClusterTree, TreeNode
from latent_atlas.hierarchy.tree_config import TreeConfig


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["body", "sentiment"])
        writer.writerows(rows)
    return path


def test_csv_rows_become_documents_named_by_their_line(tmp_path):
    rows = [["Shares rallied.", "pos"], ["A dull, tiresome film.", "neg"], ["", "pos"]]
    source = _write_csv(tmp_path / "outcomes.csv", rows)
    text_file, labels = csv_text_file(source, "body", "sentiment", tmp_path / "texts")
    assert labels == {"line2": "pos", "line3": "neg", "line4": "pos"}
    docs = file_documents(text_file)
    assert [d.doc_id for d in docs] == ["line2", "line3", "line4"]
    assert [read_text(d) for d in docs] == [r[0] for r in rows]
    # named by content: the same CSV maps to the same file, an edited one to another
    assert csv_text_file(source, "body", "sentiment", tmp_path / "texts")[0] == text_file
    edited = _write_csv(tmp_path / "edited.csv", rows[:2])
    assert csv_text_file(edited, "body", "sentiment", tmp_path / "texts")[0] != text_file


def test_bad_csv_or_method_leaves_nothing_on_disk(tmp_path):
    source = _write_csv(tmp_path / "outcomes.csv", [["Shares rallied.", "pos"]])
    with pytest.raises(OutcomesError, match="label_column 'label'"):
        csv_text_file(source, "body", "label", tmp_path / "texts")
    tree = ClusterTree({"root": _node("root", None, 0, [])}, TreeConfig())
    with pytest.raises(ValueError, match="method must be 'mean' or 'majority', got 'median'"):
        csv_document_paths(source, "body", "sentiment", tree, "median", None, 8, tmp_path / "texts")
    assert not (tmp_path / "texts").exists()


def _node(node_id, parent, depth, children):
    return TreeNode(node_id, parent, depth, 1, float("nan"), np.zeros(2), np.arange(1), children=list(children))


def test_document_paths_table_keeps_documents_with_both_in_outcome_order():
    tree = ClusterTree({"root": _node("root", None, 0, ["0", "1"]), "0": _node("0", "root", 1, ["0.0", "0.1"]),
                        "1": _node("1", "root", 1, []), "0.0": _node("0.0", "0", 2, []),
                        "0.1": _node("0.1", "0", 2, [])}, TreeConfig())
    paths = {"a": ["0", "0.1"], "b": ["1"], "c": ["0", "0.0"]}  # c has no outcome, d no path
    outcomes = {"b": "sport", "d": "tech", "a": "business"}
    table = document_paths_table(paths, outcomes, tree).to_pydict()
    assert table["doc_id"] == ["b", "a"] and table["outcome"] == ["sport", "business"]
    assert table["path"] == ["1", "0/0.1"]
    assert table["cluster_depth_1"] == ["1", "0"] and table["cluster_depth_2"] == ["1", "0.1"]  # a leaf keeps its id
    assert [c for c in table if c.startswith("cluster_depth_")] == ["cluster_depth_1", "cluster_depth_2"]
