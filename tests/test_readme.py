"""Every example in the README runs as written, on a finished home (the session's small one, MiniLM on
15 BBC articles, standing in for the demo's) at `.atlas` in a scratch folder that holds `.venv` too.

Each command of a bash block is run by bash there, each python block by the project's Python; only
the commands listed in NOT_RUN_HERE are left out, each for the reason given, so an example added to the
README is run here unless someone says why not.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
NOT_RUN_HERE = {
    "make demo": "the demo itself (minutes): CI runs `make test`, which this is part of",
    "make test": "the suite this test is part of",
    "latent-atlas ui": "a server that runs until stopped (tests/test_webserver.py starts one)",
    "webbrowser": "opens a browser window (tests/test_browser.py loads the atlas in headless Chromium)",
    "run --npz DIR": "a template: DIR is the reader's folder (tests/test_kill_points.py runs it)",
    "run --files PATH": "a template: PATH is the reader's file (tests/test_bad_inputs.py runs it)",
    "remove-chunk KEY": "a template: KEY is one of the reader's chunks (tests/test_bad_inputs.py runs it)",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    return [line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines() if line.strip()]


def scratch(finished_home: Path, tmp_path: Path) -> Path:
    here = tmp_path / "reader"
    here.mkdir()
    (here / ".venv").symlink_to(REPO / ".venv")
    shutil.copytree(finished_home, here / ".atlas", symlinks=True)
    return here


def test_every_readme_command_runs_or_says_why_not(finished_home, tmp_path):
    here = scratch(finished_home, tmp_path)
    ran, left = [], set()
    for command in commands():
        reason = next((why for pattern, why in NOT_RUN_HERE.items() if pattern in command), None)
        if reason:
            left.add(next(p for p in NOT_RUN_HERE if p in command))
            continue
        done = subprocess.run(["bash", "-c", command], cwd=here, capture_output=True, text=True, timeout=300,
                              env={"PATH": f"{here / '.venv' / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                   "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        ran.append((command, done.stdout))
    assert left == set(NOT_RUN_HERE)  # each exception still names a command the README has
    analyzed = next(out for command, out in ran if " analyze " in command)
    assert "Token" in analyzed and " taxes" in analyzed  # one row per token of the sentence
    status = next(out for command, out in ran if " status" in command)
    assert "centroids" in status


def test_every_readme_python_example_runs(finished_home, tmp_path):
    here = scratch(finished_home, tmp_path)
    assert len(blocks("python")) >= 2
    for code in blocks("python"):
        done = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
        assert done.stdout.strip() or "print(" not in code
