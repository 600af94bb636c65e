"""AUROC with weights, its interval with tokens grouped by document, and its place in a null.

Held-out separation scores (`intervention.InterventionVectors`) are weighted AUROCs: a token counts
as a positive with its membership and as a negative with the rest. Tokens of one document are not
independent, so the interval sums each document's influence; and a direction fit on a cluster's
members separates them even in noise, so a score is read against a null (`analysis.null`).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def weighted_auroc(scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray) -> float:
    """P(score of a positive > score of a negative), each token counted as a positive with
    weight pos_weight and as a negative with neg_weight; ties count one half (Mann-Whitney).
    NaN when the positives or the negatives carry no weight."""
    from sklearn.metrics import roc_auc_score  # where used: scipy.stats/sklearn cost every run process ~1 s to import
    scores = np.asarray(scores, np.float64)
    pos_weight, neg_weight = np.asarray(pos_weight, np.float64), np.asarray(neg_weight, np.float64)
    if pos_weight.sum() <= 0 or neg_weight.sum() <= 0:
        return float("nan")
    # every token twice: once labelled positive with its positive weight, once negative with its negative weight
    labels = np.r_[np.ones(scores.size), np.zeros(scores.size)]
    return float(roc_auc_score(labels, np.r_[scores, scores], sample_weight=np.r_[pos_weight, neg_weight]))


def auroc_interval(scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray,
                   groups: np.ndarray | None = None, level: float = 0.95) -> tuple[float, float, float]:
    """(weighted AUROC, low, high): a normal interval whose variance sums the influence of each
    group (document) on the AUROC, i.e. DeLong's structural components added up per group, so
    the tokens of one document count as one piece of evidence (each token its own group if None).
    The AUROC equals `weighted_auroc` (tests/test_intervention.py); no library offers the grouped interval."""
    groups = np.arange(np.size(scores)) if groups is None else np.unique(groups, return_inverse=True)[1]
    return ranked_auroc_interval(score_ranks(scores), pos_weight, neg_weight, groups, float(NormalDist().inv_cdf(0.5 + level / 2)))


def score_ranks(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """(rank of each score among the distinct scores [n], number of distinct scores): computed once
    per direction, shared by its AUROCs against random and hard negatives."""
    uniq, inverse = np.unique(scores, return_inverse=True)
    return inverse, uniq.size


def ranked_auroc_interval(ranks: tuple[np.ndarray, int], pos_weight: np.ndarray, neg_weight: np.ndarray,
                          groups: np.ndarray, z: float) -> tuple[float, float, float]:
    """`auroc_interval` from `score_ranks`, groups as indices 0..g-1 and the normal quantile z."""
    # the point estimate falls out of the per-score win shares the influences need anyway
    inverse, n_unique = ranks
    p = np.bincount(inverse, weights=pos_weight, minlength=n_unique)
    n = np.bincount(inverse, weights=neg_weight, minlength=n_unique)
    total_p, total_n = p.sum(), n.sum()
    if total_p <= 0 or total_n <= 0:
        return float("nan"), float("nan"), float("nan")
    beaten = (np.cumsum(n) - n + 0.5 * n) / total_n  # per score: share of negatives a positive there beats
    beating = (total_p - np.cumsum(p) + 0.5 * p) / total_p  # share of positives above a negative there
    auc = float(np.sum(p * beaten) / total_p)
    influence = (np.bincount(groups, pos_weight * (beaten[inverse] - auc)) / total_p
                 + np.bincount(groups, neg_weight * (beating[inverse] - auc)) / total_n)
    used = np.bincount(groups, pos_weight + neg_weight) > 0
    g = int(used.sum())
    half = z * float(np.sqrt(g / (g - 1) * np.sum(influence**2))) if g > 1 else float("nan")
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def empirical_p(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Per score, (1 + null values >= it) / (1 + null size): the share of the null that reaches
    it, counting the score itself (never 0). NaN for a NaN score or an empty null.  # [k]"""
    scores, null = np.asarray(scores, np.float64), np.sort(np.asarray(null, np.float64))
    if null.size == 0:
        return np.full(scores.shape, np.nan)
    reached = null.size - np.searchsorted(null, scores, side="left")
    return np.where(np.isnan(scores), np.nan, (1.0 + reached) / (1.0 + null.size))
