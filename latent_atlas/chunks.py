"""Dense activation chunks: one directory of memory-mapped .npy arrays per chunk.

Layout of a chunk directory (written atomically: temp directory, then rename):

    activations.npy     [n_seq, seq_len, d]  float16
    attention_mask.npy  [n_seq, seq_len]     bool   (False on padding and special tokens)
    token_ids.npy       [n_seq, seq_len]     int32
    meta.json           free-form metadata (source file, layer, model, doc ids ...)

.npy memory-mapped reads measured fastest on this machine kind (docs/benchmarks.md): reading a
chunk costs no decode and no copy until the pages are touched.

Seed-format NPZ files (the user's own chunks) are validated and read by `load_npz_chunk`;
`open_chunk` takes either kind (or a DenseChunk), and `open_rows` / `sample_positions` give the
attended rows of one as the clustering reads them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from latent_atlas.errors import ChunkError

ARRAYS = ("activations", "attention_mask", "token_ids")
# Validation and finite checks walk this many sequences at a time so memory stays bounded.
_CHECK_BLOCK = 256
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
# Values cast to float16 per block: bounds the temporaries of the cast check (~4M values).
_CAST_BLOCK_VALUES = 1 << 22


@dataclass(frozen=True)
class DenseChunk:
    """Activations of one chunk with their mask and token ids (arrays may be memory-mapped)."""

    activations: np.ndarray  # [n_seq, seq_len, d]
    attention_mask: np.ndarray  # [n_seq, seq_len] bool
    token_ids: np.ndarray  # [n_seq, seq_len] int
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_sequences(self) -> int:
        return int(self.activations.shape[0])

    @property
    def sequence_length(self) -> int:
        return int(self.activations.shape[1])

    @property
    def dim(self) -> int:
        return int(self.activations.shape[2])

    @property
    def n_tokens(self) -> int:
        """Number of attended (unmasked) positions."""
        return int(self.attention_mask.sum())

    def attended_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(sequence index, position) of every attended token, in row-major order."""
        seq, pos = np.nonzero(self.attention_mask)
        return seq.astype(np.int32), pos.astype(np.int32)

    def iter_blocks(self, max_sequences: int = _CHECK_BLOCK) -> Iterator[tuple[int, "DenseChunk"]]:
        """Yield (first sequence index, sub-chunk) blocks of at most `max_sequences` sequences."""
        for start in range(0, self.n_sequences, max_sequences):
            stop = min(start + max_sequences, self.n_sequences)
            yield start, DenseChunk(
                self.activations[start:stop],
                self.attention_mask[start:stop],
                self.token_ids[start:stop],
                self.meta,
                self.path,
            )


