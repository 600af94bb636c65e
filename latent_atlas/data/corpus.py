"""Text corpora -> documents (`documents`) -> fixed-length token sequences, planned into chunks.

A chunk is a run of whole documents holding about `sequences_per_chunk` sequences. Its manifest
(JSON) lists the documents by reference (file, row), so a chunk partition is self-describing and
reproducible. Sequences never cross documents: each document is cut into windows of
`sequence_length` tokens (the tokenizer's own special tokens around each window), the last one
padded.

A document longer than one chunk is split at window boundaries into pieces (a character range of
its text each), so a 10 MB document becomes many chunks of the configured size, not one.

Passes: registering a source reads each file once, streaming its rows (`file_rows`), and tokenizes
each document once (`DocumentMeasure`, a batch of texts per tokenizer call); the token ids are
stored with the chunk's manifest, so materializing a chunk reads no text file and tokenizes nothing.
Only a piece of a long document is tokenized again, from its own text, when its chunk is
materialized: a cut can fall inside a word, where the piece's tokens differ from the whole text's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from latent_atlas.data.documents import Document, listed_rows, read_text
from latent_atlas.data.errors import ChunkError


@dataclass(frozen=True)
class SequenceLayout:
    """How a tokenizer frames a window: special tokens before and after, and the pad id."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    special_ids: frozenset[int]

    @classmethod
    def of(cls, tokenizer) -> "SequenceLayout":
        framed = tokenizer("a", add_special_tokens=True)["input_ids"]
        core = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(framed)) if framed[i : i + len(core)] == core)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(tuple(framed[:at]), tuple(framed[at + len(core) :]), int(pad), frozenset(tokenizer.all_special_ids))


def document_windows(ids: list[int], layout: SequenceLayout, sequence_length: int) -> list[list[int]]:
    """Cut one document's token ids into framed windows of at most `sequence_length` tokens."""
    body = sequence_length - len(layout.prefix) - len(layout.suffix)
    if body <= 0:
        raise ValueError(f"sequence_length {sequence_length} leaves no room beside the special tokens")
    return [list(layout.prefix) + ids[i : i + body] + list(layout.suffix) for i in range(0, len(ids), body)]


@dataclass
class TokenChunk:
    """Fixed-length token sequences of one chunk, one row per sequence."""

    token_ids: np.ndarray  # [n_seq, seq_len] int32, padded with pad_id
    model_mask: np.ndarray  # [n_seq, seq_len] bool: real tokens (the model attends to them)
    analysis_mask: np.ndarray  # [n_seq, seq_len] bool: real and not special (what we analyse)
    doc_ids: list[str]
    categories: list[str]
    windows: list[int]  # index of the window within its document

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "sequence": pa.array(np.arange(len(self.doc_ids), dtype=np.int32)),
                "doc_id": pa.array(self.doc_ids, pa.string()),
                "category": pa.array(self.categories, pa.string()),
                "window": pa.array(self.windows, pa.int32()),
                "n_tokens": pa.array(self.model_mask.sum(1).astype(np.int32)),
                "token_ids": pa.array(list(self.token_ids), pa.list_(pa.int32())),
                "analysis_mask": pa.array(list(self.analysis_mask), pa.list_(pa.bool_())),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> "TokenChunk":
        token_ids = np.stack(table.column("token_ids").to_numpy(zero_copy_only=False)).astype(np.int32)
        n_tokens = table.column("n_tokens").to_numpy()
        model_mask = np.arange(token_ids.shape[1])[None, :] < n_tokens[:, None]
        analysis_mask = np.stack(table.column("analysis_mask").to_numpy(zero_copy_only=False)).astype(bool)
        return cls(
            token_ids, model_mask, analysis_mask,
            table.column("doc_id").to_pylist(), table.column("category").to_pylist(),
            table.column("window").to_pylist(),
        )


