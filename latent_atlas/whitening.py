"""Global whitening from streaming, mergeable moments.

Each chunk contributes exact float64 sums (count, sum, sum of outer products); sums merge by
addition, so the whitening fitted from merged per-chunk moments equals the one fitted on the
concatenated data, whatever the chunk order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_atlas.chunks import DenseChunk

# Rows multiplied per block when accumulating moments: bounds the float64 copy to ~64 MB at d=2304.
_BLOCK_ROWS = 4096


@dataclass
class Moments:
    """Float64 first and second moments of a set of vectors."""

    count: int
    total: np.ndarray  # [d] float64
    outer: np.ndarray  # [d, d] float64, sum of x xᵀ

    @classmethod
    def zeros(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of_vectors(cls, x: np.ndarray) -> "Moments":
        """Moments of x [n, d], accumulated in blocks of rows."""
        m = cls.zeros(x.shape[1])
        for start in range(0, len(x), _BLOCK_ROWS):
            block = np.asarray(x[start : start + _BLOCK_ROWS], dtype=np.float64)
            m.count += len(block)
            m.total += block.sum(0)
            m.outer += block.T @ block
        return m

    @classmethod
    def of_chunk(cls, chunk: DenseChunk) -> "Moments":
        """Moments of the attended positions of a chunk."""
        m = cls.zeros(chunk.dim)
        for _, block in chunk.iter_blocks():
            m.merge_(cls.of_vectors(block.activations[block.attention_mask]))
        return m

    def merge_(self, other: "Moments") -> "Moments":
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Population covariance (divides by n)."""
        mu = self.mean
        return self.outer / self.count - np.outer(mu, mu)

    def save(self, path: str | Path) -> None:
        np.savez(path, count=np.int64(self.count), total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path: str | Path) -> "Moments":
        with np.load(path, allow_pickle=False) as f:
            return cls(int(f["count"]), f["total"], f["outer"])


@dataclass
class Whitening:
    """x ↦ (x − mean_) @ matrix_ ; `matrix_` is [d, d] (symmetric for ZCA)."""

    mean_: np.ndarray  # [d] float32
    matrix_: np.ndarray  # [d, d] float32
    method: str
    eps: float
    eigenvalues_: np.ndarray  # [d] covariance spectrum, descending

    @classmethod
    def fit(cls, moments: Moments, method: str = "zca", eps: float = 1e-3) -> "Whitening":
        """ZCA (default) or PCA whitening; eps is added to every eigenvalue, relative to the median one.

        Relative to the median, not the mean: residual streams have a few massive directions
        (SmolLM2's top eigenvalue is ~1000x the next) that would make a mean-relative eps damp
        every ordinary direction.
        """
        if moments.count < 2:
            raise ValueError(f"whitening needs at least 2 vectors, got {moments.count}")
        cov = moments.covariance
        values, vectors = np.linalg.eigh(cov)
        values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
        scale = 1.0 / np.sqrt(values + eps * np.median(values))
        if method == "zca":
            matrix = (vectors * scale) @ vectors.T
        elif method == "pca":
            matrix = vectors * scale
        else:
            raise ValueError(f"method must be 'zca' or 'pca', got {method!r}")
        return cls(moments.mean.astype(np.float32), matrix.astype(np.float32), method, eps, values)

    @classmethod
    def identity(cls, dim: int) -> "Whitening":
        """For inputs that are already whitened (seed-format NPZ)."""
        return cls(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32), "identity", 0.0, np.ones(dim))

    @property
    def dim(self) -> int:
        return int(self.mean_.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whiten x [..., d] in fp32; returns fp32."""
        if self.method == "identity":
            return np.asarray(x, dtype=np.float32)
        return (np.asarray(x, dtype=np.float32) - self.mean_) @ self.matrix_

    def transform_chunk(self, chunk: DenseChunk) -> np.ndarray:
        """Whitened activations of a chunk, fp16 [n_seq, seq_len, d]; masked positions are zero."""
        out = np.zeros(chunk.activations.shape, np.float16)
        for start, block in chunk.iter_blocks():
            mask = block.attention_mask
            out[start : start + block.n_sequences][mask] = self.transform(block.activations[mask]).astype(np.float16)
        return out

    def save(self, path: str | Path) -> None:
        np.savez(
            path, mean=self.mean_, matrix=self.matrix_, method=np.str_(self.method),
            eps=np.float64(self.eps), eigenvalues=self.eigenvalues_,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["matrix"], str(f["method"]), float(f["eps"]), f["eigenvalues"])


def covariance_error(whitened: np.ndarray) -> dict:
    """How far the covariance of whitened vectors [n, d] is from identity."""
    x = np.asarray(whitened, dtype=np.float64)
    cov = np.cov(x, rowvar=False, bias=True)
    eye = np.eye(cov.shape[0])
    return {
        "n": int(len(x)),
        "max_abs_offdiag": float(np.abs(cov - np.diag(np.diag(cov))).max()),
        "mean_diag": float(np.diag(cov).mean()),
        "relative_frobenius": float(np.linalg.norm(cov - eye) / np.sqrt(cov.shape[0])),
    }


def sample_vectors(chunk_dirs: list, n: int, seed: int = 0, max_chunks: int = 8) -> np.ndarray:
    """Up to `n` attended vectors [m, d] fp32, drawn evenly from up to `max_chunks` chunks (seeded)."""
    from latent_atlas.chunks import read_chunk

    rng = np.random.default_rng(seed)
    picked = [chunk_dirs[i] for i in np.linspace(0, len(chunk_dirs) - 1, min(max_chunks, len(chunk_dirs))).astype(int)]
    per_chunk = -(-n // len(picked))
    parts = []
    for path in dict.fromkeys(picked):
        chunk = read_chunk(path)
        seq, pos = chunk.attended_positions()
        take = np.sort(rng.choice(len(seq), size=min(per_chunk, len(seq)), replace=False))
        parts.append(np.asarray(chunk.activations[seq[take], pos[take]], dtype=np.float32))
    return np.concatenate(parts)[:n]
