"""The persistent Dagster instance lives in ATLAS_HOME/dagster."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Per-chunk partitions run as separate runs; the queue bounds how many run at once (one machine).
# Run monitoring (the daemon of `latent-atlas ui`) marks runs whose worker died failed; runs of the
# CLI, which execute in its own process, are marked by fail_orphaned_runs when it next starts.
DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
"""

# SQLite (the default) serializes writers; many runs at once, or runs on several machines, need a
# server. docs/deployment.md has the production dagster.yaml (run launchers, the Dask backend).
POSTGRES_STORAGE = """\
storage:
  postgres:
    postgres_url: "{url}"
"""
POSTGRES_URL_ENV = "ATLAS_POSTGRES_URL"


def dagster_yaml(postgres_url: str = "") -> str:
    """The instance's dagster.yaml: SQLite storage in DAGSTER_HOME, or PostgreSQL at `postgres_url`
    (postgresql://user:password@host:port/database)."""
    return DAGSTER_YAML + (POSTGRES_STORAGE.format(url=with_psycopg2(postgres_url)) if postgres_url else "")


def with_psycopg2(postgres_url: str) -> str:
    """The URL with the driver dagster-postgres installs (psycopg2) named: SQLAlchemy 2.1 takes a bare
    postgresql:// for psycopg 3, which is not installed. A URL that names a driver is kept as it is."""
    for scheme in ("postgresql://", "postgres://"):
        if postgres_url.startswith(scheme):
            return "postgresql+psycopg2://" + postgres_url[len(scheme):]
    return postgres_url


def use_atlas_home(home: str | Path = "", postgres_url: str = "") -> Path:
    """Point ATLAS_HOME (default ./.atlas) and DAGSTER_HOME (inside it) at `home`; write dagster.yaml once.

    With `postgres_url` (or $ATLAS_POSTGRES_URL) the instance keeps its runs, events and schedules in
    that PostgreSQL database; dagster.yaml is rewritten when it names another storage, so the choice
    sticks for later commands without the flag. Runs already in the other storage stay there.
    """
    if home:
        os.environ["ATLAS_HOME"] = str(Path(home).resolve())
    from latent_atlas.data.paths import atlas_home

    path = atlas_home()
    dagster_home = path / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    postgres_url = postgres_url or os.environ.get(POSTGRES_URL_ENV, "")
    config = dagster_home / "dagster.yaml"
    if not config.exists() or (postgres_url and config.read_text() != dagster_yaml(postgres_url)):
        config.write_text(dagster_yaml(postgres_url))
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return path


def runs_in_progress(instance, limit: int | None = None) -> list:
    """The instance's runs still STARTING or STARTED (newest first)."""
    import dagster as dg

    statuses = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=statuses), limit=limit))


def fail_orphaned_runs(instance) -> list[str]:
    """Mark failed every run still STARTING/STARTED whose process on this host is gone (killed with
    SIGKILL, or the machine lost power): without this such a run shows as in progress forever. Returns
    their run ids. A run whose process lives (another CLI, the UI's workers) is left alone."""
    orphans = []
    for run in runs_in_progress(instance):
        pid = _last_pid(instance, run.run_id)
        if pid is None or _alive(pid):
            continue
        instance.report_run_failed(run, message=f"run worker (pid {pid} on {socket.gethostname()}) is gone: the "
                                   "process was killed; marked failed when latent-atlas next started")
        orphans.append(run.run_id)
    return orphans


def _last_pid(instance, run_id: str) -> int | None:
    """The process that wrote the run's last event on this host, if any event says so."""
    for record in reversed(instance.all_logs(run_id)):
        event = record.dagster_event
        if event is not None and event.pid is not None:
            return int(event.pid)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
