"""Model-like global assets are refit on a schedule; per-chunk assets of new chunks follow eagerly."""

import dagster as dg

from orchestration.jobs import refit_job

nightly_refit = dg.ScheduleDefinition(job=refit_job, cron_schedule="0 3 * * *", name="nightly_refit")
