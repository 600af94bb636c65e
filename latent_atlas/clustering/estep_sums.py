"""The learning E-step of one chunk: membership-weighted sums under fixed centroids (`EStepSums`).

`chunk_estep_sums` is a pure function of (chunk, centroids, config, stream position): it samples
at most max_points attended rows with a seed derived from (seed, epoch, chunk index), scores them
block by block with the kernels of `latent_atlas.clustering.estep`, and returns sums that add across chunks.
The M-step (`SequentialSoftClustering._step`) reduces them in chunk order, so the centroids are
the same whether the map runs locally or on Dask, and a resumed run draws the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.estep import (SparseBlock, as_tensor, block_memberships, learning_dtype, load_rows,
                                           scratch_space, weighted_cluster_sums)
from latent_atlas.clustering.rows import check_dim, open_rows, sample_positions
from latent_atlas.data.errors import ChunkError


@dataclass
class EStepSums:
    """Sufficient statistics of one chunk's sample under fixed centroids (mergeable by summation)."""

    chunk_index: int
    n_points: int
    sums: np.ndarray  # [k, d] float64, sum_i p_ic x_i / ||x_i||
    mass: np.ndarray  # [k] float64, sum_i p_ic
    max_cosine_sum: float  # sum_i max_c cos(x_i, c)
    weighted_cosine_sum: float  # sum_i sum_c p_ic cos(x_i, c)
    candidates: np.ndarray  # [r, d] float32 unit rows, the sample's most poorly explained points
    candidate_scores: np.ndarray  # [r] their max cosine (lower = worse explained)
    removal_loss: np.ndarray  # [k] float64, sum over points whose top cluster is c of cos(top) - cos(second)


def chunk_estep_sums(item: tuple, centers: np.ndarray, config: ClusteringConfig, map_blocks=map) -> EStepSums:
    """E-step of one chunk. item = (source, epoch, chunk index); centers [k, d] float32 unit rows.

    Module-level and deterministic so a backend can run it anywhere (threads, processes, Dask).
    Per block (`block_estep`): rows converted once into an fp32 buffer, one GEMM, sparse memberships,
    and a sparse (nnz * d) accumulation of the weighted sums. The block sums are added in block order,
    in fp32 within a chunk (at most max_points / block_size of them; a float64 [k, d] add per block
    cost more than the accumulation itself) and float64 across chunks. `map_blocks` runs the blocks
    (builtin map: one after the other; benchmarks/learning_block_parallel.py maps them on threads);
    the reduction keeps block order, so the sums do not depend on which thread ran a block.
    """
    source, epoch, chunk_index = item
    rows, name = open_rows(source, config.npz_keys)
    selected = sample_positions(rows, config.max_points, np.random.default_rng([config.seed, 1, epoch, chunk_index]))
    centers_t = torch.from_numpy(np.ascontiguousarray(centers.T)).to(config.device)
    k, d = centers.shape
    check_dim(rows, d, name)
    sums = torch.zeros(k, d, dtype=torch.float32, device=config.device)
    mass = torch.zeros(k, dtype=torch.float64, device=config.device)
    loss = np.zeros(k, np.float64)
    max_cos_sum = weighted_cos_sum = 0.0
    cand, cand_scores = [], []
    source_t = as_tensor(rows.data)

    def block(start: int) -> BlockSums:
        return block_estep(rows.data, source_t, selected[start:start + config.block_size], len(selected), centers_t,
                           config, name)

    for part in map_blocks(block, range(0, len(selected), config.block_size)):
        sums += part.sums
        mass += part.mass
        loss += part.removal_loss
        max_cos_sum += part.max_cosine_sum
        weighted_cos_sum += part.weighted_cosine_sum
        if part.candidates is not None:
            cand.append(part.candidates)
            cand_scores.append(part.candidate_scores)
    candidates, scores = _worst_explained(cand, cand_scores, config.reseed_candidates, d)
    return EStepSums(int(chunk_index), int(len(selected)), sums.double().cpu().numpy(), mass.cpu().numpy(),
                     float(max_cos_sum), float(weighted_cos_sum), candidates, scores, loss)


