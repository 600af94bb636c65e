"""One bounded sample of a corpus for the hierarchy: a seeded uniform reservoir of attended tokens,
drawn by streaming over chunks, plus every document's summed unit token vector.

Every token gets a priority from a generator seeded by (seed, chunk key); the `size` smallest
priorities over all chunks are a uniform sample without replacement. Only the current chunk and the
kept rows are in memory, and a chunk's draws do not depend on which other chunks exist or their order.

The ensemble needs more tokens than the trees (enough per cluster to re-find every cluster, while
UMAP + HDBSCAN slow down with the sample), so the reservoir may keep `ensemble_size` > `size` tokens:
the trees' sample is the `size` smallest priorities, i.e. the first rows of the ensemble's sample,
itself uniform.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.tables import save_npz

# (chunk key, chunk, doc id per sequence [n_seq], category per sequence [n_seq])
SampleChunk = tuple[str, DenseChunk, Sequence[str], Sequence[str]]


@dataclass
class HierarchySample:
    """A seeded uniform sample of attended tokens (whitened vectors, where they come from, their
    soft memberships) and, optionally, every document's summed unit token vector."""

    vectors: np.ndarray  # [n, d] float32 whitened token vectors
    chunk: np.ndarray  # [n] str partition key
    sequence: np.ndarray  # [n] int32
    position: np.ndarray  # [n] int32
    token_id: np.ndarray  # [n] int32
    doc_id: np.ndarray  # [n] str
    category: np.ndarray  # [n] str
    member_clusters: np.ndarray  # [n, m] int32 centroid memberships, -1 where dropped
    member_values: np.ndarray  # [n, m] float32, 0 where dropped
    doc_ids: np.ndarray  # [D] str every document seen, in order of first appearance
    doc_categories: np.ndarray  # [D] str
    doc_vectors: np.ndarray  # [D, d] float32 sum of the document's unit token vectors (all tokens, not the sample)
    doc_tokens: np.ndarray  # [D] int64 attended tokens of each document
    doc_member_clusters: np.ndarray  # [D, m] memberships of the document direction
    doc_member_values: np.ndarray  # [D, m]
    ensemble_vectors: np.ndarray  # [N, d] N >= n tokens in the chunks' dtype for the ensemble; first n rows are `vectors`
    n_clusters: int
    sequence_length: int
    tokens_seen: int
    version: str  # hash of the config and the sampled data: the data version of everything downstream

    def memberships(self) -> np.ndarray:
        """Dense soft memberships of the sampled tokens [n, k]."""
        return dense_memberships(self.member_clusters, self.member_values, self.n_clusters)

    def doc_memberships(self) -> np.ndarray:
        """Dense soft memberships of the document directions [D, k]."""
        return dense_memberships(self.doc_member_clusters, self.doc_member_values, self.n_clusters)

    def save(self, path) -> Path:
        return save_npz(path, {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path) -> HierarchySample:
        with np.load(path, allow_pickle=False) as z:
            values = {f.name: z[f.name] for f in fields(cls) if f.name in z.files}
        values.setdefault("ensemble_vectors", values["vectors"])  # a sample saved before ensemble_vectors
        values.update(n_clusters=int(values["n_clusters"]), sequence_length=int(values["sequence_length"]),
                      tokens_seen=int(values["tokens_seen"]), version=str(values["version"]))
        return cls(**values)


def dense_memberships(clusters: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Top-m sparse memberships (clusters [n, m] with -1 = dropped, values [n, m]) -> dense [n, k]."""
    out = np.zeros((len(clusters), k), np.float32)
    rows, cols = np.nonzero(clusters >= 0)
    out[rows, clusters[rows, cols]] = values[rows, cols]
    return out


def memberships_for_centers(x: np.ndarray, centers: np.ndarray, model: SequentialSoftClustering) -> np.ndarray:
    """Dense memberships [n, k] of x [n, d] under other centers [k, d], with the kernel and config of `model`."""
    other = copy.copy(model)  # shallow: only cluster_centers_ is replaced, the model is left alone
    other.cluster_centers_ = np.ascontiguousarray(centers, np.float32)
    return dense_memberships(*other.soft_memberships(x), other.cluster_centers_.shape[0])


class _Reservoir:
    """The `size` tokens with the smallest priorities seen so far, with where they come from."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.priority = np.zeros(0)
        self.columns: dict[str, np.ndarray] = {}

    def add(self, key: str, chunk: DenseChunk, docs: np.ndarray, categories: np.ndarray) -> None:
        seq, pos = chunk.attended_positions()
        p = np.random.default_rng([self.seed, zlib.crc32(key.encode())]).random(len(seq))
        take = np.argsort(p, kind="stable")[:self.size]  # no more than `size` of one chunk can survive
        seq, pos = seq[take], pos[take]
        new = {"vectors": np.asarray(chunk.activations[seq, pos]), "chunk": np.full(len(take), key),
               "sequence": seq, "position": pos, "token_id": np.asarray(chunk.token_ids[seq, pos], np.int32),
               "doc_id": docs[seq], "category": categories[seq]}
        priority = np.concatenate([self.priority, p[take]])
        order = np.argsort(priority, kind="stable")[:self.size]
        self.priority = priority[order]
        self.columns = {name: (np.concatenate([self.columns[name], column]) if self.columns else column)[order]
                        for name, column in new.items()}


class _DocumentSums:
    """Per-document sums of unit token vectors and token counts, documents in order of first appearance."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.categories: list[str] = []
        self.sums = np.zeros((0, 0))  # [capacity, d] float64; rows beyond len(index) are unused
        self.tokens = np.zeros(0, np.int64)

    def add(self, block: DenseChunk, docs: np.ndarray, categories: np.ndarray) -> None:
        x = np.asarray(block.activations, np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
        mask = np.asarray(block.attention_mask)
        sums = np.einsum("bsd,bs->bd", x, mask.astype(np.float32))  # [b, d]
        counts = mask.sum(1)
        unique, first, inverse = np.unique(docs, return_index=True, return_inverse=True)
        for u in np.argsort(first):  # a Python step per new document, not per sequence
            if unique[u] not in self.index:
                self.index[unique[u]] = len(self.index)
                self.categories.append(categories[first[u]])
        rows = np.array([self.index[d] for d in unique])[inverse]  # [b] document row of each sequence
        self._reserve(len(self.index), x.shape[2])
        np.add.at(self.sums, rows, sums)
        np.add.at(self.tokens, rows, counts)

    def _reserve(self, n: int, dim: int) -> None:
        if n > len(self.sums):
            capacity = max(n, 2 * len(self.sums), 64)
            self.sums = np.concatenate([self.sums.reshape(-1, dim), np.zeros((capacity - len(self.sums), dim))])
            self.tokens = np.concatenate([self.tokens, np.zeros(capacity - len(self.tokens), np.int64)])


def draw_sample(chunks: Iterable[SampleChunk], size: int, seed: int, model: SequentialSoftClustering,
                document_vectors: bool = True, block_sequences: int = 64, ensemble_size: int = 0) -> HierarchySample:
    """Stream over chunks once: a uniform reservoir of `size` attended tokens (seeded per chunk key) with
    their memberships under `model`, and, with document_vectors, every document's summed unit token
    vector read `block_sequences` sequences at a time. One chunk in memory at a time.
    ensemble_vectors holds max(size, ensemble_size) tokens, the first `size` of them the sample's."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if ensemble_size < 0:
        raise ValueError(f"ensemble_size must be >= 0, got {ensemble_size}")
    reservoir, documents = _Reservoir(max(size, ensemble_size), seed), _DocumentSums()
    keys, tokens_seen, sequence_length = [], 0, 0
    for key, chunk, docs, categories in chunks:
        docs, categories = np.asarray(docs, dtype=str), np.asarray(categories, dtype=str)
        if len(docs) != chunk.n_sequences or len(categories) != chunk.n_sequences:
            raise ValueError(f"chunk {key}: {chunk.n_sequences} sequences but {len(docs)} doc ids "
                             f"and {len(categories)} categories")
        keys.append(key)
        tokens_seen += chunk.n_tokens
        sequence_length = chunk.sequence_length
        reservoir.add(key, chunk, docs, categories)
        if document_vectors:
            for start, block in chunk.iter_blocks(block_sequences):
                documents.add(block, docs[start:start + block.n_sequences], categories[start:start + block.n_sequences])
    if not keys:
        raise ValueError("no chunks to sample from")
    ensemble_vectors = reservoir.columns["vectors"]
    kept = {name: column[:size] for name, column in reservoir.columns.items()}  # the smallest priorities come first
    vectors = np.ascontiguousarray(kept["vectors"], np.float32)
    clusters, values = model.soft_memberships(vectors)
    n_docs = len(documents.index)
    doc_vectors = documents.sums[:n_docs].astype(np.float32).reshape(n_docs, vectors.shape[1])
    if n_docs:
        doc_clusters, doc_values = model.soft_memberships(doc_vectors)
    else:
        doc_clusters, doc_values = np.zeros((0, clusters.shape[1]), np.int32), np.zeros((0, clusters.shape[1]), np.float32)
    config = {"sample_size": size, "seed": seed, "document_vectors": document_vectors, "block_sequences": block_sequences,
              "ensemble_size": ensemble_size}
    h = hashlib.sha256(json.dumps([config, keys]).encode())
    for array in (ensemble_vectors, doc_vectors, np.asarray(model.cluster_centers_)):
        h.update(np.ascontiguousarray(array).tobytes())
    return HierarchySample(
        vectors, kept["chunk"], kept["sequence"].astype(np.int32), kept["position"].astype(np.int32),
        kept["token_id"], kept["doc_id"], kept["category"], clusters, values,
        np.asarray(list(documents.index), dtype=str), np.asarray(documents.categories, dtype=str), doc_vectors,
        documents.tokens[:n_docs].copy(), doc_clusters, doc_values, ensemble_vectors,
        int(model.cluster_centers_.shape[0]), sequence_length, tokens_seen, h.hexdigest()[:16])
