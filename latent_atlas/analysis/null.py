"""The null of held-out separation: the whole pipeline refit on structureless data.

A cluster's membership is a softmax of the cosine to its centroid, so a direction fit on its
members separates held-out members from the rest even when the data hold no clusters at all:
the atlas's steps on Gaussian noise give a median held-out AUROC of 0.94 at d=64, k=16 and 0.95 at
d=576, k=64 (benchmarks/auroc_null.py). A raw AUROC therefore says little; what says something is
how far it sits above the AUROC the same pipeline reaches on data without structure.

The null data are Gaussian with the mean and covariance of the fitting tokens, as their LDA
moments measured them, in the whitened space the clustering sees (whitening leaves them near, not
exactly at, identity covariance); the covariance is Ledoit-Wolf-shrunk so that its sampling noise
is not drawn twice, which on whitened noise makes it isotropic. The same clustering config is fit
on them (streamed in `NullConfig.chunks` pieces), memberships are computed, documents (here
sequences of independent tokens) are held out by the same seeded hash and the same
`StatisticsConfig` (held-out share set by `NullConfig.heldout_fraction`), and the LDA directions
are fit and scored exactly as for the real atlas. The AUROC of every null cluster
is one draw of the null distribution; `NullConfig.repeats` independent draws are pooled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from latent_atlas.analysis.intervention import InterventionVectors, LdaMoments, ledoit_wolf_shrinkage
from latent_atlas.analysis.statistics import ChunkStatistics, StatisticsConfig
from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk

# Null tokens per sequence: they are independent, so a sequence is only the unit the held-out
# split draws (the intervals group by it); 16 keeps the statistics' blocks few.
NULL_SEQUENCE_LENGTH = 16


@dataclass(frozen=True)
class NullConfig:
    """How the separation null is drawn; its memory and time are bounded by `vectors` x `repeats`."""

    vectors: int = 32768
    """Gaussian vectors the null draws per repeat (fit and held-out together); at most this many
    are in memory (float16, plus their memberships and per-block temporaries), 0 switches the null off."""
    heldout_fraction: float = 0.5
    """Share of the null's sequences held out and scored (the other part fits the directions);
    the real atlas holds out less of far more tokens, the null needs held-out members per cluster."""
    chunks: int = 8
    """Pieces the null's vectors are streamed to the clustering in (its steps per epoch)."""
    repeats: int = 1
    """Independent null fits pooled into one distribution (at small k one fit has few clusters)."""
    level: float = 0.95
    """A cluster's margin is its auroc_hard minus this quantile of the null's auroc_hard."""
    seed: int = 0
    """Seeds the null data (repeat r draws with seed + r); the null's clustering keeps the atlas's seed."""

    def __post_init__(self):
        checks = {"vectors": self.vectors >= 0, "heldout_fraction": 0 < self.heldout_fraction < 1,
                  "chunks": self.chunks >= 1, "repeats": self.repeats >= 1, "level": 0 < self.level < 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"NullConfig.{name} = {getattr(self, name)!r} is out of range")


@dataclass
class SeparationNull:
    """The null distribution: held-out AUROC of every cluster of every null fit (NaN dropped)."""

    auroc: np.ndarray  # [n_null] float64, LDA direction vs random negatives
    auroc_hard: np.ndarray  # [n_null] float64, LDA direction vs hard negatives


def null_mean_covariance(moments: LdaMoments) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], covariance [d, d]) the null draws from: those of the fitting tokens, each weighted
    by its membership mass s_i = sum_c m_ic (1 up to the memberships the clustering drops), from the
    exact moments, the covariance shrunk by `shrunk_for_gaussian`."""
    weight = max(float(moments.cluster_weight.sum()), 1e-12)
    mean = moments.cluster_sum.sum(axis=0) / weight  # sum_c sum_i m_ic x_i = sum_i s_i x_i
    cov = moments.second_moment / weight - np.outer(mean, mean)
    return mean, shrunk_for_gaussian((cov + cov.T) / 2, moments.n_tokens)


def shrunk_for_gaussian(covariance: np.ndarray, n_samples: float) -> np.ndarray:
    """A sample covariance [d, d] of n_samples tokens, Ledoit-Wolf-shrunk toward its mean eigenvalue,
    the fourth moment taken as a Gaussian's (E||z||^4 = tr(S)^2 + 2 tr(S^2)). Gaussian data drawn
    from the unshrunk estimate carry its sampling spread twice (once in S, once in their own sample):
    on isotropic noise at d=576 from 32k vectors that lowered the null enough to put 16% of noise
    clusters above its 95th percentile (benchmarks/auroc_null.py); shrunk, the spread is counted once."""
    fourth = float(np.trace(covariance) ** 2 + 2.0 * np.sum(covariance**2))
    shrinkage = ledoit_wolf_shrinkage(covariance, fourth, n_samples)
    shrunk = (1.0 - shrinkage) * covariance
    shrunk.flat[:: covariance.shape[0] + 1] += shrinkage * np.trace(covariance) / covariance.shape[0]
    return shrunk


def gaussian_like(mean: np.ndarray, covariance: np.ndarray, n: int, seed: int, block: int = 4096) -> np.ndarray:
    """n Gaussian vectors with this mean and covariance, float16 like whitened chunks  # [n, d]"""
    eigenvalues, basis = np.linalg.eigh(covariance)
    factor = basis * np.sqrt(np.clip(eigenvalues, 0.0, None))  # factor @ factor.T = covariance
    rng = np.random.default_rng([seed, 0x6E756C6C])
    out = np.empty((n, mean.size), np.float16)
    for start in range(0, n, block):  # one float64 block at a time
        z = rng.standard_normal((min(block, n - start), mean.size))
        out[start:start + z.shape[0]] = z @ factor.T + mean
    return out


