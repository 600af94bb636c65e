"""A run whose process is killed (SIGKILL) is marked failed when latent-atlas next starts; a live one is not."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from orchestration.instance import fail_orphaned_runs, use_atlas_home

REPO = Path(__file__).resolve().parents[1]

# A real Dagster run on the home's persistent instance, in its own process, that blocks mid-step.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg
    from orchestration.instance import use_atlas_home

    use_atlas_home(sys.argv[1])
    flag = Path(sys.argv[2])

    @dg.asset
    def slow_asset():
        flag.write_text("started")
        time.sleep(120)

    dg.materialize([slow_asset], instance=dg.DagsterInstance.get())
""")


def start_run(home: Path, flag: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(flag)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child run did not start"
        time.sleep(0.1)
    return child


def test_a_killed_run_is_marked_failed_and_a_live_one_is_left(tmp_path, monkeypatch):
    home = tmp_path / "home"
    killed = start_run(home, tmp_path / "killed")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    live = start_run(home, tmp_path / "live")
    try:
        monkeypatch.setenv("DAGSTER_HOME", "")
        use_atlas_home(home)
        with dg.DagsterInstance.get() as instance:
            statuses = lambda: sorted(r.status.value for r in instance.get_runs())  # noqa: E731
            assert statuses() == ["STARTED", "STARTED"]  # both look in progress: nothing watches them
            orphans = fail_orphaned_runs(instance)
            assert len(orphans) == 1
            assert instance.get_run_by_id(orphans[0]).status == dg.DagsterRunStatus.FAILURE
            assert statuses() == ["FAILURE", "STARTED"]  # the live run is left alone
            assert fail_orphaned_runs(instance) == []  # marked once
            message = [e.message for e in instance.all_logs(orphans[0]) if e.dagster_event
                       and e.dagster_event.event_type_value == "PIPELINE_FAILURE"][-1]
            assert "killed" in message and str(killed.pid) in message
    finally:
        live.kill()
        live.wait()
