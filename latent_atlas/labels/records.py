"""What a label is, and the examples and requests labelers work on (the interface every stage shares)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Example:
    """One token in its context window, as shown to a labeler or used to score a label."""

    tokens: list[str]  # the window's token strings, in order
    memberships: list[float]  # this cluster's membership of each token of the window ([0, 1])
    position: int  # index in `tokens` of the token the example is about
    cluster: int  # the cluster the example belongs to (for a negative: the cluster it came from)
    chunk_id: str = ""
    sequence: int = -1  # within the chunk; with chunk_id and the window start it names the token
    token_position: int = -1  # position of the token within its sequence
    excerpt: bool = False  # a document's opening, about the whole text (document-tree nodes): shown unmarked
    document: int = -1  # key of the document the token comes from (-1: unknown); intervals resample documents

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def membership(self) -> float:
        return float(self.memberships[self.position])

    def document_key(self) -> int:
        """The document, the unit resampled for intervals: `document`, else the sequence it lies in."""
        if self.document >= 0:
            return self.document
        return int.from_bytes(hashlib.blake2b(f"{self.chunk_id}/{self.sequence}".encode(), digest_size=7).digest(), "big")

    def key(self) -> tuple[str, int, int]:
        """Identity of the token: held-out and shown examples are disjoint by this key."""
        return (self.chunk_id, self.sequence, self.token_position)


@dataclass(frozen=True)
class LabelRequest:
    """What a labeler is asked to name: a cluster (or tree node) and the examples shown to it."""

    centroid_id: int  # cluster id, or the node's index in its tree for node labels
    examples: list[Example]  # top-activating windows shown to the labeler
    parent_label: str = ""  # a tree node's parent's label (empty for clusters and the root's children)
    node_id: str = ""  # tree node id (e.g. '0.2.1'); empty for clusters
    unit: str = "token"  # what the examples are about: 'token' (a marked token in its window) or 'document' (an excerpt)


@dataclass(frozen=True)
class Draft:
    """A labeler's answer, before it is scored."""

    label: str  # 2-5 words
    explanation: str  # one or two sentences
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, requests


class Labeler(Protocol):
    """Names clusters from their examples. `name` and `model` go into the cache key and metadata."""

    name: str  # 'keywords', 'local-llm', 'openai'
    model: str  # the generating model ('' for keywords)
    prompt_version: str

    def label(self, requests: Sequence[LabelRequest]) -> list[Draft]:
        """One Draft per request, in order. Labelers that see all requests at once (c-TF-IDF needs
        every cluster's windows) get them in one call; LLM labelers run them concurrently."""
        ...


@dataclass
class CentroidExplanation:
    """The user's record of a labeled cluster (seed 003), with the evidence behind its confidence."""

    centroid_id: int
    label: str
    explanation: str
    confidence: float  # in [0, 1]: members vs random held-out tokens (0 = chance or below, 1 = perfect)
    confidence_interval: tuple[float, float]  # 95%, resampling held-out documents
    scores: dict[str, Any]  # every scorer's measures: value, interval, counts behind them; the permutation null
    top_k_examples: list[str]  # the windows shown to the labeler
    timestamp: str  # ISO 8601
    metadata: dict[str, Any]  # layer, activation_type, labeler, model, prompt_version, generation_method, cache_key
    specificity: float = float("nan")  # in [0, 1]: members vs the nearest clusters' held-out members
    specificity_interval: tuple[float, float] = (float("nan"), float("nan"))  # 95%, resampling documents
    scorer: str = ""  # the scorer behind confidence and specificity: 'token_claim', 'detection', 'embedding'

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CentroidExplanation":
        values = json.loads(text)
        values["confidence_interval"] = tuple(values["confidence_interval"])
        if "specificity_interval" in values:
            values["specificity_interval"] = tuple(values["specificity_interval"])
        return cls(**values)
