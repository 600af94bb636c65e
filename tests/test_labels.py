"""Labeling core: c-TF-IDF against a brute-force recomputation, the keyword labeler on planted
clusters, the MiniLM embedding scorer on real text, the confidence rule, and the cache (hits,
force_regenerate, partial progress after a failure)."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from latent_atlas.labels.cache import LabelCache, cache_key
from latent_atlas.labels.claims import claimed_tokens
from latent_atlas.labels.examples import HeldoutExamples, check_disjoint
from latent_atlas.labels.keywords import KeywordLabeler, class_term_weights, ctfidf, term_of
from latent_atlas.labels.pipeline import label_clusters
from latent_atlas.labels.records import CentroidExplanation, Draft, Example, LabelRequest
from latent_atlas.labels.measures import MeasureConfig, separation
from latent_atlas.labels.scorers import ScorerConfig, embedding_scores, headline, measure

WEEKDAYS = [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday"]
MONTHS = [" January", " March", " April", " June", " October"]
FILLER = " the report said that on the day a new plan was shown to the board".split(" ")[1:]


def window(token: str, cluster: int, i: int, strength: float = 1.0, sequence: int = 0) -> Example:
    """A real-looking window with `token` at its centre; the cluster's membership peaks there."""
    left, right = [" " + w for w in FILLER[i % 5: i % 5 + 4]], [" " + w for w in FILLER[(i + 3) % 6: (i + 3) % 6 + 4]]
    tokens = left + [token] + right
    memberships = [0.05] * 4 + [strength] + [0.05] * 4
    return Example(tokens, memberships, 4, cluster, chunk_id="c0", sequence=sequence, token_position=i)


def planted_requests() -> list[LabelRequest]:
    days = [window(WEEKDAYS[i % 5], 0, i, sequence=0) for i in range(10)]
    months = [window(MONTHS[i % 5], 1, i, sequence=1) for i in range(10)]
    commas = [window(",", 2, i, sequence=2) for i in range(10)]
    return [LabelRequest(0, days), LabelRequest(1, months), LabelRequest(2, commas)]


def test_ctfidf_matches_brute_force_formula():
    requests = planted_requests()
    terms, counts = class_term_weights(requests)
    weights = ctfidf(counts)
    # brute force: W(x, c) = tf(x, c) / sum tf(., c) * log(1 + A / f_x), tf weighted by membership
    tf = [Counter() for _ in requests]
    for c, request in enumerate(requests):
        for e in request.examples:
            for token, m in zip(e.tokens, e.memberships):
                tf[c][term_of(token)] += m
    f = Counter()
    for counter in tf:
        f.update(counter)
    average = sum(sum(counter.values()) for counter in tf) / len(tf)
    for c, counter in enumerate(tf):
        total = sum(counter.values())
        for t, term in enumerate(terms):
            expected = counter[term] / total * math.log(1 + average / f[term])
            assert weights[c, t] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_keyword_labeler_names_planted_clusters():
    drafts = KeywordLabeler().label(planted_requests())
    assert any(day.strip() in drafts[0].label for day in WEEKDAYS), drafts[0]
    assert any(month.strip() in drafts[1].label for month in MONTHS), drafts[1]
    assert not any(day.strip() in drafts[1].label for day in WEEKDAYS)
    # a cluster that only fires on punctuation is named by it, quoted
    assert drafts[2].label == "','", drafts[2]
    # filler words carry a trace of membership in every cluster: they never name one
    assert not set(drafts[0].label.split(" / ")) & set(FILLER)
    assert "60%" in drafts[0].explanation  # 3 of the 5 weekdays, equally often


def test_keyword_label_names_the_token_the_cluster_fires_on_over_a_context_word():
    """A full-stop cluster whose windows all hold the same context word ('example' with a trace of
    membership) is named by the full stop its members are, not by the word (c-TF-IDF alone would
    pick the word, as punctuation gives way to words)."""
    stops = []
    for i in range(10):
        e = window(".", 0, i, sequence=0)
        stops.append(Example(e.tokens[:3] + [" example"] + e.tokens[4:], [0.0, 0.0, 0.0, 0.3, 0.9, 0, 0, 0, 0], 4, 0,
                             "c0", 0, i))
    drafts = KeywordLabeler().label([LabelRequest(0, stops), *planted_requests()[:2]])
    assert drafts[0].label.startswith("'.'") and claimed_tokens(drafts[0].label, drafts[0].explanation) == {"."}
    assert "100%" in drafts[0].explanation


