"""The labeling driver: requests -> cache lookup -> labeler (misses only) -> scorers -> cache.

Each finished record is written to the cache before the next is started, so a run that fails
half way keeps what it finished and a rerun labels only the rest. LLM labelers get the misses in
batches of `batch_size` (each batch runs concurrently inside the labeler).

A labeler whose labels depend on every cluster (`sees_all_requests`, the c-TF-IDF keyword
labeler: its IDF is over all classes) is handled differently, by design: its cache keys include
a digest of every request's examples (any change relabels all, none relabels nothing), and when
anything misses it labels all requests in one call (cheap, no model) but only the misses are
scored and written, so the labels stay those of a single pass over every cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from latent_atlas.labels.cache import LabelCache, cache_key
from latent_atlas.labels.calibration import with_permutation_nulls
from latent_atlas.labels.examples import HeldoutExamples
from latent_atlas.labels.prompts import DOCUMENT_PROMPT_VERSION
from latent_atlas.labels.records import CentroidExplanation, Draft, Labeler, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig, headline, score_label

USAGE = ("prompt_tokens", "completion_tokens", "requests")


def scoring_key(config: ScorerConfig, heldout: HeldoutExamples) -> str:
    """Hex sha256 of what a label's scores depend on besides the label: the scorer settings
    (the detection client by name and model) and the held-out examples."""
    client = config.detection_client
    settings = {name: getattr(config, name) for name in config.__dataclass_fields__ if name != "detection_client"}
    settings["detection_client"] = None if client is None else [getattr(client, "name", ""), getattr(client, "model", "")]
    parts = [[[e.key(), e.text] for e in part] for part in (heldout.positives, heldout.random_negatives,
                                                             heldout.hard_negatives)]
    return hashlib.sha256(json.dumps([settings, parts], sort_keys=True, default=str).encode()).hexdigest()


def _requests_digest(requests: Sequence[LabelRequest]) -> str:
    return hashlib.sha256("\n".join(cache_key("", "", "", r.examples, r.parent_label) for r in requests)
                          .encode()).hexdigest()


def label_clusters(requests: Sequence[LabelRequest], heldout: dict[int, HeldoutExamples], labeler: Labeler,
                   cache: LabelCache, scorer_config: ScorerConfig = ScorerConfig(),
                   metadata: dict[str, Any] | None = None, force_regenerate: bool = False,
                   batch_size: int = 8) -> tuple[list[CentroidExplanation], dict[str, Any]]:
    """One record per request, in order: from the cache when its key matches, else labeled,
    scored on `heldout[centroid_id]` and written at once. Returns (records, stats): cache_hits,
    new_labels, rescored (cached labels scored again because their held-out examples or the
    scorer settings changed), fallbacks (labels a labeler's fallback made: written, but relabeled next run),
    prompt/completion tokens and requests (labeling and scoring), seconds spent labeling and
    scoring and their sum per new label. When the labeler raises, the drafts it finished (an
    exception's `drafts`, as LLMLabeler's LabelingFailed carries) are written first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sees_all = bool(getattr(labeler, "sees_all_requests", False))
    context = _requests_digest(requests) if sees_all else ""
    # A document excerpt is shown with another prompt than a token's window: the unit is in the key.
    keys = [cache_key(labeler.name, labeler.model, labeler.prompt_version, r.examples, r.parent_label,
                      context + ("" if r.unit == "token" else f"unit={r.unit}:{DOCUMENT_PROMPT_VERSION}")) for r in requests]
    records: list[CentroidExplanation | None] = [cache.get(r.centroid_id, key, force_regenerate)
                                                 for r, key in zip(requests, keys)]
    misses = [i for i, record in enumerate(records) if record is None]
    stats: dict[str, Any] = {"cache_hits": len(requests) - len(misses), "new_labels": 0, "rescored": 0, "fallbacks": 0,
                             **dict.fromkeys(USAGE, 0), "labeling_seconds": 0.0, "scoring_seconds": 0.0}
    missing = [requests[i].centroid_id for i in misses if requests[i].centroid_id not in heldout]
    if missing:
        raise ValueError(f"no held-out examples for clusters {missing[:5]}: pass heldout for every request")
    base = {**(metadata or {}), "labeler": labeler.name, "model": labeler.model,
            "prompt_version": labeler.prompt_version,
            "generation_method": getattr(labeler, "generation_method", labeler.name)}
    memo: dict = {}
    # A cached label whose held-out examples or scorer settings changed keeps its label and is rescored.
    for i, record in enumerate(records):
        if record is None:
            continue
        request = requests[i]
        held = heldout.get(request.centroid_id)
        if held is not None and record.metadata.get("scoring_key") != scoring_key(scorer_config, held):
            components, usage = score_label(Draft(record.label, record.explanation), held, scorer_config, memo)
            records[i] = dataclasses.replace(
                record, **headline(components), scores={**components, "n_shown": len(request.examples)},
                metadata={**record.metadata, "scoring_key": scoring_key(scorer_config, held)})
            cache.put(records[i])
            stats["rescored"] += 1
            for name in USAGE:
                stats[name] += usage[name]
    if sees_all and misses:
        batches = [(misses, _timed_label(labeler, list(requests), stats))]
    else:
        batches = ((batch, None) for batch in (misses[s:s + batch_size] for s in range(0, len(misses), batch_size)))

    def finish(i: int, draft: Draft) -> None:
        request = requests[i]
        started = time.perf_counter()
        components, usage = score_label(draft, heldout[request.centroid_id], scorer_config, memo)
        stats["scoring_seconds"] += time.perf_counter() - started
        for name in USAGE:
            stats[name] += usage[name]
        # A fallback's label is kept and shown, but under a key no lookup matches: the next run
        # asks the LLM again instead of keeping the stand-in for good.
        fallback = bool(draft.usage.get("fallback"))
        record = CentroidExplanation(
            centroid_id=request.centroid_id, label=draft.label, explanation=draft.explanation,
            **headline(components), scores={**components, "n_shown": len(request.examples)},
            top_k_examples=[e.text for e in request.examples],
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            metadata={**base, "cache_key": keys[i] + (":fallback" if fallback else ""), "usage": dict(draft.usage),
                      "scoring_key": scoring_key(scorer_config, heldout[request.centroid_id]),
                      **({"fallback": True} if fallback else {}),
                      **({"node_id": request.node_id, "parent_label": request.parent_label} if request.node_id else {})})
        cache.put(record)
        records[i] = record
        stats["new_labels"] += 1
        stats["fallbacks"] += int(fallback)

    for batch, all_drafts in batches:
        try:
            drafts = ([all_drafts[i] for i in batch] if all_drafts is not None
                      else _timed_label(labeler, [requests[i] for i in batch], stats))
        except Exception as error:
            # A labeler that failed on some requests may hand back the others (LabelingFailed.drafts): keep them.
            for i, draft in zip(batch, getattr(error, "drafts", None) or []):
                if draft is not None:
                    finish(i, draft)
            raise
        if len(drafts) != len(batch):
            raise ValueError(f"labeler {labeler.name!r} returned {len(drafts)} drafts for {len(batch)} requests")
        for i, draft in zip(batch, drafts):
            finish(i, draft)
    # Each label's permutation null: scored on the other clusters' held-out sets (cheap scorers only).
    nulled = with_permutation_nulls(records, heldout, scorer_config, memo=memo)  # type: ignore[arg-type]
    for i, record in enumerate(nulled):
        if json.dumps(record.scores.get("null")) != json.dumps(records[i].scores.get("null")):  # type: ignore[union-attr]
            cache.put(record)
        records[i] = record
    spent = stats["labeling_seconds"] + stats["scoring_seconds"]
    stats["seconds_per_cluster"] = spent / stats["new_labels"] if stats["new_labels"] else 0.0
    return records, stats  # type: ignore[return-value]


def _timed_label(labeler: Labeler, requests: list[LabelRequest], stats: dict) -> list[Draft]:
    started = time.perf_counter()
    drafts = labeler.label(requests)
    stats["labeling_seconds"] += time.perf_counter() - started
    for draft in drafts:
        for name in USAGE:
            stats[name] += int(draft.usage.get(name, 0))
    return drafts


def median_confidence(records: Sequence[CentroidExplanation], measure: str = "confidence") -> float:
    """The median of the records' `measure` ('confidence' or 'specificity'), nan if none is finite."""
    values = np.array([getattr(r, measure) for r in records], float)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")
