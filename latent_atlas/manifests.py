"""Chunk manifests: one JSON per partition key saying what the chunk is made of.

Registering a source writes manifests (atomically) and returns the keys to add as partitions;
materializing a partition reads its manifest. Registering the same source again gives the same
keys and leaves existing manifests as they are.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from latent_atlas.corpus import ChunkPlan, Document, NpzPlan, bbc_documents, file_documents, plan_chunks
from latent_atlas.paths import manifests_dir

_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_key(name: str) -> str:
    """A partition key made of characters safe in paths and Dagster keys."""
    return _KEY_SAFE.sub("_", name).strip("_") or "chunk"


def write_manifest(key: str, text: str) -> Path:
    path = manifests_dir() / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_manifest(key: str) -> ChunkPlan | NpzPlan:
    path = manifests_dir() / f"{key}.json"
    if not path.exists():
        raise FileNotFoundError(f"no manifest for chunk {key!r} at {path}; register its source first")
    data = json.loads(path.read_text())
    if data["kind"] == "npz":
        return NpzPlan(**data)
    return ChunkPlan.from_json(path.read_text())


def register_text(
    docs: list[Document], tokenizer, corpus: str, sequence_length: int, sequences_per_chunk: int, model: str,
    shuffle_seed: int | None = 0,
) -> list[str]:
    """Plan documents into chunks and write their manifests; returns the partition keys."""
    plans = plan_chunks(docs, tokenizer, safe_key(corpus), sequence_length, sequences_per_chunk, model, shuffle_seed)
    for plan in plans:
        write_manifest(plan.key, plan.to_json())
    return [plan.key for plan in plans]


def register_npz(paths: list[Path], keys: dict | None = None) -> list[str]:
    """One partition per NPZ file, keyed `npz-<file stem>`. The file is validated when materialized."""
    out = []
    for path in sorted(Path(p) for p in paths):
        key = safe_key(f"npz-{path.stem}")
        write_manifest(key, NpzPlan(key, str(path.resolve()), keys=keys or {}).to_json())
        out.append(key)
    return out


def corpus_documents(source: str, path: str = "", per_category: int | None = None) -> list[Document]:
    """Documents of a text source: `bbc` (built-in) or `files` (a file or directory)."""
    if source == "bbc":
        return bbc_documents(per_category)
    if source == "files":
        return file_documents(path)
    raise ValueError(f"text source must be 'bbc' or 'files', got {source!r}")