def pipeline_separation(x: np.ndarray, clustering: ClusteringConfig, statistics: StatisticsConfig,
                        chunks: int = 8) -> InterventionVectors:
    """Held-out separation of vectors x [n, d] (float16) through the atlas's own steps: the
    clustering fit on x in `chunks` pieces, memberships, the seeded held-out split of
    `ChunkStatistics`, LDA directions fit on the rest and scored on the held-out tokens.
    Every sequence (NULL_SEQUENCE_LENGTH tokens) is its own document."""
    n = x.shape[0] - x.shape[0] % NULL_SEQUENCE_LENGTH
    if n < 2 * NULL_SEQUENCE_LENGTH:
        raise ValueError(f"pipeline_separation needs at least {2 * NULL_SEQUENCE_LENGTH} vectors, got {x.shape[0]}")
    x = x[:n]
    model = SequentialSoftClustering(**{f.name: getattr(clustering, f.name) for f in dataclasses.fields(clustering)})
    step = -(-n // chunks)
    model.fit_chunks([x[i:i + step] for i in range(0, n, step)])
    n_seq = n // NULL_SEQUENCE_LENGTH
    chunk = DenseChunk(x.reshape(n_seq, NULL_SEQUENCE_LENGTH, -1), np.ones((n_seq, NULL_SEQUENCE_LENGTH), bool),
                       np.zeros((n_seq, NULL_SEQUENCE_LENGTH), np.int32))
    stats = ChunkStatistics.compute("null", model.transform(chunk), chunk, clustering.n_clusters, statistics)
    return stats.fit_intervention_vectors(model.cluster_centers_)


def separation_null(mean: np.ndarray, covariance: np.ndarray, clustering: ClusteringConfig,
                    statistics: StatisticsConfig, config: NullConfig = NullConfig()) -> SeparationNull:
    """The pipeline's held-out AUROCs on Gaussian data of this mean [d] and covariance [d, d]
    (the atlas passes `null_mean_covariance` of its fitting tokens), `config.repeats` fits of
    `config.vectors` vectors each. Reads no chunk: two moments are all it needs of the real data."""
    if config.vectors == 0:
        return SeparationNull(np.zeros(0), np.zeros(0))
    statistics = dataclasses.replace(statistics, heldout_fraction=config.heldout_fraction)
    auroc, auroc_hard = [], []
    for r in range(config.repeats):
        x = gaussian_like(mean, covariance, config.vectors, config.seed + r)
        scored = pipeline_separation(x, clustering, statistics, config.chunks)
        del x  # one repeat's vectors in memory at a time
        auroc.append(scored.auroc)
        auroc_hard.append(scored.auroc_hard)
    return SeparationNull(_finite(auroc), _finite(auroc_hard))


def _finite(parts: list[np.ndarray]) -> np.ndarray:
    values = np.concatenate(parts).astype(np.float64)
    return values[np.isfinite(values)]


def with_separation_null(vectors: InterventionVectors, moments: LdaMoments, clustering: ClusteringConfig,
                         statistics: StatisticsConfig, config: NullConfig = NullConfig()) -> InterventionVectors:
    """`vectors` with the null of their held-out AUROCs drawn from these fitting moments."""
    null = separation_null(*null_mean_covariance(moments), clustering, statistics, config)
    return vectors.with_null(null.auroc, null.auroc_hard, config.level)
