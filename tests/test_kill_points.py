"""SIGKILL at any moment, then a rerun, completes with results identical to an uninterrupted run.

Real processes: `latent-atlas run --npz DIR --until chunk_stats` on a small NPZ corpus, killed with
SIGKILL at three points, each while one of its Dagster runs is in progress: (a) the per-chunk
activations stage, in the second chunk; (b) the centroids fit, once it has written a checkpoint;
(c) the memberships + chunk_stats stage, once the second chunk's memberships Parquet is on disk. Each
kill is followed by a rerun in the same home (which is then killed at the next point), the last rerun
completes, and every output file under ATLAS_HOME is byte-identical to an uninterrupted run's in
another home. Left out of the comparison: the Dagster instance (run ids, times) and the centroids'
checkpoints (intermediate state; their folder is named by the whitened chunks' paths and mtimes).
"""

from __future__ import annotations

import os
import re
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


class Pipeline:
    """One `latent-atlas run` process; its output lines are collected as they come."""

    def __init__(self, corpus: Path, home: Path):
        command = [sys.executable, "-u", "-m", "orchestration.cli", "run", "--npz", str(corpus), "--home", str(home),
                   "--clusters", "4", "--until", "chunk_stats"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready, what: str, timeout: float = 60.0):
        """Poll `ready()` until it returns something true (returned); fail naming `what` if the process
        ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            found = ready()
            if found:
                return found
            assert self.process.poll() is None, f"the run ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.output()}"
            time.sleep(0.005)

    def line(self, pattern: str) -> str:
        return self.wait_for(lambda: next((l for l in list(self.lines) if re.search(pattern, l)), None),
                             f"line /{pattern}/")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL
        self._reader.join(timeout=10)

    def finish(self) -> str:
        assert self.process.wait(timeout=120) == 0, self.output()
        self._reader.join(timeout=10)
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


def kill_during(pipeline: Pipeline, home: Path, stage_line: str, job_prefix: str, partition: str | None,
                then=None) -> dg.DagsterRun:
    """Kill the pipeline while its run of `job_prefix` (for `partition`) is in progress, once `then()`
    (a file of that run's, if given) is true; returns that run, the one left STARTED."""
    pipeline.line(r"registered \d+ chunk partitions")  # the home's instance exists from here on
    with instance_of(home) as instance:  # opened before the stage: its runs last a few tenths of a second
        pipeline.line(stage_line)
        run = pipeline.wait_for(lambda: running(instance, job_prefix, partition), f"a {job_prefix} run of {partition}")
        if then is not None:
            pipeline.wait_for(lambda: then() or running(instance, job_prefix, partition) is None, "the kill point")
        pipeline.kill()
        left = in_progress_runs(instance)
    assert [r.run_id for r in left] == [run.run_id], f"the kill landed outside {job_prefix}: {left}"
    return run


def test_kill_at_three_points_then_rerun_gives_the_uninterrupted_results(tmp_path):
    corpus = write_planted_corpus(tmp_path / "corpus", N_CHUNKS)
    keys = [f"corpus-part{i}" for i in range(N_CHUNKS)]
    began = time.perf_counter()
    uninterrupted = tmp_path / "uninterrupted"
    Pipeline(corpus, uninterrupted).finish()
    expected = outputs(uninterrupted)
    with instance_of(uninterrupted):  # the first open in a process takes ~0.5 s (imports); pay it here
        pass
    assert len(expected) >= 40 and any(name.endswith(".parquet") for name in expected)

    home = tmp_path / "killed"
    first = Pipeline(corpus, home)  # (a) per chunk, in the second chunk's activations run
    killed = [kill_during(first, home, r"chunk 1/4 \S+ done", "token_chunks_stage", keys[1])]

    second = Pipeline(corpus, home)  # (b) in the centroids fit, after a checkpoint
    killed.append(kill_during(second, home, r"stage \d/\d centroids", "centroids_stage", None,
                              then=lambda: checkpoints(home)))
    checkpoint_at_kill = checkpoints(home)[-1].name

    third = Pipeline(corpus, home)  # (c) memberships + chunk_stats, after the second chunk's Parquet
    parquet = home / "tables" / "memberships" / f"{keys[1]}.parquet"
    killed.append(kill_during(third, home, r"stage \d/\d chunk_stats\+memberships", "memberships_stage", keys[1],
                              then=parquet.exists))
    temp_at_kill = temp_files(home)

    rerun = Pipeline(corpus, home).finish()
    points = [f"{r.job_name}[{r.tags.get('dagster/partition', 'global')}]" for r in killed]
    print(f"kill points: {points}; "
          f"newest checkpoint at (b): {checkpoint_at_kill}; temp files after (c): {len(temp_at_kill)}; "
          f"{time.perf_counter() - began:.0f} s in all\n--- the last rerun printed:\n{rerun}")
    for process, run in zip((second, third), killed):  # each rerun marks the run it finds killed
        assert f"marked run {run.run_id} failed" in process.output()
    assert f"marked run {killed[2].run_id} failed" in rerun
    assert "failed chunks: 0" in rerun

    with instance_of(home) as instance:
        assert not in_progress_runs(instance)
        assert {instance.get_run_by_id(r.run_id).status for r in killed} == {dg.DagsterRunStatus.FAILURE}
    assert temp_files(home) == []
    got = outputs(home)
    assert sorted(got) == sorted(expected)
    differ = [name for name in expected if got[name] != expected[name]]
    assert not differ, f"not byte-identical to the uninterrupted run: {differ}"
