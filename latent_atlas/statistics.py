"""Per-chunk mergeable statistics of soft clusters, and the `cluster_stats` tables built from them.

`ChunkStatistics.compute` reads one chunk (memberships + whitened activations) once;
`merge` is exact (sums, histograms, counts, LDA moments, top-k sets and bottom-k reservoirs), so
the global statistics are a streaming fold over per-chunk files saved with `save` (one .npz,
allow_pickle=False).
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from latent_atlas.chunks import DenseChunk
from latent_atlas.errors import ChunkError
from latent_atlas.exemplars import (
    ExemplarCandidates, ExemplarConfig, first_n_per_group, sequence_keys_for, token_priority,
)
from latent_atlas.intervention import LdaMoments, VectorSample
from latent_atlas.memberships import SparseMemberships
from latent_atlas.tables import read_npz, write_npz

_HELDOUT_SALT, _FIT_SALT = 0x51, 0xF17


@dataclass(frozen=True)
class StatisticsConfig:
    """What the per-chunk statistics keep."""

    density_threshold: float = 0.5
    """A token counts toward a cluster's density when its membership exceeds this."""
    coactivation_threshold: float = 0.1
    """Binary coactivation counts tokens where both memberships exceed this."""
    histogram_bins: int = 20
    """Equal-width membership histogram bins on (0, 1]."""
    heldout_fraction: float = 0.1
    """Share of tokens (by seeded hash) held out of the LDA fit, for separation metrics."""
    heldout_sample_size: int = 2048
    """Held-out tokens kept with vectors and memberships (also the tree stage's sample)."""
    fit_sample_size: int = 2048
    """Fitting tokens kept with vectors, to estimate the Ledoit-Wolf intensity."""
    block_sequences: int = 256
    """Sequences per block when streaming a chunk (bounds memory: block x seq_len x d floats)."""
    gemm_dtype: str = "float32"
    """dtype of the second-moment GEMM; float32 is ~4x faster on CPU, float64 for exact checks."""
    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)
    """Exemplar candidates kept per cluster."""


