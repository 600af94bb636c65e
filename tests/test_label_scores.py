"""Label scores on planted truth: a corpus whose clusters are known, labels right, wrong and of a
neighbour, scored on held-out documents (latent_atlas.labels.scorers, measures, calibration)."""

import math

import numpy as np
import pytest

from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.calibration import labels_beat_chance, with_permutation_nulls
from latent_atlas.labels.claims import claimed_tokens
from latent_atlas.labels.examples import HeldoutExamples
from latent_atlas.labels.keywords import KeywordLabeler
from latent_atlas.labels.measures import MeasureConfig, separation
from latent_atlas.labels.pipeline import label_clusters
from latent_atlas.labels.records import Draft, Example, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig, headline, score_label

FILLER = [" the", " a", " of", " and", " to", " was", " it", " he", " she", " they", " said", " new"]
SPORT = [" goal", " match", " team", " coach"]
# The planted clusters: what the member token is, and the words before it.
CLUSTERS = {
    0: ("in", [" in"], FILLER),  # a single-token detector
    1: ("period after numbers", ["."], [" 5", " 12", " 40", " 7"]),  # '.' in one context ...
    2: ("period after names", ["."], [" Smith", " Jones", " Paris", " Brown"]),  # ... and in another
    3: ("sport words", SPORT, FILLER),  # a context cluster of several tokens
    4: ("comma", [","], FILLER),
    5: ("no cluster", FILLER, FILLER),  # the background (not a cluster: random negatives only)
}
PLANTED = range(5)
NEIGHBOURS = {0: [4], 1: [2], 2: [1], 3: [0], 4: [0]}  # the hard negatives' clusters


def _window(rng, cluster: int, document: int, sequence: int) -> Example:
    _, members, before = CLUSTERS[cluster]
    tokens = [str(rng.choice(FILLER)) for _ in range(4)] + [str(rng.choice(before)), str(rng.choice(members))] + \
             [str(rng.choice(FILLER)) for _ in range(3)]
    memberships = [0.0] * len(tokens)
    memberships[5] = 0.9
    return Example(tokens, memberships, 5, cluster, chunk_id="planted", sequence=sequence, token_position=5,
                   document=document)


def planted(seed: int, per_cluster: int = 48, documents: int = 24) -> tuple[dict, dict]:
    """(shown windows, held-out examples) per cluster; held-out windows come from their own documents."""
    rng = np.random.default_rng(seed)
    examples = {c: [_window(rng, c, int(rng.integers(documents)), i) for i in range(per_cluster)] for c in PLANTED}
    shown = {c: [_window(rng, c, documents + 1, 10_000 + i) for i in range(10)] for c in PLANTED}
    # Random held-out tokens are mostly tokens of no planted cluster, as in a corpus.
    background = [_window(rng, 5, int(rng.integers(documents)), 20_000 + i) for i in range(8 * per_cluster)]
    heldout = {}
    for c in PLANTED:
        others = [e for o in PLANTED if o != c for e in examples[o]] + background
        picks = rng.choice(len(others), per_cluster, replace=False)
        heldout[c] = HeldoutExamples(examples[c], [others[i] for i in picks],
                                     [e for o in NEIGHBOURS[c] for e in examples[o]])
    return shown, heldout


CONFIG = ScorerConfig(embedding=False, n_bootstrap=200)


def test_claims_are_the_quoted_tokens():
    assert claimed_tokens("in", "Fires on 'in' (c-TF-IDF over its 10 top windows).") == {"in"}
    assert claimed_tokens("'.'", "Fires on '.', ',' (c-TF-IDF).") == {".", ","}
    assert claimed_tokens("Sentence ends", "Full stops (\".\") after names; it's not a claim.") == {"."}
    assert claimed_tokens("Sports news", "Words about matches and goals.") == frozenset()
    assert claimed_tokens("'s", "Fires on ''s', 'its' (c-TF-IDF).") == {"'s", "its"}  # quotes inside quotes
    assert claimed_tokens("'\"'", "Fires on '\"' (c-TF-IDF).") == {'"'}
    assert claimed_tokens("\\n after «.»", "Fires on '\\n' (c-TF-IDF).") == {"\\n"}  # context is no claim


