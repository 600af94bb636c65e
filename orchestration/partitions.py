"""One dynamic partition per chunk (of any corpus): keys come from registered sources."""

import dagster as dg

chunks = dg.DynamicPartitionsDefinition(name="chunks")
