"""Checkpoints of a streaming fit, and the fingerprints that say which fit a checkpoint belongs to.

A checkpoint is one .npz of the estimator's state plus its stream position, written atomically
(`latent_atlas.data.tables.save_npz`) after every step; the newest few are kept. It records the config
and every chunk's fingerprint, and is resumed only by a fit with the same config on chunks with the
same contents: a whitening refit rewrites every whitened chunk under the same path, and a fit on
the new contents must not continue one on the old.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latent_atlas.clustering.config import ClusteringConfig
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.tables import save_npz

CHECKPOINT_GLOB = "checkpoint-*.npz"
_KEEP_CHECKPOINTS = 3  # the newest and two fallbacks (a kill mid-write leaves at worst a stale temp file)


def fingerprint(source: Any) -> str:
    """What a chunk source holds, cheaply: for files, each one's name, size and modification time
    plus a hash of 64 evenly spaced 4 KB pieces; for arrays, a hash of the data. A rewritten chunk
    (a whitening refit rewrites every whitened chunk under the same path) gets a new fingerprint, so
    a checkpoint of a fit on the old contents is never resumed on the new ones."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(source, DenseChunk) and source.path is None:
        source = source.activations
    if isinstance(source, np.ndarray):
        digest.update(repr((source.shape, str(source.dtype))).encode())
        digest.update(np.ascontiguousarray(source).view(np.uint8).reshape(-1))
        return f"array{list(source.shape)}:{digest.hexdigest()}"
    path = Path(source.path if isinstance(source, DenseChunk) else source)
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        stat = file.stat()
        digest.update(repr((file.name, stat.st_size, stat.st_mtime_ns)).encode())
        with open(file, "rb") as f:
            for offset in np.linspace(0, max(stat.st_size - 4096, 0), 64).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(4096))
    return f"{path}:{digest.hexdigest()}"


def checkpoint_key(config: ClusteringConfig, sources: Sequence[Any]) -> str:
    """A name for the checkpoints of one fit: the (resolved) config and every chunk's fingerprint.
    The same fit resumes; a new config or any changed chunk starts afresh."""
    text = json.dumps([config.to_json(), [fingerprint(s) for s in sources]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_checkpoint(checkpoint_dir: Path, step: int, state: dict[str, np.ndarray], epoch: int, position: int,
                     fingerprints: list[str]) -> Path:
    """Write the state after `step` steps, with the stream position (epoch, position in its chunk
    order) and the chunks' fingerprints, atomically; delete all but the newest few."""
    state = {**state, "epoch": np.array(epoch), "position": np.array(position),
             "sources": np.array(json.dumps(fingerprints))}
    path = save_npz(checkpoint_dir / f"checkpoint-{step:07d}.npz", state)
    for old in sorted(checkpoint_dir.glob(CHECKPOINT_GLOB))[:-_KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def newest_checkpoint(checkpoint_dir: Path, config: ClusteringConfig, fingerprints: list[str]) -> dict | None:
    """The arrays of the newest checkpoint in checkpoint_dir (None if there is none); ValueError if
    it holds a fit with another config or other chunk contents. Temp files of a killed write go."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_dir.glob(".*.tmp-*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    found = sorted(checkpoint_dir.glob(CHECKPOINT_GLOB))
    if not found:
        return None
    with np.load(found[-1], allow_pickle=False) as npz:
        if str(npz["config"]) != config.to_json() or json.loads(str(npz["sources"])) != fingerprints:
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir} holds a run with another config or other chunk "
                "contents; use a new checkpoint_dir (checkpoint_key names one per fit) or delete it"
            )
        return {key: npz[key] for key in npz.files}