@pytest.mark.parametrize("seed", range(4))
def test_planted_truth_right_wrong_and_neighbour_labels(seed):
    """The issue's planted-truth table: a right label scores confidence >= 0.9, a wrong one <= 0.1,
    a neighbour's label (the same token in another context) high confidence and low specificity."""
    _, heldout = planted(seed)
    score = lambda label, explanation, c: headline(score_label(Draft(label, explanation), heldout[c], CONFIG)[0])  # noqa: E731
    right = score("in", "Fires on 'in'.", 0)
    wrong = score("','", "Fires on ','.", 0)
    neighbour = score("'.'", "Fires on '.'.", 1)  # right token, but cluster 2 fires on '.' too
    sport = score("goal / match / team", "Fires on 'goal', 'match', 'team'.", 3)  # 3 of its 4 tokens
    assert right["scorer"] == "token_claim" and right["confidence"] >= 0.9 and right["specificity"] >= 0.9
    assert wrong["confidence"] <= 0.1
    assert neighbour["confidence"] >= 0.9 and neighbour["specificity"] <= 0.1
    assert 0.5 < sport["confidence"] < 0.9  # a partial claim scores its share, not all or nothing
    assert right["confidence_interval"][0] <= right["confidence"] <= right["confidence_interval"][1]


def test_intervals_resample_documents():
    """Tokens of one document agree with each other (a label right about one article's names is
    right about all of them): the interval over 12 such documents must be wider than the one that
    treats the same 48 tokens as independent, which a token bootstrap would give."""
    docs = np.repeat(np.arange(12), 4)
    pos = (docs < 8).astype(float)  # members of 8 of the 12 documents are hit, all or nothing
    neg = (docs >= 10).astype(float)
    config = MeasureConfig(n_bootstrap=1000)
    grouped = separation(pos, neg, docs, docs, config, binary=True)
    tokens = separation(pos, neg, np.arange(48), np.arange(48), config, binary=True)
    assert math.isclose(grouped["value"], pos.mean() - neg.mean()) and grouped["n_documents"] == 12
    assert grouped["high"] - grouped["low"] > 1.5 * (tokens["high"] - tokens["low"])


@pytest.mark.parametrize("seed", range(3))
def test_keyword_labels_beat_their_permutation_null_and_shuffled_labels_do_not(tmp_path, seed):
    shown, heldout = planted(seed)
    requests = [LabelRequest(c, shown[c]) for c in PLANTED]
    records, _ = label_clusters(requests, heldout, KeywordLabeler(), LabelCache(tmp_path / "right"), CONFIG)
    assert [r.scorer for r in records] == ["token_claim"] * len(PLANTED)
    assert records[0].label == "in" and records[0].confidence >= 0.9
    null = {r.centroid_id: r.scores["null"] for r in records}
    assert null[0]["p"] == 1 / len(PLANTED) and not null[0]["indistinguishable_from_null"]
    assert labels_beat_chance(records)[0]
    # The same labels given to the wrong clusters: each now scores below its own null.
    shifted = [Draft(records[(i + 1) % len(records)].label, records[(i + 1) % len(records)].explanation)
               for i in range(len(records))]

    class Shifted:
        name, model, prompt_version = "shifted", "", "1"

        def label(self, requests):
            return [shifted[r.centroid_id] for r in requests]

    wrong, _ = label_clusters(requests, heldout, Shifted(), LabelCache(tmp_path / "wrong"), CONFIG)
    assert sum(r.scores["null"]["indistinguishable_from_null"] for r in wrong) >= len(PLANTED) - 1
    passed, check = labels_beat_chance(wrong)
    assert not passed and check["labels_above_null"] <= 1


def test_null_is_recomputed_not_cached(tmp_path):
    shown, heldout = planted(0)
    requests = [LabelRequest(c, shown[c]) for c in PLANTED]
    first, _ = label_clusters(requests, heldout, KeywordLabeler(), LabelCache(tmp_path), CONFIG)
    again, stats = label_clusters(requests, heldout, KeywordLabeler(), LabelCache(tmp_path), CONFIG)
    assert stats["cache_hits"] == len(PLANTED) and stats["new_labels"] == 0
    assert [r.scores["null"]["p"] for r in again] == [r.scores["null"]["p"] for r in first]
    assert with_permutation_nulls(again[:1], {0: heldout[0]}, CONFIG)[0].scores["null"]["indistinguishable_from_null"]
