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


def chunk_estep_sums(item: tuple, centers: np.ndarray, config: ClusteringConfig) -> EStepSums:
    """E-step of one chunk. item = (source, epoch, chunk index); centers [k, d] float32 unit rows.

    Module-level and deterministic so a backend can run it anywhere (threads, processes, Dask).
    Per block: rows converted once into an fp32 buffer, one GEMM, sparse memberships, and a
    sparse (nnz * d) accumulation of the weighted sums. The sums are fp32 within a chunk (at most
    max_points / block_size block sums; a float64 [k, d] add per block cost more than the
    accumulation itself) and float64 across chunks.
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
    scratch = scratch_space()
    source_t = as_tensor(rows.data)
    for start in range(0, len(selected), config.block_size):
        x, inv_norm = load_rows(rows.data, source_t, selected[start:start + config.block_size], scratch, config.device)
        result = block_memberships(x, inv_norm, centers_t, config.temperature, config.top_m, config.threshold, scratch,
                                   learning_dtype(config.learn_precision))
        max_cosine = result.max_cosine
        check_finite(result.inv_norm, name)
        sums += weighted_cluster_sums(x, result, k)
        mass += torch.bincount(result.clusters, result.values, minlength=k)
        top, gap = removal_gaps(result, config.temperature, config.threshold)
        loss += np.bincount(top, weights=gap.astype(np.float64), minlength=k)
        # numpy's pairwise float64 sums: the same bits whatever torch's thread count (Dask workers differ)
        max_cos_sum += float(np.sum(max_cosine.cpu().numpy(), dtype=np.float64))
        weighted_cos_sum += float(np.sum(result.values.cpu().numpy().astype(np.float64) * result.cosines.cpu().numpy()))
        # each block offers twice its share of the chunk's candidates: the chunk's worst r are
        # almost always among them, without copying r rows out of every block
        share = -(-2 * config.reseed_candidates * len(max_cosine) // len(selected))
        r = min(config.reseed_candidates, share, len(max_cosine))
        if r:
            worst = torch.topk(max_cosine, r, largest=False).indices
            cand.append((x[worst] * result.inv_norm[worst, None]).cpu())
            cand_scores.append(max_cosine[worst].cpu())
    candidates, scores = _worst_explained(cand, cand_scores, config.reseed_candidates, d)
    return EStepSums(int(chunk_index), int(len(selected)), sums.double().cpu().numpy(), mass.cpu().numpy(),
                     float(max_cos_sum), float(weighted_cos_sum), candidates, scores, loss)


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
