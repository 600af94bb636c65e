"""One dynamic partition per chunk (of any corpus): keys come from registered sources.

Defined with the assets that are partitioned by it; orchestration (sensors, CLI, pipeline) imports it
from here, so the layers point one way: orchestration -> assets -> latent_atlas."""

import dagster as dg

chunks = dg.DynamicPartitionsDefinition(name="chunks")


def all_chunks() -> dg.AssetIn:
    """A global asset's input over every chunk partition, as {partition key: Path} opened lazily; chunks
    that failed (or were removed) are left out rather than failing the fan-in."""
    return dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})
