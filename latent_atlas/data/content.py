"""Content versions: a short hash of what an artifact holds, so a recomputation that produced the same
bytes (an unchanged refit, a rerun) is recognised as the same data and nothing downstream reruns."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import numpy as np

from latent_atlas.data.chunks import DenseChunk


def content_version(*parts) -> str:
    """Hash of arrays (dtype, shape and bytes), mappings (by sorted key), sequences and JSON scalars.

    One pass over each array's bytes (blake2b, about 1 GB/s): small beside the work that made them.
    """
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        _update(h, part)
    return h.hexdigest()


def chunk_version(chunk: DenseChunk) -> str:
    """Content version of a dense chunk: its activations, mask, token ids and meta (model, layer, key...)."""
    return content_version(chunk.activations, chunk.attention_mask, chunk.token_ids, chunk.meta)


def _update(h, value) -> None:
    if isinstance(value, np.ndarray | np.generic):
        array = np.ascontiguousarray(value)
        if array.dtype == object:  # repr() abbreviates past 1,000 elements: equal hashes of unequal arrays
            raise TypeError("content_version cannot hash an object array; pass a list")
        h.update(f"array {array.dtype.str} {array.shape};".encode())
        h.update(memoryview(array.reshape(-1).view(np.uint8)))
    elif isinstance(value, Mapping):
        h.update(f"map {len(value)};".encode())
        for key in sorted(value, key=str):
            h.update(f"{key!s};".encode())
            _update(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"seq {len(value)};".encode())
        for item in value:
            _update(h, item)
    elif value is None or isinstance(value, str | int | float | bool | os.PathLike):
        h.update(f"json {json.dumps(os.fspath(value) if isinstance(value, os.PathLike) else value)};".encode())
    else:  # a str() of an unknown object (a tensor's is abbreviated) would hash less than the content
        raise TypeError(f"content_version cannot hash a {type(value).__name__}")
