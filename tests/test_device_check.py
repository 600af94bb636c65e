"""benchmarks/device_check.py, the script a session lent a GPU runs first, runs end to end on this
machine's device in --small mode, so it is known to work before device time is spent on it."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_runs_in_small_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "ATLAS_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "benchmarks/device_check.py", "--small"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"\[device resource\] .*: (cpu|cuda\S*), forward dtype torch\.(float32|bfloat16)", out), out
    # the device's forward pass matches the fp32 CPU pass token by token (exactly so on a CPU in fp32)
    cosine = float(re.search(r"cosine to fp32 CPU per token: min ([0-9.]+)", out).group(1))
    assert cosine > (0.9999 if "on cpu" in out else 0.99), out
    rates = [float(r.replace(",", "")) for r in re.findall(r"([0-9][0-9,.]*) vec/s", out)]
    assert len(rates) == 4 and min(rates) > 0, out  # two bare GEMMs, the learning and the membership pass
    assert re.search(r"\[projection to 38,400,000 vectors at these rates\] forward pass [0-9.]+ h", out), out
