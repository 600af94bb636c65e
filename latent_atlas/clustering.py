"""Soft spherical clustering of token activations, learned online over a stream of chunks.

The seed's `SequentialSoftClustering`: unit-normalized (whitened) activations are softly assigned
to k unit centroids by a softmax over cosine similarities; centroids follow online (stochastic EM)
updates of the membership-weighted sums, one step per `chunks_per_step` chunks.

Memberships (E-step and `transform`) are the exact softmax probabilities
p_c = exp(cos_c / T) / sum_k exp(cos_k / T) of the top-m clusters whose p_c >= threshold (the top
cluster is always kept). They are NOT renormalized: a value is the true soft membership, so every
value is in (0, 1] and a token's values sum to <= 1 (the mass outside the kept clusters is dropped).

The per-chunk E-step (`chunk_statistics`) is a pure function of (chunk, centroids, config, stream
position); its results are reduced in chunk order, so the centroids are identical whether the map
runs locally or on Dask. Sampling seeds derive from (seed, epoch, chunk index), so a resumed run
draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from latent_atlas.backends import Backend, LocalBackend
from latent_atlas.chunks import DenseChunk, NpzKeys, load_npz_chunk, read_chunk
from latent_atlas.errors import ChunkError
from latent_atlas.estep import (GEMM_DTYPES, SparseBlock, as_tensor, block_memberships, learning_dtype, load_rows,
                                resolve_precision, scratch_space, weighted_cluster_sums)
from latent_atlas.memberships import SparseMemberships
from latent_atlas.memory import release_free_memory
from latent_atlas.tables import save_npz

_CHECKPOINT_GLOB = "checkpoint-*.npz"
_KEEP_CHECKPOINTS = 3  # the newest and two fallbacks (a kill mid-write leaves at worst a stale temp file)


@dataclass(frozen=True)
class ClusteringConfig:
    """Everything that determines the learned centroids (same config + data -> same numbers)."""

    n_clusters: int = 512
    """Number of soft clusters k."""
    temperature: float = 0.05
    """Softmax temperature on cosine similarities (1/T is the concentration)."""
    top_m: int = 8
    """At most this many memberships are kept per token."""
    threshold: float = 0.01
    """Memberships below this are dropped (the top one is always kept)."""
    max_points: int = 100_000
    """At most this many attended positions are sampled per chunk for a learning step."""
    n_epochs: int = 3
    """Passes over the chunk stream."""
    init: str = "random"
    """'random' (uniform on the unit sphere, the seed's choice) or 'kmeans++' on a sample drawn evenly
    from every chunk."""
    init_points: int = 20_000
    """Sample size for k-means++ initialization."""
    seed: int = 0
    """Seeds initialization and per-chunk sampling."""
    device: str = "cpu"
    """Torch device for the E-step."""
    chunks_per_step: int = 1
    """Chunks whose statistics are reduced into one M-step (set to the number of workers to parallelize)."""
    step_offset: float = 1.0
    """t0 of the step size rho_t = (t0 + t)^-kappa; >= 1 so that rho_0 <= 1."""
    step_decay: float = 0.6
    """kappa of the step size, in (0.5, 1] (Robbins-Monro)."""
    dead_fraction: float = 0.05
    """A cluster is dead in a step when its usage is below this fraction of the mean usage."""
    dead_window: int = 0
    """Steps over which a cluster's usage (and removal loss) is summed to decide that it is dead (then
    it is reseeded on the most poorly explained points) or can be swapped; 0 = two epochs of steps
    (2 for partial_fit). In a stream kept in topic order a real cluster is absent from most chunks,
    and judging it on the last step or two would reseed it; two epochs see every chunk."""
    duplicate_cosine: float = 0.95
    """A cluster whose centroid is this close (cosine) to one with more usage is redundant: it is
    reseeded at once, like a dead one (two centroids stuck on one mode never die on their own)."""
    swap_margin: float = 2.0
    """A cluster is also moved onto a group of poorly explained points when the cosine those points
    gain exceeds this multiple of what the cluster explains over the last window (its removal loss):
    a stream kept in topic order can leave a mode without a cluster and two clusters on another, and
    no cluster ever dies. 0 switches swaps off."""
    swaps_per_step: int = 2
    """At most this many swaps per step."""
    reseed_candidates: int = 512
    """Poorly explained points each chunk offers as reseed candidates."""
    reseed_neighbors: int = 8
    """A reseeded centroid is the mean of its pick and the pick's nearest candidates (this many in
    all): in high dimensions one noisy point is far from its mode, and a centroid placed on it draws
    no mass and dies again; a mean of a few points from the same mode does not."""
    shuffle_chunks: bool = True
    """Visit chunks in a seeded random order each epoch."""
    block_size: int = 2048
    """Rows per similarity block; bounds E-step memory to ~block_size * (d + k) floats. 2048 rows of
    d=2304 (19 MB fp32) stay in cache between conversion and GEMM; 4096 measured 5-11% slower."""
    learn_precision: str = "auto"
    """Precision of the similarity GEMM of the learning E-step. 'bfloat16': fp32 in and out, products
    in bf16 with fp32 accumulation (oneDNN on AMX, ~4x the fp32 GEMM; TF32/bf16 on CUDA; elsewhere
    the same products from operands rounded to bf16, slower than fp32); cosines to ~1e-3, noise well
    below the step's own sampling noise. 'float32' for an exact learning E-step. 'auto' (default):
    'bfloat16' where the CPU has AMX-BF16 (or on CUDA), 'float32' elsewhere; the estimator resolves it
    once, when it is made, so a run never mixes precisions across workers or a resume, and
    checkpoints hold what was chosen. transform/predict always use fp32."""
    npz_keys: NpzKeys = field(default_factory=NpzKeys)
    """Array names inside seed-format NPZ chunks."""

    def __post_init__(self):
        def check(name: str, ok: bool, expected: str):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        check("n_clusters", is_int(self.n_clusters) and self.n_clusters >= 1, "a positive integer")
        check("temperature", isinstance(self.temperature, (int, float)) and self.temperature > 0, "a positive number")
        check("top_m", is_int(self.top_m) and self.top_m >= 1, "a positive integer")
        check("threshold", isinstance(self.threshold, (int, float)) and 0 <= self.threshold < 1, "in [0, 1)")
        check("max_points", is_int(self.max_points) and self.max_points >= 1, "a positive integer")
        check("n_epochs", is_int(self.n_epochs) and self.n_epochs >= 1, "a positive integer")
        check("init", self.init in ("random", "kmeans++"), "'random' or 'kmeans++'")
        check("init_points", is_int(self.init_points) and self.init_points >= 1, "a positive integer")
        check("seed", is_int(self.seed) and self.seed >= 0, "a non-negative integer")
        check("chunks_per_step", is_int(self.chunks_per_step) and self.chunks_per_step >= 1, "a positive integer")
        check("step_offset", isinstance(self.step_offset, (int, float)) and self.step_offset >= 1, ">= 1")
        check("step_decay", isinstance(self.step_decay, (int, float)) and 0.5 < self.step_decay <= 1, "in (0.5, 1]")
        check("dead_fraction", isinstance(self.dead_fraction, (int, float)) and 0 <= self.dead_fraction < 1, "in [0, 1)")
        check("duplicate_cosine", isinstance(self.duplicate_cosine, (int, float)) and 0 < self.duplicate_cosine <= 1, "in (0, 1]")
        check("dead_window", is_int(self.dead_window) and self.dead_window >= 0, "a non-negative integer")
        check("swap_margin", isinstance(self.swap_margin, (int, float)) and self.swap_margin >= 0, ">= 0")
        check("swaps_per_step", is_int(self.swaps_per_step) and self.swaps_per_step >= 0, "a non-negative integer")
        check("reseed_candidates", is_int(self.reseed_candidates) and self.reseed_candidates >= 0, "a non-negative integer")
        check("reseed_neighbors", is_int(self.reseed_neighbors) and self.reseed_neighbors >= 1, "a positive integer")
        check("learn_precision", self.learn_precision in ("auto", *GEMM_DTYPES),
              f"'auto' or one of {sorted(GEMM_DTYPES)}")
        check("block_size", is_int(self.block_size) and self.block_size >= 1, "a positive integer")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClusteringConfig":
        values = json.loads(text)
        values["npz_keys"] = NpzKeys(**values["npz_keys"])
        return cls(**values)


# ---------------------------------------------------------------- E-step (pure functions)


@dataclass
class ChunkStatistics:
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


def chunk_statistics(item: tuple, centers: np.ndarray, config: ClusteringConfig) -> ChunkStatistics:
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
    _check_dim(rows, d, name)
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
        _check_finite(result.inv_norm, name)
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
    candidates, scores = _worst(cand, cand_scores, config.reseed_candidates, d)
    return ChunkStatistics(int(chunk_index), int(len(selected)), sums.double().cpu().numpy(), mass.cpu().numpy(),
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


def _worst(blocks: list, scores: list, r: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    if not blocks:
        return np.zeros((0, d), np.float32), np.zeros(0, np.float32)
    scores_all = torch.cat(scores)
    order = torch.argsort(scores_all, stable=True)[:r]
    return torch.cat(blocks)[order].numpy(), scores_all[order].numpy()


def open_rows(source: Any, keys: NpzKeys = NpzKeys()) -> tuple[np.ndarray, str]:
    """(rows, name): activations flattened to [n_seq * seq_len, d] (memory-mapped when possible),
    with the flat indices of attended positions marked by `rows.attended`, and a name for errors."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ValueError(f"X must be a 2-D array [n, d], got shape {source.shape}")
        return _Rows(source, np.arange(source.shape[0])), "X"
    chunk = open_chunk(source, keys)
    flat = chunk.activations.reshape(-1, chunk.dim)
    attended = np.flatnonzero(np.asarray(chunk.attention_mask).reshape(-1))
    return _Rows(flat, attended), str(chunk.path or "<chunk>")


