"""Shared fixtures: an isolated ATLAS_HOME per test session and a tiny real corpus."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*is currently in preview.*")


@pytest.fixture()
def atlas_home(tmp_path, monkeypatch) -> Path:
    """A fresh ATLAS_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "atlas"
    monkeypatch.setenv("ATLAS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home


def write_seed_npz(path: Path, n_seq=6, seq_len=16, dim=32, seed=0, **overrides) -> Path:
    """A valid seed-format NPZ chunk; `overrides` replace arrays to make it invalid."""
    rng = np.random.default_rng(seed)
    arrays = {
        "activations": rng.standard_normal((n_seq, seq_len, dim)).astype(np.float16),
        "attention_mask": (np.arange(seq_len)[None, :] < rng.integers(seq_len // 2, seq_len + 1, n_seq)[:, None]),
        "token_ids": rng.integers(0, 1000, (n_seq, seq_len)).astype(np.int32),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path
