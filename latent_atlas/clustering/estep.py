"""E-step kernels of the soft spherical clustering (pure functions on torch tensors).

A block of rows [b, d] is scored against the centroids in one GEMM (latent_atlas.clustering.gemm: one or two
library calls); everything after it works on
the [b, k] similarity block in place, in a few whole-block passes and then on the entries that can
be kept, with as few torch ops as possible (each op is an OpenMP region, and on a shared machine
each region can wait for a descheduled thread). The result is sparse from the start: the (row,
cluster) pairs that survive the threshold and the top-m cut, in row-major order, which is both the
order `transform` writes and a cheap one to sort by cluster for the M-step.

Memberships are the exact softmax probabilities p_c = exp(cos_c / T) / sum_k exp(cos_k / T) of at
most m clusters with p_c >= threshold (the top cluster is always kept), never renormalized.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from latent_atlas.clustering.gemm import fp32_gemm, fp32_mm, gemm_pieces, matmul_precision
from latent_atlas.compute.cpu import default_learn_precision, native_bf16


GEMM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Learning GEMM precisions by name (see matmul_precision); 'auto' picks one (resolve_precision)."""


def resolve_precision(name: str, device: torch.device | str) -> str:
    """A concrete learning precision: name itself, or for 'auto' what default_learn_precision picks
    ('bfloat16' on AMX-BF16 CPUs and CUDA, 'float32' elsewhere)."""
    if name == "auto":
        return default_learn_precision(str(device))
    if name not in GEMM_DTYPES:
        raise ValueError(f"learn_precision must be 'auto' or one of {sorted(GEMM_DTYPES)}, got {name!r}")
    return name


def learning_dtype(name: str) -> torch.dtype:
    """The dtype of a resolved learning precision. 'auto' is refused: it is resolved once, on the
    driver, so that workers on other CPUs (Dask) and resumed runs all use the precision it chose."""
    if name not in GEMM_DTYPES:
        raise ValueError(f"learn_precision {name!r} is not resolved; pass resolve_precision(...) of it")
    return GEMM_DTYPES[name]


@dataclass
class SparseBlock:
    """Kept memberships of a block of b rows, row-major: sorted by (row, cluster)."""

    rows: torch.Tensor  # [nnz] int64 row index within the block
    clusters: torch.Tensor  # [nnz] int64
    values: torch.Tensor  # [nnz] float32 exact softmax probabilities, in (0, 1]
    cosines: torch.Tensor  # [nnz] cosine of the row to that cluster
    inv_norm: torch.Tensor  # [b] 1 / ||x||
    max_cosine: torch.Tensor  # [b] cosine to the closest centroid


def block_memberships(x: torch.Tensor, inv_norm: torch.Tensor, centers_t: torch.Tensor, temperature: float,
                      top_m: int, threshold: float, scratch: dict,
                      gemm_dtype: torch.dtype = torch.float32) -> SparseBlock:
    """Sparse memberships of fp32 rows x [b, d] with inverse norms [b] (see load_rows), given
    centroids transposed [d, k] float32.

    gemm_dtype=torch.bfloat16 lets the similarity GEMM multiply in bf16 with fp32 accumulation and
    fp32 output (oneDNN on AMX: ~4x the fp32 GEMM there; learn_precision='auto' picks it only
    there, see resolve_precision). Elsewhere the operands are rounded to bf16 and multiplied in fp32:
    the same products, slower than plain fp32, so that a run's workers never mix precisions.
    Cosines then carry ~1e-3 relative error, so it is for learning only, never for `transform`,
    whose memberships are exact.

    After the GEMM, five passes over the [b, k] block (group maxima; subtract, scale, exp; row sums)
    and work on the few entries that can be kept: a kept entry has e_c >= cut, so it lies in a group
    of G clusters whose maximum is >= cut, and only those groups are read again. No argmax or topk
    over the block: the top cluster is kept because e_top = exp(0) = 1 >= cut.
    """
    b, k = x.shape[0], centers_t.shape[1]
    sims = buffer(scratch, "sims", (b, k), x.device)
    _similarities(x, centers_t, sims, scratch, gemm_dtype)
    g = group_size(k)
    n_groups = k // g
    group_max = torch.amax(sims.view(b, n_groups, g), dim=2)  # [b, n_groups]
    top = torch.amax(group_max, dim=1, keepdim=True)
    scale = inv_norm[:, None] / temperature
    # e_c = exp((s_c - s_max) / (T ||x||)) in (0, 1], exactly 1 at the top; p_c = e_c / sum e
    e = exp_(sims.sub_(top).mul_(scale))
    denominator = e.sum(dim=1)
    cut = (denominator * threshold).clamp_(1e-38, 1.0)[:, None]  # p_c >= threshold, top always kept
    exp_(group_max.sub_(top).mul_(scale))  # the same monotone map (the same exp): group maxima of e
    row, group = torch.nonzero(group_max >= cut).unbind(1)  # row-major, groups ascending
    # index_select / take rather than advanced indexing (plain row copies): the post-GEMM step of a
    # 58k-row chunk measured 47 ms instead of 50
    candidates = e.view(b * n_groups, g).index_select(0, row * n_groups + group)  # [pairs, g]
    pair, offset = torch.nonzero(candidates >= cut.index_select(0, row)).unbind(1)
    rows, clusters = row.index_select(0, pair), group.index_select(0, pair) * g + offset
    kept = torch.take(candidates, pair * g + offset)
    rows, clusters, kept = _top_m(rows, clusters, kept, b, top_m)
    max_cosine = top[:, 0].mul_(inv_norm)
    # cos_c = cos_max + T log e_c: recovered from the exponentials, no second copy of the block
    cosines = log(kept).mul_(temperature).add_(max_cosine.index_select(0, rows))
    return SparseBlock(rows, clusters, kept / denominator.index_select(0, rows), cosines, inv_norm, max_cosine)


