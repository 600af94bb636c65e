"""How far to trust a label, measured on held-out examples the labeler never saw (after delphi).

- `embedding_score`: MiniLM sentence embeddings (mean-pooled last hidden state, L2-normalised);
  each held-out window is scored by its cosine to the label + explanation; ROC-AUC of members
  against negatives, with a seeded stratified bootstrap 95% interval. Scored twice: against random
  negatives (tokens of other clusters) and against hard negatives (tokens of the most similar
  clusters), since nearly every label beats random tokens.
- a detection score (the LLM says which windows fit; balanced accuracy) comes from
  `latent_atlas.labels.llm.detection_score` and is one more component.
- `confidence`: see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from latent_atlas.labels.records import Example

# Components that measure a label against hard negatives: confidence rests on these.
HARD_COMPONENTS = ("embedding_hard", "detection")


@dataclass(frozen=True)
class ScorerConfig:
    """What scores a label."""

    embedding: bool = True
    """Score with MiniLM embeddings (offline) against random and hard negatives."""
    n_bootstrap: int = 200
    """Bootstrap resamples behind every interval."""
    level: float = 0.95
    """Coverage of the intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    batch_size: int = 64
    """Windows embedded per forward pass."""
    score_window: int | None = 1
    """Tokens each side of the example token in the text that is embedded (None: the whole
    window). A sentence embedding of a long window says what the passage is about, not which
    token fires; on the demo atlas (64 clusters, keyword labels, 64 held-out members and hard
    negatives each) the median confidence was 0.23 / 0.13 / 0.06 for 0 / 1 / 3 tokens each side.
    1 keeps the token dominant and a trace of context for explanations that name one."""
    detection_client: Any = None
    """A chat client (latent_atlas.labels.llm) to run the detection scorer with; None: not run."""
    detection_examples: int = 10
    """Held-out windows of each kind (members, random, hard negatives) shown to the detection scorer."""


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


def bootstrap_auroc(pos: np.ndarray, neg: np.ndarray, n_bootstrap: int, level: float, seed: int
                    ) -> tuple[float, float, float]:
    """(AUROC, low, high): AUROC by sklearn; interval from resampling members and negatives
    separately (see `resampled_aurocs`)."""
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan"), float("nan")
    value = float(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))
    rng = np.random.default_rng(seed)
    pos_counts = rng.multinomial(pos.size, np.full(pos.size, 1 / pos.size), n_bootstrap)  # [B, n_pos]
    neg_counts = rng.multinomial(neg.size, np.full(neg.size, 1 / neg.size), n_bootstrap)  # [B, n_neg]
    samples = resampled_aurocs(pos, neg, pos_counts, neg_counts)
    tail = (1 - level) / 2
    return value, float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))


def resampled_aurocs(pos: np.ndarray, neg: np.ndarray, pos_counts: np.ndarray, neg_counts: np.ndarray) -> np.ndarray:
    """AUROC of each resample [B], the scores pos [n_pos] and neg [n_neg] counted pos_counts [B, n_pos]
    and neg_counts [B, n_neg] times: the count-weighted mean of the pairwise win matrix (ties 1/2).
    Equals sklearn's roc_auc_score with the counts as sample weights (tests/test_library_equivalents.py)
    in one matrix product for all B, where a call per resample costs ~100x more."""
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [n_pos, n_neg]
    return np.einsum("bi,ij,bj->b", pos_counts, wins, neg_counts) / (pos_counts.sum(1) * neg_counts.sum(1))


def window_text(example: Example, window: int | None) -> str:
    """The example's text, cut to `window` tokens each side of its token (all of it when None)."""
    if window is None:
        return example.text
    return "".join(example.tokens[max(0, example.position - window): example.position + window + 1])


def embedding_scores(explanation: str, positives: Sequence[Example], negatives: dict[str, Sequence[Example]],
                     config: ScorerConfig = ScorerConfig(), memo: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """`embedding_score` against several negative sets, embedding every window once; `memo`
    (text -> embedding) carries window embeddings across clusters (negatives recur)."""
    memo = {} if memo is None else memo
    text = lambda e: window_text(e, config.score_window)  # noqa: E731
    windows = [text(e) for e in positives] + [text(e) for part in negatives.values() for e in part]
    new = sorted(set(windows) - set(memo))
    memo.update(zip(new, embed(new, config.batch_size)))
    query = embed([explanation], config.batch_size)[0]
    similarity = lambda examples: np.array([memo[text(e)] @ query for e in examples], np.float64)  # noqa: E731
    pos = similarity(positives)
    out = {}
    for name, part in negatives.items():
        value, low, high = bootstrap_auroc(pos, similarity(part), config.n_bootstrap, config.level, config.seed)
        out[name] = {"value": value, "low": low, "high": high, "n_pos": len(positives), "n_neg": len(part)}
    return out


def embedding_score(explanation: str, positives: Sequence[Example], negatives: Sequence[Example],
                    config: ScorerConfig = ScorerConfig()) -> dict:
    """ROC-AUC of the windows' cosine to `explanation`, members against negatives, with interval:
    {value, low, high, n_pos, n_neg}."""
    return embedding_scores(explanation, positives, {"negatives": negatives}, config)["negatives"]


def rescale(score: float) -> float:
    """AUROC or balanced accuracy -> [0, 1] with chance at 0 and perfect at 1."""
    return float(np.clip(2.0 * (score - 0.5), 0.0, 1.0))


def confidence(components: dict[str, dict]) -> tuple[float, tuple[float, float]]:
    """Confidence in [0, 1] and its interval, from the score components.

    Rule: the components measured against hard negatives (`HARD_COMPONENTS`: the embedding AUROC
    against members of the most similar clusters, and the LLM detection balanced accuracy when it
    ran) are each rescaled by clip(2 (s - 0.5), 0, 1), so chance is 0 and perfect is 1, and
    averaged; the interval is the same average of their rescaled bounds. When no hard component
    could be computed (a cluster with no similar cluster's held-out tokens) the random-negative
    AUROC stands in. Components without a finite value are skipped; none at all gives nan."""
    usable = lambda name: name in components and np.isfinite(components[name].get("value", np.nan))  # noqa: E731
    names = [n for n in HARD_COMPONENTS if usable(n)] or [n for n in ("embedding_random",) if usable(n)]
    if not names:
        return float("nan"), (float("nan"), float("nan"))
    mean = lambda key: float(np.mean([rescale(components[n][key]) for n in names]))  # noqa: E731
    return mean("value"), (mean("low"), mean("high"))
