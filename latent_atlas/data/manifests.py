"""Chunk manifests: one JSON per partition key saying what the chunk is made of.

Registering a source writes manifests (atomically) and returns the keys to add as partitions;
materializing a partition reads its manifest. Registration is stable: registering the same source
again gives the same keys and leaves existing manifests as they are; files added later become new
chunks and never change the keys or contents of the existing ones. Keys name the corpus
(`<corpus>-<file stem>` for NPZ, `<corpus>-00000`, ... for text). Two files whose names map to one
key get a suffix from a hash of the file name, with a warning, never a silent collision; a file
whose content duplicates a registered one (by content fingerprint) is skipped with a warning; a
text file that cannot be read is refused by name and the rest registers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent_atlas.data.atomic import write_atomically
from latent_atlas.data.dimensions import corpus_dimension, forget_dimension
from latent_atlas.data.corpus import (ChunkPlan, DocumentMeasure, MeasuredDocument, NpzPlan, plan_measured,
                                      tokenizer_fingerprint)
from latent_atlas.data.documents import Document, TextSource, bbc_documents, file_stamp, text_files
from latent_atlas.data.errors import ChunkError
from latent_atlas.data.paths import atlas_home, manifests_dir
from latent_atlas.data.tables import read_npz, write_npz

_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# Bytes hashed from each end of a file for its quick fingerprint; equal quick fingerprints are
# confirmed by hashing both files whole, so a 177 GB corpus is not read twice at registration.
_QUICK_BYTES = 1 << 20
# Top-level folders of ATLAS_HOME that hold no per-chunk outputs (remove_chunk leaves them alone).
_NOT_OUTPUTS = {"dagster", "models", "manifests", "incoming"}


def safe_key(name: str) -> str:
    """A partition key made of characters safe in paths and Dagster keys."""
    return _KEY_SAFE.sub("_", name).strip("_") or "chunk"


@dataclass
class Registration:
    """What registering a source did, for the run summary and the sensor's log."""

    keys: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # keys whose manifest this registration wrote (new or changed)
    refused: dict[str, str] = field(default_factory=dict)  # file -> problem
    duplicates: dict[str, str] = field(default_factory=dict)  # skipped file -> the registered file it duplicates
    renamed: dict[str, str] = field(default_factory=dict)  # file -> key given to avoid a collision
    dimension: tuple[int, str] | None = None  # an NPZ corpus's (d, basis) as registration decided it

    def warnings(self) -> list[str]:
        return ([f"refused {path}: {problem}" for path, problem in self.refused.items()]
                + [f"skipped {path}: same content as {other}" for path, other in self.duplicates.items()]
                + [f"{path} registered as {key}: its name collides with another file's key"
                   for path, key in self.renamed.items()])


def write_manifest(key: str, text: str) -> Path:
    return write_atomically(manifests_dir() / f"{key}.json", lambda f: f.write(text.encode("utf-8")))


def remove_manifest(key: str) -> None:
    (manifests_dir() / f"{key}.json").unlink(missing_ok=True)


def _plan_of(data: dict) -> ChunkPlan | NpzPlan:
    if data["kind"] == "npz":
        return NpzPlan(**data)
    return ChunkPlan.from_json(json.dumps(data))


def read_manifest(key: str) -> ChunkPlan | NpzPlan:
    path = manifests_dir() / f"{key}.json"
    if not path.exists():
        raise FileNotFoundError(f"no manifest for chunk {key!r} at {path}; register its source first")
    return _plan_of(json.loads(path.read_text()))


def all_manifests() -> dict[str, ChunkPlan | NpzPlan]:
    """Every registered chunk of this ATLAS_HOME, by key."""
    folder = manifests_dir()
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return {p.stem: _plan_of(json.loads(p.read_text())) for p in paths}


def corpus_files(corpus: str) -> list[str]:
    """The files of every registered NPZ chunk of `corpus`."""
    return [plan.path for plan in all_manifests().values() if isinstance(plan, NpzPlan) and plan.corpus == corpus]


def source_identity(key: str) -> str:
    """What chunk `key` is made of, as it stands on disk now: for an NPZ chunk its file's size,
    modification time and quick fingerprint ('missing' once the file is gone), so a file rewritten in
    place, even to the same size, is a new source, and the corpus's recorded d (a file the corpus's d
    refused is judged again when the corpus's files decide another d); for a text chunk its manifest (which documents)
    and the size and modification time of each file they are read from (the manifest holds references,
    the text is read at materialization); 'unregistered' without a manifest."""
    try:
        plan = read_manifest(key)
    except FileNotFoundError:
        return "unregistered"
    if isinstance(plan, NpzPlan):
        path, dim = Path(plan.path), corpus_dimension(plan.corpus)
        if not path.is_file():
            return "missing"
        return f"{file_stamp(path)}:{quick_fingerprint(path)}:d={dim[0] if dim else '?'}"
    files = {d.path: file_stamp(d.path) if Path(d.path).is_file() else "missing" for d in plan.documents}
    return hashlib.blake2b(json.dumps([plan.to_json(), sorted(files.items())]).encode(), digest_size=16).hexdigest()


