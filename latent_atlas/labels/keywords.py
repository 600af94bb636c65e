"""The offline labeler: class-based TF-IDF (BERTopic's c-TF-IDF) over the shown windows.

Each cluster is one class; its "document" is its shown windows concatenated, every token counted
with the cluster's membership of it (a token the cluster does not fire on counts 0). Then

    W(x, c) = tf(x, c) / sum_x' tf(x', c)  *  log(1 + A / f_x)

with A the average total weight per class and f_x the weight of term x over all classes, as in
BERTopic's ClassTfidfTransformer (which truncates A to an int; with fractional weights we do not).
The label is the top terms; the IDF needs every class, so this labeler wants all requests at once
(`sees_all_requests`).

Document-tree nodes (requests whose unit is 'document') are about topics, not tokens: their terms
are lower-cased words, English stop words (scikit-learn's list, as BERTopic's CountVectorizer
uses), punctuation and numbers left out, or "the" and line breaks would name every topic.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

from latent_atlas.labels.records import Draft, Example, LabelRequest


def term_of(token: str) -> str:
    """The term a token counts as: stripped of surrounding whitespace; a whitespace token shows as its escape."""
    stripped = token.strip()
    return stripped if stripped else token.encode("unicode_escape").decode() or "<empty>"


def is_punctuation(term: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PSZ" or ch == "\\" for ch in term)


_WORD = re.compile(r"[^\W\d_][\w'-]*")


def topic_term(token: str) -> str | None:
    """A document token's term: the lower-cased word, or None for stop words, punctuation and numbers."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    word = token.strip().lower()
    if not word or is_punctuation(word) or any(ch.isdigit() for ch in word) or word in ENGLISH_STOP_WORDS:
        return None
    return word


def class_term_weights(requests: Sequence[LabelRequest], window: int | None = None
                       ) -> tuple[list[str], np.ndarray]:
    """(terms, counts [n_requests, n_terms]): membership-weighted term counts of each request's
    windows, counting tokens within `window` of the example token (all of them when None); a
    document excerpt counts each of its words (`topic_term`) once."""
    index: dict[str, int] = {}
    cells: list[tuple[int, int, float]] = []
    for r, request in enumerate(requests):
        for example in request.examples:
            if example.excerpt:  # whole words of the text: subword tokens ('T', 'ory') are not topics
                terms = [(t, 1.0) for t in map(topic_term, _WORD.findall(example.text)) if t is not None]
            else:
                lo = 0 if window is None else max(0, example.position - window)
                hi = len(example.tokens) if window is None else example.position + window + 1
                terms = [(term_of(token), float(m)) for token, m in
                         zip(example.tokens[lo:hi], example.memberships[lo:hi]) if m > 0]
            cells += [(r, index.setdefault(term, len(index)), m) for term, m in terms]
    counts = np.zeros((len(requests), len(index)))
    for r, t, m in cells:
        counts[r, t] += m
    return list(index), counts


def ctfidf(counts: np.ndarray) -> np.ndarray:
    """c-TF-IDF weights [classes, terms] of membership-weighted counts [classes, terms]."""
    counts = np.asarray(counts, np.float64)
    frequency = counts.sum(axis=0)  # f_x
    average = counts.sum(axis=1).mean() if counts.size else 0.0  # A
    idf = np.log(1.0 + average / np.where(frequency > 0, frequency, np.inf))
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.where(totals > 0, totals, 1.0) * idf


def _quoted(terms: list[str]) -> str:
    return ", ".join(f"'{t}'" for t in terms)


