"""Exemplars per cluster: top-k, seeded random-k and quantile-band candidates, then context.

Candidates are collected per chunk and merged exactly: top-k keeps the largest memberships;
random-k and band samples keep the tokens with the smallest seeded hash priority ("bottom-k"
reservoir), so the sample is deterministic given the seed and independent of chunk order.
Every sampling purpose (random exemplars, band exemplars, the held-out split, the held-out and
fitting reservoirs) hashes with its own salt from `stream_salt`, so no two share a stream.
Context (tokens and memberships around each exemplar) is read back from the chunk files at the
end, opening each chunk once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from latent_atlas.clustering.memberships import SparseMemberships

KINDS = ("top_k", "random_k", "quantile")
TOP, RANDOM, BAND = 0, 1, 2
Decode = Callable[[Sequence[int]], list[str]]


@dataclass(frozen=True)
class ExemplarConfig:
    """How many exemplars of each kind are kept per cluster."""

    top_k: int = 20
    """Highest-membership tokens kept per cluster."""
    random_k: int = 20
    """Uniformly sampled tokens per cluster among those with membership >= random_min_membership."""
    random_min_membership: float = 0.1
    """A token is eligible for random_k when its membership is at least this."""
    n_bands: int = 4
    """Equal-count membership bands per cluster (quantile-stratified exemplars)."""
    per_band: int = 5
    """Exemplars sampled per band."""
    band_min_membership: float = 0.05
    """Tokens below this membership are not banded (most soft memberships are near zero)."""
    band_bins: int = 48
    """Fine log-spaced bins on [band_min_membership, 1] (soft memberships crowd near the low
    end); bands are unions of bins, so band edges are quantiles to within one bin, and a band
    may be empty when one bin holds more than 1/n_bands of the tokens."""
    seed: int = 0
    """Seed of the sampling hash."""


def sequence_keys_for(chunk_id: str, n_sequences: int, seed: int) -> np.ndarray:
    """Default per-sequence hash keys: the chunk id and the sequence index.  # [n_seq] uint64"""
    digest = hashlib.blake2b(f"{seed}:{chunk_id}".encode(), digest_size=8).digest()
    base = np.uint64(int.from_bytes(digest, "little"))
    return _mix(np.arange(n_sequences, dtype=np.uint64) ^ base)


def stream_salt(purpose: str, seed: int, index: int = 0) -> np.uint64:
    """64-bit salt of one sampling stream: blake2b of (purpose, seed, index), e.g. index = cluster.

    Distinct (purpose, seed, index) give unrelated salts, unlike arithmetic on the seed (the old
    `seed * 1_000_003 + cluster` equalled a fixed held-out salt for cluster 81 at seed 0)."""
    digest = hashlib.blake2b(repr((purpose, int(seed), int(index))).encode(), digest_size=8,
                             person=b"latent-atlas").digest()
    return np.uint64(int.from_bytes(digest, "little"))


def cluster_salts(purpose: str, seed: int, n_clusters: int) -> np.ndarray:
    """stream_salt of each cluster.  # [k] uint64"""
    return np.array([stream_salt(purpose, seed, c) for c in range(n_clusters)], np.uint64)