@dataclass
class ChunkStatistics:
    """Mergeable partial statistics of one or more chunks (k clusters, seq_len positions)."""

    chunk_ids: list[str]
    n_tokens: int  # attended tokens
    usage: np.ndarray  # [k] float64, sum of memberships
    position_hist: np.ndarray  # [k, seq_len] float64, membership per position
    token_key: np.ndarray  # [t] int64, cluster << 32 | token_id, unique and sorted
    token_weight: np.ndarray  # [t] float64, membership-weighted count
    token_hard: np.ndarray  # [t] int64, tokens whose largest membership is this cluster
    density_count: np.ndarray  # [k] int64, tokens with membership > density_threshold
    membership_sum: np.ndarray  # [k] float64, over stored (nonzero) memberships
    membership_sumsq: np.ndarray  # [k] float64
    membership_max: np.ndarray  # [k] float32
    membership_count: np.ndarray  # [k] int64, tokens with a nonzero membership
    membership_hist: np.ndarray  # [k, bins] int64
    coactivation: np.ndarray  # [k, k] float64, sum over tokens of m_i * m_j (diagonal: sum m^2)
    coactivation_count: np.ndarray  # [k, k] int64, tokens with m_i and m_j > threshold
    moments: LdaMoments
    candidates: ExemplarCandidates
    heldout: VectorSample
    fit_sample: VectorSample
    config: StatisticsConfig

    @property
    def n_clusters(self) -> int:
        return int(self.usage.shape[0])

    @classmethod
    def compute(cls, chunk_id: str, memberships: SparseMemberships, whitened: DenseChunk, n_clusters: int,
                config: StatisticsConfig = StatisticsConfig(), sequence_keys: np.ndarray | None = None
                ) -> "ChunkStatistics":
        """Statistics of one chunk. `sequence_keys` [n_seq] uint64 seed the sampling hash; pass
        stable per-sequence ids to make samples independent of how the corpus was chunked."""
        k, L, mask = n_clusters, whitened.sequence_length, np.asarray(whitened.attention_mask, bool)
        if sequence_keys is None:
            sequence_keys = sequence_keys_for(chunk_id, whitened.n_sequences, config.exemplars.seed)
        mem = memberships.sorted()
        on = mask[mem.sequence, mem.position]  # memberships of padding are ignored
        if not on.all():
            mem = SparseMemberships(mem.sequence[on], mem.position[on], mem.cluster[on], mem.value[on],
                                    mem.token_id[on], mem.total_sequences, mem.sequence_length)
        c, v = mem.cluster.astype(np.int64), mem.value.astype(np.float64)
        token_index = (np.cumsum(mask.ravel()) - 1)[mem.sequence.astype(np.int64) * L + mem.position]
        n_tokens = int(mask.sum())
        m = sp.csr_matrix((v, (token_index, c)), shape=(n_tokens, k))  # [n_tokens, k]
        hard = _first_max_rows(token_index, v)  # rows that are their token's max
        keys = (c << 32) | mem.token_id.astype(np.int64)
        token_key, inverse = np.unique(keys, return_inverse=True)
        binary = (m > config.coactivation_threshold).astype(np.int64)
        bins = config.histogram_bins
        stats = cls(
            [chunk_id], n_tokens,
            np.bincount(c, v, k), np.bincount(c * L + mem.position, v, k * L).reshape(k, L),
            token_key, np.bincount(inverse, v, token_key.size), np.bincount(inverse[hard], minlength=token_key.size),
            np.bincount(c[v > config.density_threshold], minlength=k), np.bincount(c, v, k), np.bincount(c, v * v, k),
            _group_max(c, mem.value, k), np.bincount(c, minlength=k),
            np.bincount(c * bins + np.clip(np.ceil(v * bins).astype(np.int64) - 1, 0, bins - 1),
                        minlength=k * bins).reshape(k, bins),
            (m.T @ m).toarray(), (binary.T @ binary).toarray(),
            LdaMoments.zeros(k, whitened.dim),
            ExemplarCandidates.collect(chunk_id, mem, sequence_keys, k, config.exemplars),
            None, None, config,  # type: ignore[arg-type]  (filled below)
        )
        seq, pos = whitened.attended_positions()
        heldout_prio = token_priority(sequence_keys[seq], pos, _HELDOUT_SALT)
        is_heldout = heldout_prio < config.heldout_fraction
        fit_prio = np.where(is_heldout, np.inf, token_priority(sequence_keys[seq], pos, _FIT_SALT))
        dtype = np.dtype(config.gemm_dtype)
        for start, block in whitened.iter_blocks(config.block_sequences):
            lo, hi = np.searchsorted(seq, [start, start + block.n_sequences])
            fit = lo + np.flatnonzero(~is_heldout[lo:hi])
            x = np.asarray(block.activations[seq[fit] - start, pos[fit]], dtype)
            stats.moments.update(x, m[fit])
        stats.heldout = _sample(chunk_id, whitened, m, seq, pos, np.where(is_heldout, heldout_prio, np.inf),
                                config.heldout_sample_size)
        stats.fit_sample = _sample(chunk_id, whitened, m, seq, pos, fit_prio, config.fit_sample_size)
        return stats

    def merge(self, other: "ChunkStatistics") -> "ChunkStatistics":
        """Exact merge: equals computing over both inputs' tokens at once."""
        if self.config != other.config:
            raise ValueError(f"cannot merge statistics computed with different configs: {self.config} != {other.config}")
        if self.n_clusters != other.n_clusters or self.position_hist.shape != other.position_hist.shape:
            raise ValueError(f"cannot merge statistics of shapes {self.position_hist.shape} and "
                             f"{other.position_hist.shape} (chunks {self.chunk_ids[:3]} / {other.chunk_ids[:3]})")
        token_key, inverse = np.unique(np.concatenate([self.token_key, other.token_key]), return_inverse=True)
        summed = {
            name: getattr(self, name) + getattr(other, name)
            for name in ("usage", "position_hist", "density_count", "membership_sum", "membership_sumsq",
                         "membership_count", "membership_hist", "coactivation", "coactivation_count")
        }
        cfg = self.config
        return ChunkStatistics(
            self.chunk_ids + other.chunk_ids, self.n_tokens + other.n_tokens, token_key=token_key,
            token_weight=np.bincount(inverse, np.concatenate([self.token_weight, other.token_weight]), token_key.size),
            token_hard=np.bincount(inverse, np.concatenate([self.token_hard, other.token_hard]),
                                   token_key.size).astype(np.int64),
            membership_max=np.maximum(self.membership_max, other.membership_max),
            moments=self.moments.merge(other.moments), candidates=self.candidates.merge(other.candidates),
            heldout=self.heldout.merge(other.heldout, cfg.heldout_sample_size),
            fit_sample=self.fit_sample.merge(other.fit_sample, cfg.fit_sample_size), config=cfg, **summed,
        )

    # ---- disk -------------------------------------------------------------------------------
    _PLAIN = ("usage", "position_hist", "token_key", "token_weight", "token_hard", "density_count",
              "membership_sum", "membership_sumsq", "membership_max", "membership_count", "membership_hist",
              "coactivation", "coactivation_count")
    _PARTS = ("moments", "candidates", "heldout", "fit_sample")

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickles), written to a temp file and renamed."""
        arrays = {name: getattr(self, name) for name in self._PLAIN}
        for part in self._PARTS:
            arrays.update({f"{part}.{key}": value for key, value in getattr(self, part).to_arrays().items()})
        meta = {"chunk_ids": self.chunk_ids, "n_tokens": self.n_tokens, "config": asdict(self.config)}
        return write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ChunkStatistics":
        try:
            arrays, meta = read_npz(path)
            cfg = meta["config"]
            config = StatisticsConfig(**{**cfg, "exemplars": ExemplarConfig(**cfg["exemplars"])})
            parts = {p: {k.split(".", 1)[1]: a for k, a in arrays.items() if k.startswith(p + ".")} for p in cls._PARTS}
            return cls._from_parts(arrays, meta, parts, config)
        except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ChunkError(path, f"not a chunk statistics file ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _from_parts(cls, arrays: dict, meta: dict, parts: dict, config: StatisticsConfig) -> "ChunkStatistics":
        return cls(
            meta["chunk_ids"], int(meta["n_tokens"]), **{name: arrays[name] for name in cls._PLAIN},
            moments=LdaMoments.from_arrays(parts["moments"]),
            candidates=ExemplarCandidates.from_arrays(parts["candidates"], config.exemplars),
            heldout=VectorSample.from_arrays(parts["heldout"]),
            fit_sample=VectorSample.from_arrays(parts["fit_sample"]), config=config,
        )


def merge_statistics(items) -> ChunkStatistics:
    """Streaming fold over ChunkStatistics or paths to saved ones (one loaded at a time)."""
    total = None
    for item in items:
        stats = item if isinstance(item, ChunkStatistics) else ChunkStatistics.load(item)
        total = stats if total is None else total.merge(stats)
    if total is None:
        raise ValueError("merge_statistics: no chunk statistics given")
    return total


def _first_max_rows(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[n] bool: the first row holding the largest value of each run of equal `group` (sorted).

    Equals csr argmax per row (ties to the lowest cluster) without scipy's per-row Python loop."""
    hard = np.zeros(values.size, bool)
    if values.size == 0:
        return hard
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    row_max = np.maximum.reduceat(values, starts)
    ties = np.flatnonzero(values == np.repeat(row_max, np.diff(np.r_[starts, values.size])))
    hard[ties[np.r_[True, group[ties][1:] != group[ties][:-1]]]] = True
    return hard


