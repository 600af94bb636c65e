"""The hierarchy sample drawn from materialized chunks: whitened chunk files with their sequences' doc ids
and categories (token_chunks tables), read one chunk at a time; and what the sample holds per category."""

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import read_chunk
from latent_atlas.hierarchy.sample import HierarchySample, SampleChunk, draw_sample


def sample_chunk_keys(whitened_activations: Mapping[str, Path], token_chunks: Mapping[str, Path]) -> list[str]:
    """Chunk keys with both files; an error when there is none (a sample of nothing)."""
    keys = [k for k in whitened_activations if k in token_chunks]
    if not keys:
        raise ValueError("no chunk has both whitened_activations and token_chunks materialized")
    return keys


def sample_chunks(keys: list[str], whitened_activations: Mapping[str, Path],
                  token_chunks: Mapping[str, Path]) -> Iterator[SampleChunk]:
    """(key, chunk, doc ids, categories) per chunk, read one at a time."""
    for key in keys:
        table = pq.read_table(token_chunks[key], columns=["doc_id", "category"])
        yield (key, read_chunk(whitened_activations[key]), table.column("doc_id").to_pylist(),
               table.column("category").to_pylist())


def draw_chunk_sample(whitened_activations: Mapping[str, Path], token_chunks: Mapping[str, Path],
                      clustering: SequentialSoftClustering, size: int, seed: int, document_vectors: bool,
                      block_sequences: int, ensemble_tokens_per_cluster: int) -> tuple[HierarchySample, int]:
    """(sample, chunks read): draw_sample over every chunk with both files; the ensemble's sample holds
    ensemble_tokens_per_cluster tokens per cluster of `clustering` (at least `size`)."""
    keys = sample_chunk_keys(whitened_activations, token_chunks)
    k = int(clustering.cluster_centers_.shape[0])
    sample = draw_sample(sample_chunks(keys, whitened_activations, token_chunks), size, seed, clustering,
                         document_vectors, block_sequences, ensemble_size=ensemble_tokens_per_cluster * k)
    return sample, len(keys)


def category_counts(sample: HierarchySample) -> list[dict]:
    """Sampled tokens and documents per category: a category missing here is missing from every tree."""
    token_categories, token_counts = np.unique(np.asarray(sample.category).astype(str), return_counts=True)
    doc_counts = dict(zip(*np.unique(np.asarray(sample.doc_categories).astype(str), return_counts=True)))
    return [{"category": c or "(none)", "sampled_tokens": int(n), "documents": int(doc_counts.get(c, 0))}
            for c, n in zip(token_categories, token_counts)]
