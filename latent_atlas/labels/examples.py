"""Examples a labeler is shown (the `exemplars` table's top windows) and the held-out examples its
label is scored on (the merged statistics' held-out reservoir, read back in context).

Shown examples come from fitted documents, held-out examples from documents held out whole
(`statistics.py`), so the two never share a token; `check_disjoint` asserts it anyway, because a
score computed on shown examples would measure memory, not the label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from latent_atlas.analysis.exemplars import Decode, fill_context
from latent_atlas.analysis.intervention import VectorSample
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.labels.records import Example

OpenChunk = Callable[[str], tuple[np.ndarray, SparseMemberships]]  # chunk id -> (token ids [n_seq, L], memberships)


@dataclass(frozen=True)
class HeldoutConfig:
    """How many held-out examples each cluster's label is scored on."""

    max_positives: int = 64
    """Held-out members (tokens whose top cluster is this one) kept per cluster (seeded sample)."""
    max_negatives: int = 64
    """Random negatives (held-out tokens of other clusters) and, separately, hard negatives
    (held-out tokens of its most similar clusters) kept per cluster (seeded samples)."""
    window: int = 10
    """Context tokens on each side of a held-out token."""
    seed: int = 0
    """Seed of the negative and positive samples."""


@dataclass
class HeldoutExamples:
    """One cluster's held-out examples: members, random negatives, hard negatives."""

    positives: list[Example] = field(default_factory=list)
    random_negatives: list[Example] = field(default_factory=list)
    hard_negatives: list[Example] = field(default_factory=list)

    def all(self) -> list[Example]:
        return [*self.positives, *self.random_negatives, *self.hard_negatives]


def example_from_row(row: dict) -> Example:
    """An Example from one `fill_context` row (an exemplars table row)."""
    return Example(tokens=list(row["context_tokens"]), memberships=[float(m) for m in row["context_memberships"]],
                   position=int(row["position"]) - int(row["context_start"]), cluster=int(row["cluster"]),
                   chunk_id=str(row["chunk_id"]), sequence=int(row["sequence"]), token_position=int(row["position"]))


def shown_examples(exemplars: pa.Table, top_k: int = 10, kind: str = "top_k") -> dict[int, list[Example]]:
    """Per cluster, its `top_k` exemplars of `kind` in rank order (highest membership first for top_k)."""
    missing = {"cluster", "kind", "rank", "chunk_id", "sequence", "position", "context_start", "context_tokens",
               "context_memberships"} - set(exemplars.column_names)
    if missing:
        raise ValueError(f"exemplars table lacks columns {sorted(missing)}: rematerialize exemplars")
    kinds = exemplars.column("kind").to_numpy(zero_copy_only=False)
    rows = exemplars.filter(pa.array(kinds == kind)).to_pylist()
    out: dict[int, list[Example]] = {}
    for row in sorted(rows, key=lambda r: (r["cluster"], r.get("band", -1), r["rank"])):
        examples = out.setdefault(int(row["cluster"]), [])
        if len(examples) < top_k:
            examples.append(example_from_row(row))
    return out


def _seeded_pick(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if rows.size <= n else np.sort(rng.choice(rows, n, replace=False))


def heldout_examples(heldout: VectorSample, hard_negatives: np.ndarray, open_chunk: OpenChunk, decode: Decode,
                     config: HeldoutConfig = HeldoutConfig()) -> dict[int, HeldoutExamples]:
    """Per cluster c (0..k-1): positives = held-out tokens whose stratum (top cluster) is c; random
    negatives = held-out tokens of any other stratum; hard negatives = tokens of the clusters in
    `hard_negatives[c]` ([k, h], InterventionVectors.hard_negatives). Every held-out token is read
    back in context once (`fill_context`, memberships of its own top cluster)."""
    k = int(hard_negatives.shape[0])
    stratum = np.asarray(heldout.stratum, np.int64)
    if stratum.size and stratum.max() > k:
        raise ValueError(f"held-out reservoir names stratum {stratum.max()} but intervention vectors have {k} "
                         "clusters: rematerialize intervention_vectors with the same merged_statistics")
    rng = np.random.default_rng(config.seed)
    picks = {}
    for c in range(k):
        picks[c] = (_seeded_pick(np.flatnonzero(stratum == c), config.max_positives, rng),
                    _seeded_pick(np.flatnonzero(stratum != c), config.max_negatives, rng),
                    _seeded_pick(np.flatnonzero(np.isin(stratum, hard_negatives[c])), config.max_negatives, rng))
    needed = np.unique(np.concatenate([p for triple in picks.values() for p in triple] or [np.array([], np.int64)]))
    examples = _in_context(heldout, needed.astype(np.int64), stratum, open_chunk, decode, config.window)
    return {c: HeldoutExamples(*([examples[i] for i in part] for part in picks[c])) for c in range(k)}


def _in_context(heldout: VectorSample, rows: np.ndarray, stratum: np.ndarray, open_chunk: OpenChunk,
                decode: Decode, window: int) -> dict[int, Example]:
    if rows.size == 0:
        return {}
    selected = {"cluster": stratum[rows].astype(np.int32), "chunk_id": np.asarray(heldout.chunk_id)[rows].astype(str),
                "sequence": np.asarray(heldout.sequence)[rows], "position": np.asarray(heldout.position)[rows]}
    table = fill_context(selected, open_chunk, decode, window)
    documents = np.asarray(heldout.group)[rows].astype(np.uint64) >> np.uint64(1)  # fits a signed 64-bit int
    return {int(r): dataclasses.replace(example_from_row(row), document=int(doc))
            for r, row, doc in zip(rows, table.to_pylist(), documents)}


def check_disjoint(shown: dict[int, list[Example]], heldout: dict[int, HeldoutExamples]) -> None:
    """Raise ValueError when any held-out example is also a shown example (by Example.key())."""
    shown_keys = {e.key() for examples in shown.values() for e in examples}
    overlap = sorted({e.key() for h in heldout.values() for e in h.all()} & shown_keys)
    if overlap:
        raise ValueError(f"{len(overlap)} held-out examples are also shown to the labeler (first: {overlap[:3]}): "
                         "scores would measure memory; rematerialize exemplars and merged_statistics together")
