"""Where everything lives: one ATLAS_HOME (default ./.atlas) holds outputs, the Dagster
instance and the model cache."""

from __future__ import annotations

import os
from pathlib import Path


def atlas_home() -> Path:
    """ATLAS_HOME from the environment, default `./.atlas`, created on first use."""
    home = Path(os.environ.get("ATLAS_HOME", ".atlas")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def model_cache_dir() -> Path:
    return atlas_home() / "models"


def manifests_dir() -> Path:
    """One JSON manifest per chunk partition key: what the chunk is made of."""
    return atlas_home() / "manifests"


def incoming_dir() -> Path:
    """Drop NPZ chunk files or text files here; the sensor picks them up."""
    return atlas_home() / "incoming"
