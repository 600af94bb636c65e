"""Token-level analysis of any sentence against a finished atlas (the user's `analyze_sentence`).

The sentence goes through the pipeline's own path: tokenized as one document
(`corpus.tokenize_documents`), run to the atlas's layer (`models.extract_activations`), whitened
(`Whitening.transform_chunk`, fp16 as the stored chunks are) and given soft memberships
(`SequentialSoftClustering.soft_memberships`). Every real, non-special token is analysed, the
first positions of the window included: the corpus leaves those out of the atlas by default
(window starts behave like text starts), so a row's `position` says where it sat in the window.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.corpus import ChunkPlan, tokenize_documents
from latent_atlas.data.documents import Document
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.models import extract_activations, load_model
from latent_atlas.data.paths import atlas_home, model_cache_dir
from latent_atlas.data.whitening import Whitening
from latent_atlas.labels.cache import LabelCache

DEFAULT_SEQUENCE_LENGTH = 128  # CorpusResource's default, for homes without a text manifest
META_PROMPT_VERSION = "meta-v1"


@dataclass
class TokenAnalysis:
    """One token of an analysed sentence and the clusters it belongs to."""

    position: int  # index in the window the model read (special tokens counted), as exemplars' positions are
    token: str  # as the tokenizer decodes it alone, leading space included
    token_id: int
    clusters: list[int]  # the top clusters by membership, best first (fewer when the rest fall under the threshold)
    memberships: list[float]  # membership of each of `clusters`, in (0, 1]
    label: str  # the top cluster's label ('' when it has no label file)
    confidence: float  # the label's measured confidence (NaN without a label)
    confidence_low: float  # 95% interval of `confidence` (NaN without a label)
    confidence_high: float
    explanation: str  # the label's one- or two-sentence explanation
    window: int = 0  # window of the sentence (a sentence longer than the atlas's sequences is cut as documents are)
    specificity: float = math.nan  # the label against the nearest clusters' members (NaN without a label)
    scorer: str = ""  # the scorer behind confidence and specificity ('token_claim', 'detection', 'embedding')
    assigned: bool = True  # False: the largest membership is barely above uniform, so no cluster (nor label) is claimed


@dataclass
class ValidationExample:
    """One top-activating token of a cluster in its context window (the user's ValidationExample)."""

    text: str  # the context window's text
    tokens: list[int]  # its token ids
    token_strings: list[str]
    activation: float  # the cluster's membership of the token
    token_position: int  # index of the token in `tokens`
    chunk_id: str = ""
    sequence: int = -1
    position: int = -1  # position of the token within its sequence


class SentenceAnalyzer:
    """Analyses sentences against the atlas in `home` (default $ATLAS_HOME or ./.atlas).

    Loads once, all from `home`: tensors/whitening.npz (Whitening), tensors/centroids.npz
    (SequentialSoftClustering), the model and layer named in the first
    tensors/activations/<key>/meta.json (weights from home/models, the pipeline's model cache),
    the sequence length from manifests/<key>.json (text chunks), and the labels in
    labels/clusters/centroid_<id>.json (optional: a cluster without one shows label '' and
    confidence NaN). tables/exemplars.parquet is read on the first `get_top_k_validation_examples`.
    """

    def __init__(self, home: str | Path | None = None, device: str = "cpu", top: int = 2, min_over_uniform: float = 4.0):
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        # A token whose largest membership is under min_over_uniform / k belongs to no cluster: a label
        # given to a near-uniform membership would name what the token is not.
        self.min_over_uniform = min_over_uniform
        self.home = Path(home).resolve() if home else atlas_home()
        self.top = top
        tensors = self.home / "tensors"
        for name in ("whitening.npz", "centroids.npz"):
            if not (tensors / name).exists():
                raise FileNotFoundError(f"{tensors / name}: not found; this ATLAS_HOME has no atlas yet "
                                        f"(run `latent-atlas demo` first)")
        self.whitening = Whitening.load(tensors / "whitening.npz")
        self.centroids = SequentialSoftClustering.load(tensors / "centroids.npz")
        # memberships are exact fp32 on any device; the fitted one may not exist on this machine
        self.centroids.config = replace(self.centroids.config, device=device)
        meta = _activation_meta(tensors / "activations")
        self.layer = int(meta["layer"])
        self.model = load_model(meta["model"], model_cache_dir(self.home), torch.device(device))
        self.sequence_length = _sequence_length(self.home / "manifests")
        self.labels = LabelCache(self.home / "labels" / "clusters").all()
        self._exemplars = None

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.cluster_centers_.shape[0])

    def analyze_sentence(self, text: str) -> list[TokenAnalysis]:
        """One row per real, non-special token of `text`, in order."""
        if not text.strip():
            raise ValueError("the sentence is empty")
        with tempfile.TemporaryDirectory() as tmp:  # a sentence is one document, read as the corpus reads files
            path = Path(tmp) / "sentence.txt"
            path.write_text(text, encoding="utf-8")
            tokens = tokenize_documents([Document("sentence", str(path))], self.model.tokenizer, self.sequence_length)
        acts = extract_activations(self.model, tokens.token_ids, tokens.model_mask, self.layer, batch_size=4)
        whitened = self.whitening.transform_chunk(DenseChunk(acts, tokens.analysis_mask, tokens.token_ids))
        windows, positions = np.nonzero(tokens.analysis_mask)  # [n] each, in reading order
        clusters, values = self.centroids.soft_memberships(whitened[windows, positions])
        rows = []
        for i, (w, p) in enumerate(zip(windows, positions)):
            kept = [(int(c), float(v)) for c, v in zip(clusters[i, : self.top], values[i, : self.top]) if c >= 0]
            token_id = int(tokens.token_ids[w, p])
            assigned = bool(kept) and kept[0][1] >= self.min_over_uniform / self.n_clusters
            label = self.labels.get(kept[0][0]) if assigned else None
            low, high = label.confidence_interval if label else (math.nan, math.nan)
            rows.append(TokenAnalysis(
                int(p), self.model.tokenizer.decode([token_id]), token_id, [c for c, _ in kept], [v for _, v in kept],
                label.label if label else "", float(label.confidence) if label else math.nan,
                float(low), float(high), label.explanation if label else "", int(w),
                float(label.specificity) if label else math.nan, label.scorer if label else "", assigned,
            ))
        return rows

    def get_top_k_validation_examples(self, centroid_id: int, k: int = 10) -> list[ValidationExample]:
        """The k tokens of the atlas corpus with the highest membership of `centroid_id`, in context,
        highest first (the exemplars table's top_k rows; fewer when the table holds fewer)."""
        if not 0 <= centroid_id < self.n_clusters:
            raise ValueError(f"centroid_id must be in 0..{self.n_clusters - 1}, got {centroid_id}")
        table = self._exemplar_table()
        rows = table.filter(pc.and_(pc.equal(table["kind"], "top_k"), pc.equal(table["cluster"], centroid_id)))
        rows = sorted(rows.to_pylist(), key=lambda r: (-r["membership"], r["rank"]))[:k]
        return [ValidationExample(
            "".join(r["context_tokens"]), list(r["context_token_ids"]), list(r["context_tokens"]), float(r["membership"]),
            r["position"] - r["context_start"], r["chunk_id"], r["sequence"], r["position"],
        ) for r in rows]

    def _exemplar_table(self):
        if self._exemplars is None:
            path = self.home / "tables" / "exemplars.parquet"
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found; materialize `exemplars` (run `latent-atlas demo`) first")
            self._exemplars = pq.read_table(path)
        return self._exemplars

    def interpret_with_meta_model(self, sentence: str, client: Any = None, rows: Sequence[TokenAnalysis] | None = None,
                                  max_tokens: int = 256) -> str:
        """A short interpretation of how the model processes `sentence`, grounded in its token table.

        client: a chat client (`complete_many(prompts, max_tokens)` -> objects with `.text` and `.error`,
        e.g. latent_atlas.labels.llm's LocalChatClient); without one, a deterministic summary of the
        table, marked as such. rows: the sentence's analysis, if already computed.
        """
        rows = list(rows) if rows is not None else self.analyze_sentence(sentence)
        if client is None:
            return deterministic_summary(rows)
        reply = client.complete_many([meta_prompt(sentence, rows)], max_tokens)[0]
        if getattr(reply, "error", None) or not (reply.text or "").strip():
            raise RuntimeError(f"meta-interpretation: the LLM gave no answer ({reply.error or 'empty completion'})")
        return reply.text.strip()


