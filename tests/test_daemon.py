"""The production path: runs launched by a real `dagster-daemon` (multi-process test, ~2 min on 2 cores).

A home's dagster.yaml (orchestration.instance) sets the QueuedRunCoordinator's max_concurrent_runs to 2;
the run launcher is Dagster's default (DefaultRunLauncher: one `dagster api execute_run` process per
run). The project's workspace.yaml is the code location; it builds its definitions with the resources
`latent-atlas run` recorded for the home (orchestration.home_resources). The stages up to
whitened_activations are submitted to the instance the way the UI does: a backfill of the per-chunk
stage job over all chunk partitions (`dagster job backfill --all`), the
global whitening stage as one launched run (`dagster job launch`), then the second per-chunk stage's
backfill. The runs are queued, and a `dagster-daemon run` process dequeues and launches them. Checked:
every run succeeds, at most 2 ran at once (from the run records' start and end times), each recorded its
inputs fingerprint from inside (orchestration.run_fingerprint), the outputs are byte-identical to those
`latent-atlas run` writes from the same corpus, and `latent-atlas run` on the daemon's home then finds
every stage up to date and launches nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.freshness import FINGERPRINT_TAG
from tests.conftest import write_planted_corpus

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_CHUNKS, MAX_RUNS = 3, 2
UNTIL = "whitened_activations"  # its stages: token_chunks + activations per chunk, whitening, whitened per chunk
WORKSPACE = REPO / "workspace.yaml"  # the project's code location (orchestration.definitions), as `latent-atlas ui`


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "ATLAS_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster")}


def _cli(home: Path, corpus: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--npz", str(corpus), "--home", str(home),
                           "--until", UNTIL], cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300)


def _dagster(home: Path, workspace: Path, *args: str) -> None:
    done = subprocess.run([str(BIN / "dagster"), "job", *args, "-w", str(workspace)], cwd=REPO, env=_env(home),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _wait_for(instance, job: str, count: int, daemon: subprocess.Popen, timeout: float = 180) -> list:
    """The run records of `job` once `count` of them have finished (failing fast if the daemon died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"dagster-daemon exited with {daemon.returncode}"
        records = instance.get_run_records(dg.RunsFilter(job_name=job))
        if len(records) == count and all(r.dagster_run.is_finished for r in records):
            return records
        time.sleep(0.5)
    raise TimeoutError(f"{job}: not {count} finished runs after {timeout} s: "
                       f"{[r.dagster_run.status for r in instance.get_run_records(dg.RunsFilter(job_name=job))]}")


def max_concurrency(records) -> int:
    """The most runs in progress at one moment, from their start and end times."""
    events = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records])  # ends first at ties
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def outputs(home: Path) -> dict[str, bytes]:
    """Every file the stages wrote (tables and tensors), by its path in the home."""
    return {str(p.relative_to(home)): p.read_bytes() for folder in ("tables", "tensors")
            for p in sorted((home / folder).rglob("*")) if p.is_file()}


def test_a_daemon_backfill_matches_latent_atlas_run_and_is_up_to_date_for_it(atlas_home, tmp_path):
    from orchestration.definitions import build_definitions
    from orchestration.home_resources import record_home_resources
    from orchestration.instance import use_atlas_home
    from orchestration.pipeline import register_partitions
    from resources import CorpusResource, ModelResource

    timings: dict[str, float] = {}
    began = time.perf_counter()
    corpus = write_planted_corpus(tmp_path / "corpus", N_CHUNKS)
    reference = tmp_path / "by_cli"
    cli = _cli(reference, corpus)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    timings["latent-atlas run (reference home)"] = time.perf_counter() - began

    home = use_atlas_home(atlas_home)  # the dagster.yaml every home gets: the run queue's limit is set there
    assert f"max_concurrent_runs: {MAX_RUNS}" in (home / "dagster" / "dagster.yaml").read_text()
    # The home's corpus and model, recorded as `latent-atlas run --npz DIR` records them: the code location
    # builds its definitions with them, so its runs' fingerprints are the CLI's.
    cli_resources = {"corpus": CorpusResource(source="npz", path=str(corpus)), "model": ModelResource()}
    record_home_resources(build_definitions(**cli_resources), home)
    assert (home / "dagster" / "resources.json").read_text() == (reference / "dagster" / "resources.json").read_text()
    workspace = WORKSPACE
    keys = cli_resources["corpus"].register(None, "")
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # what the daemon's run queue reads (`concurrency: runs:` overrides the coordinator's own default)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == MAX_RUNS
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        register_partitions(instance, keys)

        started = time.perf_counter()
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], cwd=REPO,
                                  env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _dagster(home, workspace, "backfill", "-j", "token_chunks_stage", "--all", "--noprompt")
            records = _wait_for(instance, "token_chunks_stage", N_CHUNKS, daemon)
            _dagster(home, workspace, "launch", "-j", "whitening_stage")
            records += _wait_for(instance, "whitening_stage", 1, daemon)
            _dagster(home, workspace, "backfill", "-j", "whitened_activations_stage", "--all", "--noprompt")
            records += _wait_for(instance, "whitened_activations_stage", N_CHUNKS, daemon)
        finally:
            daemon.terminate()
            _, daemon_err = daemon.communicate(timeout=60)
        timings["daemon: 7 runs, queued to launched to finished"] = time.perf_counter() - started

        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}, daemon_err[-3000:]
        assert all(FINGERPRINT_TAG in r.dagster_run.tags for r in records)
        concurrency = max_concurrency(records)
        assert concurrency <= MAX_RUNS
        durations = sorted(round(r.end_time - r.start_time, 1) for r in records)
        run_ids = {r.dagster_run.run_id for r in records}

    by_daemon, by_cli = outputs(home), outputs(reference)
    assert by_daemon.keys() == by_cli.keys() and len(by_cli) > 3 * N_CHUNKS, sorted(by_daemon)
    assert [path for path in by_cli if by_daemon[path] != by_cli[path]] == []

    started = time.perf_counter()
    again = _cli(home, corpus)
    timings["latent-atlas run on the daemon's home"] = time.perf_counter() - started
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = [line for line in again.stdout.splitlines() if line.endswith("up to date")]
    assert len(skipped) == 2 * N_CHUNKS + 1, again.stdout
    with dg.DagsterInstance.get() as instance:
        assert {r.run_id for r in instance.get_runs()} == run_ids  # it launched nothing
    print(f"daemon runs: {len(records)}, max concurrency {concurrency} (limit {MAX_RUNS}), "
          f"run wall times {durations} s; follow-up run: {len(skipped)} stages up to date")
    print("\n".join(f"{name}: {seconds:.1f} s" for name, seconds in timings.items()))