def quick_fingerprint(path: str | Path) -> str:
    """Size and a hash of the first and last MiB: equal for equal files, cheap for large ones."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(_QUICK_BYTES))
        if size > _QUICK_BYTES:
            f.seek(max(_QUICK_BYTES, size - _QUICK_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()}"


def same_content(a: str | Path, b: str | Path) -> bool:
    """Byte-for-byte equality, read in blocks (called only when quick fingerprints agree)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 23), fb.read(1 << 23)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def _duplicate_of(path: Path, fingerprint: str, seen: dict[str, list[str]]) -> str | None:
    """The registered file with the same content as `path`, if any; records `path` otherwise."""
    if fingerprint.startswith("0:"):
        return None  # empty files fail at their chunk stage with their own message
    for other in seen.get(fingerprint, []):
        if other != str(path) and Path(other).exists() and same_content(path, other):
            return other
    seen.setdefault(fingerprint, []).append(str(path))
    return None


def register_npz(paths: list[Path], keys: dict | None = None, corpus: str = "npz",
                 report: Registration | None = None) -> list[str]:
    """One partition per NPZ file, keyed `<corpus>-<file stem>`; the file is validated when materialized.

    A file registered before keeps its key; a duplicate of a registered file is skipped.
    """
    report = report if report is not None else Registration()
    existing = {k: p for k, p in all_manifests().items() if isinstance(p, NpzPlan)}
    key_of_path = {p.path: k for k, p in existing.items()}
    taken = set(all_manifests())
    seen: dict[str, list[str]] = {}
    for plan in existing.values():
        if plan.fingerprint:
            seen.setdefault(plan.fingerprint, []).append(plan.path)
    out = []
    for path in sorted(Path(p) for p in paths):
        resolved = str(path.resolve())
        try:
            fingerprint = quick_fingerprint(path)
        except OSError as exc:
            report.refused[str(path)] = f"cannot read: {exc.strerror}"
            continue
        key = key_of_path.get(resolved)
        if key is None:
            duplicate = _duplicate_of(Path(resolved), fingerprint, seen)
            if duplicate:
                report.duplicates[str(path)] = duplicate
                continue
            key = safe_key(f"{corpus}-{path.stem}")
            if key in taken:
                key = f"{key}-{hashlib.blake2b(path.name.encode(), digest_size=3).hexdigest()}"
                report.renamed[str(path)] = key
        taken.add(key)
        write_manifest(key, NpzPlan(key, resolved, keys=keys or {}, corpus=corpus, fingerprint=fingerprint).to_json())
        out.append(key)
    report.keys += out
    report.written += out
    return out


def _chunk_index(key: str, corpus: str) -> int:
    tail = key[len(corpus) + 1:]
    return int(tail) if tail.isdigit() else -1


def register_text(
    docs: TextSource | list[Document], tokenizer, corpus: str, sequence_length: int, sequences_per_chunk: int,
    model: str, shuffle_seed: int | None = 0, report: Registration | None = None, deduplicate: bool = False,
) -> list[str]:
    """Plan documents into chunks and write their manifests; returns the corpus's partition keys.

    Documents registered before stay in their chunks; new ones are planned into new chunks numbered
    after the corpus's last. A file that cannot be read or parsed is refused (by file) and the rest
    registers. deduplicate: skip files whose content equals another file's (user corpora; the
    built-in BBC corpus is taken as published). Each file is read once and each new document
    tokenized once; its token ids are stored beside the manifest (`stored_token_ids`).
    """
    report = report if report is not None else Registration()
    source = docs if isinstance(docs, TextSource) else TextSource(documents=list(docs))
    corpus = safe_key(corpus)
    existing = {k: p for k, p in all_manifests().items()
                if isinstance(p, ChunkPlan) and (p.corpus or k.rsplit("-", 1)[0]) == corpus}
    known = {(d.path, d.row) for plan in existing.values() for d in plan.documents}
    seen: dict[str, list[str]] = {}
    if deduplicate:
        for path in sorted({d.path for plan in existing.values() for d in plan.documents}):
            if Path(path).exists():
                seen.setdefault(quick_fingerprint(path), []).append(path)

    def fresh(rows):
        """Rows not registered before, from a file that duplicates no other (checked at its first such row)."""
        checked = False
        for doc, text in rows:
            if (doc.path, doc.row) in known:
                continue
            if deduplicate and not checked:
                checked = True
                duplicate = _duplicate_of(Path(doc.path), quick_fingerprint(doc.path), seen)
                if duplicate:
                    report.duplicates[doc.path] = duplicate
            if doc.path not in report.duplicates:
                yield doc, text

    measure = DocumentMeasure(tokenizer, sequence_length, sequences_per_chunk)
    groups = source.groups()
    measured: dict[int, list[MeasuredDocument]] = {}
    unlisted: dict[int, ChunkError] = {}
    stamps: dict[str, str] = {}
    # files in path order: the duplicate of two equal files is the later one, as it always was
    for index in sorted(range(len(groups)), key=lambda i: groups[i][0]):
        path, listed = groups[index]
        try:
            stamps[path] = file_stamp(path)
        except OSError:
            pass  # reading it says why
        try:
            measured[index] = list(measure(fresh(source.rows(path, listed))))
        except ChunkError as exc:  # the file cannot be listed (bad JSONL line, unreadable Parquet)
            unlisted[index] = exc
            report.duplicates.pop(path, None)
            for paths in seen.values():
                if path in paths:
                    paths.remove(path)
    for index in sorted(unlisted):
        report.refused[unlisted[index].path] = unlisted[index].problem
    new = [m for index in sorted(measured) for m in measured[index]]
    # numbered after every key of this prefix, an NPZ file's key such as '<corpus>-00003' included
    first = max((_chunk_index(k, corpus) for k in all_manifests() if k.startswith(f"{corpus}-")), default=-1) + 1
    plans = plan_measured(new, measure.body, corpus, sequence_length, sequences_per_chunk, model, shuffle_seed,
                          first_index=first, refused=report.refused) if new else []
    fingerprint = tokenizer_fingerprint(tokenizer) if plans else ""
    for plan, ids in plans:
        _write_token_ids(plan, ids, fingerprint, stamps)
        write_manifest(plan.key, plan.to_json())
    keys = sorted(existing) + [plan.key for plan, _ in plans]
    report.keys += keys
    report.written += [plan.key for plan, _ in plans]
    return keys


