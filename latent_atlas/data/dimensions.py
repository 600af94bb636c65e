"""The corpus's d: decided once at registration from every file, never by which chunk ran first.

A text corpus's d is its model's hidden size (checked where the activations are made). An NPZ
corpus's d is the one the user gives (`expected_dim`), else the dimension a strict majority of its
files share, read from each file's array header alone (a few hundred bytes, never the data).
Without a strict majority nothing is guessed: the files disagree and the error names them by d.
The decision is recorded per corpus; every chunk stage and global fit reads the record, so a file
of another d is refused by name whatever its name sorts as or whenever its run starts.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from latent_atlas.data.atomic import write_atomically
from latent_atlas.data.errors import DimensionError
from latent_atlas.data.paths import manifests_dir

EXPECTED = "expected_dim"  # the basis recorded when the user gave d


def npz_array_shape(path: str | Path, key: str) -> tuple[int, ...] | None:
    """The shape of array `key` of an NPZ file from its header alone (compressed or not); None when
    the file or header cannot be read (the file's own chunk stage then says why)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(member)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return tuple(int(n) for n in shape)


def decide_dimension(corpus: str, files: list[str | Path], activations_key: str = "activations",
                     expected_dim: int = 0) -> tuple[int, str] | None:
    """Decide and record the d of NPZ corpus `corpus` from `files` (all of its registered files);
    returns (d, basis), or None when no file has a readable [n_seq, seq_len, d] header.

    DimensionError when no d is shared by more than half of the readable files and `expected_dim`
    is 0; the message names the files of each d.
    """
    if expected_dim:
        return record_dimension(corpus, expected_dim, EXPECTED)
    dims = {}
    for path in sorted(str(f) for f in files):
        shape = npz_array_shape(path, activations_key)
        if shape is not None and len(shape) == 3:
            dims[path] = shape[2]
    if not dims:
        return None
    (dim, count), *_ = Counter(dims.values()).most_common(1)
    if 2 * count <= len(dims):
        by_dim = {d: [Path(p).name for p, x in dims.items() if x == d] for d in sorted(set(dims.values()))}
        listing = "; ".join(f"d={d}: {', '.join(names)}" for d, names in by_dim.items())
        raise DimensionError(
            f"corpus {corpus!r}: its files disagree on the activations' dimension and no dimension is shared by "
            f"more than half of them ({listing}); set the corpus's d (latent-atlas run --expected-dim D) or "
            f"remove the files of the other dimension")
    return record_dimension(corpus, dim, f"{count} of {len(dims)} files")


def _record_path(corpus: str) -> Path:
    return manifests_dir() / "dimensions" / f"{corpus or 'chunks'}.json"


def record_dimension(corpus: str, dim: int, basis: str) -> tuple[int, str]:
    """Record (d, basis) as corpus `corpus`'s dimension (atomically: readers see the old or the new)."""
    path = _record_path(corpus)
    text = json.dumps({"dim": int(dim), "basis": basis})
    if not path.exists() or path.read_text() != text:
        write_atomically(path, lambda f: f.write(text.encode()))
    return int(dim), basis


def corpus_dimension(corpus: str) -> tuple[int, str] | None:
    """(d, basis) recorded for `corpus`, or None before its registration decided one."""
    path = _record_path(corpus)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return int(data["dim"]), str(data.get("basis", ""))


def forget_dimension(corpus: str) -> None:
    """Drop the record: the corpus's next registration decides d again from the files it then has."""
    _record_path(corpus).unlink(missing_ok=True)


def dimension_problem(dim: int, record: tuple[int, str]) -> str | None:
    """Why a chunk of dimension `dim` is refused by a corpus of `record`, else None."""
    expected, basis = record
    if dim == expected:
        return None
    why = "set by expected_dim" if basis == EXPECTED else f"the corpus's d, shared by {basis}"
    return f"activations have dimension {dim}, expected {expected} ({why})"


def npz_header_problem(path: str | Path, key: str, record: tuple[int, str] | None) -> str | None:
    """Why NPZ file `path` cannot be a chunk of a corpus of `record`, judged from its header alone (the
    incoming sensor's check before it requests a run; the chunk stage reads and validates the whole file)."""
    shape = npz_array_shape(path, key)
    if shape is None:
        return f"not a readable NPZ file with an array {key!r} (truncated, corrupt or another format)"
    if len(shape) != 3:
        return f"array {key!r} has shape {shape}, expected [n_seq, seq_len, d]"
    return dimension_problem(shape[2], record) if record else None
