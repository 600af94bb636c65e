"""Per-chunk mergeable statistics of soft clusters, from which `cluster_stats` builds its table.

`ChunkStatistics.compute` reads one chunk (memberships + whitened activations) once;
`merge` is exact (sums, histograms, counts, LDA moments, top-k sets and bottom-k reservoirs), so
the global statistics are a streaming fold over per-chunk files saved with `save` (one .npz,
allow_pickle=False).

Held-out split: whole documents (sequences without a known document) are held out by a seeded
hash; their tokens are never fitted (LDA moments, fitting reservoir) nor shown as exemplars, and
the held-out reservoir keeps `heldout_per_cluster` tokens of every cluster beside a uniform sample.
Saved statistics keep the reservoirs' token identities, not their vectors (those would make each
file grow with k x heldout_per_cluster x d): `read_vectors` reads the kept rows back from the
whitened chunk files after merging.
"""

from __future__ import annotations

import hashlib
import zipfile
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from latent_atlas.analysis.exemplars import (ExemplarCandidates, ExemplarConfig, sequence_keys_for, stream_salt,
                                             token_priority)
from latent_atlas.analysis.intervention import (InterventionVectors, LdaMoments, VectorSample, intervention_vectors,
                                                reservoir_rows, vector_norms)
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.tables import read_npz, write_npz