def token_priority(sequence_key: np.ndarray, position: np.ndarray, salt: int) -> np.ndarray:
    """Seeded uniform priority in [0, 1) per token, for one stream (`stream_salt`).  # [n] float64"""
    with np.errstate(over="ignore"):
        h = np.asarray(sequence_key, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h = _mix(h ^ (np.asarray(position, np.uint64) << np.uint64(20)) ^ np.asarray(salt, np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a cheap, well-spread 64-bit hash (wrapping arithmetic is intended)."""
    x = np.asarray(x, np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _group_threshold(group: np.ndarray, score: np.ndarray, n: int, n_groups: int) -> np.ndarray:
    """Per group, the n-th smallest score (+inf when the group has <= n rows).  # [n_groups]

    Groups rows with a stable integer sort and partitions each group: no full sort by score."""
    if n == 0:
        return np.full(n_groups, -np.inf)
    thr = np.full(n_groups, np.inf)
    counts = np.bincount(group, minlength=n_groups)
    big = np.flatnonzero(counts > n)
    if big.size == 0:
        return thr
    order = np.argsort(group.astype(np.int16 if n_groups < 2**15 else np.int32), kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for g in big:
        seg = score[order[starts[g]:starts[g + 1]]]
        thr[g] = np.partition(seg, n - 1)[n - 1]
    return thr


def first_n_per_group(group: np.ndarray, sort_keys: tuple, n: int) -> np.ndarray:
    """Indices of the first n rows per group under lexicographic `sort_keys` (small inputs only)."""
    order = np.lexsort(tuple(reversed(sort_keys)) + (group,))
    return order[_rank_within(group[order]) < n]


@dataclass
class ExemplarCandidates:
    """Exemplar candidates of one or more chunks; every array has one entry per candidate."""

    chunk_ids: list[str]
    kind: np.ndarray  # [m] int8: TOP, RANDOM or BAND
    cluster: np.ndarray  # [m] int32
    bin: np.ndarray  # [m] int16, fine band bin (BAND only, else -1)
    chunk: np.ndarray  # [m] int32, index into chunk_ids
    sequence: np.ndarray  # [m] int32
    position: np.ndarray  # [m] int32
    value: np.ndarray  # [m] float32 membership
    token_id: np.ndarray  # [m] int32
    priority: np.ndarray  # [m] float64 sampling hash (random and band)
    band_counts: np.ndarray  # [k, band_bins] int64, tokens per fine bin (to place band edges)
    config: ExemplarConfig = field(default_factory=ExemplarConfig)

    ARRAYS = ("kind", "cluster", "bin", "chunk", "sequence", "position", "value", "token_id", "priority")

    @classmethod
    def collect(cls, chunk_id: str, rows: SparseMemberships, sequence_keys: np.ndarray,
                n_clusters: int, config: ExemplarConfig) -> "ExemplarCandidates":
        """Candidates of one chunk from its membership rows; `sequence_keys` [n_seq] seed the hash."""
        c, v = rows.cluster.astype(np.int64), rows.value.astype(np.float32)
        keys = sequence_keys[rows.sequence]
        random_prio = token_priority(keys, rows.position, cluster_salts("exemplar_random", config.seed, n_clusters)[c])
        band_prio = token_priority(keys, rows.position, cluster_salts("exemplar_band", config.seed, n_clusters)[c])
        lo, nb = config.band_min_membership, config.band_bins
        bins = np.clip((np.log(np.maximum(v, lo) / lo) / -np.log(lo) * nb).astype(np.int64), 0, nb - 1)
        banded = v >= lo
        band_counts = np.bincount(c[banded] * nb + bins[banded], minlength=n_clusters * nb)
        parts = []
        # top-k: prefilter to rows at or above each cluster's k-th largest value.
        keep = -v <= _group_threshold(c, -v, config.top_k, n_clusters)[c]
        parts.append((TOP, np.flatnonzero(keep), np.full(keep.sum(), -1)))
        eligible = np.flatnonzero(v >= config.random_min_membership)
        prio = random_prio[eligible]
        keep = prio <= _group_threshold(c[eligible], prio, config.random_k, n_clusters)[c[eligible]]
        parts.append((RANDOM, eligible[keep], np.full(keep.sum(), -1)))
        idx = np.flatnonzero(banded)
        g = c[idx] * nb + bins[idx]
        keep = band_prio[idx] <= _group_threshold(g, band_prio[idx], config.per_band, n_clusters * nb)[g]
        parts.append((BAND, idx[keep], bins[idx][keep]))
        kind = np.concatenate([np.full(p[1].size, p[0], np.int8) for p in parts])
        sel = np.concatenate([p[1] for p in parts])
        prio = np.where(kind == BAND, band_prio[sel], random_prio[sel])
        out = cls(
            [chunk_id], kind, rows.cluster[sel].astype(np.int32),
            np.concatenate([p[2] for p in parts]).astype(np.int16), np.zeros(sel.size, np.int32),
            rows.sequence[sel].astype(np.int32), rows.position[sel].astype(np.int32), v[sel],
            rows.token_id[sel].astype(np.int32), prio, band_counts.reshape(n_clusters, nb), config,
        )
        return out._reduced()

    def merge(self, other: "ExemplarCandidates") -> "ExemplarCandidates":
        """Exact merge: the result equals collecting over both inputs' tokens at once."""
        ids = sorted(set(self.chunk_ids) | set(other.chunk_ids))
        remap = {cid: i for i, cid in enumerate(ids)}
        chunk = np.concatenate([np.array([remap[x] for x in s.chunk_ids], np.int32)[s.chunk]
                                if s.chunk.size else s.chunk for s in (self, other)])
        arrays = {a: np.concatenate([getattr(self, a), getattr(other, a)]) for a in self.ARRAYS}
        arrays["chunk"] = chunk
        merged = ExemplarCandidates(ids, **arrays, band_counts=self.band_counts + other.band_counts,
                                    config=self.config)
        return merged._reduced()

    def _reduced(self) -> "ExemplarCandidates":
        """Keep exactly the candidates a single pass over all tokens would keep (ties broken by
        chunk id, sequence, position)."""
        cfg, nb = self.config, self.band_bins
        keep = []
        for kind, n, group, keys in (
            (TOP, cfg.top_k, self.cluster, (-self.value,)),
            (RANDOM, cfg.random_k, self.cluster, (self.priority,)),
            (BAND, cfg.per_band, self.cluster.astype(np.int64) * nb + self.bin, (self.priority,)),
        ):
            idx = np.flatnonzero(self.kind == kind)
            tie = (self.chunk[idx], self.sequence[idx], self.position[idx])
            keep.append(idx[first_n_per_group(group[idx], tuple(k[idx] for k in keys) + tie, n)])
        sel = np.sort(np.concatenate(keep))
        return ExemplarCandidates(self.chunk_ids, **{a: getattr(self, a)[sel] for a in self.ARRAYS},
                                  band_counts=self.band_counts, config=self.config)

    @property
    def band_bins(self) -> int:
        return int(self.band_counts.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {a: getattr(self, a) for a in self.ARRAYS}
        out["chunk_ids"] = np.array(self.chunk_ids, dtype=str)
        out["band_counts"] = self.band_counts
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, config: ExemplarConfig) -> "ExemplarCandidates":
        return cls([str(x) for x in arrays["chunk_ids"]], **{a: arrays[a] for a in cls.ARRAYS},
                   band_counts=arrays["band_counts"], config=config)


def select_exemplars(candidates: ExemplarCandidates) -> dict[str, np.ndarray]:
    """Final exemplars from merged candidates, sorted by (cluster, kind, band, rank).

    Bands are equal-count: a fine bin goes to band floor(n_bands * tokens below its middle / total).
    Returns arrays: cluster, kind (str), band, band_low, band_high, rank, chunk_id, sequence,
    position, membership, token_id."""
    cand, cfg = candidates, candidates.config
    k, nb = cand.band_counts.shape
    counts = cand.band_counts.astype(np.float64)
    below = np.cumsum(counts, axis=1) - counts / 2.0
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    band_of_bin = np.minimum(cfg.n_bands - 1, (cfg.n_bands * below / total).astype(np.int64))  # [k, nb]
    lo = cfg.band_min_membership
    edge = lambda j: lo * (1.0 / lo) ** (j / nb)  # noqa: E731  (log-spaced fine bin edges)
    edges = np.full((k, cfg.n_bands, 2), np.nan)
    for b in range(cfg.n_bands):
        rows, cols = np.nonzero((band_of_bin == b) & (counts > 0))
        np.fmin.at(edges[:, b, 0], rows, edge(cols))
        np.fmax.at(edges[:, b, 1], rows, edge(cols + 1))
    band = np.full(cand.kind.size, -1, np.int64)
    is_band = cand.kind == BAND
    band[is_band] = band_of_bin[cand.cluster[is_band], cand.bin[is_band]]
    group = (cand.cluster.astype(np.int64) * len(KINDS) + cand.kind) * (cfg.n_bands + 1) + band + 1
    rank_key = np.where(cand.kind == TOP, -cand.value.astype(np.float64), cand.priority)
    order = np.lexsort((cand.position, cand.sequence, cand.chunk, rank_key, group))
    rank = _rank_within(group[order])
    kinds = cand.kind[order]
    keep = rank < np.select([kinds == TOP, kinds == RANDOM], [cfg.top_k, cfg.random_k], cfg.per_band)
    sel, rank = order[keep], rank[keep]
    b = band[sel]
    safe_b = np.maximum(b, 0)
    return {
        "cluster": cand.cluster[sel],
        "kind": np.array(KINDS, dtype=str)[cand.kind[sel]],
        "band": b.astype(np.int16),
        "band_low": np.where(b >= 0, edges[cand.cluster[sel], safe_b, 0], np.nan).astype(np.float32),
        "band_high": np.where(b >= 0, edges[cand.cluster[sel], safe_b, 1], np.nan).astype(np.float32),
        "rank": rank.astype(np.int32),
        "chunk_id": np.array(cand.chunk_ids, dtype=str)[cand.chunk[sel]] if sel.size else np.array([], str),
        "sequence": cand.sequence[sel],
        "position": cand.position[sel],
        "membership": cand.value[sel],
        "token_id": cand.token_id[sel],
    }


def _rank_within(sorted_group: np.ndarray) -> np.ndarray:
    """0-based rank of each row inside its run of equal (already grouped) keys."""
    start = np.r_[True, sorted_group[1:] != sorted_group[:-1]] if sorted_group.size else np.array([], bool)
    first = np.maximum.accumulate(np.where(start, np.arange(sorted_group.size), 0))
    return np.arange(sorted_group.size) - first


def fill_context(selected: dict[str, np.ndarray], open_chunk: Callable[[str], tuple[np.ndarray, SparseMemberships]],
                 decode: Decode, window: int = 10) -> pa.Table:
    """Exemplars with context read back from their chunks; each chunk is opened once.

    open_chunk(chunk_id) -> (token_ids [n_seq, seq_len], memberships of that chunk); a negative
    token id marks a position outside the text (padding), where a context stops.
    Adds: token, context_start, context_token_ids, context_tokens, context_memberships (this
    cluster's membership over the window) and active_clusters / active_values at the position."""
    n = selected["cluster"].size
    ctx_start = np.zeros(n, np.int32)
    ctx_ids: list = [None] * n
    ctx_tokens: list = [None] * n
    ctx_memb: list = [None] * n
    active_c: list = [None] * n
    active_v: list = [None] * n
    token: list = [""] * n
    for chunk_id in np.unique(selected["chunk_id"]):
        token_ids, mem = open_chunk(str(chunk_id))
        rows = np.flatnonzero(selected["chunk_id"] == chunk_id)
        lo_rows = np.searchsorted(mem.sequence, selected["sequence"][rows], "left")
        hi_rows = np.searchsorted(mem.sequence, selected["sequence"][rows], "right")
        spans = []
        for r, a, b in zip(rows, lo_rows, hi_rows):
            seq, pos, c = int(selected["sequence"][r]), int(selected["position"][r]), int(selected["cluster"][r])
            start, stop = context_span(token_ids[seq], pos, window)
            ids = np.asarray(token_ids[seq, start:stop], np.int64)
            here = slice(a, b)
            m_pos, m_c, m_v = mem.position[here], mem.cluster[here], mem.value[here]
            mine = (m_c == c) & (m_pos >= start) & (m_pos < stop)
            weights = np.zeros(stop - start, np.float32)
            weights[m_pos[mine] - start] = m_v[mine]
            at = m_pos == pos
            order = np.argsort(-m_v[at], kind="stable")
            ctx_start[r], ctx_ids[r], ctx_memb[r] = start, ids.tolist(), weights.tolist()
            active_c[r], active_v[r] = m_c[at][order].tolist(), m_v[at][order].tolist()
            spans.append((r, ids))
        flat = [int(t) for _, ids in spans for t in ids]
        words = decode(flat) if flat else []
        offset = 0
        for r, ids in spans:
            ctx_tokens[r] = list(words[offset:offset + ids.size])
            token[r] = ctx_tokens[r][int(selected["position"][r]) - int(ctx_start[r])]
            offset += ids.size
    columns = {key: pa.array(value) for key, value in selected.items()}
    columns.update(
        token=pa.array(token, pa.string()),
        context_start=pa.array(ctx_start),
        context_token_ids=pa.array(ctx_ids, pa.list_(pa.int32())),
        context_tokens=pa.array(ctx_tokens, pa.list_(pa.string())),
        context_memberships=pa.array(ctx_memb, pa.list_(pa.float32())),
        active_clusters=pa.array(active_c, pa.list_(pa.int32())),
        active_values=pa.array(active_v, pa.list_(pa.float32())),
    )
    return pa.table(columns)


def context_span(row: np.ndarray, pos: int, window: int) -> tuple[int, int]:
    """[start, stop) of up to `window` tokens each side of `pos` in one sequence's token ids
    [seq_len], not crossing a negative id (outside the text)."""
    start, stop = max(0, pos - window), min(row.shape[0], pos + window + 1)
    outside = np.flatnonzero(np.asarray(row[start:stop]) < 0) + start
    before, after = outside[outside < pos], outside[outside > pos]
    return (int(before[-1]) + 1 if before.size else start), (int(after[0]) if after.size else stop)


def check_exemplars(table: pa.Table, heldout_sequences: set | None = None) -> tuple[bool, dict]:
    """Asset check: every exemplar agrees with its chunk files (the context read back holds its
    token id and its membership at its position, so candidates and chunks are not out of step),
    no (cluster, kind, token) repeats, and none lies in a held-out sequence (labels are scored on
    those): `heldout_sequences` is a set of (chunk_id, sequence)."""
    cols = {name: table.column(name).to_pylist() for name in
            ("cluster", "kind", "chunk_id", "sequence", "position", "membership", "token_id",
             "context_start", "context_token_ids", "context_memberships")}
    rows = list(zip(*cols.values())) if table.num_rows else []
    keys = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    mismatched = [i for i, (_, _, _, _, pos, m, tok, start, ids, memb) in enumerate(rows)
                  if not 0 <= pos - start < len(ids) or ids[pos - start] != tok
                  or np.float32(memb[pos - start]) != np.float32(m)]
    in_heldout = [i for i, r in enumerate(rows) if (r[2], r[3]) in (heldout_sequences or set())]
    duplicates = len(keys) - len(set(keys))
    passed = duplicates == 0 and not mismatched and not in_heldout
    return passed, {"n_exemplars": len(keys), "duplicates": duplicates, "context_mismatches": len(mismatched),
                    "first_mismatches": [str(keys[i]) for i in mismatched[:5]], "heldout_exemplars": len(in_heldout),
                    "first_heldout": [str(keys[i]) for i in in_heldout[:5]]}
