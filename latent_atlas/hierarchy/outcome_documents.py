"""Documents placed on a tree with their outcome: the table outcome analysis tests.

Outcomes come from the corpus (each sampled document's category) or from a CSV of texts and labels.
A CSV is converted once to a Parquet text file the corpus reader takes (its rows named by CSV line),
and its texts go through the chunks' own path (tokenizer windows, model layer, whitening) before they
meet the tree, so a CSV text lands where the same text in the corpus would.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.corpus import tokenize_documents
from latent_atlas.data.documents import Document, file_documents
from latent_atlas.data.models import LoadedModel
from latent_atlas.data.tables import write_table
from latent_atlas.data.token_activations import sequence_activations
from latent_atlas.data.whitening import Whitening
from latent_atlas.hierarchy.outcomes import annotate_documents, load_outcomes_csv, path_text
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.tree import ClusterTree

METHODS = ("mean", "majority")  # a document's path: of its mean-pooled vector, or its tokens' majority

Paths = dict[str, list[str]]  # doc id -> node ids from the root's child down


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be 'mean' or 'majority', got {method!r}")


@dataclass
class TextEmbedding:
    """How texts become whitened token vectors: the model, layer and whitening of the chunks."""

    loaded: LoadedModel
    layer: int
    whitening: Whitening
    sequence_length: int
    memory_budget_mb: float

    def token_vectors(self, docs: list[Document], documents_per_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Whitened vectors of the documents' attended tokens, documents_per_batch documents at a time:
        yields (x [m, d] float32, doc ids [m])."""
        for start in range(0, len(docs), documents_per_batch):
            tokens = tokenize_documents(docs[start:start + documents_per_batch], self.loaded.tokenizer,
                                        self.sequence_length)
            acts = sequence_activations(self.loaded, tokens, self.layer, self.memory_budget_mb)
            whitened = self.whitening.transform_chunk(DenseChunk(acts, tokens.analysis_mask, tokens.token_ids))
            seq, pos = np.nonzero(tokens.analysis_mask)
            yield whitened[seq, pos].astype(np.float32), np.asarray(tokens.doc_ids)[seq]


def csv_text_file(csv_path: str | Path, text_column: str, label_column: str, out_dir: Path) -> tuple[Path, dict[str, str]]:
    """The CSV's texts as a Parquet text file under out_dir (named by the CSV's content hash), and each
    row's label by doc id ("line<n>", the row's CSV line; the header is line 1)."""
    texts, labels = load_outcomes_csv(csv_path, text_column, label_column)
    path = Path(out_dir) / f"{hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()[:16]}.parquet"
    ids = [f"line{i + 2}" for i in range(len(texts))]
    write_table(pa.table({"id": ids, "text": texts, "category": labels}), path)
    return path, dict(zip(ids, labels))


def csv_document_paths(csv_path: str | Path, text_column: str, label_column: str, tree: ClusterTree, method: str,
                       embedding: TextEmbedding, documents_per_batch: int, text_dir: Path) -> tuple[Paths, dict[str, str]]:
    """(path, label) of every CSV row, its text embedded a batch of documents at a time (bounds memory)."""
    _check_method(method)
    text_file, outcomes = csv_text_file(csv_path, text_column, label_column, text_dir)
    paths: Paths = {}
    for x, docs in embedding.token_vectors(file_documents(text_file), documents_per_batch):
        paths.update(tree.assign_document_paths(x, docs, method))
    return paths, outcomes


def sample_document_paths(sample: HierarchySample, tree: ClusterTree, method: str) -> tuple[Paths, dict[str, str]]:
    """(path, category) of the sample's documents: the path of each document's vector ('mean', when the
    sample has document vectors), else the majority over its sampled tokens."""
    _check_method(method)
    outcomes = dict(zip(sample.doc_ids.tolist(), sample.doc_categories.tolist()))
    if method == "mean" and len(sample.doc_vectors):
        return dict(zip(sample.doc_ids.tolist(), tree.assign_paths(sample.doc_vectors))), outcomes
    paths = tree.assign_document_paths(sample.vectors, sample.doc_id, "majority")
    outcomes.update(zip(sample.doc_id.tolist(), sample.category.tolist()))
    return paths, outcomes


def document_paths_table(paths: Paths, outcomes: dict[str, str], tree: ClusterTree) -> pa.Table:
    """One row per document with both a path and an outcome: doc_id, outcome, path and one
    cluster_depth_<d> column per depth of the tree (at least cluster_depth_1)."""
    doc_ids = [d for d in outcomes if d in paths]
    max_depth = max((n.depth for n in tree.nodes.values()), default=1) or 1
    ordered = [paths[d] for d in doc_ids]
    return pa.table({"doc_id": doc_ids, "outcome": [outcomes[d] for d in doc_ids],
                     "path": [path_text(p) for p in ordered], **annotate_documents(ordered, max_depth)})