class _Rows:
    """Rows [n, d] of a chunk with the indices of its attended rows; indexing gathers rows."""

    def __init__(self, data: np.ndarray, attended: np.ndarray):
        self.data, self.attended = data, attended

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, index):
        return self.data[index]


def open_chunk(source: Any, keys: NpzKeys = NpzKeys()) -> DenseChunk:
    """A DenseChunk from a DenseChunk, a chunk directory or a seed-format .npz file."""
    if isinstance(source, DenseChunk):
        return source
    path = Path(source)
    if path.is_dir():
        return read_chunk(path)
    if path.suffix == ".npz":
        return load_npz_chunk(path, keys)
    raise ChunkError(path, "expected a chunk directory or a seed-format .npz file")


def sample_positions(rows: _Rows, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of at most max_points attended rows (sorted so memmap reads go forward)."""
    attended = rows.attended
    if len(attended) <= max_points:
        return attended
    return np.sort(rng.choice(attended, size=max_points, replace=False))


def _check_dim(rows: _Rows, d: int, name: str) -> None:
    if rows.shape[1] != d:
        raise ChunkError(name, f"activations have dimension {rows.shape[1]}, the centroids have {d}")


def _check_finite(inv_norm: torch.Tensor, name: str) -> None:
    # A NaN/Inf anywhere in a row makes its norm NaN/Inf, so 1/norm NaN/0 (finite rows give 1/norm
    # >= ~1e-19 > 0): a free check on [b] instead of [b, d].
    if not bool(torch.isfinite(inv_norm).all() and (inv_norm > 0).all()):
        raise ChunkError(name, "activations contain NaN/Inf")


# ---------------------------------------------------------------- initialization


def random_centers(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] float32, uniform on the unit sphere."""
    centers = rng.standard_normal((k, d)).astype(np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] float32 k-means++ seeds for unit points [n, d] under the distance 1 - cos."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least n_clusters={k} points, the sample has {n}")
    chosen = [int(rng.integers(n))]
    distance = (1.0 - x @ x[chosen[0]]).clamp_min_(0).double()
    for _ in range(1, k):
        total = float(distance.sum())
        if total <= 0:  # fewer distinct points than clusters: pick any not yet chosen
            nxt = int(np.setdiff1d(np.arange(n), chosen)[0])
        else:
            nxt = int(np.searchsorted(np.cumsum(distance.numpy()), rng.random() * total, side="right"))
            nxt = min(nxt, n - 1)
        chosen.append(nxt)
        distance = torch.minimum(distance, (1.0 - x @ x[nxt]).clamp_min_(0).double())
    return x[chosen].numpy().copy()


