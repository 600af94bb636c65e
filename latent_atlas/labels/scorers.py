"""How far to trust a label, measured on held-out examples the labeler never saw (after delphi).

Every scorer turns the label into one score per held-out example, and `measures.separation`
turns members' scores against negatives' into two measures with document-resampled intervals:
`confidence` (members vs random held-out tokens) and `specificity` (members vs the nearest
clusters' held-out members). A scorer measures what a label can claim:

- `token_claim`: a label that quotes tokens ("'.'", keyword labels) is a predicate over tokens,
  true when the example's own token is one it names (`claims.py`); scored as balanced accuracy.
- `detection` (an LLM judge, `llm.judge_windows`): does the window's marked token fit the label?
  And `fuzzing`: the same members' windows with a wrong token marked: does the judge tell the
  right token from its neighbours? (delphi's detection and fuzzing scorers.)
- `embedding`: MiniLM cosine of each window to the label's own words (the claim, not an
  explanation's boilerplate); the ranking is checked against wrong labels by the permutation null.

The headline (`headline`) is the first scorer in `PREFERENCE` that could score the label: an exact
predicate where the label makes one, then the judge, then the embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from latent_atlas.labels.claims import claim_holds, claimed_tokens
from latent_atlas.labels.examples import HeldoutExamples
from latent_atlas.labels.measures import MeasureConfig, separation
from latent_atlas.labels.records import Draft, Example

PREFERENCE = ("token_claim", "detection", "embedding")


@dataclass(frozen=True)
class ScorerConfig:
    """What scores a label."""

    token_claims: bool = True
    """Score labels that quote tokens as a predicate over the held-out tokens."""
    embedding: bool = True
    """Score with MiniLM embeddings of the label (offline)."""
    n_bootstrap: int = 400
    """Document resamples behind every interval."""
    level: float = 0.95
    """Coverage of the intervals."""
    seed: int = 0
    """Seed of the resampling and of the fuzzing's wrong marks."""
    batch_size: int = 64
    """Windows embedded per forward pass."""
    score_window: int | None = 1
    """Tokens each side of the example token in the text that is embedded (None: the whole window):
    a sentence embedding of a long window says what the passage is about, not which token fires."""
    detection_client: Any = None
    """A chat client (latent_atlas.labels.llm) to run the detection and fuzzing judge with; None: not run."""
    detection_examples: int = 20
    """Held-out windows of each kind (members, random, hard negatives) shown to the judge."""

    def measures(self) -> MeasureConfig:
        return MeasureConfig(self.n_bootstrap, self.level, self.seed)


def _documents(examples: Sequence[Example]) -> np.ndarray:
    return np.array([e.document_key() for e in examples], np.int64)


def measure(scores: dict[str, np.ndarray], heldout: HeldoutExamples, config: ScorerConfig, binary: bool) -> dict:
    """{confidence, specificity}: members' scores against random and against hard negatives'."""
    pos = _documents(heldout.positives)
    return {"confidence": separation(scores["positives"], scores["random"], pos, _documents(heldout.random_negatives),
                                     config.measures(), binary),
            "specificity": separation(scores["positives"], scores["hard"], pos, _documents(heldout.hard_negatives),
                                      config.measures(), binary)}


def _parts(heldout: HeldoutExamples) -> dict[str, Sequence[Example]]:
    return {"positives": heldout.positives, "random": heldout.random_negatives, "hard": heldout.hard_negatives}


def token_claim_scores(claims: frozenset[str], heldout: HeldoutExamples) -> dict[str, np.ndarray]:
    """1.0 where the claim holds for an example's token, per part (positives, random, hard)."""
    return {name: np.array([claim_holds(claims, e) for e in part], np.float64) for name, part in _parts(heldout).items()}


@lru_cache(maxsize=1)
def _minilm():
    """MiniLM (tokenizer, model) from the installed package, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    from latent_atlas.data.models import MINILM, model_directory
    from latent_atlas.data.paths import model_cache_dir

    directory = model_directory(MINILM, model_cache_dir())
    return AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit sentence embeddings [n, 384]: mean of the last hidden state over real tokens."""
    import torch

    tokenizer, model = _minilm()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # [b, L, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


def window_text(example: Example, window: int | None) -> str:
    """The example's text, cut to `window` tokens each side of its token (all of it when None)."""
    if window is None or example.excerpt:
        return example.text
    return "".join(example.tokens[max(0, example.position - window): example.position + window + 1])