@dataclass(frozen=True)
class StatisticsConfig:
    """What the per-chunk statistics keep, and what bounds each chunk_stats file.

    Per chunk, whatever the corpus size: the LDA moments (d(d+1)/2 + k x d values in `gemm_dtype`:
    15 MB at d=2304, k=512 in float32), k x k coactivations, the chunk's (cluster, token) table
    (at most its tokens x memberships per token) and the token identities of at most
    `heldout_sample_size` + k x `heldout_per_cluster` held-out and `fit_sample_size` fitting
    tokens (no vectors). Merging keeps the same bounds (reservoirs and exemplar candidates stay
    their configured sizes), so the merged file grows only with the distinct (cluster, token) pairs."""

    density_threshold: float = 0.5
    """A token counts toward a cluster's density when its membership exceeds this."""
    coactivation_threshold: float = 0.1
    """Binary coactivation counts tokens where both memberships exceed this."""
    histogram_bins: int = 20
    """Equal-width membership histogram bins on (0, 1]."""
    heldout_fraction: float = 0.1
    """Share of documents (by seeded hash) held out of the LDA fit and the exemplars, for scores."""
    heldout_sample_size: int = 2048
    """Held-out tokens kept (with memberships; vectors read back after merging) as a uniform sample."""
    heldout_per_cluster: int = 64
    """Held-out tokens also kept per cluster (among those whose largest membership is that
    cluster), so every cluster with that many held-out members is scored on at least as many."""
    fit_sample_size: int = 2048
    """Fitting tokens kept (vectors read back after merging), to estimate the Ledoit-Wolf intensity."""
    block_sequences: int = 256
    """Sequences per block when streaming a chunk (bounds memory: block x seq_len x d floats)."""
    gemm_dtype: str = "float32"
    """dtype of the second-moment GEMM; float32 is ~4x faster on CPU, float64 for exact checks."""
    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)
    """Exemplar candidates kept per cluster; its seed seeds every sampling stream."""
    hard_negative_clusters: int = 3
    """Hard negatives of a cluster: held-out members of this many most similar clusters (centroid cosine)."""
    position_window: int = 4
    """Position concentration: share of a cluster's weight in the first this-many positions of a window."""
    position_artifact_share: float = 0.5
    """A cluster with more than this share of its weight in the first `position_window` positions
    is flagged `position_artifact` (a window-start artifact, not a property of the text)."""
    near_duplicate_cosine: float = 0.9
    """Two clusters whose centroid cosine exceeds this are near-duplicate partners."""
    near_duplicate_coactivation: float = 0.7
    """Two clusters whose normalised coactivation m_i.m_j / (|m_i| |m_j|) exceeds this are
    near-duplicate partners (they share the same tokens)."""


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
    heldout_count: np.ndarray  # [k + 1] int64, held-out tokens per hard cluster (k: no membership)
    moments: LdaMoments
    candidates: ExemplarCandidates
    heldout: VectorSample  # vectors held in memory after `compute`, not saved: `read_vectors` after `load`
    fit_sample: VectorSample
    config: StatisticsConfig

    @property
    def n_clusters(self) -> int:
        return int(self.usage.shape[0])

    @classmethod
    def compute(cls, chunk_id: str, memberships: SparseMemberships, whitened: DenseChunk, n_clusters: int,
                config: StatisticsConfig = StatisticsConfig(), sequence_keys: np.ndarray | None = None,
                document_keys: np.ndarray | None = None) -> "ChunkStatistics":
        """Statistics of one chunk. `sequence_keys` [n_seq] uint64 seed the sampling hash; pass
        stable per-sequence ids to make samples independent of how the corpus was chunked.
        `document_keys` [n_seq] uint64 (`document_keys_for` the doc ids) name each sequence's
        document, the unit held out; by default each sequence is its own document."""
        k, L, mask = n_clusters, whitened.sequence_length, np.asarray(whitened.attention_mask, bool)
        seed = config.exemplars.seed
        if sequence_keys is None:
            sequence_keys = sequence_keys_for(chunk_id, whitened.n_sequences, seed)
        document_keys = np.asarray(sequence_keys if document_keys is None else document_keys, np.uint64)
        heldout_seq = heldout_documents(document_keys, config)  # [n_seq]
        mem = memberships.sorted()
        mem = _subset(mem, mask[mem.sequence, mem.position])  # memberships of padding are ignored
        c, v = mem.cluster.astype(np.int64), mem.value.astype(np.float64)
        token_index = (np.cumsum(mask.ravel()) - 1)[mem.sequence.astype(np.int64) * L + mem.position]
        n_tokens = int(mask.sum())
        m = sp.csr_matrix((v, (token_index, c)), shape=(n_tokens, k))  # [n_tokens, k]
        hard = _first_max_rows(token_index, v)  # rows that are their token's max
        stratum = np.full(n_tokens, k, np.int32)  # hard cluster per token, k when it has no membership
        stratum[token_index[hard]] = c[hard]
        keys = (c << 32) | mem.token_id.astype(np.int64)
        token_key, inverse = np.unique(keys, return_inverse=True)
        binary = (m > config.coactivation_threshold).astype(np.int64)
        bins = config.histogram_bins
        seq, pos = whitened.attended_positions()
        is_heldout = heldout_seq[seq]
        stats = cls(
            [chunk_id], n_tokens,
            usage=np.bincount(c, v, k), position_hist=np.bincount(c * L + mem.position, v, k * L).reshape(k, L),
            token_key=token_key, token_weight=np.bincount(inverse, v, token_key.size),
            token_hard=np.bincount(inverse[hard], minlength=token_key.size),
            density_count=np.bincount(c[v > config.density_threshold], minlength=k),
            membership_sum=np.bincount(c, v, k), membership_sumsq=np.bincount(c, v * v, k),
            membership_max=_group_max(c, mem.value, k), membership_count=np.bincount(c, minlength=k),
            membership_hist=np.bincount(c * bins + np.clip(np.ceil(v * bins).astype(np.int64) - 1, 0, bins - 1),
                                        minlength=k * bins).reshape(k, bins),
            coactivation=(m.T @ m).toarray(), coactivation_count=(binary.T @ binary).toarray(),
            heldout_count=np.bincount(stratum[is_heldout], minlength=k + 1).astype(np.int64),
            moments=LdaMoments.zeros(k, whitened.dim),
            # Exemplars come from fitted documents only: labels are scored on the held-out ones.
            candidates=ExemplarCandidates.collect(chunk_id, _subset(mem, ~heldout_seq[mem.sequence]),
                                                  sequence_keys, k, config.exemplars),
            heldout=None, fit_sample=None, config=config,  # type: ignore[arg-type]  (filled below)
        )
        # One reused block, scaled in place by the update: fresh ones each block cost their page faults;
        # torch casts fp16 -> fp32 on every core, ~3x numpy's one-core cast here.
        dtype = np.dtype(config.gemm_dtype)
        x_block = np.empty((config.block_sequences * L, whitened.dim), dtype)
        for start, block in whitened.iter_blocks(config.block_sequences):
            lo, hi = np.searchsorted(seq, [start, start + block.n_sequences])
            fit = lo + np.flatnonzero(~is_heldout[lo:hi])
            x = x_block[: len(fit)]
            torch.from_numpy(x).copy_(torch.from_numpy(block.activations[seq[fit] - start, pos[fit]]))  # a gather: a fresh array
            stats.moments.update(x, m[fit], overwrite_x=True)
        tokens = _TokenIndex(chunk_id, whitened, m, seq, pos, document_keys[seq], stratum)
        stats.heldout = tokens.sample(np.flatnonzero(is_heldout), stream_salt("heldout_sample", seed), sequence_keys,
                                      config.heldout_sample_size, config.heldout_per_cluster)
        stats.fit_sample = tokens.sample(np.flatnonzero(~is_heldout), stream_salt("fit_sample", seed), sequence_keys,
                                         config.fit_sample_size, 0)
        return stats

    def fit_intervention_vectors(self, centers: np.ndarray | None = None,
                                 open_chunk: Callable[[str], DenseChunk] | None = None) -> InterventionVectors:
        """Intervention vectors from these moments, scored on the held-out reservoir (each token
        weighted for its stratum) against random and hard negatives. Statistics loaded from disk
        keep no vectors: pass open_chunk(chunk_id) -> whitened DenseChunk to read them back."""
        stats = self if open_chunk is None else self.read_vectors(open_chunk)
        return intervention_vectors(stats.moments, stats.fit_sample, stats.heldout, centers, stats.heldout_count,
                                    stats.config.hard_negative_clusters)

    def read_vectors(self, open_chunk: Callable[[str], DenseChunk]) -> "ChunkStatistics":
        """These statistics with the held-out and fitting reservoirs' vectors read back from the
        chunks' whitened activations (`VectorSample.read_vectors`); each chunk is opened once per
        reservoir and only its sampled rows are read (float16, at most the reservoirs' size in memory)."""
        dim = self.moments.sum_x.size
        return dataclasses.replace(self, heldout=self.heldout.read_vectors(open_chunk, dim),
                                   fit_sample=self.fit_sample.read_vectors(open_chunk, dim))

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
                         "membership_count", "membership_hist", "coactivation", "coactivation_count", "heldout_count")
        }
        cfg = self.config
        return ChunkStatistics(
            self.chunk_ids + other.chunk_ids, self.n_tokens + other.n_tokens, token_key=token_key,
            token_weight=np.bincount(inverse, np.concatenate([self.token_weight, other.token_weight]), token_key.size),
            token_hard=np.bincount(inverse, np.concatenate([self.token_hard, other.token_hard]),
                                   token_key.size).astype(np.int64),
            membership_max=np.maximum(self.membership_max, other.membership_max),
            moments=self.moments.merge(other.moments), candidates=self.candidates.merge(other.candidates),
            heldout=self.heldout.merge(other.heldout, cfg.heldout_sample_size, cfg.heldout_per_cluster),
            fit_sample=self.fit_sample.merge(other.fit_sample, cfg.fit_sample_size), config=cfg, **summed,
        )

    # ---- disk -------------------------------------------------------------------------------
    _PLAIN = ("usage", "position_hist", "token_key", "token_weight", "token_hard", "density_count",
              "membership_sum", "membership_sumsq", "membership_max", "membership_count", "membership_hist",
              "coactivation", "coactivation_count", "heldout_count")
    _PARTS = ("moments", "candidates", "heldout", "fit_sample")
    # The d x d and k x d moments dominate a chunk's file (d=2304, k=512: 21 + 9 MB in float64).
    # One chunk's are saved in the dtype of the GEMM that computed them (float32 by default), which
    # loses nothing the GEMM kept and halves the file; merged statistics (many chunks' sums) stay float64.
    _CHUNK_MOMENTS = ("moments.second_moment_upper", "moments.cluster_sum")

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickles), written to a temp file and renamed."""
        arrays = {name: getattr(self, name) for name in self._PLAIN}
        for part in self._PARTS:
            arrays.update({f"{part}.{key}": value for key, value in getattr(self, part).to_arrays().items()})
        if len(self.chunk_ids) == 1:  # a chunk_stats file: see `_CHUNK_MOMENTS`
            for key in self._CHUNK_MOMENTS:
                arrays[key] = arrays[key].astype(self.config.gemm_dtype)
        meta = {"chunk_ids": self.chunk_ids, "n_tokens": self.n_tokens, "config": asdict(self.config)}
        return write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ChunkStatistics":
        try:
            arrays, meta = read_npz(path)
            cfg = meta["config"]
            config = StatisticsConfig(**{**cfg, "exemplars": ExemplarConfig(**cfg["exemplars"])})
            arrays.update({key: arrays[key].astype(np.float64) for key in cls._CHUNK_MOMENTS})  # sums accumulate in float64
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
    """Streaming fold over ChunkStatistics or paths to saved ones (one loaded at a time).

    Equals folding with `merge`, bit for bit, in O(N) for N chunks: the token tables go to a
    `_TokenTable` that re-uniques only once its pending rows outnumber its merged ones (a pairwise
    fold re-uniques the whole growing table at every chunk, O(N^2))."""
    total, tokens = None, _TokenTable()
    for item in items:
        stats = item if isinstance(item, ChunkStatistics) else ChunkStatistics.load(item)
        tokens.add(stats.token_key, stats.token_weight, stats.token_hard)
        stats = dataclasses.replace(stats, token_key=_NO_TOKENS[0], token_weight=_NO_TOKENS[1],
                                    token_hard=_NO_TOKENS[2])
        total = stats if total is None else total.merge(stats)
    if total is None:
        raise ValueError("merge_statistics: no chunk statistics given")
    token_key, token_weight, token_hard = tokens.merged()
    return dataclasses.replace(total, token_key=token_key, token_weight=token_weight, token_hard=token_hard)


_NO_TOKENS = (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))


class _TokenTable:
    """(cluster, token) counts summed over chunks; amortised O(rows added).

    Pending tables are folded in (one unique over merged + pending) once the pending rows reach
    the merged rows, so every row takes part in O(1) folds on average, and memory stays within
    about twice the merged table plus one chunk's. bincount adds in input order, which is the
    chunk order, so the sums equal those of a pairwise fold exactly."""

    def __init__(self):
        self._key, self._weight, self._hard = _NO_TOKENS
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, key: np.ndarray, weight: np.ndarray, hard: np.ndarray) -> None:
        self._pending.append((key, weight, hard))
        self._pending_rows += key.size
        if self._pending_rows >= self._key.size:
            self._fold()

    def merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """token_key (unique, sorted), token_weight, token_hard of everything added."""
        self._fold()
        return self._key, self._weight, self._hard

    def _fold(self) -> None:
        if not self._pending:
            return
        parts = [(self._key, self._weight, self._hard)] + self._pending
        key, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        self._weight = np.bincount(inverse, np.concatenate([p[1] for p in parts]), key.size)
        self._hard = np.bincount(inverse, np.concatenate([p[2] for p in parts]), key.size).astype(np.int64)
        self._key, self._pending, self._pending_rows = key, [], 0


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


def _subset(mem: SparseMemberships, keep: np.ndarray) -> SparseMemberships:
    """The rows of `mem` where `keep` [rows]."""
    if keep.all():
        return mem
    return SparseMemberships(mem.sequence[keep], mem.position[keep], mem.cluster[keep], mem.value[keep],
                             mem.token_id[keep], mem.total_sequences, mem.sequence_length)


@dataclass
class _TokenIndex:
    """The attended tokens of one chunk (row-major), to draw `VectorSample` reservoirs from."""

    chunk_id: str
    chunk: DenseChunk
    memberships: sp.csr_matrix  # [n_tokens, k]
    sequence: np.ndarray  # [n_tokens] int32
    position: np.ndarray  # [n_tokens] int32
    group: np.ndarray  # [n_tokens] uint64 document key
    stratum: np.ndarray  # [n_tokens] int32 hard cluster, k if none

    def sample(self, tokens: np.ndarray, salt: np.uint64, sequence_keys: np.ndarray, size: int,
               per_stratum: int) -> VectorSample:
        """Reservoir over `tokens` (indices), prioritised by the seeded stream `salt`."""
        seq, pos = self.sequence[tokens], self.position[tokens]
        priority = token_priority(sequence_keys[seq], pos, salt)
        ids = np.full(tokens.size, self.chunk_id)  # (dtype=str would cut the id to one character)
        rows = reservoir_rows(priority, ids, seq, pos, self.stratum[tokens], size, per_stratum)
        idx = tokens[rows]
        vectors = np.asarray(self.chunk.activations[seq[rows], pos[rows]], np.float16)  # kept in memory, never saved
        return VectorSample(priority[rows], ids[rows], seq[rows], pos[rows],
                            self.memberships[idx].toarray().astype(np.float32), self.group[idx], self.stratum[idx],
                            vector_norms(vectors), vectors)


def heldout_documents(document_keys: np.ndarray, config: StatisticsConfig) -> np.ndarray:
    """[n] bool: which documents (by `document_keys_for` key) are held out of fits and exemplars."""
    keys = np.asarray(document_keys, np.uint64)
    salt = stream_salt("heldout_split", config.exemplars.seed)
    return token_priority(keys, np.zeros(keys.size), salt) < config.heldout_fraction


def document_keys_for(doc_ids: list[str]) -> np.ndarray:
    """Held-out split keys from document ids: sequences of one document share a key, in any chunk.  # [n_seq] uint64"""
    digest = lambda d: int.from_bytes(hashlib.blake2b(str(d).encode(), digest_size=8).digest(), "little")  # noqa: E731
    return np.array([digest(d) for d in doc_ids], np.uint64)


def check_usage(stats: ChunkStatistics, memberships: list[SparseMemberships], rtol: float = 1e-6) -> tuple[bool, dict]:
    """Asset check: merged usage equals the sum of the stored memberships per cluster."""
    direct = np.zeros(stats.n_clusters)
    for mem in memberships:
        direct += np.bincount(mem.cluster, mem.value.astype(np.float64), stats.n_clusters)
    err = np.abs(direct - stats.usage)
    passed = bool(np.all(err <= rtol * np.maximum(np.abs(direct), 1.0)))
    return passed, {"max_abs_error": float(err.max(initial=0.0)), "total_usage": float(stats.usage.sum())}