class KeywordLabeler:
    """Labels clusters with their top c-TF-IDF terms; no model, deterministic."""

    name = "keywords"
    model = ""
    prompt_version = "ctfidf-4"  # -4: the token most marked windows are about names its cluster; equal labels told apart
    sees_all_requests = True  # the IDF is over every class: label all requests in one call

    def __init__(self, top_terms: int = 3, window: int | None = None, min_relative_weight: float = 0.2):
        if top_terms < 1:
            raise ValueError(f"top_terms must be >= 1, got {top_terms}")
        if not 0 <= min_relative_weight <= 1:
            raise ValueError(f"min_relative_weight must be in [0, 1], got {min_relative_weight}")
        self.top_terms = top_terms
        self.window = window  # tokens each side of the example token counted; None: the whole window
        # A term names the cluster only with at least this share of the top term's weight: a rare
        # context word with a trace of membership must not outrank the token the cluster fires on.
        self.min_relative_weight = min_relative_weight

    def label(self, requests: Sequence[LabelRequest]) -> list[Draft]:
        terms, counts = class_term_weights(requests, self.window)
        weights = ctfidf(counts)
        return told_apart(requests, [self._draft(request, terms, weights[r]) for r, request in enumerate(requests)])

    def _draft(self, request: LabelRequest, terms: list[str], weights: np.ndarray) -> Draft:
        order = np.argsort(-weights, kind="stable")
        order = [t for t in order if weights[t] > 0 and weights[t] >= self.min_relative_weight * weights[order[0]]]
        # Punctuation names a cluster only when no word weighs enough to ...
        words = [t for t in order if not is_punctuation(terms[t])] or order
        top = [terms[t] for t in words[: self.top_terms]]
        # ... unless it is the token the cluster fires on: a token carrying most of the marked
        # tokens' membership names the cluster, with other marked tokens c-TF-IDF ranks high.
        marked = _marked_shares(request.examples) if request.unit == "token" else {}
        dominant = max(marked, key=marked.get, default=None)
        if dominant is not None and marked[dominant] >= 0.5:
            top = [dominant] + [terms[t] for t in order if terms[t] != dominant
                                and marked.get(terms[t], 0.0) >= 0.1][: self.top_terms - 1]
        if not top:
            return Draft("no active tokens", "The shown windows carry no membership of this cluster.",
                         {"requests": 0})
        if request.unit == "document":
            return Draft(" / ".join(top), f"Documents about {_quoted(top)} (c-TF-IDF over the openings of its "
                         f"{len(request.examples)} most central documents).", {"requests": 0})
        covered = _activating_share(request.examples, set(top))
        explanation = (f"Fires on {_quoted(top)} (c-TF-IDF over its {len(request.examples)} top windows, whose "
                       f"marked tokens are {100 * covered:.0f}% these; the held-out scores say how far this holds "
                       "beyond them).")
        shown = [f"'{t}'" if is_punctuation(t) else t for t in top]
        return Draft(" / ".join(shown), explanation, {"requests": 0})


def _marked_shares(examples: Sequence[Example]) -> dict[str, float]:
    """Each term's share of the example tokens' membership (the tokens the windows are about)."""
    total = sum(e.membership for e in examples)
    shares: dict[str, float] = {}
    for e in examples:
        term = term_of(e.tokens[e.position])
        shares[term] = shares.get(term, 0.0) + (e.membership / total if total > 0 else 0.0)
    return shares


def _activating_share(examples: Sequence[Example], terms: set[str]) -> float:
    """Share of the example tokens' membership carried by tokens whose term is in `terms`."""
    total = sum(e.membership for e in examples)
    hit = sum(e.membership for e in examples if term_of(e.tokens[e.position]) in terms)
    return hit / total if total > 0 else 0.0


def _preceding(request: LabelRequest) -> LabelRequest:
    """The request with each example moved to the token before its own (unmarked where there is none)."""
    moved = [Example(e.tokens, [1.0 if i == e.position - 1 else 0.0 for i in range(len(e.tokens))], e.position - 1,
                     e.cluster) for e in request.examples if e.position > 0 and not e.excerpt]
    return LabelRequest(request.centroid_id, moved)


def told_apart(requests: Sequence[LabelRequest], drafts: list[Draft]) -> list[Draft]:
    """Clusters that got the same label (five clusters of '\\n' are the same token in other
    contexts) are told apart by what precedes their tokens: c-TF-IDF over the preceding tokens of
    the clusters sharing the label, the top one added as "after «x»" (not quoted: the claim stays
    the token itself, `claims.claimed_tokens`)."""
    groups: dict[str, list[int]] = {}
    for i, (request, draft) in enumerate(zip(requests, drafts)):
        if request.unit == "token" and request.examples:
            groups.setdefault(draft.label, []).append(i)
    out = list(drafts)
    for label, members in groups.items():
        if len(members) < 2:
            continue
        terms, counts = class_term_weights([_preceding(requests[i]) for i in members], window=0)
        weights = ctfidf(counts)
        for row, i in enumerate(members):
            if not terms or weights[row].max() <= 0:
                continue
            before = terms[int(np.argmax(weights[row]))]
            out[i] = Draft(f"{label} after «{before}»", f"{drafts[i].explanation} One of {len(members)} clusters "
                           f"labelled {label}: its tokens follow «{before}» most distinctively.", drafts[i].usage)
    return out
