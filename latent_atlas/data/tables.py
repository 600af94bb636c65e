"""Parquet tables with key/value file metadata, and .npz arrays (optionally with JSON metadata), each
written atomically (`atomic.write_atomically`): a reader never sees a partial file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latent_atlas.data.atomic import write_atomically

_META_KEY = b"latent_atlas"


def write_table(table: pa.Table, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `table` to `path` atomically; `metadata` (JSON-able) goes into the file footer."""
    if metadata:
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_META_KEY] = json.dumps(metadata).encode()
        table = table.replace_schema_metadata(schema_meta)
    return write_atomically(path, lambda f: pq.write_table(table, f, compression="zstd"))


def read_metadata(path: str | Path) -> dict:
    """The metadata dict stored by `write_table` (empty if none)."""
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to one .npz atomically, at exactly `path` (np.savez on a name would append .npz)."""
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Arrays plus a JSON `meta` in one .npz (no pickles), written atomically."""
    return save_npz(path, {**arrays, "meta": np.array(json.dumps(meta))})


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) written by `write_npz`; refuses pickled objects."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return arrays, json.loads(str(arrays.pop("meta")))
