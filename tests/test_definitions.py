"""The Dagster code location loads, as `dagster dev` and `dg` load it."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_every_asset_and_check():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"token_chunks", "activations", "whitening", "whitened_activations"} <= assets
    checks = {k.name for k in graph.asset_check_keys}
    assert {"finite_and_shaped", "mask_token_alignment", "whitened_covariance_is_identity"} <= checks
    assert defs.resolve_sensor_def("incoming_chunks") and defs.resolve_schedule_def("nightly_refit")
    assert graph.get(dg.AssetKey("activations")).partitions_def.name == "chunks"
    # per-chunk assets downstream of a global model follow new chunks and refits on their own
    for name in ("whitened_activations", "memberships", "chunk_stats"):
        assert graph.get(dg.AssetKey(name)).automation_condition is not None
    assert "default_automation_condition_sensor" in {s.name for s in defs.get_repository_def().sensor_defs}


def test_every_asset_is_in_exactly_one_named_stage_job():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    stage_jobs = [j for j in defs.jobs if j.name.endswith("_stage")]
    assert [j.name for j in stage_jobs][:2] == ["token_chunks_stage", "whitening_stage"]
    selected = [k.to_user_string() for j in stage_jobs for k in j.selection.resolve(graph)]
    assert sorted(selected) == sorted(k.to_user_string() for k in graph.get_all_asset_keys())  # each exactly once
    assert defs.resolve_job_def("steering_eval_stage")  # on request: a job of its own
    per_chunk = defs.resolve_job_def("token_chunks_stage")
    assert per_chunk.partitions_def is not None and per_chunk.partitions_def.name == "chunks"


def test_dg_check_defs(atlas_home):
    dg_bin = Path(sys.executable).with_name("dg")
    result = subprocess.run([str(dg_bin), "check", "defs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
