"""Parquet tables written atomically (temp file + rename), with key/value file metadata."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_META_KEY = b"latent_atlas"


def write_table(table: pa.Table, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `table` to `path` atomically; `metadata` (JSON-able) goes into the file footer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_META_KEY] = json.dumps(metadata).encode()
        table = table.replace_schema_metadata(schema_meta)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict:
    """The metadata dict stored by `write_table` (empty if none)."""
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}
