"""Dense activation chunks: one directory of memory-mapped .npy arrays per chunk.

Layout of a chunk directory (written atomically: temp directory, then rename):

    activations.npy     [n_seq, seq_len, d]  float16
      or activations.ref.json  where those bytes already lie in another file (ArrayReference)
    attention_mask.npy  [n_seq, seq_len]     bool   (False on padding and special tokens)
    token_ids.npy       [n_seq, seq_len]     int32
    meta.json           free-form metadata (source file, layer, model, doc ids ...)

.npy memory-mapped reads measured fastest on this machine kind (docs/benchmarks.md): reading a
chunk costs no decode and no copy until the pages are touched. A chunk whose fp16 activations
already lie uncompressed in a file (a seed NPZ written by np.savez, or the activations chunk an
identity whitening passes on) stores a reference to those bytes instead of a second full-size copy.

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

from latent_atlas.data.errors import ChunkError

ARRAYS = ("activations", "attention_mask", "token_ids")
# Validation and finite checks walk this many sequences at a time so memory stays bounded.
_CHECK_BLOCK = 256
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
# Values cast to float16 per block: bounds the temporaries of the cast check (~4M values).
_CAST_BLOCK_VALUES = 1 << 22


@dataclass(frozen=True)
class ArrayReference:
    """Where an array's raw bytes lie in another file, and that file's size and mtime when it was
    registered: a reference is opened as a memmap, and refused once the file has changed."""

    file: str
    offset: int
    shape: tuple
    dtype: str
    fortran_order: bool
    size: int
    mtime_ns: int

    @classmethod
    def to(cls, file: str | Path, offset: int, shape, dtype, fortran_order: bool) -> "ArrayReference":
        stat = Path(file).stat()
        return cls(str(Path(file).resolve()), int(offset), tuple(int(n) for n in shape), np.dtype(dtype).str,
                   bool(fortran_order), stat.st_size, stat.st_mtime_ns)

    @classmethod
    def of_npy(cls, array: np.memmap) -> "ArrayReference":
        """The reference to a memory-mapped .npy file's whole array (np.load(..., mmap_mode='r'))."""
        return cls.to(array.filename, array.offset, array.shape, array.dtype, np.isfortran(array) and array.ndim > 1)

    def open(self, source: str | Path) -> np.memmap:
        """The array, memory-mapped read-only; ChunkError naming the file if it is gone or changed."""
        try:
            stat = os.stat(self.file)
        except OSError as exc:
            raise ChunkError(source, f"references {self.file}, which cannot be read ({exc.strerror}); rerun it") from exc
        if (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns):
            raise ChunkError(source, f"references {self.file}, which changed since it was registered; rerun it")
        order = "F" if self.fortran_order else "C"
        return np.memmap(self.file, np.dtype(self.dtype), "r", self.offset, self.shape, order)

    def to_json(self) -> str:
        return json.dumps({**vars(self), "shape": list(self.shape)})

    @classmethod
    def from_json(cls, text: str) -> "ArrayReference":
        fields = json.loads(text)
        return cls(**{**fields, "shape": tuple(fields["shape"])})


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


@dataclass(frozen=True)
class DenseChunk:
    """Activations of one chunk with their mask and token ids (arrays may be memory-mapped)."""

    activations: np.ndarray  # [n_seq, seq_len, d]
    attention_mask: np.ndarray  # [n_seq, seq_len] bool
    token_ids: np.ndarray  # [n_seq, seq_len] int
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    # Where `activations` already lie on disk (memory-mapped): write_chunk then stores this
    # reference instead of a copy.
    activations_ref: ArrayReference | None = None

    @property
    def storage(self) -> str:
        """'reference' if writing this chunk stores a reference to its activations, else 'copy'."""
        return "reference" if self.activations_ref is not None and self.activations.dtype == np.float16 else "copy"

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
    activations_ref: ArrayReference | None = None,
) -> Path:
    """Write a chunk directory atomically; a reader never sees a half-written chunk.

    With `activations_ref` (where fp16 `activations` already lie in another file), the chunk stores
    that reference, not a copy. Activations that would overflow float16 raise ChunkError naming
    `path` before anything is written.
    """
    if activations_ref is None or np.asarray(activations).dtype != np.float16:
        activations, activations_ref = to_float16(activations, path), None
    with atomic_dir(path) as tmp:
        if activations_ref is None:
            np.save(tmp / "activations.npy", activations)
        else:
            (tmp / "activations.ref.json").write_text(activations_ref.to_json())
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
        reference = _activations_reference(path)
        activations = reference.open(path) if reference else np.load(path / "activations.npy", mmap_mode="r", allow_pickle=False)
        if reference is None and isinstance(activations, np.memmap):
            reference = ArrayReference.of_npy(activations)
        if not mmap:
            activations = np.array(activations)
        mask, tokens = (np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False) for name in ARRAYS[1:])
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError as exc:
        raise ChunkError(path, f"not a chunk directory ({exc.filename} missing)") from exc
    except ValueError as exc:
        raise ChunkError(path, f"unreadable array: {exc}") from exc
    return DenseChunk(activations, mask, tokens, meta=meta, path=path, activations_ref=reference)


def _activations_reference(path: Path) -> ArrayReference | None:
    ref = path / "activations.ref.json"
    return ArrayReference.from_json(ref.read_text()) if ref.exists() else None


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
