"""SIGKILL at three points of a run, then a rerun, completes with results identical to an uninterrupted run.

Real processes: `latent-atlas run --npz DIR --until chunk_stats` on a small NPZ corpus, killed with
SIGKILL at three points, each inside one of its Dagster runs: (a) the per-chunk activations stage of
the second chunk, once its token_chunks Parquet is written; (b) the centroids fit, once it has
written its first checkpoint; (c) the memberships + chunk_stats stage of the second chunk, once its
memberships Parquet is written. The process kills itself at the point (a wrapper the test installs
before the CLI starts, around our own write functions): the point is exact on any machine, however
fast its runs, where a watcher polling from outside races a run of a few tenths of a second. Each
kill is followed by a rerun in the same home (which is then killed at the next point), the last
rerun completes, and every output file under ATLAS_HOME is byte-identical to an uninterrupted run's
in another home. Left out of the comparison: the Dagster instance (run ids, times) and the
centroids' checkpoints (intermediate state; their folder is named by the whitened chunks' paths and
mtimes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg

from tests.conftest import write_planted_corpus

REPO = Path(__file__).resolve().parents[1]
N_CHUNKS = 4
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


# Run in the child before the CLI: SIGKILL the process right after one of our own writes, inside a run.
KILL_AT = """
import os, signal, sys, runpy
import io_managers.parquet as parquet, latent_atlas.clustering.model as clustering
point, args, sig = {point!r}, {args!r}, {sig!r}
kill = lambda: os.kill(os.getpid(), getattr(signal, sig))
if point == "checkpoint":
    write_checkpoint = clustering.write_checkpoint
    def written_then_killed(*a, **k):
        write_checkpoint(*a, **k)
        kill()
    clustering.write_checkpoint = written_then_killed
elif point is not None:
    asset, partition = point
    handle_output = parquet.ParquetIOManager.handle_output
    def handled_then_killed(self, context, obj):
        handle_output(self, context, obj)
        if context.asset_key.path[-1] == asset and context.partition_key == partition:
            kill()
    parquet.ParquetIOManager.handle_output = handled_then_killed
sys.argv = ["latent-atlas", *args]
runpy.run_module("orchestration.cli", run_name="__main__")
"""


class Pipeline:
    """One `latent-atlas run` process, killed at `kill_at` if given ("checkpoint": after the centroids'
    first checkpoint; (asset, partition): after that Parquet output is written); its output lines are
    collected as they come."""

    def __init__(self, corpus: Path, home: Path, kill_at: str | tuple[str, str] | None = None, sig: str = "SIGKILL"):
        args = ["run", "--npz", str(corpus), "--home", str(home), "--clusters", "4", "--until", "chunk_stats"]
        command = [sys.executable, "-u", "-c", KILL_AT.format(point=kill_at, args=args, sig=sig)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def ended(self, expected: int) -> str:
        """Wait for the process to end with exit status `expected` (-9: killed at its point, 0: finished)."""
        code = self.process.wait(timeout=180)
        self._reader.join(timeout=10)
        assert code == expected, f"the run ended with {code}, not {expected}:\n{self.output()}"
        return self.output()


def instance_of(home: Path) -> dg.DagsterInstance:
    """The home's instance, opened beside the CLI's (Dagster's SQLite storage takes several processes)."""
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def in_progress_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)))


def running(instance: dg.DagsterInstance, job_prefix: str, partition: str | None):
    """The in-progress run of a job whose name starts with `job_prefix` (for `partition`), if any."""
    return next((r for r in in_progress_runs(instance) if r.job_name.startswith(job_prefix)
                 and r.tags.get("dagster/partition") == partition), None)


def checkpoints(home: Path) -> list[Path]:
    return sorted((home / "checkpoints" / "centroids").glob("*/checkpoint-*.npz"))


def temp_files(home: Path) -> list[Path]:
    """Hidden names under the home outside the Dagster instance: the atomic writers' temp files and dirs."""
    return [p for p in home.rglob(".*") if "dagster" not in p.relative_to(home).parts]