def test_keyword_labels_that_collide_are_told_apart_by_what_precedes():
    """Three clusters of the same token in other contexts get three labels, each naming what comes
    before it, and each label still claims only the token itself."""
    def newline_after(word, cluster):
        out = []
        for i in range(10):
            e = window("\n", cluster, i, sequence=cluster)
            memberships = [0.0] * 4 + [1.0] + [0.0] * 4  # only the token itself is a member
            out.append(Example(e.tokens[:3] + [word] + e.tokens[4:], memberships, 4, cluster, "c0", cluster, i))
        return out
    requests = [LabelRequest(c, newline_after(word, c)) for c, word in enumerate([".", " Sport", " 2024"])]
    drafts = KeywordLabeler().label(requests + planted_requests()[:1])
    labels = [d.label for d in drafts[:3]]
    assert len(set(labels)) == 3 and all(label.startswith("\\n after «") for label in labels), labels
    assert [label.split("«")[1].rstrip("»") for label in labels] == [".", "Sport", "2024"]
    assert all(claimed_tokens(d.label, d.explanation) == {"\\n"} for d in drafts[:3])
    assert "after" not in drafts[3].label  # a label no other cluster shares is left as it was


SPORT = ["The striker scored twice as the home side won the football match",
         "Their goalkeeper saved a penalty in the second half of the cup tie",
         "The coach praised his players after the league victory on Saturday",
         "Fans cheered as the team lifted the trophy at the stadium",
         "The midfielder was sent off before the final whistle",
         "A late goal gave the visitors a draw in the derby",
         "The tennis champion won the final in straight sets",
         "The club signed a new defender ahead of the season"]
FINANCE = ["The central bank raised interest rates to curb inflation",
           "Shares fell sharply as investors worried about company profits",
           "The firm reported quarterly earnings above analysts' forecasts",
           "Bond yields rose after the government announced more borrowing",
           "The pound weakened against the dollar on currency markets",
           "Oil prices pushed the stock market lower on Tuesday",
           "The bank cut its growth forecast for the economy",
           "Investors sold shares in the troubled retailer"]


WEATHER = ["Heavy rain is expected across the north on Friday",
           "Forecasters warned of strong winds and storms along the coast",
           "Temperatures will drop below freezing overnight with snow on the hills",
           "A week of sunshine brought the warmest spring days on record",
           "Flood warnings were issued after days of torrential downpours",
           "Fog and drizzle will clear by the afternoon in most places",
           "The heatwave is set to continue with highs of thirty degrees",
           "Thunderstorms and hail are forecast for the weekend"]


