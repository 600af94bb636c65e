"""Content-versioned results: the chunk inputs and the refit models carry a hash of what they hold, as
their Dagster data version and as metadata `content_version` (which orchestration.freshness reads as
their identity: an unchanged refit leaves everything downstream up to date)."""

import dagster as dg

CONTENT_VERSION = "content_version"


def versioned(value, version: str, metadata: dict, **kwargs) -> dg.MaterializeResult:
    """MaterializeResult of `value` with content version `version` (see latent_atlas.data.content)."""
    return dg.MaterializeResult(value=value, data_version=dg.DataVersion(version),
                                metadata={**metadata, CONTENT_VERSION: version}, **kwargs)


def partition_content_version(instance: dg.DagsterInstance, asset: str, partition: str) -> str | None:
    """The content version of `asset`'s latest materialization of `partition` (None if it has none)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                                                    asset_partitions=[partition]), limit=1).records
    value = records[0].event_log_entry.asset_materialization.metadata.get(CONTENT_VERSION) if records else None
    return None if value is None else str(value.value)
