"""Seed-format NPZ chunks, the user's own files: validated, read without unpickling, their fp16
activations memory-mapped where they lie in the file (no copy). `open_chunk` opens either kind of chunk.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_atlas.data.chunks import ArrayReference, DenseChunk, read_chunk, validate_chunk
from latent_atlas.data.errors import ChunkError


@dataclass(frozen=True)
class NpzKeys:
    """Names of the arrays inside a seed-format NPZ file."""

    activations: str = "activations"
    """Whitened activations [n_seq, seq_len, d]."""
    attention_mask: str = "attention_mask"
    """Attention mask [n_seq, seq_len]; nonzero where the token counts."""
    token_ids: str = "token_ids"
    """Token ids [n_seq, seq_len]."""


def stored_npz_member(path: str | Path, key: str) -> ArrayReference | None:
    """A reference to array `key` of an NPZ file if its bytes can be memory-mapped where they lie
    (an uncompressed, unencrypted member, as np.savez writes); None otherwise (np.savez_compressed)."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local header's own name/extra lengths, not the central directory's
        if local[:4] != b"PK\x03\x04":
            return None
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject or offset - start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
        return None
    return ArrayReference.to(path, offset, shape, dtype, fortran_order)


def load_npz_chunk(path: str | Path, keys: NpzKeys = NpzKeys(), expected_dim: int | None = None) -> DenseChunk:
    """Read and validate one seed-format NPZ file (never unpickles); errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ChunkError(path, f"cannot read: {exc.strerror}") from exc
    if magic != b"PK\x03\x04":  # np.load would take any other file for a pickle
        raise ChunkError(path, "not an NPZ file (no zip header): truncated or corrupt")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (keys.activations, keys.attention_mask, keys.token_ids) if k not in npz.files]
            if missing:
                raise ChunkError(path, f"missing arrays {missing}; file holds {sorted(npz.files)}")
            # fp16 stored uncompressed: a memmap of the file itself, not a copy in memory or on disk
            reference = stored_npz_member(path, keys.activations)
            if reference is not None and np.dtype(reference.dtype) != np.float16:
                reference = None
            chunk = DenseChunk(
                reference.open(path) if reference else npz[keys.activations],
                npz[keys.attention_mask].astype(bool),
                npz[keys.token_ids],
                meta={"source": str(path)},
                path=path,
                activations_ref=reference,
            )
    except ChunkError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ChunkError(path, "holds pickled Python objects, which are refused (allow_pickle=False)") from exc
        raise ChunkError(path, f"not a readable NPZ file: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ChunkError(path, f"truncated or corrupt NPZ file: {exc}") from exc
    validate_chunk(chunk, path, expected_dim)
    return chunk


def open_chunk(source: Any, keys: NpzKeys = NpzKeys()) -> DenseChunk:
    """A DenseChunk from a DenseChunk, a chunk directory or a seed-format .npz file."""
    if isinstance(source, DenseChunk):
        return source
    path = Path(source)
    if path.is_dir():
        return read_chunk(path)
    if path.suffix == ".npz":
        return load_npz_chunk(path, keys)
    raise ChunkError(path, "expected a chunk directory or a seed-format .npz file")
