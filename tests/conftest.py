"""Shared fixtures: an isolated ATLAS_HOME per test, a tiny real corpus, one finished home a session."""

import atexit
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One converted copy of each model for the session and the processes its tests start, not one per test
# home: SmolLM2's GGUF dequantizes to 517 MB each time, and many tests make a fresh home.
if "ATLAS_MODEL_CACHE" not in os.environ:
    os.environ["ATLAS_MODEL_CACHE"] = tempfile.mkdtemp(prefix="latent-atlas-test-models-")
    atexit.register(shutil.rmtree, os.environ["ATLAS_MODEL_CACHE"], ignore_errors=True)
warnings.filterwarnings("ignore", message=".*is currently in preview.*")


@pytest.fixture()
def atlas_home(tmp_path, monkeypatch) -> Path:
    """A fresh ATLAS_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "atlas"
    monkeypatch.setenv("ATLAS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home


@pytest.fixture(scope="session")
def _finished_home(tmp_path_factory) -> Path:
    """The small finished home of tests/report_home.py, materialized once a session (~45 s on 2 cores)."""
    from tests.report_home import materialize_home

    return materialize_home(tmp_path_factory.mktemp("finished") / "atlas")


@pytest.fixture(scope="module")
def finished_home(_finished_home, tmp_path_factory) -> Path:
    """A copy of the session's finished home (instance and runs included) that one module may change."""
    copy = tmp_path_factory.mktemp("home") / "atlas"
    shutil.copytree(_finished_home, copy, symlinks=True)
    return copy


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


def write_planted_chunk(folder: Path, i: int, n_seq=16, seq_len=16, dim=32) -> Path:
    """Chunk i (folder/part{i}.npz) of a corpus whose tokens lie near 4 planted directions (noise 0.3)."""
    rng = np.random.default_rng(i)
    directions = np.random.default_rng(99).standard_normal((4, dim))
    acts = directions[rng.integers(0, 4, (n_seq, seq_len))] + 0.3 * rng.standard_normal((n_seq, seq_len, dim))
    return write_seed_npz(folder / f"part{i}.npz", n_seq=n_seq, seq_len=seq_len, dim=dim, seed=i,
                          activations=acts.astype(np.float16))


def write_planted_corpus(folder: Path, n_chunks: int, **shape) -> Path:
    """folder (created) holding planted chunks 0..n_chunks-1 (write_planted_chunk; shape: n_seq, seq_len, dim)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_chunks):
        write_planted_chunk(folder, i, **shape)
    return folder


# The library's k=512 is for the user's scale; the tests' corpora have a few thousand tokens. On ~3k
# tokens a 3-epoch fit still moves a few of its 64 clusters in the last epoch, and how many depends on
# the CPU's GEMM bits (3 with oneDNN's fp32 GEMM, 4 under AVX2 caps with MKL's: 4.7% and 6.3%), so the
# few_dead_clusters gate (5% by default, for real corpora) gets a margin here; it still fails a fit
# that moves 10 or more.
SMALL_CORPUS_MAX_DEAD = 0.15
SMALL_CORPUS_CONFIG = {"centroids": {"n_clusters": 64, "max_dead_fraction": SMALL_CORPUS_MAX_DEAD}}


@contextmanager
def materialized(atlas_home: Path, corpus, targets: list[str], model_name: str = "minilm-l6",
                 asset_config: dict[str, dict] | None = None):
    """A test Dagster instance in ATLAS_HOME with `corpus` registered and `targets` (and their
    upstreams) materialized stage by stage (run config `asset_config`, default SMALL_CORPUS_CONFIG);
    yields (defs, instance, keys, report)."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions, run_stages
    from resources import ModelResource

    model = ModelResource(name=model_name)
    defs = build_definitions(corpus=corpus, model=model)
    with dg.instance_for_test(temp_dir=str(atlas_home / "dagster")) as instance:
        keys = corpus.register(model.tokenizer() if corpus.source != "npz" else None, model.name)
        register_partitions(instance, keys)
        report = run_stages(defs, instance, keys, stages_of(defs, targets), log=lambda _: None,
                            asset_config=SMALL_CORPUS_CONFIG if asset_config is None else asset_config)
        yield defs, instance, keys, report


def check_metadata(instance, check_name: str) -> list[dict]:
    """The metadata of every evaluation of asset check `check_name` over the instance's runs, as plain values."""
    import dagster as dg

    return [{key: value.value for key, value in entry.dagster_event.event_specific_data.metadata.items()}
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if entry.dagster_event.event_specific_data.check_name == check_name]


def check_results(instance) -> dict[str, bool]:
    """Asset check name -> passed, over every run of the instance (False if any evaluation failed)."""
    import dagster as dg

    results: dict[str, bool] = {}
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = entry.dagster_event.event_specific_data
            results[data.check_name] = results.get(data.check_name, True) and data.passed
    return results
