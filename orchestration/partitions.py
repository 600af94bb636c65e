"""One dynamic partition per chunk (of any corpus): keys come from registered sources."""

import dagster as dg

chunks = dg.DynamicPartitionsDefinition(name="chunks")

# Per-chunk assets downstream of a global model follow on their own (the UI's
# default_automation_condition_sensor, once switched on): a new chunk's activations, or a refit
# model, make them due.
NEW_CHUNKS = dg.AutomationCondition.eager()