def embedding_scores(claim: str | np.ndarray, heldout: HeldoutExamples, config: ScorerConfig,
                     memo: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Cosine of each held-out window's embedding to the claim's (its text, or its embedding),
    per part; `memo` (text -> embedding) carries window embeddings across labels (negatives recur)."""
    memo = {} if memo is None else memo
    texts = {name: [window_text(e, config.score_window) for e in part] for name, part in _parts(heldout).items()}
    new = sorted({t for part in texts.values() for t in part} - set(memo))
    memo.update(zip(new, embed(new, config.batch_size)))
    query = embed([claim], config.batch_size)[0] if isinstance(claim, str) else claim
    return {name: np.array([memo[t] @ query for t in part], np.float64) for name, part in texts.items()}


def claim_text(draft: Draft) -> str:
    """What the embedding scorer embeds: the label itself; the keyword labeler's explanation is a
    template that would add the same words to every label."""
    return draft.label


def judge_scores(client: Any, draft: Draft, heldout: HeldoutExamples, config: ScorerConfig
                 ) -> tuple[dict[str, dict], dict[str, int]]:
    """The LLM judge: `detection` (members vs random and hard negatives, marked at their own token)
    and `fuzzing` (the same members marked at a wrong token of their window, membership below the
    marking threshold): does the judge accept the right token and refuse a wrong one?"""
    from latent_atlas.labels.llm import judge_windows  # optional: needs the LLM stage
    from latent_atlas.labels.prompts import MARK_THRESHOLD

    n = config.detection_examples
    shown = HeldoutExamples(heldout.positives[:n], heldout.random_negatives[:n], heldout.hard_negatives[:n])
    rng = np.random.default_rng(config.seed)
    wrong = []
    for e in shown.positives:
        others = [i for i, m in enumerate(e.memberships) if i != e.position and m < MARK_THRESHOLD
                  and e.tokens[i].strip()]
        if others:
            wrong.append(dataclasses.replace(e, position=int(rng.choice(others))))
    windows = [*shown.positives, *shown.random_negatives, *shown.hard_negatives, *wrong]
    text = f"{draft.label}. {draft.explanation}"
    answers, usage = judge_windows(client, text, windows, seed=config.seed)
    bounds = np.cumsum([0, len(shown.positives), len(shown.random_negatives), len(shown.hard_negatives), len(wrong)])
    part = lambda i: (answers[bounds[i]:bounds[i + 1]], windows[bounds[i]:bounds[i + 1]])  # noqa: E731

    def readable(i: int) -> tuple[np.ndarray, np.ndarray]:
        said, examples = part(i)
        keep = [j for j, a in enumerate(said) if a is not None]
        return np.array([float(said[j]) for j in keep]), _documents([examples[j] for j in keep])

    (pos, pos_doc), (rand, rand_doc), (hard, hard_doc), (miss, miss_doc) = (readable(i) for i in range(4))
    measures = config.measures()
    unreadable = sum(a is None for a in answers)
    detection = {"confidence": separation(pos, rand, pos_doc, rand_doc, measures, binary=True),
                 "specificity": separation(pos, hard, pos_doc, hard_doc, measures, binary=True),
                 "unreadable": unreadable}
    fuzzing = {"confidence": separation(pos, miss, pos_doc, miss_doc, measures, binary=True)}
    return {"detection": detection, "fuzzing": fuzzing}, usage


def score_label(draft: Draft, heldout: HeldoutExamples, config: ScorerConfig, memo: dict | None = None
                ) -> tuple[dict[str, Any], dict[str, int]]:
    """Every scorer that applies, as {scorer: {confidence, specificity, ...}}, and the LLM usage."""
    components: dict[str, Any] = {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    claims = claimed_tokens(draft.label, draft.explanation)
    if config.token_claims and claims and not any(e.excerpt for e in heldout.positives):
        components["token_claim"] = {**measure(token_claim_scores(claims, heldout), heldout, config, binary=True),
                                     "claims": sorted(claims)}
    if config.embedding:
        components["embedding"] = measure(embedding_scores(claim_text(draft), heldout, config, memo), heldout, config,
                                          binary=False)
    if config.detection_client is not None:
        judged, spent = judge_scores(config.detection_client, draft, heldout, config)
        components.update(judged)
        for name in usage:
            usage[name] += int(spent.get(name, 0))
    return components, usage


def _clipped(measure: dict) -> tuple[float, tuple[float, float]]:
    """A measure as the record shows it: in [0, 1], below chance read as 0."""
    clip = lambda x: float(np.clip(x, 0.0, 1.0)) if np.isfinite(x) else float("nan")  # noqa: E731
    return clip(measure["value"]), (clip(measure["low"]), clip(measure["high"]))


def headline(components: dict[str, Any]) -> dict[str, Any]:
    """The record's confidence and specificity (each in [0, 1] with its interval) and the scorer
    they come from: the first of `PREFERENCE` with a finite confidence; nan and '' if none."""
    for name in PREFERENCE:
        part = components.get(name)
        if part and np.isfinite(part["confidence"]["value"]):
            confidence, confidence_interval = _clipped(part["confidence"])
            specificity, specificity_interval = _clipped(part["specificity"])
            return {"confidence": confidence, "confidence_interval": confidence_interval, "specificity": specificity,
                    "specificity_interval": specificity_interval, "scorer": name}
    nan = float("nan")
    return {"confidence": nan, "confidence_interval": (nan, nan), "specificity": nan,
            "specificity_interval": (nan, nan), "scorer": ""}
