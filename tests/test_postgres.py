"""The instance on a real PostgreSQL server: four per-chunk runs at once, in four processes, then the rest.

The test starts Debian's PostgreSQL 15 itself (initdb + pg_ctl in a temp dir, on a free port; stopped
and removed at the end) and points a home at it with use_atlas_home(postgres_url=...), which writes
dagster.yaml with postgres storage. Four processes, each opening that home the way the CLI does, wait at
a file barrier and then run the token_chunks_stage job (token_chunks + activations) of one chunk each
through run_stages; each run then waits, inside, until all four are inside theirs (a wrapper around the
Parquet write, installed by the worker), so the four runs overlap in time on any machine. Checked: the four runs are SUCCESS in the server's
run storage (read with psycopg2 too, not only through Dagster), their windows overlap, every run has
its materializations, the Parquet and chunk outputs have the corpus's shapes, and `latent-atlas run` on
the same home finds those chunks up to date and completes the pipeline.

Skipped where PostgreSQL's server binaries are not installed (CI without postgresql-15).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path(os.environ.get("ATLAS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
N_CHUNKS = 4
SEQUENCES, LENGTH, DIM = 16, 16, 32
STAGE_JOB = "token_chunks_stage"
# What `latent-atlas run --npz DIR` builds: the workers' resources must be the CLI's, so that the CLI's
# run afterwards finds their runs' fingerprints (orchestration.freshness) and skips those chunks.
CLI_CORPUS = {"source": "npz", "name": "", "sequences_per_chunk": 256, "expected_dim": 0, "already_whitened": False}
CLI_MODEL = {"name": "smollm2-135m", "layer": 0}


def _as_postgres() -> list[str]:
    """The command prefix that runs a server binary: PostgreSQL refuses to run as root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres_url():
    """A PostgreSQL server of its own (trust auth on 127.0.0.1), with an empty database `atlas`."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql-15)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="atlas-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    port = _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*_as_postgres(), *args], check=True, capture_output=True, text=True, timeout=60)

    started = False
    try:
        pg(str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
        pg("mkdir", str(sockets))
        pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start",
           "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1")
        started = True
        pg(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "atlas")
        yield f"postgresql://postgres@127.0.0.1:{port}/atlas"
    except subprocess.CalledProcessError as exc:
        server_log = log.read_text() if log.exists() else ""
        raise RuntimeError(f"{exc.cmd} failed: {exc.stderr}\n{server_log}") from exc
    finally:
        if started:
            subprocess.run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def worker(home: str, corpus: str, key: str, barrier: str, count: int) -> int:
    """One process's run: open the home (its dagster.yaml names the server), wait until `count` workers
    are ready, then materialize `key`'s token_chunks + activations. Prints its timings as JSON."""
    began = time.time()
    from orchestration.instance import use_atlas_home

    use_atlas_home(home)  # no URL: dagster.yaml, written with one, keeps the postgres storage
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.jobs import stages_of
    from orchestration.pipeline import run_stages
    from resources import CorpusResource, ModelResource

    defs = build_definitions(corpus=CorpusResource(**CLI_CORPUS, path=corpus), model=ModelResource(**CLI_MODEL))
    stages = stages_of(defs, ["activations"])
    assert [names for names, _ in stages] == [("activations", "token_chunks")], stages
    import io_managers.parquet as parquet

    handle_output = parquet.ParquetIOManager.handle_output

    def held_open(self, context, obj):  # inside the run: wait until every worker's run is inside its own
        handle_output(self, context, obj)
        meet(barrier, key, "inside", count)

    parquet.ParquetIOManager.handle_output = held_open  # so the four runs overlap on any machine, however fast
    with dg.DagsterInstance.get() as instance:
        ready = time.time()
        meet(barrier, key, "ready", count)
        released = time.time()
        report = run_stages(defs, instance, [key], stages, log=lambda _: None)
        done = time.time()
    print(json.dumps({"key": key, "pid": os.getpid(), "setup_s": ready - began, "barrier_s": released - ready,
                      "run_s": done - released, "failed": report.failed, "skipped": report.skipped}))
    return 0 if not report.failed and not report.skipped else 1


