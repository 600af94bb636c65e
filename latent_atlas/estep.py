"""E-step kernels of the soft spherical clustering (pure functions on torch tensors).

A block of rows [b, d] is scored against the centroids in one GEMM; everything after it works on
the [b, k] similarity block in place, with as few torch ops as possible (each op is an OpenMP
region, and on a shared machine each region can wait for a descheduled thread). The result is
sparse from the start: the (row, cluster) pairs that survive the threshold and the top-m cut, in
row-major order, which is both the order `transform` writes and a cheap one to sort by cluster for
the M-step.

Memberships are the exact softmax probabilities p_c = exp(cos_c / T) / sum_k exp(cos_k / T) of at
most m clusters with p_c >= threshold (the top cluster is always kept), never renormalized.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SUB_ROWS = 8192
"""At most this many rows per GEMM + post-GEMM sub-block. 512-row sub-blocks (L2-resident [rows, k]
passes) were tried and were ~1.7x slower on the shared machine: every torch op is an OpenMP region,
and with the machine oversubscribed each region can wait a scheduler slice for a descheduled thread."""


@dataclass
class SparseBlock:
    """Kept memberships of a block of b rows, row-major: sorted by (row, cluster)."""

    rows: torch.Tensor  # [nnz] int64 row index within the block
    clusters: torch.Tensor  # [nnz] int64
    values: torch.Tensor  # [nnz] float32 exact softmax probabilities, in (0, 1]
    cosines: torch.Tensor  # [nnz] cosine of the row to that cluster
    inv_norm: torch.Tensor  # [b] 1 / ||x||
    max_cosine: torch.Tensor  # [b] cosine to the closest centroid


def block_memberships(x: torch.Tensor, centers_t: torch.Tensor, temperature: float, top_m: int,
                      threshold: float, scratch: dict, gemm_dtype: torch.dtype = torch.float32) -> SparseBlock:
    """Sparse memberships of fp32 rows x [b, d] given centroids transposed [d, k] float32.

    gemm_dtype=torch.bfloat16 runs the similarity GEMM on bf16 copies (AMX / AVX512-BF16: ~2.6x
    the fp32 GEMM here); cosines then carry ~1e-3 relative error, so it is for learning only,
    never for `transform`, whose memberships are exact.

    The 1/||x|| normalization is applied to the [b, k] similarities rather than to the wider rows.
    """
    b, k = x.shape[0], centers_t.shape[1]
    m = min(top_m, k)
    inv_norm = torch.linalg.vector_norm(x, dim=1).clamp_min_(1e-12).reciprocal_()
    max_dot = torch.empty(b, dtype=torch.float32, device=x.device)
    parts = []
    step = -(-b // -(-b // SUB_ROWS))  # equal sub-blocks, never one tiny remainder
    for start in range(0, b, step):
        stop = min(start + step, b)
        if gemm_dtype == torch.float32:
            sims = torch.mm(x[start:stop], centers_t, out=buffer(scratch, "sims", (stop - start, k), x.device))
        else:
            low = scratch.get("x_low")
            if low is None or low.shape[0] < stop - start or low.shape[1] != x.shape[1] or low.dtype != gemm_dtype:
                low = scratch["x_low"] = torch.empty((stop - start, x.shape[1]), dtype=gemm_dtype, device=x.device)
            low = low[: stop - start].copy_(x[start:stop])
            sims = buffer(scratch, "sims", (stop - start, k), x.device).copy_(torch.mm(low, centers_t.to(gemm_dtype)))
        top, arg = torch.max(sims, dim=1, keepdim=True)
        max_dot[start:stop] = top[:, 0]
        scale = inv_norm[start:stop, None] / temperature
        # e_c = exp((s_c - s_max) / (T ||x||)) in (0, 1], exactly 1 at the top; p_c = e_c / sum e
        e = sims.sub_(top).mul_(scale).exp_()
        denominator = e.sum(dim=1, keepdim=True)
        cut = (denominator * threshold).clamp_(1e-38, 1.0)  # p_c >= threshold, top always kept
        # Most rows keep only their top cluster: a row count finds the others, and only those rows
        # go through topk (a nonzero or topk over the whole [b, k] block costs ~GEMM/3).
        multi = torch.nonzero((e >= cut).sum(dim=1) > 1)[:, 0]
        rows = torch.arange(start, stop, device=x.device)
        clusters, kept = arg[:, 0], torch.ones(stop - start, device=x.device)
        if len(multi):
            single = torch.ones(stop - start, dtype=torch.bool, device=x.device).index_fill_(0, multi, False)
            vals, idx = torch.topk(e[multi], m, dim=1)
            ok = vals >= cut[multi]
            rows = torch.cat((rows[single], (multi + start)[:, None].expand(-1, m)[ok]))
            clusters = torch.cat((clusters[single], idx[ok]))
            kept = torch.cat((kept[single], vals[ok]))
            order = torch.argsort(rows * k + clusters)  # row-major, clusters ascending
            rows, clusters, kept = rows[order], clusters[order], kept[order]
        den = denominator[rows - start, 0]
        parts.append((rows, clusters, kept / den, kept))
    rows, clusters, values, kept = (torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts))
    max_cosine = max_dot.mul_(inv_norm)
    # cos_c = cos_max + T log e_c: recovered from the exponentials, no second copy of the block
    cosines = kept.log_().mul_(temperature).add_(max_cosine[rows])
    return SparseBlock(rows, clusters, values, cosines, inv_norm, max_cosine)


def weighted_cluster_sums(x: torch.Tensor, block: SparseBlock, k: int) -> torch.Tensor:
    """[k, d] sum over rows of p_ic x_i / ||x_i||, reading only the kept (row, cluster) pairs.

    embedding_bag with per-sample weights is a sparse-times-dense product: nnz * d work instead of
    the b * k * d of a dense R^T X product.
    """
    order = torch.argsort(block.clusters, stable=True)
    counts = torch.bincount(block.clusters, minlength=k)
    offsets = torch.zeros(k, dtype=torch.int64, device=x.device)
    torch.cumsum(counts[:-1], 0, out=offsets[1:])
    weights = (block.values * block.inv_norm[block.rows])[order]
    return F.embedding_bag(block.rows[order], x, offsets, mode="sum", per_sample_weights=weights)


def as_tensor(flat: np.ndarray) -> torch.Tensor:
    """A zero-copy torch view of rows [n, d] (read-only memmaps included)."""
    with warnings.catch_warnings():  # torch warns on read-only arrays; they are only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(flat)


def load_rows(flat: np.ndarray, source: torch.Tensor, index: np.ndarray, scratch: dict,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows flat[index] as fp32 [b, d] in a reused buffer; `source` = as_tensor(flat).

    A contiguous index is converted in one copy straight from the (memory-mapped) source. Otherwise
    the rows are gathered in the source dtype by torch.index_select (parallel row memcpy, half the
    bytes of fp32 for fp16 chunks) and converted in a second pass: measured faster than converting
    the whole span of a block (masked rows included, ~12% more GEMM rows) and than np.take.
    """
    b, d = len(index), flat.shape[1]
    x = buffer(scratch, "x", (b, d), device)
    if b and index[-1] - index[0] + 1 == b:
        return x.copy_(source[int(index[0]):int(index[0]) + b])
    picked = torch.from_numpy(np.asarray(index, dtype=np.int64))
    if source.dtype == torch.float32 and x.device == source.device:
        return torch.index_select(source, 0, picked, out=x)
    key = ("gather", source.dtype)
    buf = scratch.get(key)
    if buf is None or buf.shape[0] < b or buf.shape[1] != d:
        buf = scratch[key] = torch.empty((b, d), dtype=source.dtype)
    return x.copy_(torch.index_select(source, 0, picked, out=buf[:b]))


def buffer(scratch: dict, name: str, shape: tuple, device) -> torch.Tensor:
    """A reused fp32 buffer of at least `shape` rows (fresh allocations page-fault on every call)."""
    rows, cols = shape
    buf = scratch.get(name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.device != torch.device(device):
        buf = scratch[name] = torch.empty(shape, dtype=torch.float32, device=device)
    return buf[:rows]