@dataclass
class BlockSums:
    """One block's share of a chunk's EStepSums (fp32 sums [k, d] on the E-step's device)."""

    sums: torch.Tensor
    mass: torch.Tensor
    removal_loss: np.ndarray
    max_cosine_sum: float
    weighted_cosine_sum: float
    candidates: torch.Tensor | None  # [r, d] unit rows of the block's worst explained points, on the CPU
    candidate_scores: torch.Tensor | None


def block_estep(data: np.ndarray, source_t: torch.Tensor, index: np.ndarray, n_selected: int,
                centers_t: torch.Tensor, config: ClusteringConfig, name: str) -> BlockSums:
    """The E-step of rows data[index] (one block of a chunk's n_selected sampled rows), with this
    thread's reused buffers; centers_t [d, k]."""
    k = centers_t.shape[1]
    scratch = scratch_space()
    x, inv_norm = load_rows(data, source_t, index, scratch, config.device)
    result = block_memberships(x, inv_norm, centers_t, config.temperature, config.top_m, config.threshold, scratch,
                               learning_dtype(config.learn_precision))
    max_cosine = result.max_cosine
    check_finite(result.inv_norm, name)
    top, gap = removal_gaps(result, config.temperature, config.threshold)
    # each block offers twice its share of the chunk's candidates: the chunk's worst r are
    # almost always among them, without copying r rows out of every block
    r = min(config.reseed_candidates, -(-2 * config.reseed_candidates * len(max_cosine) // n_selected), len(max_cosine))
    worst = torch.topk(max_cosine, r, largest=False).indices if r else None
    return BlockSums(
        weighted_cluster_sums(x, result, k),
        torch.bincount(result.clusters, result.values, minlength=k),
        np.bincount(top, weights=gap.astype(np.float64), minlength=k),
        # numpy's pairwise float64 sums: the same bits whatever torch's thread count (Dask workers differ)
        float(np.sum(max_cosine.cpu().numpy(), dtype=np.float64)),
        float(np.sum(result.values.cpu().numpy().astype(np.float64) * result.cosines.cpu().numpy())),
        None if worst is None else (x[worst] * result.inv_norm[worst, None]).cpu(),
        None if worst is None else max_cosine[worst].cpu())


def removal_gaps(block: SparseBlock, temperature: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(top cluster [b], cos(top) - cos(second best) [b]) per row: what the objective (mean max
    cosine) would lose on that row without its top cluster. A second cluster that was not kept has
    p < threshold, and p / p_top = exp((cos - cos_top) / T), so its gap is at least T log(p_top / threshold)."""
    rows, clusters, cosines, values = (t.cpu().numpy() for t in (block.rows, block.clusters, block.cosines, block.values))
    top_cos = block.max_cosine.cpu().numpy()
    is_top = cosines >= top_cos[rows]  # exact: the top entry's cosine is max_cosine itself
    top = np.zeros(len(top_cos), np.int64)
    p_top = np.ones(len(top_cos), np.float64)
    top[rows[is_top][::-1]] = clusters[is_top][::-1]  # ties: the lowest cluster
    p_top[rows[is_top][::-1]] = values[is_top][::-1]
    second = top_cos - temperature * np.log(np.maximum(p_top / max(threshold, 1e-12), 1.0))
    np.maximum.at(second, rows[~is_top], cosines[~is_top])
    return top, np.maximum(top_cos - second, 0.0)


def _worst_explained(blocks: list, scores: list, r: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [<=r, d], scores [<=r]): the r lowest-scoring candidates the blocks offered, in score order."""
    if not blocks:
        return np.zeros((0, d), np.float32), np.zeros(0, np.float32)
    scores_all = torch.cat(scores)
    order = torch.argsort(scores_all, stable=True)[:r]
    return torch.cat(blocks)[order].numpy(), scores_all[order].numpy()


def check_finite(inv_norm: torch.Tensor, name: str) -> None:
    """ChunkError naming the chunk if a row of the block held NaN/Inf; inv_norm [b] is 1/||x|| per row."""
    # A NaN/Inf anywhere in a row makes its norm NaN/Inf, so 1/norm NaN/0 (finite rows give 1/norm
    # >= ~1e-19 > 0): a free check on [b] instead of [b, d].
    if not bool(torch.isfinite(inv_norm).all() and (inv_norm > 0).all()):
        raise ChunkError(name, "activations contain NaN/Inf")
