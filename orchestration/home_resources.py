"""The resources a home's atlas was built with, recorded by `latent-atlas run`/`demo` and read back by the
code location (orchestration.definitions) that `latent-atlas ui`, `dagster dev` and `dagster-daemon` load
for that home.

Without this, the code location of a home made by `latent-atlas run --npz DIR` would have the demo's
resources (BBC News, the default corpus): runs the UI or the daemon launch there would fingerprint
other resources than the CLI's (orchestration.freshness), so the next `latent-atlas run` would redo
them, and new partitions would be read as the demo's corpus. Only the corpus and the model are
recorded, the two the CLI sets; each is rebuilt by its own class, never one a file names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from resources import CorpusResource, ModelResource

RECORDED = {"corpus": CorpusResource, "model": ModelResource}
FILE = "resources.json"


def _path(home: Path | None = None) -> Path:
    # not latent_atlas.data.paths.atlas_home(): importing the definitions must not create ./.atlas
    return Path(home or os.environ.get("ATLAS_HOME", ".atlas")).resolve() / "dagster" / FILE


def record_home_resources(defs: dg.Definitions, home: Path) -> None:
    """Write the corpus and model resources of `defs` to the home (when they changed)."""
    from latent_atlas.data.atomic import write_atomically

    fields = {name: defs.resources[name].model_dump() for name in RECORDED if name in (defs.resources or {})}
    text = json.dumps(fields, indent=1, sort_keys=True)
    path = _path(home)
    if not path.exists() or path.read_text() != text:
        write_atomically(path, lambda f: f.write(text.encode()))


def home_resources() -> dict:
    """{name: resource} recorded for the home in $ATLAS_HOME (default ./.atlas); {} when none was."""
    path = _path()
    if not path.is_file():
        return {}
    fields = json.loads(path.read_text())
    return {name: cls(**fields[name]) for name, cls in RECORDED.items() if name in fields}
