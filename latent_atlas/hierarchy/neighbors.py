"""Exact cosine nearest neighbours by blocked matrix products.

For the few thousand points of a tree node this is a single GEMM per block of rows, faster than
NN-descent and free of numba compilation (pynndescent's kernels compile in every new process: 36-45 s
in benchmarks/tree_speed.py). Memory is one [block, n_reference] similarity block at a time.
"""

from __future__ import annotations

import numpy as np

from latent_atlas.clustering.rows import unit_rows

_BLOCK_ROWS = 1024


def cosine_knn(queries: np.ndarray, reference: np.ndarray, k: int,
               self_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of reference [n, d] to each row of queries [m, d] by cosine distance.

    Returns (indices [m, k] int64, distances [m, k] float32, 1 - cosine, ascending). With
    self_first (queries is reference), row i's first neighbour is i itself at distance 0, as UMAP's
    own kNN graph has it, even where duplicates tie with it.
    """
    q = unit_rows(np.asarray(queries, dtype=np.float32))
    r = unit_rows(np.asarray(reference, dtype=np.float32))
    if not 1 <= k <= len(r):
        raise ValueError(f"k must be in [1, {len(r)}] (the number of reference rows), got {k}")
    if self_first and len(q) != len(r):
        raise ValueError(f"self_first needs queries to be the reference ({len(r)} rows), got {len(q)} rows")
    indices = np.empty((len(q), k), np.int64)
    distances = np.empty((len(q), k), np.float32)
    for start in range(0, len(q), _BLOCK_ROWS):
        rows = slice(start, min(start + _BLOCK_ROWS, len(q)))
        sims = q[rows] @ r.T  # [b, n]
        if self_first:
            sims[np.arange(sims.shape[0]), np.arange(rows.start, rows.stop)] = np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(r) else np.tile(np.arange(len(r)), (len(sims), 1))
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(top, order, axis=1)
        distances[rows] = np.clip(1.0 - np.take_along_axis(top_sims, order, axis=1), 0.0, 2.0)
    return indices, distances
