"""Writes a reader never sees half of: a file (`write_atomically`: temp file, fsync, rename) or a
directory (`atomic_dir`: temp directory, rename), and the removal of what a killed write left behind.

Temp files and directories are hidden names beside their target (`.<name>.tmp-<id>`, `.<name>.old-<id>`,
the tensor IO manager's `.<stem>.<id>.tmp.npz`), by which `remove_stale_temp_files` recognises the
leftovers of every writer: chunks, tables, .npz, manifests.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_atomically(path: str | Path, write) -> Path:
    """Call write(binary file) on a temp file beside `path`, fsync, rename: a killed process leaves
    the old file or the new one, never half of one (a directory: `atomic_dir`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