def validate_chunk(chunk: DenseChunk, source: str | Path, expected_dim: int | None = None) -> None:
    """Raise ChunkError naming `source` if shapes disagree, values are not finite or it is empty."""
    acts, mask, tokens = chunk.activations, chunk.attention_mask, chunk.token_ids
    if acts.ndim != 3:
        raise ChunkError(source, f"activations must be [n_seq, seq_len, d], got shape {acts.shape}")
    if not np.issubdtype(acts.dtype, np.floating):
        raise ChunkError(source, f"activations must be floating point, got dtype {acts.dtype}")
    if expected_dim is not None and acts.shape[2] != expected_dim:
        raise ChunkError(source, f"activations have dimension {acts.shape[2]}, expected {expected_dim}")
    if mask.shape != acts.shape[:2]:
        raise ChunkError(source, f"attention mask shape {mask.shape} does not match activations {acts.shape[:2]}")
    if tokens.shape != acts.shape[:2]:
        raise ChunkError(source, f"token ids shape {tokens.shape} does not match activations {acts.shape[:2]}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ChunkError(source, f"token ids must be integers, got dtype {tokens.dtype}")
    if acts.shape[0] == 0 or acts.shape[1] == 0 or not mask.any():
        raise ChunkError(source, "chunk is empty: no attended tokens")
    for start, block in chunk.iter_blocks():
        problem = float16_problem(block.activations, "activations", first_row=start)
        if problem:
            raise ChunkError(source, problem)


def float16_problem(values: np.ndarray, what: str, first_row: int = 0) -> str | None:
    """Why `values` [rows, ...] cannot be stored as float16 (NaN/Inf, or beyond ±65504), else None.

    Checked after the finite check because numpy's cast turns |x| > 65504 into inf without error:
    a float32 value of 1e5 is finite and would still reach disk as inf. `first_row` is the index of
    values[0] in the whole array, so the location named is the chunk's, not the block's.
    """
    finite = np.isfinite(values)
    if not finite.all():
        return f"{what} contain NaN/Inf (first at {_location(np.argwhere(~finite)[0], first_row)})"
    if values.dtype == np.float16 or values.size == 0:
        return None
    peak = max(float(values.max()), -float(values.min()))  # no |x| copy of the block
    if peak <= FLOAT16_MAX:
        return None
    first = np.argwhere(np.abs(values) > FLOAT16_MAX)[0]
    return (f"{what}: values up to {peak:.2g} exceed the float16 range ({FLOAT16_MAX:.0f}) "
            f"(first at {_location(first, first_row)})")


def to_float16(values: np.ndarray, source: str | Path, what: str = "activations", first_row: int = 0) -> np.ndarray:
    """`values` [rows, ...] as C-contiguous float16; ChunkError naming `source` if a value is NaN/Inf
    or would overflow to inf. The one checked cast to float16: extraction, whitening and write_chunk use it.
    """
    values = np.asarray(values)
    if values.dtype == np.float16:  # nothing is cast; finiteness is validate_chunk's check
        return np.ascontiguousarray(values)
    out = np.empty(values.shape, np.float16)
    if values.ndim == 0 or values.size == 0:
        return _checked_cast(values, out, source, what, first_row)
    step = max(1, _CAST_BLOCK_VALUES // max(1, values[0].size))
    for start in range(0, len(values), step):
        _checked_cast(values[start : start + step], out[start : start + step], source, what, first_row + start)
    return out


def _checked_cast(values: np.ndarray, out: np.ndarray, source, what: str, first_row: int) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is found and named below
        out[...] = values
    if not np.isfinite(out).all():
        raise ChunkError(source, float16_problem(values, what, first_row) or f"{what} do not fit float16")
    return out


def _location(index: np.ndarray, first_row: int) -> str:
    """'sequence s, position p' for an index into [n_seq, seq_len, d]; 'row r' into [n, d]."""
    if len(index) >= 3:
        return f"sequence {first_row + int(index[0])}, position {int(index[1])}"
    return f"row {first_row + int(index[0])}" if len(index) else "the value"


def write_chunk(
    path: str | Path,
    activations: np.ndarray,
    attention_mask: np.ndarray,
    token_ids: np.ndarray,
    meta: dict | None = None,
) -> Path:
    """Write a chunk directory atomically; a reader never sees a half-written chunk.

    Activations that would overflow float16 raise ChunkError naming `path` before anything is written.
    """
    activations = to_float16(activations, path)
    with atomic_dir(path) as tmp:
        np.save(tmp / "activations.npy", activations)
        np.save(tmp / "attention_mask.npy", np.ascontiguousarray(attention_mask, dtype=bool))
        np.save(tmp / "token_ids.npy", np.ascontiguousarray(token_ids, dtype=np.int32))
        (tmp / "meta.json").write_text(json.dumps(meta or {}, default=_json_default))
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temp directory to fill; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, path: Path) -> None:
    """Move a finished temp directory onto `path`, replacing any previous version."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def read_chunk(path: str | Path, mmap: bool = True) -> DenseChunk:
    """Open a chunk directory; arrays are memory-mapped (zero-copy) unless mmap=False."""
    path = Path(path)
    mode = "r" if mmap else None
    try:
        arrays = [np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False) for name in ARRAYS]
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError as exc:
        raise ChunkError(path, f"not a chunk directory ({exc.filename} missing)") from exc
    except ValueError as exc:
        raise ChunkError(path, f"unreadable array: {exc}") from exc
    return DenseChunk(*arrays, meta=meta, path=path)


def screen_chunks(paths: dict[str, Path], expected_dim: int | None = None) -> tuple[dict[str, Path], dict[str, str], int]:
    """(healthy chunks, refused key -> problem, d) of a fan-in over stored chunks.

    A chunk that cannot be opened, or whose dimension is not the corpus's, is refused by name
    instead of failing the global stage for everybody. d is `expected_dim`, else the dimension most
    chunks have (ties: the first key's).
    """
    dims, refused = {}, {}
    for key, path in paths.items():
        try:
            chunk = read_chunk(path)
            dims[key] = chunk.dim if chunk.activations.ndim == 3 else -1
        except ChunkError as exc:
            refused[key] = str(exc)
    counts = {d: list(dims.values()).count(d) for d in dims.values()}
    dim = expected_dim or (max(counts, key=lambda d: (counts[d], -list(dims.values()).index(d))) if counts else 0)
    for key, d in dims.items():
        if d != dim:
            refused[key] = f"{paths[key]}: activations have dimension {d}, expected {dim} ({counts.get(dim, 0)} of {len(dims)} chunks)"
    return {k: p for k, p in paths.items() if k not in refused}, refused, dim


# Names the atomic writers give their temp files and directories (chunks, tables, npz, manifests).
_TEMP_NAME = re.compile(r"^\..+\.(tmp|old)(-[\w.-]+|\.[A-Za-z0-9]+)$")


def remove_stale_temp_files(home: str | Path, min_age_s: float = 900.0) -> list[Path]:
    """Delete temp files and directories that a killed write left under `home`; returns them.

    Only those untouched for `min_age_s` seconds: a write in progress elsewhere keeps its own.
    The Dagster instance's folder is not ours and is left alone.
    """
    home, now, removed = Path(home), time.time(), []
    for root, dirs, files in os.walk(home):
        if Path(root) == home and "dagster" in dirs:
            dirs.remove("dagster")
        for name in [*dirs, *files]:
            target = Path(root) / name
            if _TEMP_NAME.match(name) and now - _last_touched(target) >= min_age_s:
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
                removed.append(target)
        dirs[:] = [d for d in dirs if (Path(root) / d).exists()]
    return removed


def _last_touched(path: Path) -> float:
    """Latest mtime of a path and, for a directory, of anything in it (a write updates the file)."""
    times = [path.stat().st_mtime]
    if path.is_dir():
        times += [p.stat().st_mtime for p in path.rglob("*")]
    return max(times)


@dataclass(frozen=True)
class NpzKeys:
    """Names of the arrays inside a seed-format NPZ file."""

    activations: str = "activations"
    """Whitened activations [n_seq, seq_len, d]."""
    attention_mask: str = "attention_mask"
    """Attention mask [n_seq, seq_len]; nonzero where the token counts."""
    token_ids: str = "token_ids"
    """Token ids [n_seq, seq_len]."""


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
            chunk = DenseChunk(
                npz[keys.activations],
                npz[keys.attention_mask].astype(bool),
                npz[keys.token_ids],
                meta={"source": str(path)},
                path=path,
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


class ChunkRows:
    """Rows [n, d] of a chunk with the indices of its attended rows; indexing gathers rows."""

    def __init__(self, data: np.ndarray, attended: np.ndarray):
        self.data, self.attended = data, attended

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, index):
        return self.data[index]


def open_rows(source: Any, keys: NpzKeys = NpzKeys()) -> tuple[ChunkRows, str]:
    """(rows, name): activations flattened to [n_seq * seq_len, d] (memory-mapped when possible),
    with the flat indices of attended positions marked by `rows.attended`, and a name for errors.
    A 2-D array [n, d] is taken as n attended rows."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ValueError(f"X must be a 2-D array [n, d], got shape {source.shape}")
        return ChunkRows(source, np.arange(source.shape[0])), "X"
    chunk = open_chunk(source, keys)
    flat = chunk.activations.reshape(-1, chunk.dim)
    attended = np.flatnonzero(np.asarray(chunk.attention_mask).reshape(-1))
    return ChunkRows(flat, attended), str(chunk.path or "<chunk>")


def sample_positions(rows: ChunkRows, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of at most max_points attended rows (sorted so memmap reads go forward)."""
    attended = rows.attended
    if len(attended) <= max_points:
        return attended
    return np.sort(rng.choice(attended, size=max_points, replace=False))


def check_dim(rows: ChunkRows, d: int, name: str) -> None:
    """ChunkError naming the chunk if its rows do not have the centroids' dimension d."""
    if rows.shape[1] != d:
        raise ChunkError(name, f"activations have dimension {rows.shape[1]}, the centroids have {d}")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value)}")
