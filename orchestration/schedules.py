"""Model-like global assets are refit on a schedule; per-chunk assets of new chunks follow eagerly."""

import dagster as dg

from assets.partitions import chunks
from orchestration.jobs import REFIT_ASSETS, refit_job, refit_range_tags

ACTIVATIONS = dg.AssetKey("activations")
WHITENING = dg.AssetKey("whitening")
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


@dg.schedule(job=refit_job, cron_schedule="0 3 * * *", name="nightly_refit")
def nightly_refit(context: dg.ScheduleEvaluationContext):
    """At 03:00, refit whitening, whitened activations and centroids (orchestration.jobs.refit_job) over
    every chunk partition, only when chunks landed since the last fit: an activations partition
    materialized after the latest whitening materialization (by this schedule, `latent-atlas run` or the
    UI). Otherwise, or while a refit is still in progress, a SkipReason says why. The run key is the
    newest landed activations materialization, so one landing is refit once. The refit runs with the
    config of the fits it replaces (last_fit_config): the atlas keeps its k, seed and method."""
    instance = context.instance
    fit = instance.fetch_materializations(WHITENING, limit=1).records
    after = fit[0].storage_id if fit else None
    landed = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=ACTIVATIONS, after_storage_id=after),
                                             limit=100).records
    if not landed:
        return dg.SkipReason(f"no chunk landed since the last fit (whitening materialized by run {fit[0].run_id})"
                             if fit else "no chunk has activations yet")
    busy = instance.get_runs(filters=dg.RunsFilter(job_name=refit_job.name, statuses=IN_PROGRESS), limit=1)
    if busy:
        return dg.SkipReason(f"refit run {busy[0].run_id} is still in progress")
    keys = instance.get_dynamic_partitions(chunks.name)
    if not keys:
        return dg.SkipReason(f"activations landed but no '{chunks.name}' partitions are registered")
    new = sorted({r.partition_key for r in landed if r.partition_key})
    return dg.RunRequest(
        run_key=f"refit@{landed[0].storage_id}",
        run_config=last_fit_config(instance),
        tags={**refit_range_tags(keys), "latent-atlas/landed_chunks": ",".join(new[:20]) + (" ..." if len(new) > 20 else "")},
    )


def last_fit_config(instance: dg.DagsterInstance) -> dict:
    """{"ops": {asset: its config}} of the run that made each refit asset's latest materialization
    (e.g. the k a `latent-atlas run --config` chose), so a refit repeats that fit on the new chunks
    rather than falling back to the assets' defaults."""
    ops = {}
    for name in REFIT_ASSETS:
        records = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
        run = instance.get_run_by_id(records[0].run_id) if records else None
        config = (run.run_config.get("ops", {}).get(name) if run else None)
        if config:
            ops[name] = config
    return {"ops": ops} if ops else {}
