"""Soft spherical clustering of token activations, learned online over a stream of chunks.

The seed's `SequentialSoftClustering`: unit-normalized (whitened) activations are softly assigned
to k unit centroids by a softmax over cosine similarities; centroids follow online (stochastic EM)
updates of the membership-weighted sums, one step per `chunks_per_step` chunks.

Memberships (E-step and `transform`) are the exact softmax probabilities
p_c = exp(cos_c / T) / sum_k exp(cos_k / T) of the top-m clusters whose p_c >= threshold (the top
cluster is always kept). They are NOT renormalized: a value is the true soft membership, so every
value is in (0, 1] and a token's values sum to <= 1 (the mass outside the kept clusters is dropped).

This module holds the estimator: the learning loop, the M-step and memberships. Its parts live in
their own modules: the config (`clustering_config`), initial centroids (`initialization`), the
per-chunk E-step sums (`estep_sums`, reduced here in chunk order, so the centroids are identical
whether the map runs locally or on Dask), where dead and redundant clusters move (`reseeding`), and
checkpoints with the chunk fingerprints that guard a resume (`checkpoints`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from latent_atlas.clustering.checkpoints import checkpoint_key, fingerprint, newest_checkpoint, write_checkpoint
from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.estep import (SparseBlock, as_tensor, block_memberships, load_rows, resolve_precision,
                                           scratch_space)
from latent_atlas.clustering.estep_sums import EStepSums, check_finite, chunk_estep_sums
from latent_atlas.clustering.initialization import initial_centers
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.clustering.reseeding import duplicates, plan_moves
from latent_atlas.clustering.rows import ChunkRows, check_dim, open_rows
from latent_atlas.compute.backends import Backend, LocalBackend
from latent_atlas.compute.memory import release_free_memory
from latent_atlas.data.seed_chunks import open_chunk
from latent_atlas.data.tables import save_npz

# checkpoint_key is re-exported for assets/clustering.py. The class stays defined here: sidecar JSON
# files and io_managers/tensors.py name it latent_atlas.clustering.model:SequentialSoftClustering.
__all__ = ["ClusteringConfig", "SequentialSoftClustering", "checkpoint_key"]


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
        stats = chunk_estep_sums((chunk, 0, self.n_steps_), self.cluster_centers_, self.config)
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
            stats = backend.map(chunk_estep_sums, items, centers=self.cluster_centers_, config=cfg)
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
        centers = initial_centers(sources, cfg, d, self._rng)
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

    def _step(self, stats: Sequence[EStepSums], epoch: int) -> None:
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
        redundant = duplicates(centers, self.usage_, cfg.duplicate_cosine)
        due = dead.copy()
        due[redundant] = True
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
            "n_duplicates": int(len(redundant)),
            "n_reseeded": int(reseeded),
            "n_swapped": int(swapped),
            "moved": self._moved,  # clusters reseeded or swapped in this step
        })

    def _reseed(self, centers: np.ndarray, stats: Sequence[EStepSums], due: np.ndarray,
                swappable: np.ndarray) -> tuple[int, int]:
        """(reseeded, swapped): move clusters due for reseeding onto poorly explained points of the
        step, then swap clusters that explain little onto groups of points that would gain more
        (`reseeding.plan_moves` decides where)."""
        candidates = np.concatenate([s.candidates for s in stats])
        self._moved = []
        if not len(candidates):
            return 0, 0
        # per epoch: in a stream kept in topic order an uncovered group is seen once an epoch, and so is
        # a real cluster's data. (The gain comes from <= reseed_candidates points a chunk: a lower bound,
        # so on large unsorted chunks swaps rarely fire; dead and duplicate reseeding cover those.)
        loss = self._loss_window.sum(axis=0) * (self._epoch_steps / len(self._loss_window))
        due, due_seeds, swapped, swap_seeds = plan_moves(
            candidates, np.concatenate([s.candidate_scores for s in stats]), centers, due, swappable, loss, self.config)
        self._move(centers, due, due_seeds)
        if swapped:
            self._move(centers, np.array(swapped), np.stack(swap_seeds))
        self._moved = [int(c) for c in due] + [int(c) for c in swapped]
        return len(due), len(swapped)

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

        The chunk is processed in blocks of block_size attended tokens (or of `block_sequences`
        sequences), so memory stays bounded whatever the chunk size. Whole blocks of block_size rows,
        not of whole sequences, keep the GEMM to one call a block (see gemm.gemm_pieces).
        """
        self._check_fitted()
        chunk = open_chunk(chunk, self.config.npz_keys)
        check_dim(ChunkRows(chunk.activations.reshape(-1, chunk.dim), None), self.n_features_in_, str(chunk.path))
        length, name = chunk.sequence_length, str(chunk.path or "<chunk>")
        flat = chunk.activations.reshape(-1, chunk.dim)
        source = as_tensor(flat)
        attended = np.flatnonzero(np.asarray(chunk.attention_mask).reshape(-1))  # sorted (sequence, position)
        if block_sequences:
            bounds = np.searchsorted(attended, np.arange(0, chunk.n_sequences + block_sequences, block_sequences) * length)
        else:
            size = self.config.block_size
            bounds = np.minimum(np.arange(0, len(attended) + size, size), len(attended))
        tokens_flat = np.asarray(chunk.token_ids).reshape(-1)
        centers_t, scratch, parts = self._centers_t(), scratch_space(), []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi <= lo:
                continue
            index = attended[lo:hi]
            result = self._memberships(*load_rows(flat, source, index, scratch, self.config.device), centers_t, scratch)
            check_finite(result.inv_norm, name)
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

    def state(self) -> dict:
        """The arrays `save` and the checkpoints write: the fitted model and where its learning stands."""
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

    def _restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Fitted state from `_state`'s arrays (a saved model's .npz or a checkpoint)."""
        self.cluster_centers_ = state["cluster_centers"]
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        self._sums, self.usage_ = state["sums"], state["usage"]
        if "epoch_steps" in state:
            self._usage_window, self._loss_window, self._age = state["usage_window"], state["loss_window"], state["age"]
            self._epoch_steps = int(state["epoch_steps"])
        else:  # a model saved before death was judged over windows: it transforms; further steps start a window
            self._start_window(2, 2)
        self.n_steps_ = int(state["n_steps"])
        self.history_ = json.loads(str(state["history"]))
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = json.loads(str(state["rng_state"]))

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one .npz file (atomically)."""
        self._check_fitted()
        return save_npz(Path(path), self.state())

    @classmethod
    def load(cls, path: str | Path) -> "SequentialSoftClustering":
        """A fitted model from `save`."""
        with np.load(path, allow_pickle=False) as npz:
            config = ClusteringConfig.from_json(str(npz["config"]))
            model = cls(**{**asdict(config), "npz_keys": config.npz_keys})
            model._restore(npz)
        return model

    def _save_checkpoint(self, epoch: int, position: int, fingerprints: list[str]) -> None:
        write_checkpoint(self.checkpoint_dir, self.n_steps_, self.state(), epoch, position, fingerprints)

    def _resume(self, fingerprints: list[str]) -> tuple[int, int]:
        """(epoch, position) to continue from; (0, 0) when there is no checkpoint."""
        state = newest_checkpoint(self.checkpoint_dir, self.config, fingerprints)
        if state is None:
            return 0, 0
        self._restore(state)
        return int(state["epoch"]), int(state["position"])


def _epoch_order(config: ClusteringConfig, epoch: int, n: int) -> np.ndarray:
    """[n] the order chunks are visited in one epoch: seeded by (seed, epoch), so a resume repeats it."""
    if not config.shuffle_chunks:
        return np.arange(n)
    return np.random.default_rng([config.seed, 3, epoch]).permutation(n)


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