def tokenize_documents(docs: Iterable[Document], tokenizer, sequence_length: int, skip_first: int = 0,
                       token_ids: list[np.ndarray | None] | None = None) -> TokenChunk:
    """Tokenize documents into padded windows with doc id and category per sequence.

    skip_first: the first positions of every window are left out of the analysis (the model still
    reads them): a window cut out of a document starts with no context, and its first activations
    behave like the start of a text whatever the token (window-start clusters).
    token_ids: each document's token ids as registration stored them (`manifests.stored_token_ids`);
    a document without them (None) is read, each file once, and tokenized here.
    """
    if skip_first < 0 or skip_first >= sequence_length:
        raise ValueError(f"skip_first must be in [0, sequence_length={sequence_length}), got {skip_first}")
    docs = list(docs)
    layout = SequenceLayout.of(tokenizer)
    ids_of: list = list(token_ids) if token_ids is not None else [None] * len(docs)
    missing = [i for i, ids in enumerate(ids_of) if ids is None]
    if missing:
        texts = _texts_of([docs[i] for i in missing])
        for i, ids in zip(missing, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            ids_of[i] = ids
    rows, doc_ids, categories, windows = [], [], [], []
    for doc, ids in zip(docs, ids_of):
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        for w, window in enumerate(document_windows(ids, layout, sequence_length)):
            rows.append(window)
            doc_ids.append(doc.doc_id)
            categories.append(doc.category)
            windows.append(doc.first_window + w)
    token_ids = np.full((len(rows), sequence_length), layout.pad_id, np.int32)
    model_mask = np.zeros((len(rows), sequence_length), bool)
    for i, row in enumerate(rows):
        token_ids[i, : len(row)] = row
        model_mask[i, : len(row)] = True
    analysis_mask = model_mask & ~np.isin(token_ids, list(layout.special_ids))
    analysis_mask[:, :skip_first] = False
    return TokenChunk(token_ids, model_mask, analysis_mask, doc_ids, categories, windows)


def _texts_of(docs: list[Document]) -> list[str]:
    """The documents' texts, read a file at a time (so each file is parsed once, however many files)."""
    texts = [""] * len(docs)
    for i in sorted(range(len(docs)), key=lambda i: docs[i].path):
        texts[i] = read_text(docs[i])
    return texts


@dataclass
class MeasuredDocument:
    """A document as registration tokenized it, the one time it is tokenized whole: its token ids, or
    for a document longer than a chunk the character start of each token (it is planned into pieces,
    and each piece is tokenized from its own text when its chunk is materialized)."""

    doc: Document
    n_ids: int = 0
    ids: np.ndarray | None = None  # [n_ids] int32; None for a long document or an unreadable one
    starts: np.ndarray | None = None  # [n_ids] int64 character offsets; long documents only
    error: ChunkError | None = None  # the document could not be read: refused when planned


class DocumentMeasure:
    """Tokenizes documents for planning, a batch of texts per tokenizer call (ids equal those of one
    call per text), keeping what the plan and the chunks need of each."""

    BATCH_DOCUMENTS = 256
    BATCH_CHARACTERS = 1 << 22

    def __init__(self, tokenizer, sequence_length: int, sequences_per_chunk: int):
        self.tokenizer = tokenizer
        self.layout = SequenceLayout.of(tokenizer)
        self.body = sequence_length - len(self.layout.prefix) - len(self.layout.suffix)
        if self.body <= 0:
            raise ValueError(f"sequence_length {sequence_length} leaves no room beside the special tokens")
        self.sequences_per_chunk = sequences_per_chunk

    def __call__(self, rows: Iterable[tuple[Document, str | ChunkError]]) -> Iterator[MeasuredDocument]:
        """Each row's measurement, in order."""
        pending: list[tuple[Document, str | ChunkError]] = []
        characters = 0
        for doc, text in rows:
            pending.append((doc, text))
            characters += len(text) if isinstance(text, str) else 0
            if len(pending) >= self.BATCH_DOCUMENTS or characters >= self.BATCH_CHARACTERS:
                yield from self._measure(pending)
                pending, characters = [], 0
        yield from self._measure(pending)

    def _measure(self, rows: list[tuple[Document, str | ChunkError]]) -> list[MeasuredDocument]:
        texts = [text for _, text in rows if isinstance(text, str)]
        fast = bool(self.tokenizer.is_fast)
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=fast) if texts else {}
        out, k = [], 0
        for doc, text in rows:
            if not isinstance(text, str):
                out.append(MeasuredDocument(doc, error=text))
                continue
            ids = encoded["input_ids"][k]
            if fast and -(-len(ids) // self.body) > self.sequences_per_chunk:
                starts = np.fromiter((o[0] for o in encoded["offset_mapping"][k]), np.int64, len(ids))
                out.append(MeasuredDocument(doc, len(ids), starts=starts))
            else:
                out.append(MeasuredDocument(doc, len(ids), ids=np.asarray(ids, np.int32)))
            k += 1
        return out


@dataclass
class ChunkPlan:
    """The manifest of one text chunk partition."""

    key: str
    documents: list[Document]
    n_sequences: int
    sequence_length: int
    kind: str = "text"
    model: str = ""
    corpus: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "ChunkPlan":
        data = json.loads(text)
        data["documents"] = [Document(**d) for d in data["documents"]]
        return cls(**data)


def plan_chunks(
    docs: list[Document], tokenizer, corpus: str, sequence_length: int, sequences_per_chunk: int, model: str = "",
    shuffle_seed: int | None = 0, first_index: int = 0, refused: dict[str, str] | None = None,
) -> list[ChunkPlan]:
    """Group whole documents into chunks of about `sequences_per_chunk` sequences (`plan_measured` says
    how); each file is read once and each document tokenized once."""
    measure = DocumentMeasure(tokenizer, sequence_length, sequences_per_chunk)
    by_file = sorted(range(len(docs)), key=lambda i: docs[i].path)  # each file read once, whatever the order
    rows = dict(zip(by_file, listed_rows([docs[i] for i in by_file])))
    measured = list(measure(rows[i] for i in range(len(docs))))
    return [plan for plan, _ in plan_measured(measured, measure.body, corpus, sequence_length, sequences_per_chunk,
                                              model, shuffle_seed, first_index, refused)]


def plan_measured(
    docs: list[MeasuredDocument], body: int, corpus: str, sequence_length: int, sequences_per_chunk: int,
    model: str = "", shuffle_seed: int | None = 0, first_index: int = 0, refused: dict[str, str] | None = None,
) -> list[tuple[ChunkPlan, list[np.ndarray | None]]]:
    """Group measured documents into chunks of about `sequences_per_chunk` sequences; with each plan,
    the token ids of each of its documents (None for a piece of a long document).

    Documents are shuffled first (seeded; `shuffle_seed=None` keeps their order): corpora come
    sorted (BBC by category), and a chunk of one topic makes online clustering see a sorted stream.
    Keys are `<corpus>-<first_index>`, `<corpus>-<first_index + 1>`, ..., so re-planning the same corpus
    with the same seed gives the same keys and chunks. A chunk closes once it holds
    `sequences_per_chunk` sequences, so it exceeds that by less than its last document; a document
    longer than a chunk is split at window boundaries into pieces that fill chunks exactly.
    refused: if given, a document that cannot be read is left out and its file recorded here
    (path -> problem) instead of raising, so one bad file does not stop the others.
    """
    if shuffle_seed is not None:
        docs = [docs[i] for i in np.random.default_rng([shuffle_seed, 7]).permutation(len(docs))]
    plans: list[tuple[ChunkPlan, list[np.ndarray | None]]] = []
    current: list[Document] = []
    current_ids: list[np.ndarray | None] = []
    count = 0

    def close() -> None:
        plan = ChunkPlan(f"{corpus}-{first_index + len(plans):05d}", current, count, sequence_length, model=model,
                         corpus=corpus)
        plans.append((plan, current_ids))

    for measured in docs:
        if measured.error is not None:
            if refused is None:
                raise measured.error
            refused[measured.error.path] = measured.error.problem
            continue
        n_seq = -(-measured.n_ids // body)
        done = 0
        while done < n_seq:  # an empty document has no tokens to analyse and adds nothing
            take = n_seq if measured.starts is None else min(sequences_per_chunk - count, n_seq - done)
            if take == n_seq:
                current.append(measured.doc)
                current_ids.append(measured.ids)
            else:
                current.append(_piece(measured.doc, measured.starts, body, done, done + take))
                current_ids.append(None)
            count += take
            done += take
            if count >= sequences_per_chunk:
                close()
                current, current_ids, count = [], [], 0
    if current:
        close()
    return plans


def _piece(doc: Document, starts: np.ndarray, body: int, first: int, stop: int) -> Document:
    """Windows [first, stop) of a long document, as the character range of their tokens."""
    end = int(starts[stop * body]) if stop * body < len(starts) else None
    return replace(doc, char_start=int(starts[first * body]), char_end=end, first_window=first)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids (its full definition for a fast tokenizer,
    else its class and vocabulary): stored token ids are used only with the tokenizer that made them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(
        [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.blake2b(spec.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class NpzPlan:
    """The manifest of one NPZ chunk partition: the file is the chunk."""

    key: str
    path: str
    kind: str = "npz"
    keys: dict = field(default_factory=dict)
    corpus: str = ""  # the corpus the file belongs to (its folder's name by default)
    fingerprint: str = ""  # content fingerprint, to skip the same file under another name

    def to_json(self) -> str:
        return json.dumps(asdict(self))
