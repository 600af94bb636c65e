"""Is a label's score more than any label would get? The permutation null of every label.

A label is scored, by the scorer behind its confidence, on every other cluster's held-out set
(those members against those random negatives) as if it were that cluster's label. Its own
confidence is then placed among these: p = (1 + #other clusters scoring at least as high) /
(1 + #others). A label whose own score does not clear the 95th percentile of its scores on the
others describes its cluster no better than a random other cluster: it is flagged
`indistinguishable_from_null` (p alone cannot reach 0.05 in an atlas of fewer than 20 clusters). A right but unspecific label
("'.'" for one of three full-stop clusters) scores high on the two siblings and low on the rest,
so it still stands out from the null; its low specificity says the rest.

The LLM judge's null would cost k x k judge calls: a judged label's null is not computed (nan).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from latent_atlas.labels.claims import claimed_tokens
from latent_atlas.labels.examples import HeldoutExamples
from latent_atlas.labels.measures import permutation_null, point_separation
from latent_atlas.labels.records import CentroidExplanation, Draft
from latent_atlas.labels.scorers import ScorerConfig, claim_text, embed, embedding_scores, token_claim_scores

NULL_SCORERS = ("token_claim", "embedding")  # scorers cheap enough to score every label on every cluster


def _null_scores(record: CentroidExplanation, heldout: HeldoutExamples, config: ScorerConfig,
                 memo: dict) -> tuple[np.ndarray, np.ndarray]:
    """The record's headline scorer's scores of one cluster's members and random negatives."""
    if record.scorer == "token_claim":
        scores = token_claim_scores(claimed_tokens(record.label, record.explanation), heldout)
    else:
        query = memo.setdefault(("claim", record.label), embed([claim_text(Draft(record.label, ""))])[0])
        scores = embedding_scores(query, heldout, config, memo)
    return scores["positives"], scores["random"]


def with_permutation_nulls(records: Sequence[CentroidExplanation], heldout: dict[int, HeldoutExamples],
                           config: ScorerConfig, memo: dict | None = None
                           ) -> list[CentroidExplanation]:
    """The records with `scores['null']`: {scorer, own, p, percentile, null_median, null_95, n,
    indistinguishable_from_null} (p nan where the scorer has no null or there is one cluster)."""
    memo = {} if memo is None else memo
    out = []
    for record in records:
        null: dict[str, Any] = {"scorer": record.scorer}
        own = record.scores.get(record.scorer, {}).get("confidence", {}).get("value", float("nan"))
        if record.scorer in NULL_SCORERS and len(heldout) > 1:
            others = [point_separation(*_null_scores(record, held, config, memo),
                                       binary=record.scorer == "token_claim")
                      for c, held in heldout.items() if c != record.centroid_id and held.positives]
            null.update(permutation_null(own, np.array(others)), own=own)
        else:
            null.update(permutation_null(float("nan"), np.zeros(0)), own=own)
        # With few clusters p cannot reach alpha (its least value is 1 / (1 + others)): the flag asks
        # instead whether the own score clears the others' 95th percentile.
        null["indistinguishable_from_null"] = bool(not np.isfinite(null["p"]) or own <= null["null_95"])
        out.append(dataclasses.replace(record, scores={**record.scores, "null": null}))
    return out


def labels_beat_chance(records: Sequence[CentroidExplanation]) -> tuple[bool, dict]:
    """The atlas-level check: at least half of the labels stand out from their permutation null,
    and the median label's confidence interval lies above chance."""
    p = np.array([r.scores.get("null", {}).get("p", np.nan) for r in records], float)
    lows = np.array([r.confidence_interval[0] for r in records], float)
    median_low = float(np.nanmedian(lows)) if np.isfinite(lows).any() else float("nan")
    above_null = sum(not r.scores.get("null", {}).get("indistinguishable_from_null", True) for r in records)
    passed = bool(records) and above_null >= len(records) / 2 and median_low > 0
    return passed, {"labels": len(records), "labels_above_null": above_null, "median_confidence_low": median_low,
                    "median_null_p": float(np.nanmedian(p)) if np.isfinite(p).any() else float("nan")}
