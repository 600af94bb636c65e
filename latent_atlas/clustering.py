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
    """'random' (uniform on the unit sphere, the seed's choice) or 'kmeans++' on a sample of the first chunk."""
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
    dead_window: int = 2
    """Dead for this many consecutive steps -> reseeded on the most poorly explained points."""
    duplicate_cosine: float = 0.95
    """A cluster whose centroid is this close (cosine) to one with more usage is redundant: it is
    reseeded at once, like a dead one (two centroids stuck on one mode never die on their own)."""
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
        check("dead_window", is_int(self.dead_window) and self.dead_window >= 1, "a positive integer")
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
                           float(max_cos_sum), float(weighted_cos_sum), candidates, scores)


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


def _unit_sample(source: Any, config: ClusteringConfig, n: int) -> np.ndarray:
    rows, _ = open_rows(source, config.npz_keys)
    picked = sample_positions(rows, n, np.random.default_rng([config.seed, 2]))
    x = np.asarray(rows[picked], dtype=np.float32)
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
            self._initialize(chunk)
        stats = chunk_statistics((chunk, 0, self.n_steps_), self.cluster_centers_, self.config)
        self._step([stats], epoch=0)
        return self

    def _run(self, sources: list, backend: Backend) -> None:
        cfg = self.config
        fingerprint = [_describe(s) for s in sources]
        epoch, position = self._resume(fingerprint) if self.checkpoint_dir else (0, 0)
        if epoch == 0 and position == 0:
            self._initialize(sources[_epoch_order(cfg, 0, len(sources))[0]])
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
                self._save_checkpoint(epoch, position, fingerprint)

    def _initialize(self, first_source: Any) -> None:
        cfg = self.config
        self._rng = np.random.default_rng([cfg.seed, 0])
        d = open_rows(first_source, cfg.npz_keys)[0].shape[1]
        if cfg.init == "random":
            centers = random_centers(cfg.n_clusters, d, self._rng)
        else:
            centers = kmeans_plus_plus(_unit_sample(first_source, cfg, cfg.init_points), cfg.n_clusters, self._rng)
        self.cluster_centers_ = centers
        self.n_features_in_ = d
        self.n_steps_ = 0
        self.history_: list[dict] = []
        self._sums = np.zeros((cfg.n_clusters, d), np.float64)  # running E[p_ic x_i / ||x_i||]
        self.usage_ = np.zeros(cfg.n_clusters, np.float64)  # running E[p_ic]
        self._dead_steps = np.zeros(cfg.n_clusters, np.int64)

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

        dead = batch_usage < cfg.dead_fraction * batch_usage.mean()
        self._dead_steps = np.where(dead, self._dead_steps + 1, 0)
        duplicates = _duplicates(centers, self.usage_, cfg.duplicate_cosine)
        self._dead_steps[duplicates] = cfg.dead_window
        reseeded = self._reseed(centers, stats)

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
        })

    def _reseed(self, centers: np.ndarray, stats: Sequence[ChunkStatistics]) -> int:
        """Move clusters due for reseeding onto poorly explained points of the step, one apart.

        Each pick is the candidate least similar to all centroids kept so far and to earlier picks,
        so several reseeded clusters do not land on the same uncovered mode.
        """
        due = np.flatnonzero(self._dead_steps >= self.config.dead_window)
        candidates = np.concatenate([s.candidates for s in stats])
        if not len(due) or not len(candidates):
            return 0
        kept = np.delete(centers, due, axis=0)
        closest = (candidates @ kept.T).max(axis=1) if len(kept) else np.full(len(candidates), -1.0, np.float32)
        picks = []
        for _ in range(min(len(due), len(candidates))):
            best = int(np.argmin(closest))  # first minimum: deterministic
            picks.append(best)
            closest = np.maximum(closest, candidates @ candidates[best])
            closest[best] = np.inf
        due = due[: len(picks)]
        q = min(self.config.reseed_neighbors, len(candidates))
        near = np.argsort(-(candidates[picks] @ candidates.T), axis=1, kind="stable")[:, :q]  # [p, q], the pick first
        seeds = candidates[near].mean(axis=1)
        seeds /= np.maximum(np.linalg.norm(seeds, axis=1, keepdims=True), 1e-12)
        mean_usage = self.usage_.mean()
        centers[due] = seeds
        self._sums[due] = seeds * mean_usage  # as if it had average usage, so it is not re-killed at once
        self.usage_[due] = mean_usage
        self._dead_steps[due] = 0
        return len(due)

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
            "dead_steps": self._dead_steps,
            "n_steps": np.array(self.n_steps_),
            "history": np.array(json.dumps(self.history_)),
            "rng_state": np.array(json.dumps(self._rng.bit_generator.state)),
        }

    def _restore(self, npz) -> None:
        self.cluster_centers_ = npz["cluster_centers"]
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        self._sums, self.usage_, self._dead_steps = npz["sums"], npz["usage"], npz["dead_steps"]
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

    def _save_checkpoint(self, epoch: int, position: int, fingerprint: list[str]) -> None:
        state = {**self._state(), "epoch": np.array(epoch), "position": np.array(position),
                 "sources": np.array(json.dumps(fingerprint))}
        save_npz(self.checkpoint_dir / f"checkpoint-{self.n_steps_:07d}.npz", state)
        for old in sorted(self.checkpoint_dir.glob(_CHECKPOINT_GLOB))[:-_KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)

    def _resume(self, fingerprint: list[str]) -> tuple[int, int]:
        """(epoch, position) to continue from; (0, 0) when there is no checkpoint."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.checkpoint_dir.glob(".*.tmp-*"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)
        found = sorted(self.checkpoint_dir.glob(_CHECKPOINT_GLOB))
        if not found:
            return 0, 0
        with np.load(found[-1], allow_pickle=False) as npz:
            if str(npz["config"]) != self.config.to_json() or json.loads(str(npz["sources"])) != fingerprint:
                raise ValueError(
                    f"checkpoint_dir {self.checkpoint_dir} holds a run with another config or chunk list; "
                    "use a new checkpoint_dir or delete it"
                )
            self._restore(npz)
            return int(npz["epoch"]), int(npz["position"])


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


def _describe(source: Any) -> str:
    """What a chunk source is, to check that a checkpoint belongs to the same chunk list."""
    if isinstance(source, np.ndarray):
        return f"array{list(source.shape)}"
    if isinstance(source, DenseChunk):
        return str(source.path) if source.path else f"chunk{list(source.activations.shape)}"
    return str(Path(source))


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

