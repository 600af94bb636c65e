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

Seed-format NPZ files (the user's own chunks) are read by `seed_chunks.load_npz_chunk`, with the
same validation (`validate_chunk`) and the same float16 checks as everything written here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from latent_atlas.data.atomic import atomic_dir
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
    attended = tokens[mask]
    if attended.size and int(attended.min()) < 0:  # an id indexes a vocabulary: token counts would fail later
        first = np.argwhere(mask & (tokens < 0))[0]
        raise ChunkError(source, f"token ids must be >= 0 where the mask attends, got {int(tokens[tuple(first)])} "
                                 f"(first at sequence {first[0]}, position {first[1]})")
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
    if not _all_finite(values):
        return f"{what} contain NaN/Inf (first at {_location(np.argwhere(~np.isfinite(values))[0], first_row)})"
    if values.dtype == np.float16 or values.size == 0:
        return None
    peak = max(float(values.max()), -float(values.min()))  # no |x| copy of the block
    if peak <= FLOAT16_MAX:
        return None
    first = np.argwhere(np.abs(values) > FLOAT16_MAX)[0]
    return (f"{what}: values up to {peak:.2g} exceed the float16 range ({FLOAT16_MAX:.0f}) "
            f"(first at {_location(first, first_row)})")


def _all_finite(values: np.ndarray) -> bool:
    """No NaN/Inf in `values`. float16 by its bits (exponent all ones is Inf or NaN): numpy's isfinite on
    float16 ran ~4x slower, and it checked every chunk twice (token_chunks and activations)."""
    if values.dtype == np.float16:
        return not ((values.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(values).all())


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


@dataclass(frozen=True)
class StreamedChunk:
    """A chunk whose fp16 activations are made while they are written: `fill(file)` writes their
    C-order bytes block by block into the chunk's activations.npy (after its header) and returns
    the page metadata it gathered. A new full-size array (whitened_activations: 600 MB a chunk at
    d=2304) is then never whole in memory, and its writes overlap the making of the next block."""

    shape: tuple[int, int, int]
    attention_mask: np.ndarray
    token_ids: np.ndarray
    meta: dict
    fill: Callable[[BinaryIO], dict]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def write_streamed_chunk(path: str | Path, chunk: StreamedChunk) -> dict:
    """Write a StreamedChunk's directory atomically (the same bytes write_chunk writes for the same
    values); returns what its `fill` returned. An error while filling leaves nothing behind."""
    expected = int(np.prod(chunk.shape)) * 2
    with atomic_dir(path) as tmp:
        with open(tmp / "activations.npy", "wb", buffering=0) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                    "shape": tuple(chunk.shape)})
            start = f.tell()
            metadata = chunk.fill(f)
            if f.tell() - start != expected:
                raise ChunkError(path, f"streamed activations wrote {f.tell() - start} bytes, expected {expected}")
        np.save(tmp / "attention_mask.npy", np.ascontiguousarray(chunk.attention_mask, dtype=bool))
        np.save(tmp / "token_ids.npy", np.ascontiguousarray(chunk.token_ids, dtype=np.int32))
        (tmp / "meta.json").write_text(json.dumps(chunk.meta or {}, default=_json_default))
    return metadata


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


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value)}")