def exp_(t: torch.Tensor) -> torch.Tensor:
    """t = exp(t) in place, the same bits for an element wherever it sits and whatever the load.

    On the CPU by numpy (one thread, one SIMD routine for every element, tail included): torch's
    exp_ gave other last bits to some elements of a process's first call while the cores were busy
    (the same input: 2 and 4 of 45 processes under AVX2 caps on an Intel Xeon; exp_ again in the same
    process gave the usual bits), so a fit was not reproducible from run to run. It costs ~0.3 ms
    more a 2048 x 512 block, +1.2% of its GEMM (benchmarks/estep_exp.py)."""
    if t.device.type != "cpu":
        return t.exp_()
    values = t.numpy()
    np.exp(values, out=values)
    return t


def log(t: torch.Tensor) -> torch.Tensor:
    """log(t) as a new tensor, by numpy on the CPU for the reason exp_ gives."""
    return torch.from_numpy(np.log(t.numpy())) if t.device.type == "cpu" else t.log()


def _similarities(x: torch.Tensor, centers_t: torch.Tensor, sims: torch.Tensor, scratch: dict,
                  gemm_dtype: torch.dtype) -> None:
    """sims[b, k] = x @ centers_t in fp32 (fp32_mm on a CPU), or for bf16 on the unit this device has:
    - CUDA or AMX-BF16: torch's fp32 GEMM under matmul precision 'medium' (bf16 products, fp32 sums
      and output);
    - AVX512-BF16: a GEMM of bf16 copies (bf16 dot products with fp32 sums, output rounded to bf16,
      ~2e-3 relative; measured 2-3x the fp32 GEMM on an AMD EPYC), widened into sims;
    - no bf16 unit (or a capped ISA, where torch's GEMM would quietly stay fp32 or be emulated): the
      same bf16 products, exact in fp32, from operands rounded to bf16, so every worker of a run
      learns in the precision the driver chose for it.
    """
    unit = _bf16_unit() if gemm_dtype == torch.bfloat16 and x.device.type == "cpu" else None
    if gemm_dtype == torch.bfloat16 and x.device.type == "cpu" and unit != "AMX-BF16":
        rows = buffer(scratch, "x_bf16", x.shape, x.device, torch.bfloat16).copy_(x)
        if unit == "AVX512-BF16":
            out = buffer(scratch, "sims_bf16", sims.shape, x.device, torch.bfloat16)
            centers_bf16 = centers_t.to(torch.bfloat16)
            for lo, hi in gemm_pieces(x.shape[0], onednn=True):
                torch.mm(rows[lo:hi], centers_bf16, out=out[lo:hi])
            sims.copy_(out)
            return
        x = buffer(scratch, "x_rounded", x.shape, x.device).copy_(rows)
        centers_t, gemm_dtype = centers_t.to(torch.bfloat16).float(), torch.float32
    if gemm_dtype == torch.float32 and x.device.type == "cpu":
        fp32_mm(x, centers_t, sims)
        return
    with matmul_precision(gemm_dtype):
        for lo, hi in gemm_pieces(x.shape[0], onednn=gemm_dtype != torch.float32):
            torch.mm(x[lo:hi], centers_t, out=sims[lo:hi])