def meet(barrier: str, key: str, stage: str, count: int) -> None:
    """Wait until `count` workers have reached `stage` (a file each in the barrier folder)."""
    Path(barrier, f"{key}.{stage}").touch()
    deadline = time.monotonic() + 120
    while len(list(Path(barrier).glob(f"*.{stage}"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key}: the other workers never reached {stage}")
        time.sleep(0.002)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def test_four_concurrent_chunk_runs_on_postgres_then_the_pipeline(atlas_home, tmp_path, postgres_url):
    import dagster as dg
    import psycopg2
    import pyarrow.parquet as pq

    from latent_atlas.data.chunks import read_chunk
    from latent_atlas.data.corpus import TokenChunk
    from orchestration.instance import use_atlas_home
    from orchestration.pipeline import register_partitions
    from resources import CorpusResource

    timings: dict[str, float] = {}
    began = time.perf_counter()
    from tests.conftest import write_planted_corpus

    corpus = write_planted_corpus(tmp_path / "corpus", N_CHUNKS, n_seq=SEQUENCES, seq_len=LENGTH, dim=DIM)
    home = use_atlas_home(atlas_home, postgres_url=postgres_url)
    assert "postgres_url: \"postgresql+psycopg2://postgres@" in (home / "dagster" / "dagster.yaml").read_text()
    registration = CorpusResource(**CLI_CORPUS, path=str(corpus)).registration(None, CLI_MODEL["name"])
    keys = registration.keys
    assert keys == [f"corpus-part{i}" for i in range(N_CHUNKS)], registration.warnings()
    # The parent creates the schema and registers the partitions before any worker opens the instance.
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        register_partitions(instance, keys)
    timings["server, corpus and schema"] = time.perf_counter() - began

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "tests.test_postgres", str(home), str(corpus), key,
                                 str(barrier), str(N_CHUNKS)],
                                cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for key in keys]
    outputs = [w.communicate(timeout=150) for w in workers]
    timings["4 concurrent workers (wall)"] = time.perf_counter() - started
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, f"worker failed ({w.returncode}):\n{out}\n{err}"
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert len({r["pid"] for r in reports}) == N_CHUNKS

    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(job_name=STAGE_JOB))
        assert len(records) == N_CHUNKS
        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == keys
        starts, ends = [r.start_time for r in records], [r.end_time for r in records]
        # one moment when all four runs were in progress at once
        assert max(starts) < min(ends), f"the runs did not overlap: starts {starts}, ends {ends}"
        timings["runs' common window"] = min(ends) - max(starts)
        for record in records:
            key = record.dagster_run.tags["dagster/partition"]
            events = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            assert {(e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition) for e in events} \
                == {("token_chunks", key), ("activations", key)}
            checks = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            assert checks and all(e.dagster_event.event_specific_data.passed for e in checks)
        run_ids = {r.dagster_run.run_id for r in records}

    # The runs are rows of the server's database, not of a SQLite file beside dagster.yaml.
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs WHERE pipeline_name = %s", (STAGE_JOB,))
        assert dict(cursor.fetchall()) == {run_id: "SUCCESS" for run_id in run_ids}
        cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type = %s",
                       (list(run_ids), "ASSET_MATERIALIZATION"))
        assert cursor.fetchone()[0] == 2 * N_CHUNKS
    assert not list((home / "dagster").rglob("*.db"))

    for i, key in enumerate(keys):
        with np.load(corpus / f"part{i}.npz") as source:
            table = pq.read_table(home / "tables" / "token_chunks" / f"{key}.parquet")
            assert table.num_rows == SEQUENCES
            tokens = TokenChunk.from_table(table)
            assert tokens.token_ids.shape == (SEQUENCES, LENGTH)
            np.testing.assert_array_equal(tokens.token_ids, source["token_ids"])
            chunk = read_chunk(home / "tensors" / "activations" / key)
            assert chunk.activations.shape == (SEQUENCES, LENGTH, DIM)
            np.testing.assert_array_equal(chunk.activations, source["activations"])
            np.testing.assert_array_equal(chunk.attention_mask, source["attention_mask"])

    # The rest of the pipeline, by the CLI on the same home: dagster.yaml still names the server.
    started = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--npz", str(corpus), "--home", str(home),
                          "--clusters", "4"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    timings["latent-atlas run, the rest"] = time.perf_counter() - started
    assert cli.returncode == 0, cli.stdout + cli.stderr
    for i, key in enumerate(keys, start=1):
        assert f"chunk {i}/{N_CHUNKS} {key} up to date" in cli.stdout, cli.stdout
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert len([r for r in runs if r.job_name == STAGE_JOB]) == N_CHUNKS  # not run again
        later = {r.job_name for r in runs} - {STAGE_JOB}
        assert {"whitening_stage", "centroids_stage", "memberships_stage"} <= later, later
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    for key in keys:
        memberships = pq.read_table(home / "tables" / "memberships" / f"{key}.parquet")
        assert memberships.num_rows > 0
    timings["whole test"] = time.perf_counter() - began
    print("\n".join(f"{name}: {seconds:.2f} s" for name, seconds in timings.items()))
    for report in reports:
        print(f"worker {report['key']}: setup {report['setup_s']:.2f} s, barrier {report['barrier_s']:.2f} s, "
              f"run {report['run_s']:.2f} s")


if __name__ == "__main__":
    home_, corpus_, key_, barrier_, count_ = sys.argv[1:]
    sys.exit(worker(home_, corpus_, key_, barrier_, int(count_)))