def _group_max(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros(n_groups, np.float32)
    np.maximum.at(out, group, values)
    return out


def _sample(chunk_id: str, chunk: DenseChunk, m: sp.csr_matrix, seq: np.ndarray, pos: np.ndarray,
            priority: np.ndarray, size: int) -> VectorSample:
    """The `size` tokens of smallest finite priority, with vectors and dense memberships."""
    finite = np.flatnonzero(np.isfinite(priority))
    if finite.size > size:
        finite = finite[np.argpartition(priority[finite], size - 1)[:size]]
    idx = np.sort(finite)
    return VectorSample(priority[idx], np.full(idx.size, chunk_id, dtype=str), seq[idx], pos[idx],
                        np.asarray(chunk.activations[seq[idx], pos[idx]], np.float16),
                        m[idx].toarray().astype(np.float32))


def check_usage(stats: ChunkStatistics, memberships: list[SparseMemberships], rtol: float = 1e-6) -> tuple[bool, dict]:
    """Asset check: merged usage equals the sum of the stored memberships per cluster."""
    direct = np.zeros(stats.n_clusters)
    for mem in memberships:
        direct += np.bincount(mem.cluster, mem.value.astype(np.float64), stats.n_clusters)
    err = np.abs(direct - stats.usage)
    passed = bool(np.all(err <= rtol * np.maximum(np.abs(direct), 1.0)))
    return passed, {"max_abs_error": float(err.max(initial=0.0)), "total_usage": float(stats.usage.sum())}


def cluster_stats(stats: ChunkStatistics, centers: np.ndarray | None = None, decode=None,
                  top_tokens: int = 10, top_related: int = 5) -> pa.Table:
    """One row per cluster: usage, density, membership moments and histogram, position
    distribution, top tokens (weighted and hard counts, decoded), most coactivating clusters
    (coactivation normalised as m_i.m_j / (|m_i| |m_j|), so big clusters do not dominate) and
    most similar clusters (cosine of `centers` [k, d]). `table.to_pylist()` is JSON-able."""
    k = stats.n_clusters
    active = np.maximum(stats.membership_count, 1)
    mean = stats.membership_sum / active
    std = np.sqrt(np.maximum(stats.membership_sumsq / active - mean**2, 0.0))
    usage = np.maximum(stats.usage, 1e-30)[:, None]
    cluster_of, token_of = stats.token_key >> 32, (stats.token_key & 0xFFFFFFFF).astype(np.int64)
    top = first_n_per_group(cluster_of, (-stats.token_weight, token_of), top_tokens)
    words = decode(token_of[top].tolist()) if decode is not None and top.size else [str(t) for t in token_of[top]]
    starts = np.searchsorted(cluster_of[top], np.arange(k + 1))
    norm = np.sqrt(np.maximum(np.diag(stats.coactivation), 1e-30))
    coact = stats.coactivation / norm[:, None] / norm[None, :]
    similar = None
    if centers is not None:
        unit = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-30)
        similar = unit @ unit.T
    columns = {
        "cluster": pa.array(np.arange(k, dtype=np.int32)),
        "total_usage": pa.array(stats.usage),
        "usage_fraction": pa.array(stats.usage / max(stats.n_tokens, 1)),
        "density": pa.array(stats.density_count / max(stats.n_tokens, 1)),
        "active_tokens": pa.array(stats.membership_count),
        "mean_membership": pa.array(mean),
        "std_membership": pa.array(std),
        "max_membership": pa.array(stats.membership_max.astype(np.float64)),
        "position_distribution": pa.array(list(stats.position_hist / usage), pa.list_(pa.float64())),
        "membership_histogram": pa.array(list(stats.membership_hist), pa.list_(pa.int64())),
        "top_token_ids": pa.array([token_of[top[a:b]] for a, b in zip(starts[:-1], starts[1:])], pa.list_(pa.int64())),
        "top_tokens": pa.array([words[a:b] for a, b in zip(starts[:-1], starts[1:])], pa.list_(pa.string())),
        "top_token_counts": pa.array([stats.token_weight[top[a:b]] for a, b in zip(starts[:-1], starts[1:])],
                                     pa.list_(pa.float64())),
        "top_token_hard_counts": pa.array([stats.token_hard[top[a:b]] for a, b in zip(starts[:-1], starts[1:])],
                                          pa.list_(pa.int64())),
    }
    for name, matrix in (("coactivating", coact), ("similar", similar)):
        if matrix is None:
            continue
        off = matrix.copy()
        np.fill_diagonal(off, -np.inf)
        n = min(top_related, k - 1)
        idx = np.argsort(-off, axis=1, kind="stable")[:, :n]
        columns[f"{name}_clusters"] = pa.array(list(idx), pa.list_(pa.int64()))
        columns[f"{name}_values"] = pa.array(list(np.take_along_axis(off, idx, axis=1)), pa.list_(pa.float64()))
    return pa.table(columns)