def sentence_examples(sentences: list[str], cluster: int) -> list[Example]:
    out = []
    for s, sentence in enumerate(sentences):
        tokens = [w if i == 0 else " " + w for i, w in enumerate(sentence.split())]
        out.append(Example(tokens, [1.0] * len(tokens), len(tokens) // 2, cluster, "held", s, len(tokens) // 2))
    return out


def test_embedding_scorer_ranks_the_right_label_over_wrong_ones():
    """The embedding scorer counts only if it ranks a right claim over wrong ones: each of three
    topics' held-out windows scored with every topic's label, the right label first every time."""
    topics = {"football and sport": SPORT, "banks and interest rates": FINANCE, "the weather and rain": WEATHER}
    held = {name: sentence_examples(sentences, i) for i, (name, sentences) in enumerate(topics.items())}
    config = ScorerConfig(score_window=None, n_bootstrap=300)
    for name in topics:
        others = [e for other in topics if other != name for e in held[other]]
        heldout = HeldoutExamples(held[name], others, others)
        scored = {label: measure(embedding_scores(label, heldout, config), heldout, config, binary=False)["confidence"]
                  for label in topics}
        right = scored[name]
        assert right["value"] > 0.8 and right["low"] <= right["value"] <= right["high"], (name, scored)
        assert all(right["low"] > scored[wrong]["high"] for wrong in topics if wrong != name), (name, scored)
        assert right["n_pos"] == 8 and right["n_neg"] == 16


def test_separation_interval_covers_chance_and_a_planted_effect():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        docs = np.arange(200)
        chance = separation(rng.normal(size=200), rng.normal(size=200), docs, docs + 200, MeasureConfig(500, seed=seed))
        assert chance["low"] < 0 < chance["high"] and abs(chance["value"]) < 0.2
        strong = separation(rng.normal(3, 1, 200), rng.normal(size=200), docs, docs + 200, MeasureConfig(500, seed=seed))
        assert 0.9 < strong["low"] <= strong["value"] <= strong["high"] <= 1.0


def test_headline_prefers_an_exact_claim_and_reads_below_chance_as_zero():
    def part(confidence, specificity):
        return {"confidence": {"value": confidence, "low": confidence - 0.1, "high": confidence + 0.1},
                "specificity": {"value": specificity, "low": specificity - 0.1, "high": specificity + 0.1}}
    both = headline({"embedding": part(0.3, 0.1), "token_claim": part(0.95, -0.4)})
    assert both["scorer"] == "token_claim" and both["confidence"] == 0.95 and both["specificity"] == 0.0
    assert both["confidence_interval"] == pytest.approx((0.85, 1.0))
    judged = headline({"embedding": part(0.3, 0.1), "detection": part(0.6, 0.2)})
    assert judged["scorer"] == "detection" and judged["specificity"] == pytest.approx(0.2)
    assert headline({"embedding": part(float("nan"), 0.1)})["scorer"] == "" and math.isnan(headline({})["confidence"])


class CountingLabeler:
    """A real labeler (wraps another) that counts the requests it is asked to label."""

    def __init__(self, inner, fail_at: int | None = None):
        self.inner, self.fail_at, self.requests, self.calls = inner, fail_at, 0, 0
        self.name, self.model, self.prompt_version = inner.name, inner.model, inner.prompt_version
        self.sees_all_requests = getattr(inner, "sees_all_requests", False)

    def label(self, requests):
        self.calls += 1
        for _ in requests:
            self.requests += 1
            if self.fail_at is not None and self.requests == self.fail_at:
                raise RuntimeError(f"request {self.requests} failed")
        return self.inner.label(requests)


class ActivatingTokenLabeler:
    """Labels each cluster on its own by its most frequent activating token (no cross-cluster state)."""

    name, model, prompt_version = "activating-token", "", "1"

    def label(self, requests):
        drafts = []
        for r in requests:
            top = Counter(term_of(e.tokens[e.position]) for e in r.examples).most_common(1)[0][0]
            drafts.append(Draft(top, f"The token {top!r}."))
        return drafts


def many_requests(n: int = 6) -> list[LabelRequest]:
    return [LabelRequest(c, [window(WEEKDAYS[(c + i) % 5], c, i, sequence=c) for i in range(4)]) for c in range(n)]


NO_SCORES = ScorerConfig(embedding=False)


def test_cache_hit_makes_no_calls_and_force_regenerate_redoes_them(tmp_path):
    requests = many_requests()
    held = {r.centroid_id: HeldoutExamples() for r in requests}
    cache = LabelCache(tmp_path / "labels")
    for inner in (KeywordLabeler(), ActivatingTokenLabeler()):
        first = CountingLabeler(inner)
        records, stats = label_clusters(requests, held, first, cache, NO_SCORES, {"layer": 3})
        assert first.requests == len(requests) and stats["new_labels"] == len(requests)
        assert {p.name for p in cache.directory.iterdir()} == {f"centroid_{c}.json" for c in range(len(requests))}
        again = CountingLabeler(inner)
        cached, stats = label_clusters(requests, held, again, cache, NO_SCORES, {"layer": 3})
        assert again.calls == 0 and stats["cache_hits"] == len(requests) and stats["new_labels"] == 0
        assert [r.to_json() for r in cached] == [r.to_json() for r in records]
        forced = CountingLabeler(inner)
        label_clusters(requests, held, forced, cache, NO_SCORES, {"layer": 3}, force_regenerate=True)
        assert forced.requests == len(requests)
    record = CentroidExplanation.from_json(cache.path(0).read_text())
    assert record.metadata["layer"] == 3 and record.metadata["labeler"] == "activating-token"
    assert record.metadata["cache_key"] == cache_key("activating-token", "", "1", requests[0].examples)
    # a changed example changes the key: that cluster is relabeled, the others are not
    changed = list(requests)
    changed[1] = LabelRequest(1, [window(" Sunday", 1, i, sequence=1) for i in range(4)])
    counting = CountingLabeler(ActivatingTokenLabeler())
    records, stats = label_clusters(changed, held, counting, cache, NO_SCORES)
    assert counting.requests == 1 and records[1].label == "Sunday" and stats["cache_hits"] == len(requests) - 1


def test_failure_half_way_keeps_finished_labels_and_rerun_does_the_rest(tmp_path):
    requests = many_requests()
    held = {r.centroid_id: HeldoutExamples() for r in requests}
    cache = LabelCache(tmp_path / "labels")
    failing = CountingLabeler(ActivatingTokenLabeler(), fail_at=3)
    with pytest.raises(RuntimeError, match="request 3 failed"):
        label_clusters(requests, held, failing, cache, NO_SCORES, batch_size=2)
    assert sorted(cache.all()) == [0, 1]
    rerun = CountingLabeler(ActivatingTokenLabeler())
    records, stats = label_clusters(requests, held, rerun, cache, NO_SCORES, batch_size=2)
    assert rerun.requests == len(requests) - 2 and stats["cache_hits"] == 2
    assert sorted(cache.all()) == list(range(len(requests))) and all(r.label for r in records)
    assert not list(cache.directory.glob(".*tmp*"))  # atomic writes leave no temp files


def test_scored_records_carry_components_and_counts(tmp_path):
    sport, finance = sentence_examples(SPORT, 0), sentence_examples(FINANCE, 1)
    shown = [LabelRequest(0, [window(" football", 0, i, sequence=9) for i in range(3)])]
    held = {0: HeldoutExamples(sport, finance, finance[:4])}
    records, stats = label_clusters(shown, held, ActivatingTokenLabeler(), LabelCache(tmp_path), ScorerConfig())
    scores = records[0].scores
    assert set(scores) >= {"embedding", "n_shown", "null"} and scores["n_shown"] == 3
    assert scores["embedding"]["specificity"]["n_neg"] == 4 and scores["embedding"]["confidence"]["n_pos"] == 8
    low, high = records[0].confidence_interval
    assert 0 <= low <= records[0].confidence <= high <= 1
    assert stats["seconds_per_cluster"] > 0
    json.loads(records[0].to_json())
    # unchanged: a cache hit, not rescored; new held-out examples: the label is kept and rescored
    counting = CountingLabeler(ActivatingTokenLabeler())
    _, stats = label_clusters(shown, held, counting, LabelCache(tmp_path), ScorerConfig())
    assert stats["cache_hits"] == 1 and stats["rescored"] == 0 and counting.calls == 0
    fewer = {0: HeldoutExamples(sport[:5], finance, finance[:4])}
    again, stats = label_clusters(shown, fewer, counting, LabelCache(tmp_path), ScorerConfig())
    assert stats["rescored"] == 1 and counting.calls == 0 and again[0].label == records[0].label
    assert again[0].scores["embedding"]["confidence"]["n_pos"] == 5
    assert LabelCache(tmp_path).read(0).scores["embedding"]["specificity"]["n_pos"] == 5


def test_heldout_and_shown_overlap_is_an_error():
    shown = {0: [window(" Monday", 0, 1)]}
    check_disjoint(shown, {0: HeldoutExamples([window(" Monday", 0, 2)])})
    with pytest.raises(ValueError, match="also shown"):
        check_disjoint(shown, {1: HeldoutExamples([], [window(" Tuesday", 1, 1)])})


class PartlyFailed(RuntimeError):
    def __init__(self, drafts):
        super().__init__("some labels failed")
        self.drafts = drafts


class UnreliableLabeler(ActivatingTokenLabeler):
    """Fails on the clusters in `broken`; with `fallback` it labels them some other way instead,
    marking the draft as a fallback's (as LLMLabeler does), else it raises with the rest."""

    def __init__(self, broken: set[int], fallback: bool):
        self.broken, self.fallback = broken, fallback

    def label(self, requests):
        drafts = super().label(requests)
        out = [Draft("stand-in", "A fallback label.", {"fallback": 1}) if r.centroid_id in self.broken and self.fallback
               else None if r.centroid_id in self.broken else d for r, d in zip(requests, drafts)]
        if None in out:
            raise PartlyFailed(out)
        return out


def test_labels_finished_before_a_failure_in_the_same_batch_are_kept(tmp_path):
    requests = many_requests(4)
    held = {r.centroid_id: HeldoutExamples() for r in requests}
    cache = LabelCache(tmp_path)
    with pytest.raises(PartlyFailed):
        label_clusters(requests, held, UnreliableLabeler({1}, fallback=False), cache, NO_SCORES, batch_size=8)
    assert sorted(cache.all()) == [0, 2, 3]
    # a fallback's label is written but not trusted as a cache hit: the next run asks again
    records, stats = label_clusters(requests, held, UnreliableLabeler({1}, fallback=True), cache, NO_SCORES)
    assert stats["cache_hits"] == 3 and stats["fallbacks"] == 1 and records[1].label == "stand-in"
    assert cache.all()[1].metadata["fallback"] is True
    counting = CountingLabeler(ActivatingTokenLabeler())
    records, stats = label_clusters(requests, held, counting, cache, NO_SCORES)
    assert counting.requests == 1 and records[1].label != "stand-in" and stats["cache_hits"] == 3
