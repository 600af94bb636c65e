"""Materialize the asset graph stage by stage on a persistent Dagster instance (demo, scripts, tests).

The same assets the UI materializes; per-chunk stages run once per partition, global stages once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from assets.partitions import chunks
from orchestration.freshness import FINGERPRINT_TAG, stage_fingerprint, up_to_date
from orchestration.jobs import Stage, stage_job, stage_job_name, stages_of
from orchestration.stop import STOP, Stopped
from orchestration.workers import ChunkWorkers


@dataclass
class PipelineReport:
    keys: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # partition key -> error naming the file and problem
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    refused: dict[str, str] = field(default_factory=dict)  # partition key -> why a global stage left it out
    skipped: list[tuple[str, str | None]] = field(default_factory=list)  # (stage, partition) found up to date

    def problem_lines(self) -> list[str]:
        """One line per chunk that failed or was left out, naming the file and the problem."""
        return ([f"  chunk {key} failed: {error}" for key, error in self.failed.items()]
                + [f"  chunk {key} left out of the global fits: {problem}" for key, problem in self.refused.items()
                   if key not in self.failed])


def register_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    new = [k for k in keys if not instance.has_dynamic_partition(chunks.name, k)]
    if new:
        instance.add_dynamic_partitions(chunks.name, list(dict.fromkeys(new)))


def run_stages(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[str],
    stages: list[Stage] | None = None,
    log: Callable[[str], None] = print,
    dagster_log_level: str = "CRITICAL",
    asset_config: dict[str, dict] | None = None,
    skip_up_to_date: bool = True,
    workers: int = 1,
) -> PipelineReport:
    """Materialize each stage; a chunk that fails is reported and skipped by later stages.

    Logs progress per stage and per chunk; a chunk that fails is one line naming its file and problem
    ('ChunkError: <file>: <problem>'), and a global stage that leaves chunks out (metadata
    `refused_chunks`) has them recorded in the report. Dagster's own console logger prints only
    from `dagster_log_level` up (default CRITICAL: its stack traces of a failed step, dozens of lines
    a bad file, and its DEBUG events would bury the progress lines); every event, stacks included, is
    still in the instance's event log for the UI. `asset_config` {asset: its config}
    is the run config of the assets it names (e.g. {"centroids": {"n_clusters": 64}}). With
    `skip_up_to_date`, a stage (of one chunk, or global) whose outputs were materialized from the same
    code, config and upstream materializations is not run again (orchestration.freshness). With
    `workers` > 1, a per-chunk stage's runs execute that many at once, in worker processes
    (orchestration.workers); global stages run here, one at a time.
    """
    quiet = {"loggers": {"console": {"config": {"log_level": dagster_log_level}}}}
    asset_config = asset_config or {}
    report = PipelineReport(keys)
    stages = stages or stages_of(defs)
    jobs = _stage_job_defs(defs, stages)
    pool = ChunkWorkers(defs, instance, workers) if workers > 1 and any(per_chunk for _, per_chunk in stages) else None
    try:
        for number, (names, per_chunk) in enumerate(stages, start=1):
            _run_stage(defs, instance, report, stages, number, jobs, pool, log, quiet, asset_config, skip_up_to_date)
    finally:
        if pool is not None:
            pool.close()
    return report


def _run_stage(defs, instance, report: PipelineReport, stages: list[Stage], number: int, jobs: dict,
               pool: ChunkWorkers | None, log, quiet: dict, asset_config: dict, skip_up_to_date: bool) -> None:
    """Stage `number` of `stages`: each of its chunks (or it once, when global) run unless up to date."""
    names, per_chunk = stages[number - 1]
    stage, job = "+".join(names), jobs[names]
    short = job.name.removesuffix("_adhoc").removesuffix("_stage")  # for the console: its head asset's name
    start = time.perf_counter()
    todo = [k for k in report.keys if k not in report.failed] if per_chunk else [None]
    more = f" (+{len(names) - 1} assets)" if len(names) > 1 else ""
    pending: list = []  # (number, key, start, future) of the runs handed to the workers
    log(f"stage {number}/{len(stages)} {short}{more}" + (f": {len(todo)} chunks" if per_chunk else ""))
    for done, key in enumerate(todo, start=1):
        began = time.perf_counter()
        run_config = {**quiet, "ops": {n: {"config": asset_config[n]} for n in names if n in asset_config}}
        fingerprint = stage_fingerprint(defs, instance, names, key, run_config)
        if skip_up_to_date and up_to_date(instance, names, key, fingerprint):
            report.skipped.append((stage, key))
            log(f"  chunk {done}/{len(todo)} {key} up to date" if key else "  up to date")
            if key is None:
                report.refused.update(_stored_refusals(instance, names))
            continue
        if pool is not None and key is not None:  # the outcome is logged when the workers return it
            pending.append((done, key, began, pool.submit(names, key, run_config, {FINGERPRINT_TAG: fingerprint})))
            continue
        result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                        run_config=run_config, tags={FINGERPRINT_TAG: fingerprint})
        # a stop (SIGTERM, which Dagster maps to its Ctrl-C handler during a run, or Ctrl-C itself) arrived
        # during the run: Dagster failed that run cleanly; run nothing more
        interrupted = not result.success and _first_error(result).startswith("DagsterExecutionInterruptedError")
        if STOP.is_set() or interrupted:
            raise Stopped(f"stopped in stage {short}" + (f", chunk {key}" if key else "") +
                          f": run {result.run_id} was interrupted and marked failed; rerun to continue")
        if not result.success:
            error = _first_error(result)
            if key is None:
                raise RuntimeError(f"stage {names} failed: {error}")
            report.failed[key] = error
            log(f"  chunk {done}/{len(todo)} {key} failed: {error}")
        elif key is not None:
            log(f"  chunk {done}/{len(todo)} {key} done in {time.perf_counter() - began:.1f} s")
        else:
            for refused_key, problem in _refused_chunks(result).items():
                report.refused[refused_key] = problem
                log(f"  {short} left out chunk {refused_key}: {problem}")
    for done, key, began, future in pending:
        _chunk_outcome(report, log, short, done, len(todo), key, began, **future.result())
    report.seconds[stage] = time.perf_counter() - start
    log(f"  {short}: {report.seconds[stage]:.1f} s")


def _chunk_outcome(report: PipelineReport, log, short: str, done: int, count: int, key: str, began: float,
                   run_id: str, success: bool, error: str | None, pid: int, gpu: str | None) -> None:
    """Log and report a worker's run of one chunk, as the run here would have been."""
    if STOP.is_set() or (error or "").startswith("DagsterExecutionInterruptedError"):
        raise Stopped(f"stopped in stage {short}, chunk {key}: run {run_id} was interrupted and marked failed; "
                      "rerun to continue")
    if success:
        where = f"worker {pid}" + (f", GPU {gpu}" if gpu is not None else "")
        log(f"  chunk {done}/{count} {key} done in {time.perf_counter() - began:.1f} s ({where})")
    else:
        report.failed[key] = error or "failed"
        log(f"  chunk {done}/{count} {key} failed: {error}")