def _token_ids_path(key: str) -> Path:
    return manifests_dir() / "token_ids" / f"{key}.npz"


def _documents_digest(plan: ChunkPlan) -> str:
    return hashlib.blake2b(json.dumps(json.loads(plan.to_json())["documents"]).encode(), digest_size=16).hexdigest()


def _write_token_ids(plan: ChunkPlan, ids: list[np.ndarray | None], tokenizer: str, stamps: dict[str, str]) -> None:
    """The token ids of a chunk's documents as registration tokenized them, with what they depend on:
    the model and tokenizer, the manifest's documents, and the version (size, mtime) of each file."""
    lengths = np.array([-1 if x is None else len(x) for x in ids], np.int64)  # -1: a piece, tokenized when used
    flat = np.concatenate([x for x in ids if x is not None] or [np.zeros(0, np.int32)]).astype(np.int32)
    files = {d.path: stamps.get(d.path, "") for d in plan.documents}
    write_npz(_token_ids_path(plan.key), {"ids": flat, "lengths": lengths},
              {"model": plan.model, "tokenizer": tokenizer, "documents": _documents_digest(plan), "files": files})


def stored_token_ids(plan: ChunkPlan, model: str, tokenizer) -> list[np.ndarray | None] | None:
    """Each document's token ids as registration stored them, for `tokenize_documents(token_ids=...)`:
    None for the whole chunk when there are none, or they came from another model, tokenizer or
    manifest; None for a document whose file changed since (it is read again, as it always was)."""
    path = _token_ids_path(plan.key)
    if not path.exists():
        return None
    arrays, meta = read_npz(path)
    if (meta["model"] != model or plan.model != model or meta["documents"] != _documents_digest(plan)
            or meta["tokenizer"] != tokenizer_fingerprint(tokenizer)):
        return None
    flat, lengths = arrays["ids"], arrays["lengths"]
    unchanged = {}
    for file, stamp in meta["files"].items():
        try:
            unchanged[file] = bool(stamp) and file_stamp(file) == stamp
        except OSError:
            unchanged[file] = False
    ends = np.cumsum(np.maximum(lengths, 0))
    return [flat[end - n:end] if n >= 0 and unchanged.get(doc.path) else None
            for doc, n, end in zip(plan.documents, lengths, ends)]


def corpus_source(source: str, path: str = "", per_category: int | None = None) -> TextSource:
    """The documents of a text source: `bbc` (built-in) or `files` (a file or directory)."""
    if source == "bbc":
        return TextSource(documents=bbc_documents(per_category))
    if source == "files":
        return TextSource(files=text_files(path))
    raise ValueError(f"text source must be 'bbc' or 'files', got {source!r}")


def remove_chunk(key: str) -> list[Path]:
    """Delete a chunk's manifest and every per-chunk output (tensors/*/<key>, tables/*/<key>.parquet, ...);
    returns what was removed. An NPZ corpus's dimension record goes too: the next registration decides
    d again from the files left."""
    home = atlas_home()
    removed = []
    for top in sorted(p for p in home.iterdir() if p.is_dir() and p.name not in _NOT_OUTPUTS):
        for root, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                if name == key or name.startswith(f"{key}."):
                    target = Path(root) / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                    removed.append(target)
            dirs[:] = [d for d in dirs if (Path(root) / d).exists()]
    manifest = manifests_dir() / f"{key}.json"
    if manifest.exists():
        plan = read_manifest(key)
        if isinstance(plan, NpzPlan):
            forget_dimension(plan.corpus)
        manifest.unlink()
        removed.append(manifest)
    token_ids = _token_ids_path(key)
    if token_ids.exists():
        token_ids.unlink()
        removed.append(token_ids)
    return removed
