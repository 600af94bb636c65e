"""Labels on disk: one `centroid_<id>.json` per cluster (the user's cache layout), each written
atomically as soon as it is done, so a run that fails half way keeps what it finished.

A record is reused only when its `metadata.cache_key` equals the key of the current inputs:
sha256 of labeler name, model, prompt version and every shown example's text, tokens and
memberships (and the parent's label for tree nodes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

from latent_atlas.data.atomic import write_atomically
from latent_atlas.labels.records import CentroidExplanation, Example



def default_label_dir() -> Path:
    from latent_atlas.data.paths import atlas_home

    return atlas_home() / "labels" / "clusters"


def cache_key(labeler_name: str, model: str, prompt_version: str, examples: Sequence[Example],
              parent_label: str = "", context: str = "") -> str:
    """Hex sha256 of what determines a label. `context` is extra input the label depends on (a
    labeler that sees all clusters at once passes a digest of every cluster's examples)."""
    digest = hashlib.sha256()
    payload = [labeler_name, model, prompt_version, parent_label, context,
               [[e.text, e.tokens, [round(float(m), 6) for m in e.memberships], e.position] for e in examples]]
    digest.update(json.dumps(payload, ensure_ascii=False).encode())
    return digest.hexdigest()


class LabelCache:
    """The label records of one atlas (clusters: `centroid_<id>.json`) or one tree (nodes:
    `node_<index>.json`, prefix 'node'), in `directory`."""

    def __init__(self, directory: str | Path | None = None, prefix: str = "centroid"):
        self.directory = Path(directory) if directory is not None else default_label_dir()
        self.prefix = prefix
        self._file = re.compile(rf"^{re.escape(prefix)}_(\d+)\.json$")

    def path(self, centroid_id: int) -> Path:
        return self.directory / f"{self.prefix}_{int(centroid_id)}.json"

    def read(self, centroid_id: int) -> CentroidExplanation | None:
        """The stored record, whatever its key (None when there is none)."""
        path = self.path(centroid_id)
        if not path.exists():
            return None
        try:
            return CentroidExplanation.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not a CentroidExplanation record ({error}); delete it to relabel") from error

    def get(self, centroid_id: int, key: str, force_regenerate: bool = False) -> CentroidExplanation | None:
        """The stored record if it was made from the same inputs (same cache key), else None."""
        if force_regenerate:
            return None
        record = self.read(centroid_id)
        return record if record is not None and record.metadata.get("cache_key") == key else None

    def put(self, record: CentroidExplanation) -> Path:
        """Write one record atomically (temp file, fsync, rename)."""
        return write_atomically(self.path(record.centroid_id), lambda f: f.write(record.to_json().encode()))

    def all(self) -> dict[int, CentroidExplanation]:
        """Every record in the directory, by id ({} when the directory does not exist)."""
        if not self.directory.is_dir():
            return {}
        ids = sorted(int(m.group(1)) for m in map(self._file.match, os.listdir(self.directory)) if m)
        return {i: self.read(i) for i in ids}  # type: ignore[misc]
