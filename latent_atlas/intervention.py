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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from latent_atlas.tables import read_npz, write_npz


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

    def update(self, x: np.ndarray, memberships: sp.csr_matrix | np.ndarray) -> None:
        """Add tokens x [n, d] with memberships [n, k]; the GEMM runs in x's dtype (fp32 is
        ~4x faster than fp64 on CPU), accumulation across calls is float64."""
        m = sp.csr_matrix(memberships, dtype=x.dtype)
        s = np.asarray(m.sum(axis=1)).ravel()
        self.n_tokens += x.shape[0]
        self.sum_x += x.sum(axis=0, dtype=np.float64)
        gram = (x * s[:, None]).T @ x
        self.second_moment += (gram + gram.T) / 2  # exactly symmetric, so the stored triangle is lossless
        self.cluster_weight += np.asarray(m.sum(axis=0), np.float64).ravel()
        self.cluster_sum += np.asarray(m.T @ x, np.float64)

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
    """Bottom-n-by-priority reservoir of tokens with their vectors and dense memberships."""

    priority: np.ndarray  # [n] float64 seeded hash; the n smallest are kept
    chunk_id: np.ndarray  # [n] str
    sequence: np.ndarray  # [n] int32
    position: np.ndarray  # [n] int32
    vectors: np.ndarray  # [n, d] float16 (whitened activations are stored fp16: lossless)
    memberships: np.ndarray  # [n, k] float32

    def merge(self, other: "VectorSample", size: int) -> "VectorSample":
        arrays = {f: np.concatenate([getattr(self, f), getattr(other, f)]) for f in self.__dataclass_fields__}
        keep = np.lexsort((arrays["position"], arrays["sequence"], arrays["chunk_id"], arrays["priority"]))[:size]
        return VectorSample(**{f: a[keep] for f, a in arrays.items()})

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, a: dict) -> "VectorSample":
        return cls(**{f: a[f] for f in cls.__dataclass_fields__})


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
    x = fit_sample.vectors.astype(np.float64)
    m = fit_sample.memberships.astype(np.float64)
    sq = (x**2).sum(1)[:, None] - 2.0 * x @ mu.T + (mu**2).sum(1)[None, :]  # [n, k] ||x_i - mu_c||^2
    mean_fourth = float((m * sq**2).sum() / max(m.sum(), 1e-12))
    shrinkage = ledoit_wolf_shrinkage(cov, mean_fourth, moments.cluster_weight.sum())
    target = np.trace(cov) / cov.shape[0]
    shrunk = (1.0 - shrinkage) * cov
    shrunk.flat[:: cov.shape[0] + 1] += shrinkage * target
    return shrunk, shrinkage


@dataclass
class InterventionVectors:
    """Per-cluster directions and how well they separate the cluster on held-out tokens."""

    vectors: np.ndarray  # [k, d] unit LDA directions, sign-aligned with the centers
    diff_means: np.ndarray  # [k, d] unit difference-of-means directions
    auroc: np.ndarray  # [k] held-out AUROC of projections, positives vs negatives
    d_prime: np.ndarray  # [k] held-out (mean+ - mean-) / sqrt((var+ + var-) / 2)
    diff_means_auroc: np.ndarray  # [k] the same AUROC for the difference-of-means direction
    within_variance: np.ndarray  # [k] held-out membership-weighted variance of projections
    cross_correlation: np.ndarray  # [k, k] cosine between intervention vectors
    shrinkage: float  # Ledoit-Wolf intensity used

    _ARRAYS = ("vectors", "diff_means", "auroc", "d_prime", "diff_means_auroc", "within_variance", "cross_correlation")

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickles), written to a temp file and renamed."""
        return write_npz(path, {name: getattr(self, name) for name in self._ARRAYS}, {"shrinkage": self.shrinkage})

    @classmethod
    def load(cls, path: str | Path) -> "InterventionVectors":
        arrays, meta = read_npz(path)
        return cls(**{name: arrays[name] for name in cls._ARRAYS}, shrinkage=float(meta["shrinkage"]))


def intervention_vectors(moments: LdaMoments, fit_sample: VectorSample, heldout: VectorSample,
                         centers: np.ndarray | None = None) -> InterventionVectors:
    """LDA direction per cluster, solved once for all k with one Cholesky factorisation."""
    shrunk, shrinkage = shrunk_pooled_covariance(moments, fit_sample)
    diff = moments.cluster_means() - moments.negative_means()  # [k, d]
    factor = scipy.linalg.cho_factor(shrunk, lower=True)
    lda = scipy.linalg.cho_solve(factor, diff.T).T  # [k, d]
    if centers is not None:  # Sigma^-1 is positive definite, so lda already agrees with diff
        lda *= np.where(np.sum(lda * centers, axis=1) < 0, -1.0, 1.0)[:, None]
    lda = _unit(lda)
    diff = _unit(diff)
    x = heldout.vectors.astype(np.float64)
    pos = heldout.memberships.astype(np.float64)  # [n, k]
    neg = 1.0 - pos
    proj = x @ lda.T  # [n, k]
    auroc = np.array([weighted_auroc(proj[:, c], pos[:, c], neg[:, c]) for c in range(lda.shape[0])])
    proj_diff = x @ diff.T
    auroc_diff = np.array([weighted_auroc(proj_diff[:, c], pos[:, c], neg[:, c]) for c in range(lda.shape[0])])
    mean_p, var_p = _weighted_mean_var(proj, pos)
    mean_n, var_n = _weighted_mean_var(proj, neg)
    d_prime = (mean_p - mean_n) / np.sqrt(np.maximum((var_p + var_n) / 2.0, 1e-30))
    return InterventionVectors(lda.astype(np.float32), diff.astype(np.float32), auroc, d_prime, auroc_diff,
                               var_p, lda @ lda.T, shrinkage)


def weighted_auroc(scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray) -> float:
    """P(score of a positive > score of a negative), each token counted as a positive with
    weight pos_weight and as a negative with neg_weight; ties count one half (Mann-Whitney)."""
    uniq, inverse = np.unique(scores, return_inverse=True)
    p = np.bincount(inverse, weights=pos_weight, minlength=uniq.size)
    n = np.bincount(inverse, weights=neg_weight, minlength=uniq.size)
    total = p.sum() * n.sum()
    if total <= 0:
        return float("nan")
    below = np.cumsum(n) - n
    return float(np.sum(p * (below + 0.5 * n)) / total)


def _weighted_mean_var(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise weighted mean and variance of values [n, k] with weights [n, k]."""
    w = np.maximum(weights.sum(axis=0), 1e-30)
    mean = (weights * values).sum(axis=0) / w
    return mean, (weights * (values - mean) ** 2).sum(axis=0) / w


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)


def check_vectors(vectors: np.ndarray, tol: float = 1e-4) -> tuple[bool, dict]:
    """Asset check: every intervention vector is finite and unit-norm."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    bad = np.flatnonzero(~finite | (np.abs(norms - 1.0) > tol))
    return bad.size == 0, {"n_vectors": int(vectors.shape[0]), "bad_clusters": bad[:20].tolist(),
                           "n_bad": int(bad.size), "max_norm_error": float(np.max(np.abs(norms - 1.0), initial=0.0))}