def outputs(home: Path) -> dict[str, bytes]:
    skip = {"dagster", "checkpoints"}
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and not skip & set(p.relative_to(home).parts)}


def killed_inside(pipeline: Pipeline, home: Path, job_prefix: str, partition: str | None) -> dg.DagsterRun:
    """The run the pipeline was killed in: it must be the only one left in progress, of `job_prefix`
    (for `partition`)."""
    pipeline.ended(-signal.SIGKILL)
    with instance_of(home) as instance:
        left = in_progress_runs(instance)
    assert len(left) == 1 and left[0].job_name.startswith(job_prefix), f"the kill landed outside {job_prefix}: {left}"
    assert left[0].tags.get("dagster/partition") == partition
    return left[0]


def test_kill_at_three_points_then_rerun_gives_the_uninterrupted_results(tmp_path):
    corpus = write_planted_corpus(tmp_path / "corpus", N_CHUNKS)
    keys = [f"corpus-part{i}" for i in range(N_CHUNKS)]
    began = time.perf_counter()
    uninterrupted = tmp_path / "uninterrupted"
    Pipeline(corpus, uninterrupted).ended(0)
    expected = outputs(uninterrupted)
    assert len(expected) >= 40 and any(name.endswith(".parquet") for name in expected)

    home = tmp_path / "killed"
    first = Pipeline(corpus, home, kill_at=("token_chunks", keys[1]))  # (a) per chunk, the second chunk's inputs
    killed = [killed_inside(first, home, "token_chunks_stage", keys[1])]

    second = Pipeline(corpus, home, kill_at="checkpoint")  # (b) in the centroids fit, after a checkpoint
    killed.append(killed_inside(second, home, "centroids_stage", None))
    checkpoint_at_kill = checkpoints(home)[-1].name

    third = Pipeline(corpus, home, kill_at=("memberships", keys[1]))  # (c) after the second chunk's memberships
    killed.append(killed_inside(third, home, "memberships_stage", keys[1]))
    assert (home / "tables" / "memberships" / f"{keys[1]}.parquet").exists()
    temp_at_kill = temp_files(home)

    # (d) SIGTERM, a scheduler's stop, in the third chunk's memberships run: that run fails cleanly, nothing
    # runs after it, and the process ends promptly with 128 + 15
    stopped = Pipeline(corpus, home, kill_at=("memberships", keys[2]), sig="SIGTERM")
    assert f"stopped in stage memberships, chunk {keys[2]}" in stopped.ended(128 + signal.SIGTERM)
    with instance_of(home) as instance:
        assert not in_progress_runs(instance)
        last = instance.get_runs(limit=1)[0]
        assert last.job_name.startswith("memberships_stage") and last.tags["dagster/partition"] == keys[2]
        assert last.status == dg.DagsterRunStatus.FAILURE
    assert temp_files(home) == []

    rerun = Pipeline(corpus, home).ended(0)
    points = [f"{r.job_name}[{r.tags.get('dagster/partition', 'global')}]" for r in killed]
    print(f"kill points: {points}; "
          f"newest checkpoint at (b): {checkpoint_at_kill}; temp files after (c): {len(temp_at_kill)}; "
          f"{time.perf_counter() - began:.0f} s in all\n--- the last rerun printed:\n{rerun}")
    for process, run in zip((second, third), killed):  # each rerun marks the run it finds killed
        assert f"marked run {run.run_id} failed" in process.output()
    assert f"marked run {killed[2].run_id} failed" in stopped.output()  # the next start marks the killed run
    assert "failed chunks: 0" in rerun

    with instance_of(home) as instance:
        assert not in_progress_runs(instance)
        assert {instance.get_run_by_id(r.run_id).status for r in killed} == {dg.DagsterRunStatus.FAILURE}
    assert temp_files(home) == []
    got = outputs(home)
    assert sorted(got) == sorted(expected)
    differ = [name for name in expected if got[name] != expected[name]]
    assert not differ, f"not byte-identical to the uninterrupted run: {differ}"
