"""`latent-atlas run --workers N`: a per-chunk stage's runs in N worker processes at once write the
same bytes as one at a time, and each worker of a machine with several GPUs sees one of them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.workers import gpu_assignment, visible_gpus
from tests.conftest import write_planted_corpus

REPO = Path(__file__).resolve().parents[1]
N_CHUNKS = 4


def test_gpu_assignment_gives_each_worker_one_gpu_in_turn():
    assert gpu_assignment(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert gpu_assignment(3, ["2", "5", "7"]) == ["2", "5", "7"]
    assert gpu_assignment(2, ["0"]) == [None, None]  # one GPU: every worker shares it, as without workers
    assert gpu_assignment(2, []) == [None, None]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    assert visible_gpus() == ["3", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def _run(home: Path, corpus: Path, workers: int, gpus: str | None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--npz", str(corpus), "--home", str(home),
                           "--until", "memberships", "--clusters", "4", "--workers", str(workers)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def outputs(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for folder in ("tables", "tensors")
            for p in sorted((home / folder).rglob("*")) if p.is_file()}


@pytest.mark.multiprocess
def test_two_workers_write_the_bytes_one_process_writes(tmp_path):
    corpus = write_planted_corpus(tmp_path / "corpus", N_CHUNKS)
    alone = _run(tmp_path / "alone", corpus, 1, None)
    # two GPUs named (none is needed: the device resource falls back to the CPU): one per worker
    pooled = _run(tmp_path / "pooled", corpus, 2, "0,1")
    assert "(worker" not in alone
    done = re.findall(r"chunk \d+/\d+ (\S+) done in [\d.]+ s \(worker (\d+), GPU (\d)\)", pooled)
    assert len(done) == 3 * N_CHUNKS, pooled  # three per-chunk stages: inputs, whitened, memberships
    workers = {pid: gpu for _, pid, gpu in done}
    assert len(workers) == 2 and sorted(workers.values()) == ["0", "1"], workers
    by_one, by_two = outputs(tmp_path / "alone"), outputs(tmp_path / "pooled")
    assert by_one.keys() == by_two.keys() and len(by_one) > 3 * N_CHUNKS
    assert [path for path in by_one if by_one[path] != by_two[path]] == []
    print("\n".join(line for line in pooled.splitlines() if "worker" in line or line.startswith("  ")))
