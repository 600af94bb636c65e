"""Global whitening from streaming, mergeable moments.

Each chunk contributes float64 sums (count, sum, sum of outer products); sums merge by addition,
so the whitening fitted from merged per-chunk moments equals the one fitted on the concatenated
data, whatever the chunk order.

The products are the stage's whole cost (n·d² multiply-adds), so float16/float32 vectors are
multiplied in float32 (twice the float64 rate) as one symmetric product per block of rows (numpy's
`a.T @ a` is a syrk). Activations have a large mean, and Σxxᵀ in float32 would lose the covariance
to cancellation (mean 50, spread 1: 2500x), so every block is first shifted by the first block's mean s
(y = x − s, in float32) and its sums are carried back to Σx, Σxxᵀ in float64 exactly:
Σxxᵀ = Σyyᵀ + s(Σy)ᵀ + (Σy)sᵀ + n·ssᵀ. The float32 product's rounding is then relative to the
spread, not to the mean, and below the 2^-11 rounding of the stored float16 activations.
float64 vectors keep a float64 product.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch

from latent_atlas.data.chunks import FLOAT16_MAX, DenseChunk, to_float16
from latent_atlas.data.tables import save_npz

# Rows multiplied per block when accumulating moments: a float32 block is ~38 MB at d=2304, and
# 8192-row blocks measured no faster (8,425 vs 8,518 vectors/s under load; 2048: 7,381).
_BLOCK_ROWS = 4096
# Sequences whitened per block of transform_chunk: bounds its fp32 temporaries (~75 MB at d=2304)
# and transform_chunk_into's two fp16 blocks in flight to the writer (~38 MB each).
_TRANSFORM_SEQUENCES = 64
# Eigenvalues at or below this fraction of the largest are not directions the data span: a variance
# that small is float64 cancellation in E[xxᵀ] − μμᵀ, fp16 rounding of the stored activations
# (relative 2^-11 per value), or exactly zero because there are fewer vectors than dimensions.
RANK_RTOL = 1e-7


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
        sums = _BlockSums(x.shape[1], x.dtype)
        for start in range(0, len(x), _BLOCK_ROWS):
            sums.add(x[start : start + _BLOCK_ROWS])
        return sums.moments()

    @classmethod
    def of_chunk(cls, chunk: DenseChunk) -> "Moments":
        """Moments of the attended positions of a chunk, read once, _BLOCK_ROWS attended rows at a time."""
        sums = _BlockSums(chunk.dim, chunk.activations.dtype)
        for _, block in chunk.iter_blocks():
            rows = block.activations.reshape(-1, chunk.dim)  # a view of the memory map (C order)
            attended = np.flatnonzero(block.attention_mask)
            for start in range(0, len(attended), _BLOCK_ROWS):
                index = attended[start : start + _BLOCK_ROWS]
                contiguous = index[-1] - index[0] + 1 == len(index)  # no padding inside: a slice, no gather
                sums.add(rows[index[0] : index[-1] + 1] if contiguous else rows[index])
        return sums.moments()

    def merge_(self, other: "Moments") -> "Moments":
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        return self

    def without(self, other: "Moments") -> "Moments":
        """Moments of these vectors less `other` (a subset of them): a fit that never saw `other`."""
        if other.count > self.count:
            raise ValueError(f"cannot remove {other.count} vectors from moments of {self.count}")
        return Moments(self.count - other.count, self.total - other.total, self.outer - other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Population covariance (divides by n)."""
        mu = self.mean
        return self.outer / self.count - np.outer(mu, mu)

    def save(self, path: str | Path) -> Path:
        return save_npz(path, {"count": np.int64(self.count), "total": self.total, "outer": self.outer})

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
        """ZCA (default) or PCA whitening. eps is added to every eigenvalue, relative to the median
        eigenvalue of the directions the data span (those above RANK_RTOL × the largest).

        Relative to a median, not the mean: residual streams have a few massive directions
        (SmolLM2's top eigenvalue is ~1000x the next) that would make a mean-relative eps damp
        every ordinary direction. Over the spanned directions only: with fewer vectors than
        dimensions (or a low-rank stream) most eigenvalues are ~0, the plain median is ~0 and the
        gain 1/sqrt(eigenvalue + eps·median) reached ~1e9 (n=10, d=30), inf once cast to fp16.
        So no direction is amplified more than sqrt(1 + 1/eps) times (~32 at 1e-3) a median
        spanned one; directions without variance are damped, not projected out, so ZCA stays
        full rank, the bound is smooth in the threshold and a full-rank fit is unchanged by it.
        """
        if moments.count < 2:
            raise ValueError(f"whitening needs at least 2 vectors, got {moments.count}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it bounds the gain of directions without variance), got {eps}")
        cov = moments.covariance
        values, vectors = np.linalg.eigh(cov)
        values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
        if not values[0] > 0:
            raise ValueError(f"whitening needs vectors that vary; all {moments.count} vectors are equal")
        scale = 1.0 / np.sqrt(values + eps * np.median(values[: spanned_rank(values)]))
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

    @property
    def rank_(self) -> int:
        """Number of directions the fitted vectors span (eigenvalues above RANK_RTOL × the largest)."""
        return spanned_rank(self.eigenvalues_)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whiten x [..., d] in fp32; returns fp32."""
        if self.method == "identity":
            return np.asarray(x, dtype=np.float32)
        return (np.asarray(x, dtype=np.float32) - self.mean_) @ self.matrix_

    def transform_chunk(self, chunk: DenseChunk) -> np.ndarray:
        """Whitened activations of a chunk, fp16 [n_seq, seq_len, d]; masked positions are zero (see
        `transform_chunk_with_norms`)."""
        return self.transform_chunk_with_norms(chunk)[0]

    def transform_chunk_with_norms(self, chunk: DenseChunk) -> tuple[np.ndarray, np.ndarray]:
        """(whitened activations fp16 [n_seq, seq_len, d], masked positions zero; the attended tokens'
        whitened norms float32 [n_tokens], in the mask's order, taken from the fp32 rows before the cast:
        a second pass over the output to take them cost ~5% of the stage).

        Raises ChunkError naming the chunk if a whitened value would overflow fp16 (a vector far
        outside the fitted distribution, or a whitening fitted on other data).
        """
        out = np.zeros(chunk.activations.shape, np.float16)
        norms = []
        for start, mask, rows in self._whitened_blocks(chunk):
            norms.append(torch.linalg.vector_norm(rows, dim=1).numpy().copy())  # the buffer is reused
            out[start : start + len(mask)][mask] = rows.to(torch.float16).numpy()
        return out, np.concatenate([*norms, np.zeros(0, np.float32)])

    def transform_chunk_into(self, chunk: DenseChunk, file: BinaryIO) -> np.ndarray:
        """Write the bytes of `transform_chunk` (C order) into `file` block by block and return the
        norms `transform_chunk_with_norms` returns. One writer thread writes a block while the next
        one is multiplied (two reused fp16 block buffers): the stage's writes, ~15% of it when they
        followed the transform, overlap the GEMM, and no full-size output array is held (600 MB a
        chunk at d=2304, whose pages are first touched each chunk): benchmarks/whitened_transform.py."""
        buffers = [np.empty((_TRANSFORM_SEQUENCES, *chunk.activations.shape[1:]), np.float16) for _ in range(2)]
        pending, norms = [None, None], []
        with ThreadPoolExecutor(1, thread_name_prefix="chunk-writer") as writer:
            for i, (start, mask, rows) in enumerate(self._whitened_blocks(chunk)):
                if pending[i % 2] is not None:
                    pending[i % 2].result()  # its previous block is written: the buffer is free
                block = buffers[i % 2][: len(mask)]
                block[...] = 0
                block[mask] = rows.to(torch.float16).numpy()
                norms.append(torch.linalg.vector_norm(rows, dim=1).numpy().copy())
                pending[i % 2] = writer.submit(_write_all, file, memoryview(block).cast("B"))
            for future in pending:
                if future is not None:
                    future.result()  # a failed write raises here
        return np.concatenate([*norms, np.zeros(0, np.float32)])

    def _whitened_blocks(self, chunk: DenseChunk) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
        """(first sequence, mask [n, seq_len], whitened fp32 rows of its attended positions, none when no
        position is) per block of _TRANSFORM_SEQUENCES sequences; the rows' buffer is reused by the next block.

        Only attended rows are touched, through two reused fp32 buffers; torch casts fp16 <-> fp32
        (~8x numpy's rate here) and numpy's sgemm multiplies (OpenBLAS, the faster fp32 GEMM on the
        CPUs measured): benchmarks/whitened_transform.py. Raises ChunkError on an fp16 overflow.
        """
        rows = _TRANSFORM_SEQUENCES * chunk.activations.shape[1]
        centred = torch.empty((rows, self.dim), dtype=torch.float32)
        product = np.empty((rows, self.dim), np.float32)
        mean = torch.from_numpy(np.asarray(self.mean_, np.float32))
        matrix = np.asarray(self.matrix_, np.float32)
        for start, block in chunk.iter_blocks(_TRANSFORM_SEQUENCES):
            mask = np.asarray(block.attention_mask, bool)
            attended = block.activations[mask]
            if not len(attended):
                yield start, mask, torch.zeros((0, self.dim))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: only read here
                x = centred[: len(attended)].copy_(torch.from_numpy(attended))
            if self.method == "identity":  # already whitened: only the checked cast
                whitened = x.numpy()
            else:
                whitened = np.matmul(x.sub_(mean).numpy(), matrix, out=product[: len(attended)])
            # NaN fails the test too; one fp32 max and min cost ~1/10 of an fp16 isfinite
            if not max(float(whitened.max()), -float(whitened.min())) <= FLOAT16_MAX:  # to_float16's own bound
                full = np.zeros(block.activations.shape, np.float32)
                full[mask] = whitened  # the checked cast names the place as the stage stores it
                to_float16(full, chunk.path or "chunk being whitened", "whitened activations", start)
            yield start, mask, torch.from_numpy(whitened)

    def state(self) -> dict[str, np.ndarray]:
        """The arrays `save` writes: everything the fitted transform is."""
        return {"mean": self.mean_, "matrix": self.matrix_, "method": np.str_(self.method),
                "eps": np.float64(self.eps), "eigenvalues": self.eigenvalues_}

    def save(self, path: str | Path) -> Path:
        return save_npz(path, self.state())

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["matrix"], str(f["method"]), float(f["eps"]), f["eigenvalues"])


def _write_all(file: BinaryIO, view: memoryview) -> None:
    """file.write until every byte is written (an unbuffered write may write part of a large view)."""
    while view:
        view = view[file.write(view):]


class _BlockSums:
    """Σx and Σxxᵀ of blocks of at most _BLOCK_ROWS vectors [n, d]: float64 products of float64 vectors;
    otherwise float32 products of y = x − s, s the first block's mean, carried back to float64 at the end:
    Σxxᵀ = Σyyᵀ + s(Σy)ᵀ + (Σy)sᵀ + n·ssᵀ (exact in float64; s only needs to lie near the mean)."""

    def __init__(self, dim: int, dtype: np.dtype):
        self.count, self.total, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))
        self.shifted = np.dtype(dtype) != np.float64
        self.shift: torch.Tensor | None = None  # [d] float32
        self.rows = torch.empty((_BLOCK_ROWS, dim)) if self.shifted else None  # reused float32 block

    def add(self, x: np.ndarray) -> None:
        self.count += len(x)
        if len(x) == 0:
            return
        if not self.shifted:
            self.total += x.sum(0)
            self.outer += x.T @ x
            return
        y = self.rows[: len(x)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: only read here
            y.copy_(torch.from_numpy(x))  # torch casts float16 ~8x faster than numpy here
        if self.shift is None:
            self.shift = y.mean(0)
        y = y.sub_(self.shift).numpy()
        # Σy in float32 (a float64 sum cost ~15% of the stage): an error e in it moves the mean by e/n
        # and the covariance only by ~(s − mean)·e/n, s lying near the mean
        self.total += y.sum(0)
        self.outer += y.T @ y  # one float32 syrk: numpy sees the same buffer on both sides

    def moments(self) -> Moments:
        if self.shift is None:
            return Moments(self.count, self.total, self.outer)
        s = self.shift.numpy().astype(np.float64)
        cross = np.outer(s, self.total + 0.5 * self.count * s)  # s(Σy)ᵀ + (Σy)sᵀ + n·ssᵀ = cross + crossᵀ
        return Moments(self.count, self.total + self.count * s, self.outer + cross + cross.T)


def spanned_rank(eigenvalues: np.ndarray) -> int:
    """How many of the descending eigenvalues exceed RANK_RTOL × the largest (at least 1)."""
    return max(1, int(np.sum(eigenvalues > RANK_RTOL * eigenvalues[0])))


def covariance_error(whitened: np.ndarray) -> dict:
    """How far the covariance of whitened vectors [n, d] is from identity.

    In the vectors' own precision: float32 rows (what `Whitening.transform` gives) in one float32 syrk
    of the centred rows (the held-out check 1.53x faster than with float64's np.cov at 100k x 2304, its
    figures within 5e-9: benchmarks/whitening_checks.py; tolerances ~0.1); float64 rows in float64."""
    x = np.asarray(whitened)
    x = x if x.dtype == np.float64 else x.astype(np.float32, copy=False)
    centred = x - x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    cov = (centred.T @ centred).astype(np.float64) / len(x)
    eye = np.eye(cov.shape[0])
    return {
        "n": int(len(x)),
        "max_abs_offdiag": float(np.abs(cov - np.diag(np.diag(cov))).max()),
        "mean_diag": float(np.diag(cov).mean()),
        "relative_frobenius": float(np.linalg.norm(cov - eye) / np.sqrt(cov.shape[0])),
    }


# At most this share of the vectors is held out of the check's refit, so small corpora keep most for it.
HELD_OUT_FRACTION = 0.2


def held_out_size(count: int, requested: int) -> int:
    """Vectors to hold out for the whitening check: `requested`, at most HELD_OUT_FRACTION of `count`."""
    return max(0, min(requested, int(count * HELD_OUT_FRACTION)))


def held_out_check(moments: Moments, held_out: np.ndarray, method: str = "zca", eps: float = 1e-3) -> dict:
    """Refit the whitening on `moments` less the held-out vectors [n, d] (which must be among them)
    and check that it whitens those vectors: a whitening judged on vectors it never saw.

    Catches what an in-sample check cannot: too few vectors for the dimension (in-sample covariance
    is I by construction, new vectors' is not), an eps that damps real variance, moments that do not
    belong to the vectors sampled (a chunk missing from or counted twice in the merge). It cannot
    catch a shift between chunks the sample does not reach, nor a defect shared by both fits.
    """
    held = Moments.of_vectors(held_out)
    refit = Whitening.fit(moments.without(held), method, eps)
    return covariance_check(refit, held_out, fit_count=moments.count - held.count)


def covariance_check(whitening: Whitening, vectors: np.ndarray, fit_count: int | None = None) -> dict:
    """Is the covariance of `vectors` [n, d], whitened, close to I? Returns covariance_error's fields,
    the tolerances and `passed` (and `reason` when it fails).

    `fit_count`: vectors the whitening was fitted on (None: not fitted, e.g. already-whitened input).
    For a whitening fitted on n_fit Gaussian vectors, fresh vectors' whitened covariance has mean
    diagonal n_fit / (n_fit − d − 1) (the inverse-Wishart mean), and a sample of n deviates from
    its population covariance by ~sqrt(d / n) in relative Frobenius norm (both measured within ~20% on
    SmolLM2 activations, n_fit 1.2k to 74k); the tolerances allow 2x that and ±20% on the diagonal.
    """
    n, d = len(vectors), whitening.dim
    if n < 2:
        return {"n": n, "passed": False, "reason": f"only {n} vectors to check"}
    if fit_count is not None and fit_count <= d + 1:
        return {"n": n, "passed": False, "reason": f"fitted on {fit_count} vectors, not more than d + 1 = {d + 1}"}
    error = covariance_error(whitening.transform(vectors))
    expected_diag = 1.0 if fit_count is None else fit_count / (fit_count - d - 1)
    tolerance = 2 * (np.sqrt(d / n) + (np.sqrt(d / fit_count) if fit_count else 0.0)) + (expected_diag - 1) + 0.05
    diag_ok = 0.8 * expected_diag <= error["mean_diag"] <= 1.2 * expected_diag
    passed = bool(error["relative_frobenius"] <= tolerance and diag_ok)
    result = {**error, "expected_mean_diag": float(expected_diag), "tolerance": float(tolerance), "passed": passed}
    if not passed:
        result["reason"] = (f"whitened covariance: mean diagonal {error['mean_diag']:.3g} (expected {expected_diag:.3g}"
                            f" ± 20%), relative Frobenius error {error['relative_frobenius']:.3g} (tolerance {tolerance:.3g})")
    return result


def sample_vectors(chunk_dirs: list, n: int, seed: int = 0, max_chunks: int = 8) -> np.ndarray:
    """Up to `n` attended vectors [m, d] fp32, drawn evenly from up to `max_chunks` chunks (seeded)."""
    from latent_atlas.data.chunks import read_chunk

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
