"""A label's two measures and their intervals, resampling held-out documents.

Held-out examples come from a few dozen documents held out whole, and tokens of one document are
not independent (the same topic, the same names): an interval from resampling tokens is too
narrow. Every interval here resamples documents with replacement, members and negatives together,
and recomputes the measure with each example counted as often as its document was drawn.

- `confidence`: members against random held-out tokens: does the label describe the cluster at all?
- `specificity`: members against the nearest clusters' held-out members: does it tell the cluster
  from its neighbours (often the same token in another context)?

Both are the scorer's separation rescaled so that chance is 0 and perfect is 1: for a yes/no
predicate, balanced accuracy BA -> 2 BA - 1 = hit rate on members - false-alarm rate on negatives
(Youden's J); for a real-valued score, AUROC -> 2 AUROC - 1. Below chance is reported as such
(negative), not clipped, so a wrong label reads as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeasureConfig:
    """How intervals are drawn."""

    n_bootstrap: int = 400
    """Document resamples behind every interval."""
    level: float = 0.95
    """Coverage of the intervals."""
    seed: int = 0
    """Seed of the resampling."""


def _document_counts(documents: np.ndarray, config: MeasureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(index of each example's document [n], draws of each document per resample [B, n_documents])."""
    unique, index = np.unique(documents, return_inverse=True)
    rng = np.random.default_rng(config.seed)
    counts = rng.multinomial(unique.size, np.full(unique.size, 1 / unique.size), config.n_bootstrap)
    return index, counts


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))


def separation(pos: np.ndarray, neg: np.ndarray, pos_documents: np.ndarray, neg_documents: np.ndarray,
               config: MeasureConfig = MeasureConfig(), binary: bool = False) -> dict:
    """Chance-rescaled separation of members' scores `pos` [n_pos] from negatives' `neg` [n_neg]
    (2 AUROC - 1; for 0/1 predictions this equals 2 BA - 1), with a document-resampled interval:
    {value, low, high, n_pos, n_neg, n_documents, raw} (raw: the AUROC or balanced accuracy)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    documents = np.r_[np.asarray(pos_documents), np.asarray(neg_documents)].astype(np.int64)
    out = {"n_pos": int(pos.size), "n_neg": int(neg.size), "n_documents": int(np.unique(documents).size),
           "measure": "balanced_accuracy" if binary else "auroc"}
    if pos.size == 0 or neg.size == 0:
        return {**out, "value": float("nan"), "low": float("nan"), "high": float("nan"), "raw": float("nan")}
    index, counts = _document_counts(documents, config)
    weights = counts[:, index]  # [B, n_pos + n_neg]: how often each example is drawn
    samples = resampled_separations(pos, neg, weights[:, :pos.size], weights[:, pos.size:], binary)
    value = point_separation(pos, neg, binary)
    low, high = _interval(samples, config.level)
    return {**out, "value": value, "low": low, "high": high, "raw": (value + 1) / 2}


def resampled_separations(pos: np.ndarray, neg: np.ndarray, pos_weights: np.ndarray, neg_weights: np.ndarray,
                          binary: bool = False) -> np.ndarray:
    """Separation [B] of each resample, example i counted pos_weights [B, n_pos] / neg_weights
    [B, n_neg] times (nan where a resample drew no member or no negative). Equals 2 x sklearn's
    roc_auc_score with the counts as sample weights - 1 (tests/test_library_equivalents.py), in one
    matrix product for all B."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if binary:  # hit rate minus false-alarm rate: no pairwise matrix needed
            return pos_weights @ pos / pos_weights.sum(1) - neg_weights @ neg / neg_weights.sum(1)
        wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [n_pos, n_neg]
        return 2 * np.einsum("bi,ij,bj->b", pos_weights, wins, neg_weights) / (
            pos_weights.sum(1) * neg_weights.sum(1)) - 1


def permutation_null(own: float, others: np.ndarray) -> dict:
    """Where a label's own score falls among its scores on the other clusters' held-out sets:
    {p, percentile, null_median, null_95, n}. p = (1 + #others >= own) / (1 + n), the empirical
    p-value of "this label describes its own cluster no better than a random other cluster"."""
    others = np.asarray(others, np.float64)
    others = others[np.isfinite(others)]
    if not np.isfinite(own) or others.size == 0:
        return {"p": float("nan"), "percentile": float("nan"), "null_median": float("nan"),
                "null_95": float("nan"), "n": int(others.size)}
    return {"p": float((1 + np.sum(others >= own)) / (1 + others.size)),
            "percentile": float(np.mean(others < own)),
            "null_median": float(np.median(others)), "null_95": float(np.quantile(others, 0.95)),
            "n": int(others.size)}


def point_separation(pos: np.ndarray, neg: np.ndarray, binary: bool = False) -> float:
    """`separation`'s value alone (no interval): 2 AUROC - 1, or hit rate - false-alarm rate."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    if binary:
        return float(pos.mean() - neg.mean())
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(2 * wins.mean() - 1)
