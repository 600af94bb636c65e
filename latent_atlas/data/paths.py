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


def model_cache_dir(home: Path | None = None) -> Path:
    """Where models are kept once converted for use: $ATLAS_MODEL_CACHE when set (one copy for many homes;
    SmolLM2's GGUF dequantizes to 517 MB), else the home's models/ folder."""
    shared = os.environ.get("ATLAS_MODEL_CACHE")
    return Path(shared).resolve() if shared else (Path(home) if home else atlas_home()) / "models"


def manifests_dir() -> Path:
    """One JSON manifest per chunk partition key: what the chunk is made of."""
    return atlas_home() / "manifests"


def incoming_dir() -> Path:
    """Drop NPZ chunk files or text files here; the sensor picks them up."""
    return atlas_home() / "incoming"
