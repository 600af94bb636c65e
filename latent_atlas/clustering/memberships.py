"""Sparse soft memberships of one chunk: one row per (sequence, position, cluster).

The seed's format (indices [n_nonzero, 3], values, tokens, metadata total_sequences and
sequence_length) stored as a Parquet table sorted by (sequence, position, cluster).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latent_atlas.data.tables import _META_KEY, read_metadata, write_table

SCHEMA = pa.schema(
    [
        ("sequence", pa.int32()),
        ("position", pa.int32()),
        ("cluster", pa.int32()),
        ("value", pa.float32()),
        ("token_id", pa.int32()),
    ]
)


@dataclass
class SparseMemberships:
    """Sparse memberships of one chunk. All arrays have length n_nonzero."""

    sequence: np.ndarray  # [nnz] int32
    position: np.ndarray  # [nnz] int32
    cluster: np.ndarray  # [nnz] int32
    value: np.ndarray  # [nnz] float32, in (0, 1]
    token_id: np.ndarray  # [nnz] int32
    total_sequences: int
    sequence_length: int

    def __len__(self) -> int:
        return int(self.value.shape[0])

    @property
    def indices(self) -> np.ndarray:
        """[nnz, 3] (sequence_idx, position, cluster_idx), the seed's layout."""
        return np.stack([self.sequence, self.position, self.cluster], axis=1)

    def sorted(self) -> "SparseMemberships":
        order = np.lexsort((self.cluster, self.position, self.sequence))
        return SparseMemberships(
            self.sequence[order], self.position[order], self.cluster[order],
            self.value[order], self.token_id[order], self.total_sequences, self.sequence_length,
        )

    def dense(self, n_clusters: int) -> np.ndarray:
        """[total_sequences, sequence_length, n_clusters] float32; for small chunks and tests only."""
        out = np.zeros((self.total_sequences, self.sequence_length, n_clusters), np.float32)
        out[self.sequence, self.position, self.cluster] = self.value
        return out

    def to_table(self) -> pa.Table:
        return pa.table(
            [
                pa.array(self.sequence, pa.int32()),
                pa.array(self.position, pa.int32()),
                pa.array(self.cluster, pa.int32()),
                pa.array(self.value, pa.float32()),
                pa.array(self.token_id, pa.int32()),
            ],
            schema=SCHEMA,
        )

    def metadata(self) -> dict:
        return {"total_sequences": int(self.total_sequences), "sequence_length": int(self.sequence_length)}

    def save(self, path: str | Path) -> Path:
        return write_table(self.to_table(), path, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> "SparseMemberships":
        return cls.from_table(pq.read_table(path, schema=SCHEMA), read_metadata(path))

    @classmethod
    def from_table(cls, table: pa.Table, metadata: dict | None = None) -> "SparseMemberships":
        """From a table as stored (e.g. loaded by an IO manager); `metadata` defaults to the
        total_sequences / sequence_length kept in the table's schema metadata."""
        if metadata is None:
            raw = (table.schema.metadata or {}).get(_META_KEY)
            if raw is None:
                raise ValueError("memberships table has no latent_atlas schema metadata "
                                 "(expected total_sequences and sequence_length)")
            metadata = json.loads(raw)
        cols = {name: table.column(name).to_numpy() for name in SCHEMA.names}
        return cls(**cols, total_sequences=metadata["total_sequences"], sequence_length=metadata["sequence_length"])
