"""The persistent Dagster instance lives in ATLAS_HOME/dagster."""

from __future__ import annotations

import os
from pathlib import Path

# Per-chunk partitions run as separate runs; the queue bounds how many run at once (one machine).
DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2
"""


def use_atlas_home(home: str | Path = "") -> Path:
    """Point ATLAS_HOME (default ./.atlas) and DAGSTER_HOME (inside it) at `home`; write dagster.yaml once."""
    if home:
        os.environ["ATLAS_HOME"] = str(Path(home).resolve())
    from latent_atlas.paths import atlas_home

    path = atlas_home()
    dagster_home = path / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return path