def _activation_meta(root: Path) -> dict:
    metas = sorted(root.glob("*/meta.json"))
    if not metas:
        raise FileNotFoundError(f"{root}: no activation chunks; run `latent-atlas demo` first")
    meta = json.loads(metas[0].read_text())
    if "model" not in meta or "layer" not in meta:
        raise ChunkError(metas[0], "names no model and layer (an atlas of NPZ chunks has no model to run a sentence "
                                   "through)")
    return meta


def _sequence_length(manifests: Path) -> int:
    for path in sorted(manifests.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("kind", "text") == "text":
            return ChunkPlan.from_json(path.read_text()).sequence_length
    return DEFAULT_SEQUENCE_LENGTH


def display_token(token: str) -> str:
    """A token as a table cell: control characters escaped ('\\n'), whitespace-only tokens quoted."""
    shown = "".join(repr(ch)[1:-1] if (not ch.isprintable() and ch != " ") else ch for ch in token)
    return repr(token) if not token.strip() else shown


def _number(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(rows: Sequence[TokenAnalysis]) -> str:
    """The user's layout: Pos, Token, C-ID, Conf, Act, Explanation, one line per token.

    C-ID, Conf and Act are the top cluster's; the Explanation cell holds its label and names the
    runner-up clusters with their membership ('+ 17 0.21').
    """
    cells = [display_token(r.token) for r in rows]
    width = min(24, max([len(c) for c in cells] + [11])) + 2
    cells = [c if len(c) <= 24 else c[:23] + "…" for c in cells]
    lines = [f"{'Pos':<5}{'Token':<{width}}{'C-ID':<6}{'Conf':<6}{'Spec':<6}{'Act':<8}Explanation", "-" * 84]
    for row, cell in zip(rows, cells):
        cluster = str(row.clusters[0]) if row.clusters and row.assigned else "-"
        act = row.memberships[0] if row.memberships else math.nan
        others = "  ".join(f"+ {c} {v:.2f}" for c, v in zip(row.clusters[1:], row.memberships[1:]))
        named = (row.label or "(no label)") if row.assigned else "(no cluster: membership near uniform)"
        text = "  ".join(part for part in (named, others if row.assigned else "") if part)
        lines.append(f"{row.position:<5}{cell:<{width}}{cluster:<6}{_number(row.confidence, 2):<6}"
                     f"{_number(row.specificity, 2):<6}{_number(act, 3):<8}{text}")
    return "\n".join(lines)


def to_json(rows: Sequence[TokenAnalysis]) -> str:
    """The rows as a JSON list; NaN (no label) becomes null."""
    def clean(value):
        return None if isinstance(value, float) and math.isnan(value) else value

    return json.dumps([{k: clean(v) for k, v in asdict(r).items()} for r in rows], indent=1, ensure_ascii=False)


def _clusters_in_order(rows: Sequence[TokenAnalysis]) -> dict[int, list[TokenAnalysis]]:
    groups: dict[int, list[TokenAnalysis]] = {}
    for row in rows:
        if row.clusters and row.assigned:
            groups.setdefault(row.clusters[0], []).append(row)
    return groups


def _cluster_line(cluster: int, members: list[TokenAnalysis]) -> str:
    first = members[0]
    tokens = ", ".join(repr(r.token) for r in members)
    mean = sum(r.memberships[0] for r in members) / len(members)
    if first.label:
        named = (f"'{first.label}' (confidence {_number(first.confidence, 2)}, "
                 f"95% [{_number(first.confidence_low, 2)}, {_number(first.confidence_high, 2)}]; "
                 f"specificity {_number(first.specificity, 2)}; scorer {first.scorer or 'none'})")
    else:
        named = "(no label yet)"
    return f"- cluster {cluster} {named}: {tokens}; mean membership {mean:.2f}"


def deterministic_summary(rows: Sequence[TokenAnalysis]) -> str:
    """Which clusters cover which tokens, with labels and confidences; built from the table, no LLM."""
    groups = _clusters_in_order(rows)
    lines = [f"Summary built from the token table (deterministic, not an LLM's interpretation): "
             f"{len(rows)} tokens fall into {len(groups)} clusters."]
    lines += [_cluster_line(c, members) for c, members in groups.items()]
    weak = [r for r in rows if r.assigned and r.memberships and r.memberships[0] < 0.5]
    if weak:
        lines.append("Split between clusters (top membership < 0.5): " + ", ".join(repr(r.token) for r in weak))
    unassigned = [r for r in rows if not r.assigned]
    if unassigned:
        lines.append("In no cluster (largest membership near uniform): " + ", ".join(repr(r.token) for r in unassigned))
    unlabeled = sum(1 for r in rows if r.assigned and not r.label)
    if unlabeled:
        lines.append(f"{unlabeled} of {len(rows)} tokens sit in clusters without a label file.")
    return "\n".join(lines)


def meta_prompt(sentence: str, rows: Sequence[TokenAnalysis]) -> list[dict]:
    """Chat messages asking for a short interpretation grounded in the per-token table."""
    groups = "\n".join(_cluster_line(c, members) for c, members in _clusters_in_order(rows).items())
    system = ("You interpret how a language model processes text, from the clusters its internal activations fall "
              "into. Use only the evidence given; say when a cluster has no label or a low confidence.")
    user = (f"Sentence: {sentence!r}\n\nPer-token analysis (C-ID = cluster, Conf = measured confidence of the "
            f"cluster's label, Act = membership):\n{table(rows)}\n\nClusters and the tokens they cover:\n{groups}\n\n"
            f"In 3-5 sentences, describe how the model groups the tokens of this sentence and what that suggests "
            f"about how it processes it.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
