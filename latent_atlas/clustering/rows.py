"""The attended rows of a chunk as the clustering reads them: activations flattened to [n, d] (memory-mapped
where the chunk is), a sample of their positions, and rows scaled to the unit sphere the clustering works on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latent_atlas.data.errors import ChunkError
from latent_atlas.data.seed_chunks import NpzKeys, open_chunk


class ChunkRows:
    """Rows [n, d] of a chunk with the indices of its attended rows; indexing gathers rows."""

    def __init__(self, data: np.ndarray, attended: np.ndarray):
        self.data, self.attended = data, attended

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, index):
        return self.data[index]


def open_rows(source: Any, keys: NpzKeys = NpzKeys()) -> tuple[ChunkRows, str]:
    """(rows, name): activations flattened to [n_seq * seq_len, d] (memory-mapped when possible),
    with the flat indices of attended positions marked by `rows.attended`, and a name for errors.
    A 2-D array [n, d] is taken as n attended rows."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ValueError(f"X must be a 2-D array [n, d], got shape {source.shape}")
        return ChunkRows(source, np.arange(source.shape[0])), "X"
    chunk = open_chunk(source, keys)
    flat = chunk.activations.reshape(-1, chunk.dim)
    attended = np.flatnonzero(np.asarray(chunk.attention_mask).reshape(-1))
    return ChunkRows(flat, attended), str(chunk.path or "<chunk>")


def sample_positions(rows: ChunkRows, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of at most max_points attended rows (sorted so memmap reads go forward)."""
    attended = rows.attended
    if len(attended) <= max_points:
        return attended
    return np.sort(rng.choice(attended, size=max_points, replace=False))


def check_dim(rows: ChunkRows, d: int, name: str) -> None:
    """ChunkError naming the chunk if its rows do not have the centroids' dimension d."""
    if rows.shape[1] != d:
        raise ChunkError(name, f"activations have dimension {rows.shape[1]}, the centroids have {d}")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x [n, d] scaled to unit norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