def _top_m(rows: torch.Tensor, clusters: torch.Tensor, kept: torch.Tensor, b: int, m: int):
    """Keep at most m entries per row, the largest (ties: lower cluster), still row-major.

    Only rows holding more than m entries are touched: their entries are packed into a dense
    [rows, most entries] matrix of int64 keys (value bits, then reversed cluster, so that one topk
    orders by value and breaks ties toward the lower cluster), and a mask keeps the winners in place.
    """
    counts = torch.bincount(rows, minlength=b)
    if len(rows) == 0 or int(counts.max()) <= m:
        return rows, clusters, kept
    first = torch.cumsum(counts, 0) - counts
    over = torch.nonzero(counts > m)[:, 0]
    width = int(counts.max())
    slot = torch.full((b,), -1, dtype=torch.int64, device=rows.device)
    slot[over] = torch.arange(len(over), device=rows.device)
    entries = torch.nonzero(slot.index_select(0, rows) >= 0)[:, 0]  # entries of rows over m
    row = rows.index_select(0, entries)
    # positive float32 bits order like the values; < 2^30, so the shifted key fits in int64
    key = (kept.index_select(0, entries).view(torch.int32).to(torch.int64) << 32) \
        | ((1 << 32) - 1 - clusters.index_select(0, entries))
    dense = torch.full((len(over) * width,), torch.iinfo(torch.int64).min, dtype=torch.int64, device=rows.device)
    dense.index_copy_(0, slot.index_select(0, row) * width + entries - first.index_select(0, row), key)
    winners = torch.topk(dense.view(len(over), width), m, dim=1).indices + first.index_select(0, over)[:, None]
    keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device).index_fill_(0, entries, False)
    keep = torch.nonzero(keep.index_fill_(0, winners.reshape(-1), True))[:, 0]
    return rows.index_select(0, keep), clusters.index_select(0, keep), kept.index_select(0, keep)


def group_size(k: int) -> int:
    """Clusters per group for the group-maxima filter: the largest divisor of k up to 32."""
    return max(g for g in range(1, min(k, 32) + 1) if k % g == 0)


@lru_cache(maxsize=1)
def _bf16_unit() -> str | None:
    """This CPU's bf16 matrix unit ('AMX-BF16', 'AVX512-BF16') or None, after caps set from outside."""
    return native_bf16()[0]


def effective_precision(name: str, device: torch.device | str) -> str:
    """What the learning GEMM of a resolved precision really multiplies in on this device, and on
    which units, for run metadata: e.g. 'bfloat16 (AMX-BF16)', 'float32 (no native bf16 on this CPU)'."""
    if torch.device(device).type == "cuda":
        return "tf32/bfloat16" if learning_dtype(name) == torch.bfloat16 else "float32"
    unit, why = native_bf16()
    if learning_dtype(name) == torch.float32:
        library = {"onednn": "oneDNN", "torch": "MKL", "openblas": "OpenBLAS"}[fp32_gemm()]
        return f"float32 ({library})" if unit else f"float32 ({library}; {why})"
    if unit == "AVX512-BF16":
        return "bfloat16 (AVX512-BF16: bf16 operands and output)"
    return f"bfloat16 ({unit})" if unit else f"bfloat16 (operands rounded to bf16, fp32 GEMM; {why})"


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
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows flat[index] as fp32 [b, d] in a reused buffer, their inverse norms [b]); `source` = as_tensor(flat).

    Three whole-block passes, whatever the index (whole sequences or a subsample): torch.index_select
    gathers the rows in the source dtype (parallel row memcpy, half the bytes of fp32 for fp16
    chunks), one copy converts them, one vector_norm takes the norms. Converting run by run (a copy
    and a norm per sequence, ~18 a block) measured 1.16x slower alone and 3.9x slower between the
    pass's GEMMs, where each small parallel region waits on the thread pool (benchmarks/load_rows.py).
    """
    b, d = len(index), flat.shape[1]
    x = buffer(scratch, "x", (b, d), device)
    norms = buffer(scratch, "norms", (b, 1), device)[:, 0]
    picked = torch.from_numpy(np.asarray(index, dtype=np.int64))
    if source.dtype == torch.float32 and x.device == source.device:
        torch.index_select(source, 0, picked, out=x)
    else:
        x.copy_(torch.index_select(source, 0, picked, out=buffer(scratch, "gather", (b, d), "cpu", source.dtype)))
    torch.linalg.vector_norm(x, dim=1, out=norms)
    return x, norms.clamp_min_(1e-12).reciprocal_()


_THREAD = threading.local()


def scratch_space() -> dict:
    """This thread's reused E-step buffers. Kept across chunks and calls: allocating ~30 MB of
    buffers per chunk fragmented the heap and grew the resident set with the number of chunks."""
    if not hasattr(_THREAD, "scratch"):
        _THREAD.scratch = {}
    return _THREAD.scratch


def buffer(scratch: dict, name: str, shape: tuple, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reused buffer (fp32 unless said) of at least `shape` rows (fresh allocations page-fault on every call)."""
    rows, cols = shape
    buf = scratch.get(name)
    if (buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.device != torch.device(device)
            or buf.dtype != dtype):
        buf = scratch[name] = torch.empty(shape, dtype=dtype, device=device)
    return buf[:rows]
