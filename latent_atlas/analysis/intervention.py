"""Intervention (steering) vectors per cluster: weighted LDA with Ledoit-Wolf shrinkage.

w_c = Sigma^-1 (mu_c+ - mu_c-), Sigma the pooled within-cluster covariance. Positives are
weighted by membership m_ic, negatives by (1 - m_ic). A per-cluster d x d covariance is out of
reach at d=2304, k=512 (21 GB), so only mergeable moments are kept:
    pooled scatter = sum_i s_i x_i x_i^T - sum_c W_c mu_c mu_c^T,   s_i = sum_c m_ic,
i.e. one global [d, d] second moment, per-cluster sums [k, d] and weights [k].
The Ledoit-Wolf intensity needs the mean fourth power of centred samples, which depends on the
cluster means known only after merging; it is taken on a bounded reservoir of fitting tokens
(exact when the reservoir holds every token), everything else comes from the exact moments.
Separation is measured on held-out tokens, split off by a seeded hash and never fitted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from latent_atlas.analysis.auroc import ranked_auroc_interval, score_ranks, empirical_p
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.tables import read_npz, write_npz


@dataclass
class LdaMoments:
    """Mergeable weighted moments of the fitting tokens."""

    n_tokens: float  # number of fitting tokens
    sum_x: np.ndarray  # [d] float64, sum_i x_i
    second_moment: np.ndarray  # [d, d] float64, sum_i s_i x_i x_i^T
    cluster_weight: np.ndarray  # [k] float64, W_c = sum_i m_ic
    cluster_sum: np.ndarray  # [k, d] float64, sum_i m_ic x_i

    @classmethod
    def zeros(cls, n_clusters: int, dim: int) -> "LdaMoments":
        return cls(0.0, np.zeros(dim), np.zeros((dim, dim)), np.zeros(n_clusters), np.zeros((n_clusters, dim)))

    def update(self, x: np.ndarray, memberships: sp.csr_matrix | np.ndarray, overwrite_x: bool = False) -> None:
        """Add tokens x [n, d] with memberships [n, k]; the GEMM runs in x's dtype (fp32 is
        ~4x faster than fp64 on CPU), accumulation across calls is float64. With overwrite_x (x is
        the caller's reused block) the rows are scaled in place: no second block-sized array, whose
        first touch costs page faults (0.6-1.6 s per 600 MB on this CPU's VM: benchmarks/first_touch.py)."""
        m = sp.csr_matrix(memberships, dtype=x.dtype)
        s = np.asarray(m.sum(axis=1)).ravel()
        self.n_tokens += x.shape[0]
        self.sum_x += x.sum(axis=0, dtype=np.float64)
        self.cluster_weight += np.asarray(m.sum(axis=0), np.float64).ravel()
        self.cluster_sum += np.asarray(m.T @ x, np.float64)
        # Σ s_i x_i x_iᵀ as one symmetric product of rows scaled by √s_i (s_i >= 0): a syrk does half
        # the multiply-adds of (x·s)ᵀx, the stage's largest GEMM (benchmarks/scale.py, chunk_stats).
        # torch scales on every core (numpy on one); the products are the same IEEE multiplies.
        rows = x if overwrite_x else np.empty_like(x)
        torch.mul(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.sqrt(s))[:, None],
                  out=torch.from_numpy(rows))
        gram = rows.T @ rows
        self.second_moment += (gram + gram.T) / 2  # exactly symmetric, so the stored triangle is lossless

    def merge(self, other: "LdaMoments") -> "LdaMoments":
        return LdaMoments(self.n_tokens + other.n_tokens, self.sum_x + other.sum_x,
                          self.second_moment + other.second_moment,
                          self.cluster_weight + other.cluster_weight, self.cluster_sum + other.cluster_sum)

    def cluster_means(self) -> np.ndarray:
        """mu_c+ [k, d]: membership-weighted mean of each cluster."""
        return self.cluster_sum / np.maximum(self.cluster_weight, 1e-12)[:, None]

    def negative_means(self) -> np.ndarray:
        """mu_c- [k, d]: mean weighted by (1 - m_ic), from the global sum and count."""
        w = np.maximum(self.n_tokens - self.cluster_weight, 1e-12)
        return (self.sum_x[None, :] - self.cluster_sum) / w[:, None]

    def pooled_covariance(self) -> np.ndarray:
        """Pooled within-cluster covariance [d, d] (maximum likelihood, divided by sum W_c)."""
        w = np.maximum(self.cluster_weight, 1e-12)
        scatter = self.second_moment - (self.cluster_sum / w[:, None]).T @ self.cluster_sum
        return (scatter + scatter.T) / (2.0 * max(self.cluster_weight.sum(), 1e-12))

    def to_arrays(self) -> dict[str, np.ndarray]:
        # The second moment is symmetric: its upper triangle halves the file (21 MB at d=2304).
        upper = self.second_moment[np.triu_indices(self.sum_x.size)]
        return {"n_tokens": np.float64(self.n_tokens), "sum_x": self.sum_x, "second_moment_upper": upper,
                "cluster_weight": self.cluster_weight, "cluster_sum": self.cluster_sum}

    @classmethod
    def from_arrays(cls, a: dict) -> "LdaMoments":
        d = a["sum_x"].size
        second = np.zeros((d, d))
        second[np.triu_indices(d)] = a["second_moment_upper"]
        second = second + np.triu(second, 1).T
        return cls(float(a["n_tokens"]), a["sum_x"], second, a["cluster_weight"], a["cluster_sum"])


@dataclass
class VectorSample:
    """Reservoir of tokens with their dense memberships: the `size` smallest seeded priorities
    overall, plus the `per_stratum` smallest of each stratum (a token's hard cluster, k for a token
    with no membership). One priority serves both, so within a stratum the kept tokens are a
    uniform sample of it (priority below the larger of the two thresholds).

    The vectors are not saved (per chunk they would be up to k x per_stratum rows of d values,
    ~150 MB at d=2304, k=512): a saved sample holds token identities, and `read_vectors` reads the
    selected rows back from the chunk files after merging, one chunk at a time."""

    priority: np.ndarray  # [n] float64 seeded hash; the n smallest are kept
    chunk_id: np.ndarray  # [n] str
    sequence: np.ndarray  # [n] int32
    position: np.ndarray  # [n] int32
    memberships: np.ndarray  # [n, k] float32 (saved sparse: the nonzeros)
    group: np.ndarray  # [n] uint64 document key: the unit of the held-out split
    stratum: np.ndarray  # [n] int32 hard cluster (largest membership, ties to the lowest), k if none
    vector_norm: np.ndarray  # [n] float32 L2 norm of the vector, to check the chunk read back is the one sampled
    vectors: np.ndarray | None = None  # [n, d] float16 whitened activations (lossless), None until read

    _IDENTITY = ("priority", "chunk_id", "sequence", "position", "memberships", "group", "stratum", "vector_norm")

    def merge(self, other: "VectorSample", size: int, per_stratum: int = 0) -> "VectorSample":
        """Exact merge of the identities; vectors are kept only when both sides hold them."""
        names = self._IDENTITY + (("vectors",) if self.vectors is not None and other.vectors is not None else ())
        arrays = {f: np.concatenate([getattr(self, f), getattr(other, f)]) for f in names}
        keep = reservoir_rows(arrays["priority"], arrays["chunk_id"], arrays["sequence"], arrays["position"],
                              arrays["stratum"], size, per_stratum)
        return VectorSample(**{f: a[keep] for f, a in arrays.items()})

    def read_vectors(self, open_chunk: Callable[[str], DenseChunk], dim: int) -> "VectorSample":
        """This sample with `vectors` [n, dim] float16 read from the chunks' whitened activations:
        open_chunk(chunk_id) -> DenseChunk (memory-mapped), each opened once, and only the kept
        (sequence, position) rows read. Raises ChunkError when a chunk's row does not have the
        norm recorded when the sample was drawn (the chunk was rewritten since)."""
        vectors = np.zeros((self.priority.size, dim), np.float16)
        for chunk_id in map(str, np.unique(self.chunk_id)):
            rows = np.flatnonzero(self.chunk_id == chunk_id)
            rows = rows[np.lexsort((self.position[rows], self.sequence[rows]))]  # file order: fewer page faults
            chunk = open_chunk(chunk_id)
            source = chunk.path or chunk_id
            if chunk.dim != dim or self.sequence[rows].max() >= chunk.n_sequences \
                    or self.position[rows].max() >= chunk.sequence_length:
                raise ChunkError(source, f"chunk {chunk_id!r} of shape {chunk.activations.shape} cannot hold the "
                                         f"sampled tokens (dim {dim}): rematerialize its statistics")
            vectors[rows] = np.asarray(chunk.activations[self.sequence[rows], self.position[rows]], np.float16)
            changed = ~np.isclose(vector_norms(vectors[rows]), self.vector_norm[rows], rtol=1e-5, atol=1e-6)
            if changed.any():
                r = rows[np.argmax(changed)]
                raise ChunkError(source, f"chunk {chunk_id!r} changed since its statistics were computed: "
                                         f"{int(changed.sum())} sampled tokens differ (first: sequence "
                                         f"{self.sequence[r]}, position {self.position[r]}): rematerialize its statistics")
        return dataclasses.replace(self, vectors=vectors)

    def require_vectors(self, what: str) -> np.ndarray:
        """[n, d] vectors, or a ValueError saying how to read them back."""
        if self.vectors is None:
            raise ValueError(f"the {what} reservoir holds no vectors (saved statistics keep token identities only): "
                             "read them back with read_vectors(open_chunk, dim) or "
                             "ChunkStatistics.fit_intervention_vectors(centers, open_chunk=...)")
        return self.vectors

    def expansion_weights(self, stratum_count: np.ndarray | None) -> np.ndarray:
        """[n] float64: tokens of its stratum that each kept token stands for (stratum_count [k+1]
        counts the reservoir's population per stratum); all ones without counts."""
        if stratum_count is None:
            return np.ones(self.priority.size)
        kept = np.bincount(self.stratum, minlength=stratum_count.size)
        return (stratum_count / np.maximum(kept, 1))[self.stratum].astype(np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Identities only (no vectors); memberships as their nonzeros (rows, clusters, values)."""
        arrays = {f: getattr(self, f) for f in self._IDENTITY if f != "memberships"}
        rows, clusters = np.nonzero(self.memberships)
        return {**arrays, "membership_shape": np.array(self.memberships.shape, np.int64),
                "membership_row": rows.astype(np.int32), "membership_cluster": clusters.astype(np.int32),
                "membership_value": self.memberships[rows, clusters]}

    @classmethod
    def from_arrays(cls, a: dict) -> "VectorSample":
        memberships = np.zeros(tuple(a["membership_shape"]), np.float32)
        memberships[a["membership_row"], a["membership_cluster"]] = a["membership_value"]
        return cls(**{f: a[f] for f in cls._IDENTITY if f != "memberships"}, memberships=memberships)


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """L2 norm of each row of fp16 vectors (float32 is exact enough for a 1e-5 check).  # [n] float32"""
    v = np.asarray(vectors, np.float32)
    return np.sqrt(np.einsum("nd,nd->n", v, v))


def reservoir_rows(priority: np.ndarray, chunk_id: np.ndarray, sequence: np.ndarray, position: np.ndarray,
                   stratum: np.ndarray, size: int, per_stratum: int) -> np.ndarray:
    """Rows a `VectorSample` keeps, in (priority, chunk, sequence, position) order: the first
    `size` overall and the first `per_stratum` of each stratum. Merging reservoirs and keeping
    these rows equals one pass over all tokens.  # [kept] int64"""
    order = np.lexsort((position, sequence, chunk_id, priority))
    keep = np.zeros(priority.size, bool)
    keep[order[:size]] = True
    if per_stratum > 0 and priority.size:
        ranked = stratum[order]
        by_stratum = np.argsort(ranked, kind="stable")
        starts = np.searchsorted(ranked[by_stratum], ranked[by_stratum])
        keep[order[by_stratum[np.arange(by_stratum.size) - starts < per_stratum]]] = True
    return order[keep[order]]


def ledoit_wolf_shrinkage(covariance: np.ndarray, mean_fourth: float, n_samples: float) -> float:
    """Ledoit-Wolf intensity in sklearn's form, from the covariance S [d, d] of centred samples z,
    mean_fourth = mean ||z||^4 and the (weighted) sample count."""
    d = covariance.shape[0]
    mu = np.trace(covariance) / d
    s_norm2 = float(np.sum(covariance**2))
    delta = (s_norm2 - 2.0 * mu * np.trace(covariance) + d * mu**2) / d
    beta = min((mean_fourth - s_norm2) / (d * n_samples), delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


def shrunk_pooled_covariance(moments: LdaMoments, fit_sample: VectorSample) -> tuple[np.ndarray, float]:
    """(Sigma_shrunk [d, d], shrinkage): pooled within-cluster covariance with Ledoit-Wolf
    shrinkage; the fourth moment is estimated on `fit_sample` against the exact cluster means."""
    cov = moments.pooled_covariance()
    mu = moments.cluster_means()  # [k, d]
    x = fit_sample.require_vectors("fitting").astype(np.float64)
    m = fit_sample.memberships.astype(np.float64)
    sq = (x**2).sum(1)[:, None] - 2.0 * x @ mu.T + (mu**2).sum(1)[None, :]  # [n, k] ||x_i - mu_c||^2
    mean_fourth = float((m * sq**2).sum() / max(m.sum(), 1e-12))
    shrinkage = ledoit_wolf_shrinkage(cov, mean_fourth, moments.cluster_weight.sum())
    target = np.trace(cov) / cov.shape[0]
    shrunk = (1.0 - shrinkage) * cov
    shrunk.flat[:: cov.shape[0] + 1] += shrinkage * target
    return shrunk, shrinkage


SCORES = ("auroc", "auroc_hard", "diff_means_auroc", "diff_means_auroc_hard")


@dataclass
class InterventionVectors:
    """Per-cluster directions and how well they separate the cluster on held-out tokens.

    Every AUROC has the same positives (held-out tokens weighted by their membership) and one of
    two negative sets: random (every held-out token, weighted 1 - membership) or hard (held-out
    tokens whose hard cluster is one of the `hard_negatives` clusters most similar to this one).
    `<score>_ci` [k, 2] is its interval; the weights and token counts say what it rests on."""

    vectors: np.ndarray  # [k, d] unit LDA directions, sign-aligned with the centers
    diff_means: np.ndarray  # [k, d] unit difference-of-means directions
    auroc: np.ndarray  # [k] held-out AUROC of LDA projections, positives vs random negatives
    auroc_ci: np.ndarray  # [k, 2]
    auroc_hard: np.ndarray  # [k] the same against hard negatives
    auroc_hard_ci: np.ndarray  # [k, 2]
    diff_means_auroc: np.ndarray  # [k] AUROC of the difference-of-means direction, random negatives
    diff_means_auroc_ci: np.ndarray  # [k, 2]
    diff_means_auroc_hard: np.ndarray  # [k] the same against hard negatives
    diff_means_auroc_hard_ci: np.ndarray  # [k, 2]
    d_prime: np.ndarray  # [k] held-out (mean+ - mean-) / sqrt((var+ + var-) / 2), random negatives
    within_variance: np.ndarray  # [k] held-out membership-weighted variance of projections
    cross_correlation: np.ndarray  # [k, k] cosine between intervention vectors
    hard_negatives: np.ndarray  # [k, h] int64, the most similar clusters (centroid cosine)
    positive_weight: np.ndarray  # [k] held-out membership mass the positives stand for
    negative_weight: np.ndarray  # [k] the same for random negatives (1 - membership)
    hard_negative_weight: np.ndarray  # [k] the same for hard negatives
    positive_tokens: np.ndarray  # [k] int64 held-out tokens kept whose hard cluster is this one
    hard_negative_tokens: np.ndarray  # [k] int64 held-out tokens kept among the hard negatives
    auroc_null: np.ndarray  # [n_null] `auroc` of every cluster of the pipeline refit on Gaussian data (analysis/null.py); empty: no null
    auroc_hard_null: np.ndarray  # [n_null] the same for `auroc_hard`
    shrinkage: float  # Ledoit-Wolf intensity used
    null_level: float = 0.95  # margins are taken over this quantile of the null

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickles), written to a temp file and renamed."""
        return write_npz(path, {name: getattr(self, name) for name in self._arrays()},
                         {"shrinkage": self.shrinkage, "null_level": self.null_level})

    @classmethod
    def load(cls, path: str | Path) -> "InterventionVectors":
        arrays, meta = read_npz(path)
        # files saved before the null was drawn have none: their margins read NaN, not a pass
        arrays = {"auroc_null": np.zeros(0), "auroc_hard_null": np.zeros(0), **arrays}
        return cls(**{name: arrays[name] for name in cls._arrays()}, shrinkage=float(meta["shrinkage"]),
                   null_level=float(meta.get("null_level", 0.95)))

    @classmethod
    def _arrays(cls) -> list[str]:
        return [name for name in cls.__dataclass_fields__ if name not in ("shrinkage", "null_level")]

    def with_null(self, auroc: np.ndarray, auroc_hard: np.ndarray, level: float) -> "InterventionVectors":
        """These scores with their null distributions (`analysis.null.separation_null`)."""
        return dataclasses.replace(self, auroc_null=np.asarray(auroc, np.float64),
                                   auroc_hard_null=np.asarray(auroc_hard, np.float64), null_level=level)

    def null_columns(self) -> dict[str, np.ndarray]:
        """Per cluster, for `auroc` and `auroc_hard`: the null's median (`_null`) and `null_level`
        quantile (`_null_high`), the margin of the score over that quantile (`_margin`; > 0: above
        what structureless data reach) and its empirical p within the null (`_p`). NaN without a null."""
        columns = {}
        for name in ("auroc", "auroc_hard"):
            score, null = getattr(self, name), getattr(self, f"{name}_null")
            median, high = (np.quantile(null, [0.5, self.null_level]) if null.size else (np.nan, np.nan))
            columns.update({f"{name}_null": np.full(score.shape, median), f"{name}_null_high": np.full(score.shape, high),
                            f"{name}_margin": score - high, f"{name}_p": empirical_p(score, null)})
        return columns

    def per_cluster_columns(self) -> dict[str, np.ndarray | list]:
        """Table columns, one value per cluster: each score with its interval (`_low`, `_high`),
        the null columns (`null_columns`), d', within-cluster variance, the counts behind the
        scores and the hard-negative clusters."""
        columns: dict = {}
        for name in SCORES:
            ci = getattr(self, f"{name}_ci")
            columns.update({name: getattr(self, name), f"{name}_low": ci[:, 0], f"{name}_high": ci[:, 1]})
        columns.update(self.null_columns())
        for name in ("d_prime", "within_variance", "positive_weight", "negative_weight", "hard_negative_weight",
                     "positive_tokens", "hard_negative_tokens"):
            columns[name] = getattr(self, name)
        columns["hard_negative_clusters"] = list(self.hard_negatives)
        return columns


def intervention_vectors(moments: LdaMoments, fit_sample: VectorSample, heldout: VectorSample,
                         centers: np.ndarray | None = None, heldout_count: np.ndarray | None = None,
                         hard_negatives: int = 3, level: float = 0.95) -> InterventionVectors:
    """LDA direction per cluster, solved once for all k with one Cholesky factorisation, scored
    on `heldout` (tokens weighted by `VectorSample.expansion_weights(heldout_count)`) against
    random and hard negatives; hard negatives are the members of the `hard_negatives` clusters
    nearest by cosine of `centers` (of the cluster means without centers)."""
    shrunk, shrinkage = shrunk_pooled_covariance(moments, fit_sample)
    diff = moments.cluster_means() - moments.negative_means()  # [k, d]
    factor = scipy.linalg.cho_factor(shrunk, lower=True)
    lda = scipy.linalg.cho_solve(factor, diff.T).T  # [k, d]
    if centers is not None:  # Sigma^-1 is positive definite, so lda already agrees with diff
        lda *= np.where(np.sum(lda * centers, axis=1) < 0, -1.0, 1.0)[:, None]
    lda, diff = _unit(lda), _unit(diff)
    k = lda.shape[0]
    near = nearest_clusters(moments.cluster_means() if centers is None else centers, hard_negatives)
    is_near = np.zeros((k, k + 1), bool)  # [k, strata]; stratum k: tokens with no membership
    is_near[np.arange(k)[:, None], near] = True
    z = float(NormalDist().inv_cdf(0.5 + level / 2))
    scored = {name: _separation(direction, heldout, heldout.expansion_weights(heldout_count), is_near, z)
              for name, direction in (("auroc", lda), ("diff_means_auroc", diff))}
    mean_var, weights = scored["auroc"]["mean_var"], scored["auroc"]["weights"]
    kept = np.bincount(heldout.stratum, minlength=k + 1)
    return InterventionVectors(
        lda.astype(np.float32), diff.astype(np.float32),
        **{f"{name}{suffix}{part}": scored[name][negatives][:, cols] for name in scored
           for suffix, negatives in (("", "random"), ("_hard", "hard")) for part, cols in (("", 0), ("_ci", [1, 2]))},
        d_prime=(mean_var[:, 0] - mean_var[:, 2]) / np.sqrt(np.maximum((mean_var[:, 1] + mean_var[:, 3]) / 2, 1e-30)),
        within_variance=mean_var[:, 1], cross_correlation=lda @ lda.T, hard_negatives=near,
        positive_weight=weights[:, 0], negative_weight=weights[:, 1], hard_negative_weight=weights[:, 2],
        positive_tokens=kept[:k].astype(np.int64), hard_negative_tokens=is_near.astype(np.int64) @ kept,
        auroc_null=np.zeros(0), auroc_hard_null=np.zeros(0), shrinkage=shrinkage,
    )


def _separation(directions: np.ndarray, heldout: VectorSample, weight: np.ndarray, is_near: np.ndarray,
                z: float) -> dict[str, np.ndarray]:
    """Held-out projections on each cluster's direction [k, d]: AUROC and interval [k, 3] against
    random and hard negatives, mean / variance of positives and random negatives [k, 4], and the
    positive, negative and hard-negative weights [k, 3]."""
    k = directions.shape[0]
    proj = heldout.require_vectors("held-out").astype(np.float64) @ directions.T  # [n, k]
    groups = np.unique(heldout.group, return_inverse=True)[1]
    out = {"random": np.full((k, 3), np.nan), "hard": np.full((k, 3), np.nan),
           "mean_var": np.full((k, 4), np.nan), "weights": np.zeros((k, 3))}
    for c in range(k):
        m = heldout.memberships[:, c].astype(np.float64)
        pos, neg = weight * m, weight * (1.0 - m)
        hard = neg * is_near[c, heldout.stratum]
        ranks = score_ranks(proj[:, c])
        out["random"][c] = ranked_auroc_interval(ranks, pos, neg, groups, z)
        out["hard"][c] = ranked_auroc_interval(ranks, pos, hard, groups, z)
        out["mean_var"][c] = (*_weighted_mean_var(proj[:, c], pos), *_weighted_mean_var(proj[:, c], neg))
        out["weights"][c] = pos.sum(), neg.sum(), hard.sum()
    return out


def nearest_clusters(centers: np.ndarray, n: int) -> np.ndarray:
    """[k, min(n, k - 1)] int64: per cluster the others by decreasing cosine of centers [k, d]."""
    unit = _unit(np.asarray(centers, np.float64))
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    return np.argsort(-similar, axis=1, kind="stable")[:, : max(0, min(n, unit.shape[0] - 1))].astype(np.int64)


def _weighted_mean_var(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean and variance of values [n] with weights [n]."""
    w = max(float(weights.sum()), 1e-30)
    mean = float((weights * values).sum() / w)
    return mean, float((weights * (values - mean) ** 2).sum() / w)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)


def check_vectors(vectors: np.ndarray, cluster_weight: np.ndarray, tol: float = 1e-4) -> tuple[bool, dict]:
    """Asset check: every intervention vector [k, d] is finite and unit-norm, and fitted from some
    tokens. A dead cluster (no fitting membership mass in `cluster_weight` [k]) still gets a unit
    vector (its mean taken as 0, the direction is minus everybody's mean, normalized), which says nothing
    about the cluster: the check names those clusters and fails rather than pass them as directions."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    bad = np.flatnonzero(~finite | (np.abs(norms - 1.0) > tol))
    dead = np.flatnonzero(~(np.asarray(cluster_weight, np.float64) > 0))  # NaN weight counts as dead
    return bad.size == 0 and dead.size == 0, {
        "n_vectors": int(vectors.shape[0]), "bad_clusters": bad[:20].tolist(), "n_bad": int(bad.size),
        "max_norm_error": float(np.max(np.abs(norms - 1.0), initial=0.0)),
        "dead_clusters": dead[:20].tolist(), "n_dead": int(dead.size)}