def _stage_job_defs(defs: dg.Definitions, stages: list[Stage]) -> dict:
    """{stage assets: its job}: the definitions' own stage job (orchestration.jobs) when one selects
    exactly those assets, so the UI can re-execute the run; else one made for this subset of the graph."""
    graph = defs.resolve_asset_graph()
    job_names = {tuple(sorted(k.to_user_string() for k in job.selection.resolve(graph))): job.name
                 for job in defs.jobs or [] if job.name.endswith("_stage")}
    extra = []
    for names, per_chunk in stages:
        if names not in job_names:
            job_names[names] = f"{stage_job_name(names, graph)}_adhoc"
            extra.append(stage_job(names, per_chunk, graph, job_names[names]))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=extra)) if extra else defs
    return {names: merged.resolve_job_def(job_names[names]) for names, _ in stages}


def _stored_refusals(instance: dg.DagsterInstance, names: tuple[str, ...]) -> dict[str, str]:
    """The `refused_chunks` of a skipped global stage, from its assets' latest materializations."""
    refused: dict[str, str] = {}
    for name in names:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        value = event.asset_materialization.metadata.get("refused_chunks") if event else None
        if value is not None and isinstance(value.value, dict):
            refused.update(value.value)
    return refused


def _refused_chunks(result) -> dict[str, str]:
    """Chunks a global stage refused, from its materializations' `refused_chunks` metadata."""
    refused: dict[str, str] = {}
    for event in result.get_asset_materialization_events():
        value = event.step_materialization_data.materialization.metadata.get("refused_chunks")
        if value is not None and isinstance(value.value, dict):
            refused.update(value.value)
    return refused


def _first_error(result) -> str:
    """The first failed step's error, e.g. 'ChunkError: <file>: <problem>'.

    A ChunkError is reported as raised (it names the file), not as the library error it wraps
    ('BadZipFile: File is not a zip file' names nothing); other errors by their root cause.
    """
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name != "ChunkError":
                error = error.cause
            return f"{error.cls_name}: {error.message.strip().splitlines()[-1].split(': ', 1)[-1]}"
    return "failed"
