"""Where a per-chunk stage run's fixed cost goes (issue 28, item 4).

`python benchmarks/run_overhead.py [--dim D] [N_SEQ ...]` (default 32 512): for each chunk size, a fresh home
of two planted chunks (N_SEQ sequences of 128 tokens, d=D, default 576 as SmolLM2's, float16) materialized up to whitening
with the CLI's resources, then runs of whitened_activations_stage for chunk 0:

- in process: the stage job's execute_in_process in this warm process, as `latent-atlas run` does;
- fresh process, execute_in_process: a new Python doing what a run worker does before and around the
  run (start, imports, loading the code location, opening the instance), then the run in it;
- fresh process, the definitions' executor: the same run through `execute_job`, as a run the daemon or
  the webserver launches executes, with the executor `build_definitions` sets (in process);
- fresh process, multiprocess executor: the same with Dagster's default executor (what those runs got
  before): the step executes in one more process that starts, imports and loads the code again.

Parts: python start (until the script's first line), imports (dagster, then our assets, resources, IO
managers and library), code location load (orchestration.definitions, build_definitions and the job),
instance open, the run's wall time split into the step (STEP_START to STEP_SUCCESS: input load, compute,
output write) and the rest (plan, resources, events), and the event writes (the run's events times one
event write's mean here). No model is loaded: the stage reads NPZ
activations. overhead = everything but the step; the ratio is overhead/step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.time()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGE = "whitened_activations_stage"
SEQ_LEN = 128


def _job():
    """The stage job of the home in $ATLAS_HOME (for dg.reconstructable: the multiprocess executor)."""
    from orchestration.definitions import build_definitions
    from resources import CorpusResource, ModelResource

    import dagster as dg

    executor = {"multiprocess": dg.multiprocess_executor}.get(os.environ.get("RUN_OVERHEAD_EXECUTOR", ""))
    defs = build_definitions(corpus=CorpusResource(source="npz", path=os.environ["RUN_OVERHEAD_CORPUS"]),
                             model=ModelResource(), **({"executor": executor} if executor else {}))
    return defs.resolve_job_def(STAGE)


def worker(key: str, launched: bool) -> None:
    """A fresh process's run of the stage for `key`; prints its phases' wall clock times as JSON."""
    times = {"main": T0}
    import dagster as dg

    times["import dagster"] = time.time()
    import assets  # noqa: F401 - our code: the assets, resources, IO managers and the library they import
    import io_managers  # noqa: F401
    import resources  # noqa: F401

    times["import our code"] = time.time()
    job = _job()  # imports orchestration.definitions (which builds the default definitions), builds ours
    times["code location load"] = time.time()
    instance = dg.DagsterInstance.get()
    times["instance open"] = time.time()
    if launched:
        result = dg.execute_job(dg.reconstructable(_job), instance, tags={"dagster/partition": key})
    else:
        result = job.execute_in_process(instance=instance, partition_key=key)
    times["run"] = time.time()
    assert result.success
    print(json.dumps({"times": times, "run_id": result.run_id}))


def step_and_events(instance, run_id: str) -> tuple[float, int]:
    import dagster as dg

    logs = instance.all_logs(run_id)
    kinds = [(e.timestamp, e.dagster_event.event_type) for e in logs if e.dagster_event]
    start = min(t for t, k in kinds if k == dg.DagsterEventType.STEP_START)
    done = max(t for t, k in kinds if k == dg.DagsterEventType.STEP_SUCCESS)
    return done - start, len(logs)


def event_write_seconds(instance, run_id: str, n: int = 50) -> float:
    """One event write's mean wall time on this instance (an engine event into an existing run)."""
    run = instance.get_run_by_id(run_id)
    began = time.perf_counter()
    for i in range(n):
        instance.report_engine_event(f"timing {i}", run)
    return (time.perf_counter() - began) / n