def _unit_sample(sources: Sequence[Any], config: ClusteringConfig, n: int) -> np.ndarray:
    """About n unit rows drawn evenly from every chunk (one open at a time): a stream kept in topic
    order has only a few topics in its first chunk, and seeds drawn there would all sit on them."""
    per_chunk = max(1, -(-n // len(sources)))
    parts = []
    for i, source in enumerate(sources):
        rows, _ = open_rows(source, config.npz_keys)
        picked = sample_positions(rows, per_chunk, np.random.default_rng([config.seed, 2, i]))
        parts.append(np.asarray(rows[picked], dtype=np.float32))
    x = np.concatenate(parts)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- the estimator


class SequentialSoftClustering:
    """Soft spherical clustering learned by streaming over activation chunks (scikit-learn style).

    Parameters are the fields of `ClusteringConfig`, plus `checkpoint_dir`: when set, a checkpoint
    (centroids, running statistics, step count, RNG state, stream position) is written atomically
    after every step and `fit_chunks` resumes from the newest one.

    Fitted attributes: cluster_centers_ [k, d] float32 unit rows, history_ (one dict per step),
    n_steps_, n_features_in_, usage_ [k] (running membership mass per sampled token).
    """

    def __init__(self, n_clusters: int = 512, *, checkpoint_dir: str | Path | None = None, **params: Any):
        unknown = set(params) - {f.name for f in fields(ClusteringConfig)}
        if unknown:
            raise TypeError(f"unknown parameters {sorted(unknown)}")
        config = ClusteringConfig(n_clusters=n_clusters, **params)  # validates, naming the bad argument
        # 'auto' becomes a concrete precision here, once, on the driver: Dask workers on other CPUs,
        # checkpoints and resumes all use the one it chose
        self.config = replace(config, learn_precision=resolve_precision(config.learn_precision, config.device))
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def __getattr__(self, name: str):  # parameters read like sklearn attributes: model.temperature
        config = self.__dict__.get("config")
        if config is not None and name in ClusteringConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(name)

    def get_params(self) -> dict:
        return {**asdict(self.config), "npz_keys": self.config.npz_keys, "checkpoint_dir": self.checkpoint_dir}

    # ------------------------------------------------------------ learning

    def fit_chunks(self, chunk_paths: Iterable[Any], backend: Backend | None = None) -> "SequentialSoftClustering":
        """Learn centroids over chunks (chunk directories, .npz files or DenseChunks), n_epochs passes.

        Holds at most one chunk's sample per map item in memory; resumes from checkpoint_dir if set.
        """
        sources = list(chunk_paths)
        if not sources:
            raise ValueError("chunk_paths must name at least one chunk")
        self._run(sources, backend or LocalBackend())
        return self

    def fit(self, X: np.ndarray, backend: Backend | None = None) -> "SequentialSoftClustering":
        """Learn centroids from rows X [n, d] in memory, read as chunks of max_points rows."""
        X = _check_array(X, "X")
        step = self.config.max_points
        self._run([X[i:i + step] for i in range(0, X.shape[0], step)], backend or LocalBackend())
        return self

    def partial_fit(self, chunk: Any) -> "SequentialSoftClustering":
        """One online step on one chunk (DenseChunk, chunk path or rows [n, d]); initializes if needed."""
        if isinstance(chunk, np.ndarray):
            chunk = _check_array(chunk, "chunk")
        if not hasattr(self, "cluster_centers_"):
            self._initialize([chunk])
        stats = chunk_statistics((chunk, 0, self.n_steps_), self.cluster_centers_, self.config)
        self._step([stats], epoch=0)
        return self

    def _run(self, sources: list, backend: Backend) -> None:
        cfg = self.config
        fingerprints = [fingerprint(s) for s in sources] if self.checkpoint_dir else []
        epoch, position = self._resume(fingerprints) if self.checkpoint_dir else (0, 0)
        if epoch == 0 and position == 0:
            self._initialize([sources[i] for i in _epoch_order(cfg, 0, len(sources))])
            # two epochs of steps (with chunks shuffled per epoch, any 2n - 1 consecutive steps see every
            # chunk), but at most half the fit, so that a short fit still judges and reseeds its clusters
            epoch_steps = -(-len(sources) // cfg.chunks_per_step)
            self._start_window(min(2 * epoch_steps, max(2, cfg.n_epochs * epoch_steps // 2)), epoch_steps)
        while epoch < cfg.n_epochs:
            order = _epoch_order(cfg, epoch, len(sources))
            group = order[position:position + cfg.chunks_per_step]
            items = [(sources[i], epoch, int(i)) for i in group]
            stats = backend.map(chunk_statistics, items, centers=self.cluster_centers_, config=cfg)
            self._step(stats, epoch)
            del stats  # not alive while the next chunk is read: memory stays one chunk's worth
            release_free_memory()
            position += len(group)
            if position >= len(sources):
                epoch, position = epoch + 1, 0
            if self.checkpoint_dir:
                self._save_checkpoint(epoch, position, fingerprints)

    def _initialize(self, sources: Sequence[Any]) -> None:
        cfg = self.config
        self._rng = np.random.default_rng([cfg.seed, 0])
        d = open_rows(sources[0], cfg.npz_keys)[0].shape[1]
        if cfg.init == "random":
            centers = random_centers(cfg.n_clusters, d, self._rng)
        else:
            centers = kmeans_plus_plus(_unit_sample(sources, cfg, cfg.init_points), cfg.n_clusters, self._rng)
        self.cluster_centers_ = centers
        self.n_features_in_ = d
        self.n_steps_ = 0
        self.history_: list[dict] = []
        # running E[p_ic x_i / ||x_i||] and E[p_ic], started as if each initial centroid had average
        # usage: with rho_0 < 1 the first chunk then cannot overwrite clusters it holds no data for
        self.usage_ = np.full(cfg.n_clusters, 1.0 / cfg.n_clusters)
        self._sums = centers.astype(np.float64) * self.usage_[:, None]
        self._start_window(2, 2)

    def _start_window(self, steps: int, epoch_steps: int) -> None:
        """Batch usage and removal loss of the last `steps` steps (rings), each cluster's steps since
        (re)seeding, and the steps of one epoch (the removal loss is compared per epoch)."""
        k = self.config.n_clusters
        self._usage_window = np.zeros((self.config.dead_window or steps, k), np.float64)
        self._epoch_steps = int(epoch_steps)
        self._loss_window = np.zeros_like(self._usage_window)
        self._age = np.zeros(k, np.int64)

    def _step(self, stats: Sequence[ChunkStatistics], epoch: int) -> None:
        """M-step: blend the reduced statistics into the running ones, renormalize, reseed dead clusters."""
        cfg = self.config
        n = sum(s.n_points for s in stats)
        # in place, in chunk order (backend-independent): [k, d] float64 temporaries are what the step allocates
        batch_sums = stats[0].sums.copy()
        for s in stats[1:]:
            batch_sums += s.sums
        batch_sums /= n
        batch_usage = np.sum([s.mass for s in stats], axis=0) / n
        rho = (cfg.step_offset + self.n_steps_) ** -cfg.step_decay
        batch_sums *= rho
        self._sums *= 1 - rho
        self._sums += batch_sums
        self.usage_ = (1 - rho) * self.usage_ + rho * batch_usage
        del batch_sums
        old = self.cluster_centers_
        norms = np.linalg.norm(self._sums, axis=1, keepdims=True)
        centers = (self._sums / np.maximum(norms, 1e-300)).astype(np.float32)
        empty = norms[:, 0] == 0  # a cluster with no mass yet keeps its centroid
        centers[empty] = old[empty]

        window = self._usage_window
        slot = self.n_steps_ % len(window)
        window[slot] = batch_usage
        self._loss_window[slot] = np.sum([s.removal_loss for s in stats], axis=0)
        self._age += 1
        recent = window.sum(axis=0)  # usage over the last window of steps
        judged = self._age >= len(window)  # only a cluster that has had a whole window is judged
        dead = judged & (recent < cfg.dead_fraction * recent.mean())
        duplicates = _duplicates(centers, self.usage_, cfg.duplicate_cosine)
        due = dead.copy()
        due[duplicates] = True
        reseeded, swapped = self._reseed(centers, stats, np.flatnonzero(due), judged & ~due)

        self.cluster_centers_ = centers
        self.n_steps_ += 1
        shares = batch_usage / max(batch_usage.sum(), 1e-300)
        entropy = -np.sum(shares * np.log(np.where(shares > 0, shares, 1.0)))
        self.history_.append({
            "step": self.n_steps_,
            "epoch": int(epoch),
            "chunks": [s.chunk_index for s in stats],
            "n_points": int(n),
            "rho": float(rho),
            "objective": sum(s.max_cosine_sum for s in stats) / n,  # mean max cosine
            "weighted_cosine": sum(s.weighted_cosine_sum for s in stats) / max(float(batch_usage.sum()) * n, 1e-300),
            "centroid_shift": float(np.max(1.0 - np.sum(old * centers, axis=1))),  # max 1 - cos(old, new)
            "usage_entropy": float(entropy / math.log(cfg.n_clusters)) if cfg.n_clusters > 1 else 1.0,
            "imbalance": float(batch_usage.max() / max(batch_usage.mean(), 1e-300)),
            "n_dead": int(dead.sum()),
            "n_duplicates": int(len(duplicates)),
            "n_reseeded": int(reseeded),
            "n_swapped": int(swapped),
            "moved": self._moved,  # clusters reseeded or swapped in this step
        })

    def _reseed(self, centers: np.ndarray, stats: Sequence[ChunkStatistics], due: np.ndarray,
                swappable: np.ndarray) -> tuple[int, int]:
        """(reseeded, swapped): move clusters due for reseeding onto poorly explained points of the
        step, then swap clusters that explain little onto groups of points that would gain more.

        Picks go farthest first: each is the candidate least similar to all centroids kept so far
        and to earlier picks, so several moved clusters do not land on the same uncovered mode. A
        moved centroid is the mean of its pick and the pick's nearest candidates.
        """
        cfg = self.config
        candidates = np.concatenate([s.candidates for s in stats])
        self._moved = []
        if not len(candidates):
            return 0, 0
        n_swaps = cfg.swaps_per_step if cfg.swap_margin > 0 else 0
        picks = _farthest_picks(candidates, np.delete(centers, due, axis=0), len(due) + 4 * n_swaps)
        seeds = _seeds_near(candidates, picks, cfg.reseed_neighbors)
        due = due[: len(picks)]
        self._move(centers, due, seeds[: len(due)])
        self._moved = [int(c) for c in due]
        if not n_swaps or len(seeds) <= len(due):
            return len(due), 0
        # what each further seed would add to the cosine of the candidates it explains better
        best = np.maximum(np.concatenate([s.candidate_scores for s in stats]),
                          (candidates @ seeds[: len(due)].T).max(axis=1, initial=-1.0))
        offers = candidates @ seeds[len(due):].T  # [r, p]
        # per epoch: in a stream kept in topic order an uncovered group is seen once an epoch, and so is
        # a real cluster's data. (The gain comes from <= reseed_candidates points a chunk: a lower bound,
        # so on large unsorted chunks swaps rarely fire; dead and duplicate reseeding cover those.)
        loss = self._loss_window.sum(axis=0) * (self._epoch_steps / len(self._loss_window))
        order = np.flatnonzero(swappable)[np.argsort(loss[swappable], kind="stable")]
        moved, targets = [], []
        while len(moved) < min(n_swaps, len(order)):
            gains = np.maximum(offers - best[:, None], 0).sum(axis=0)
            j = int(np.argmax(gains))
            if gains[j] <= cfg.swap_margin * loss[order[len(moved)]]:
                break
            moved.append(order[len(moved)])
            targets.append(seeds[len(due) + j])
            best = np.maximum(best, offers[:, j])  # the next seed gains only what this one leaves
        if moved:
            self._move(centers, np.array(moved), np.stack(targets))
        self._moved += [int(c) for c in moved]
        return len(due), len(moved)

    def churn(self) -> dict:
        """Clusters dead now (usage per step over their window below dead_fraction of the mean, judged
        or not) or moved (reseeded, swapped) during the last epoch, as a share of k: a fit whose
        clusters still die or move in its last pass has not settled."""
        self._check_fitted()
        steps = np.maximum(np.minimum(self._age, len(self._usage_window)), 1)
        rate = self._usage_window.sum(axis=0) / steps
        dead = set(np.flatnonzero(rate < self.config.dead_fraction * rate.mean()).tolist())
        last = [h for h in self.history_ if h["epoch"] == self.history_[-1]["epoch"]]
        moved = {c for h in last for c in h.get("moved", [])}
        return {"dead_now": len(dead - moved), "moved_in_last_epoch": len(moved),
                "share": len(dead | moved) / self.config.n_clusters}

    def _move(self, centers: np.ndarray, clusters: np.ndarray, seeds: np.ndarray) -> None:
        mean_usage = self.usage_.mean()
        centers[clusters] = seeds
        self._sums[clusters] = seeds * mean_usage  # as if it had average usage, so it is not re-killed at once
        self.usage_[clusters] = mean_usage
        self._age[clusters] = 0  # judged again after a whole window of its own
        self._usage_window[:, clusters] = 0
        self._loss_window[:, clusters] = 0

    # ------------------------------------------------------------ memberships

    def transform(self, chunk: Any, block_sequences: int | None = None) -> SparseMemberships:
        """Sparse memberships of every attended position of a chunk, sorted by (sequence, position, cluster).

        The chunk is processed in blocks of `block_sequences` sequences (default: ~block_size tokens),
        so memory stays bounded whatever the chunk size.
        """
        self._check_fitted()
        chunk = open_chunk(chunk, self.config.npz_keys)
        _check_dim(_Rows(chunk.activations.reshape(-1, chunk.dim), None), self.n_features_in_, str(chunk.path))
        block_sequences = block_sequences or max(1, self.config.block_size // chunk.sequence_length)
        length, name = chunk.sequence_length, str(chunk.path or "<chunk>")
        flat = chunk.activations.reshape(-1, chunk.dim)
        source = as_tensor(flat)
        attended = np.flatnonzero(np.asarray(chunk.attention_mask).reshape(-1))  # sorted (sequence, position)
        bounds = np.searchsorted(attended, np.arange(0, chunk.n_sequences + block_sequences, block_sequences) * length)
        tokens_flat = np.asarray(chunk.token_ids).reshape(-1)
        centers_t, scratch, parts = self._centers_t(), scratch_space(), []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi <= lo:
                continue
            index = attended[lo:hi]
            result = self._memberships(*load_rows(flat, source, index, scratch, self.config.device), centers_t, scratch)
            _check_finite(result.inv_norm, name)
            token = index[result.rows.cpu().numpy()]  # entries are row-major, clusters ascending
            parts.append((token // length, token % length, result.clusters.cpu().numpy(),
                          result.values.cpu().numpy(), tokens_flat[token]))
        columns = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(5)]
        dtypes = (np.int32, np.int32, np.int32, np.float32, np.int32)
        return SparseMemberships(*(c.astype(t, copy=False) for c, t in zip(columns, dtypes)),
                                 total_sequences=chunk.n_sequences, sequence_length=length)

    def soft_memberships(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clusters [n, m] int32, values [n, m] float32) by decreasing value; dropped entries are (-1, 0)."""
        self._check_fitted()
        X = _check_array(X, "X", self.n_features_in_)
        centers_t, scratch, source = self._centers_t(), scratch_space(), as_tensor(X)
        m = min(self.config.top_m, self.config.n_clusters)
        clusters, values = np.full((X.shape[0], m), -1, np.int32), np.zeros((X.shape[0], m), np.float32)
        for start in range(0, X.shape[0], self.config.block_size):
            index = np.arange(start, min(start + self.config.block_size, X.shape[0]))
            result = self._memberships(*load_rows(X, source, index, scratch, self.config.device), centers_t, scratch)
            order = torch.argsort(-result.values, stable=True)
            order = order[torch.argsort(result.rows[order], stable=True)]  # by row, then decreasing value
            rows = result.rows[order]
            first = torch.cumsum(torch.bincount(rows, minlength=len(index)), 0) - torch.bincount(rows, minlength=len(index))
            slot = (torch.arange(len(rows), device=rows.device) - first[rows]).cpu().numpy()
            rows = rows.cpu().numpy() + start
            clusters[rows, slot] = result.clusters[order].cpu().numpy()
            values[rows, slot] = result.values[order].cpu().numpy()
        return clusters, values

    def _memberships(self, x: torch.Tensor, inv_norm: torch.Tensor, centers_t: torch.Tensor, scratch: dict) -> SparseBlock:
        cfg = self.config  # always fp32: transform and predict return exact memberships
        return block_memberships(x, inv_norm, centers_t, cfg.temperature, cfg.top_m, cfg.threshold, scratch)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Hard labels [n] int64: the closest centroid by cosine."""
        return self.soft_memberships(X)[0][:, 0].astype(np.int64)

    def _centers_t(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.cluster_centers_.T)).to(self.config.device)

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this SequentialSoftClustering is not fitted yet; call fit_chunks, fit or partial_fit")

    # ------------------------------------------------------------ persistence

    def _state(self) -> dict:
        return {
            "config": np.array(self.config.to_json()),
            "cluster_centers": self.cluster_centers_,
            "sums": self._sums,
            "usage": self.usage_,
            "usage_window": self._usage_window,
            "loss_window": self._loss_window,
            "epoch_steps": np.array(self._epoch_steps),
            "age": self._age,
            "n_steps": np.array(self.n_steps_),
            "history": np.array(json.dumps(self.history_)),
            "rng_state": np.array(json.dumps(self._rng.bit_generator.state)),
        }

    def _restore(self, npz) -> None:
        self.cluster_centers_ = npz["cluster_centers"]
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        self._sums, self.usage_ = npz["sums"], npz["usage"]
        if "epoch_steps" in npz.files:
            self._usage_window, self._loss_window, self._age = npz["usage_window"], npz["loss_window"], npz["age"]
            self._epoch_steps = int(npz["epoch_steps"])
        else:  # a model saved before death was judged over windows: it transforms; further steps start a window
            self._start_window(2, 2)
        self.n_steps_ = int(npz["n_steps"])
        self.history_ = json.loads(str(npz["history"]))
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = json.loads(str(npz["rng_state"]))

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one .npz file (atomically)."""
        self._check_fitted()
        return save_npz(Path(path), self._state())

    @classmethod
    def load(cls, path: str | Path) -> "SequentialSoftClustering":
        """A fitted model from `save`."""
        with np.load(path, allow_pickle=False) as npz:
            config = ClusteringConfig.from_json(str(npz["config"]))
            model = cls(**{**asdict(config), "npz_keys": config.npz_keys})
            model._restore(npz)
        return model

    def _save_checkpoint(self, epoch: int, position: int, fingerprints: list[str]) -> None:
        state = {**self._state(), "epoch": np.array(epoch), "position": np.array(position),
                 "sources": np.array(json.dumps(fingerprints))}
        save_npz(self.checkpoint_dir / f"checkpoint-{self.n_steps_:07d}.npz", state)
        for old in sorted(self.checkpoint_dir.glob(_CHECKPOINT_GLOB))[:-_KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)

    def _resume(self, fingerprints: list[str]) -> tuple[int, int]:
        """(epoch, position) to continue from; (0, 0) when there is no checkpoint."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.checkpoint_dir.glob(".*.tmp-*"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)
        found = sorted(self.checkpoint_dir.glob(_CHECKPOINT_GLOB))
        if not found:
            return 0, 0
        with np.load(found[-1], allow_pickle=False) as npz:
            if str(npz["config"]) != self.config.to_json() or json.loads(str(npz["sources"])) != fingerprints:
                raise ValueError(
                    f"checkpoint_dir {self.checkpoint_dir} holds a run with another config or other chunk "
                    "contents; use a new checkpoint_dir (checkpoint_key names one per fit) or delete it"
                )
            self._restore(npz)
            return int(npz["epoch"]), int(npz["position"])


def _farthest_picks(candidates: np.ndarray, kept: np.ndarray, n: int) -> list[int]:
    """Up to n candidates, each the least similar to the kept centroids and to the earlier picks."""
    closest = (candidates @ kept.T).max(axis=1) if len(kept) else np.full(len(candidates), -1.0, np.float32)
    picks = []
    for _ in range(min(n, len(candidates))):
        best = int(np.argmin(closest))  # first minimum: deterministic
        picks.append(best)
        closest = np.maximum(closest, candidates @ candidates[best])
        closest[best] = np.inf
    return picks


def _seeds_near(candidates: np.ndarray, picks: list[int], neighbors: int) -> np.ndarray:
    """[p, d] unit means of each pick and its nearest candidates (`neighbors` in all): in high
    dimensions one noisy point is far from its mode, the mean of a few from one mode is not."""
    if not picks:
        return np.zeros((0, candidates.shape[1]), np.float32)
    q = min(neighbors, len(candidates))
    near = np.argsort(-(candidates[picks] @ candidates.T), axis=1, kind="stable")[:, :q]  # [p, q], the pick first
    seeds = candidates[near].mean(axis=1)
    return seeds / np.maximum(np.linalg.norm(seeds, axis=1, keepdims=True), 1e-12)


def _duplicates(centers: np.ndarray, usage: np.ndarray, max_cosine: float) -> np.ndarray:
    """Indices of centroids within `max_cosine` of a centroid with more usage (ties: lower index wins)."""
    if max_cosine >= 1:
        return np.zeros(0, np.int64)
    rank = np.lexsort((np.arange(len(usage)), -usage))  # most used first
    cos = centers[rank] @ centers[rank].T  # [k, k]
    close = np.triu(cos > max_cosine, k=1)
    redundant = np.zeros(len(usage), bool)
    for j in np.flatnonzero(close.any(axis=0)):  # few columns; keeps a chain a~b~c from dropping a
        redundant[j] = bool((close[:j, j] & ~redundant[:j]).any())
    return np.sort(rank[redundant])


def _epoch_order(config: ClusteringConfig, epoch: int, n: int) -> np.ndarray:
    if not config.shuffle_chunks:
        return np.arange(n)
    return np.random.default_rng([config.seed, 3, epoch]).permutation(n)


def fingerprint(source: Any) -> str:
    """What a chunk source holds, cheaply: for files, each one's name, size and modification time
    plus a hash of 64 evenly spaced 4 KB pieces; for arrays, a hash of the data. A rewritten chunk
    (a whitening refit rewrites every whitened chunk under the same path) gets a new fingerprint, so
    a checkpoint of a fit on the old contents is never resumed on the new ones."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(source, DenseChunk) and source.path is None:
        source = source.activations
    if isinstance(source, np.ndarray):
        digest.update(repr((source.shape, str(source.dtype))).encode())
        digest.update(np.ascontiguousarray(source).view(np.uint8).reshape(-1))
        return f"array{list(source.shape)}:{digest.hexdigest()}"
    path = Path(source.path if isinstance(source, DenseChunk) else source)
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        stat = file.stat()
        digest.update(repr((file.name, stat.st_size, stat.st_mtime_ns)).encode())
        with open(file, "rb") as f:
            for offset in np.linspace(0, max(stat.st_size - 4096, 0), 64).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(4096))
    return f"{path}:{digest.hexdigest()}"


def checkpoint_key(config: ClusteringConfig, sources: Sequence[Any]) -> str:
    """A name for the checkpoints of one fit: the (resolved) config and every chunk's fingerprint.
    The same fit resumes; a new config or any changed chunk starts afresh."""
    text = json.dumps([config.to_json(), [fingerprint(s) for s in sources]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_array(X: Any, name: str, dim: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, d], got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {X.dtype}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has {X.shape[1]} features, the model was fitted with {dim}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN/Inf")
    return X