def measure(n_seq: int, dim: int) -> None:
    import dagster as dg
    import numpy as np

    home = Path(tempfile.mkdtemp(prefix="run-overhead-"))
    corpus = home / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        mask = np.ones((n_seq, SEQ_LEN), dtype=bool)
        np.savez(corpus / f"part{i}.npz", activations=rng.standard_normal((n_seq, SEQ_LEN, dim), dtype=np.float32).astype(np.float16),
                 attention_mask=mask, token_ids=rng.integers(0, 1000, (n_seq, SEQ_LEN)).astype(np.int32))
    from orchestration.instance import use_atlas_home

    use_atlas_home(home / "atlas")
    os.environ["RUN_OVERHEAD_CORPUS"] = str(corpus)
    from orchestration.jobs import stages_of
    from orchestration.pipeline import register_partitions, run_stages
    from resources import CorpusResource

    job = _job()
    keys = CorpusResource(source="npz", path=str(corpus)).register(None, "")
    rows = {}
    with dg.DagsterInstance.get() as instance:
        register_partitions(instance, keys)
        from orchestration.definitions import build_definitions

        defs = build_definitions(corpus=CorpusResource(source="npz", path=str(corpus)))
        run_stages(defs, instance, keys, stages_of(defs, ["whitening"]), log=lambda _: None)
        for _ in range(2):  # the second: warm, as every run after the first of `latent-atlas run`
            began = time.perf_counter()
            result = job.execute_in_process(instance=instance, partition_key=keys[0])
            wall = time.perf_counter() - began
        step, events = step_and_events(instance, result.run_id)
        rows["in process"] = {"run": wall, "step": step, "events": events}
        fresh = (("fresh process, execute_in_process", [], ""),
                 ("fresh process, the definitions' executor (in process; a launched run's path)", ["--launched"], ""),
                 ("fresh process, multiprocess executor (a launched run's path before)", ["--launched"], "multiprocess"))
        for name, flag, executor in fresh:
            popen = time.time()
            env = {**os.environ, "PYTHONPATH": str(REPO), "RUN_OVERHEAD_EXECUTOR": executor}
            out = subprocess.run([sys.executable, __file__, "--worker", keys[0], *flag], capture_output=True, text=True,
                                 env=env, timeout=600, check=True).stdout
            done = json.loads(out.strip().splitlines()[-1])
            t = done["times"]
            step, events = step_and_events(instance, done["run_id"])
            rows[name] = {"python start": t["main"] - popen, "import dagster": t["import dagster"] - t["main"],
                          "import our code": t["import our code"] - t["import dagster"],
                          "code location load": t["code location load"] - t["import our code"],
                          "instance open": t["instance open"] - t["code location load"],
                          "run": t["run"] - t["instance open"], "step": step, "events": events}
        per_event = event_write_seconds(instance, result.run_id)
    shutil.rmtree(home)  # GBs at the larger sizes
    print(f"\nchunk of {n_seq} x {SEQ_LEN} tokens, d={dim} ({n_seq * SEQ_LEN * dim * 2 / 2**20:.0f} MiB float16); "
          f"one event write {per_event * 1000:.1f} ms")
    for name, row in rows.items():
        fixed = sum(v for k, v in row.items() if k not in ("run", "step", "events")) + row["run"] - row["step"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("step", "events", "run"))
        print(f"  {name}: {parts + ', ' if parts else ''}run {row['run']:.2f} (step {row['step']:.2f}, rest "
              f"{row['run'] - row['step']:.2f}, {row['events']} events ~ {row['events'] * per_event:.2f} s of writes); "
              f"overhead {fixed:.2f} s, overhead/step {fixed / row['step']:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], "--launched" in sys.argv)
    else:
        args = sys.argv[1:]
        dim = int(args.pop(args.index("--dim") + 1)) if "--dim" in args else 576
        args = [a for a in args if a != "--dim"]
        for size in [int(a) for a in args] or [32, 512]:
            measure(size, dim)
