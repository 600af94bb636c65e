"""Which stage runs can be skipped: a stage's outputs are up to date when they were materialized by a
run whose inputs fingerprint equals the one it would have now, or hold the same content as outputs
such a run made (an unchanged refit by the nightly schedule or the UI, which carries no fingerprint).

The fingerprint of (stage, partition) hashes the project's code, the resources' and the stage's run
config, for a stage that reads the chunk's source (token_chunks, activations) the source as it is on
disk now (an NPZ file's size, mtime and quick fingerprint: a file rewritten in place makes the stage
and everything downstream of it run again), and the identity of every upstream materialization it reads: the latest one of the same
partition (per-chunk upstream of a per-chunk stage), the latest of a global asset, or for a global
stage's fan-in over chunks the identity of every chunk partition's latest one. An identity is the
materialization's content version (metadata `content_version`: the chunk inputs and the refit models,
assets.versions) or else its storage id. Conservative by construction: any upstream content change or
re-materialization of an unversioned asset, code edit, config change, added or removed chunk gives a
new fingerprint and the stage runs again; a refit that reproduced the same bytes changes nothing.
(Dagster's own staleness does not see run config and stops tracking fan-ins over 100 partitions.)
`latent-atlas run` tags its runs with the fingerprint; a run launched otherwise (the daemon, the UI)
records it from inside (orchestration.run_fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import dagster as dg

from assets.partitions import chunks
from assets.versions import CONTENT_VERSION
from io_managers.storage import failed_since, made_from
from latent_atlas.data.manifests import source_identity

FINGERPRINT_TAG = "latent-atlas/inputs"
_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("latent_atlas", "assets", "resources", "io_managers")


@cache
def code_fingerprint() -> str:
    """Hash of every Python source file of the library, assets, resources and IO managers."""
    h = hashlib.sha256()
    for package in _CODE:
        for path in sorted((_ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


class ChangedDuringRun(Exception):
    """An upstream materialization newer than the run's start: what the run read is not known."""


def stage_fingerprint(defs: dg.Definitions, instance: dg.DagsterInstance, names: tuple[str, ...],
                      partition: str | None, run_config: dict, started_at: float | None = None) -> str:
    """The stage's inputs fingerprint now; with `started_at` (a run's start time) as that run read them:
    ChangedDuringRun when an upstream was materialized again since."""
    graph = defs.resolve_asset_graph()
    stage = {dg.AssetKey(n) for n in names}
    upstream = sorted({p for k in stage for p in graph.get(k).parent_keys} - stage, key=lambda k: k.to_user_string())
    parts = {
        "code": code_fingerprint(),
        "resources": {name: _resource_config(r) for name, r in sorted((defs.resources or {}).items())},
        "config": run_config.get("ops", {}),
        "upstream": [[k.to_user_string(), _identity(instance, graph, k, partition, started_at)] for k in upstream],
    }
    if partition is not None and any(not graph.get(k).parent_keys for k in stage):  # it reads the source
        parts["source"] = source_identity(partition)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def up_to_date(instance: dg.DagsterInstance, names: tuple[str, ...], partition: str | None, fingerprint: str) -> bool:
    """Whether every asset of the stage was last materialized (for `partition`) by a run with
    `fingerprint`, or with the same content version as the newest materialization such a run made."""
    made_by: set[str] | None = None  # ids of the runs with `fingerprint`, looked up once, when needed
    for name in names:
        key, partitions = dg.AssetKey(name), [partition] if partition else None
        latest = _latest(instance, key, partitions)
        if latest is None:
            return False
        if _fingerprint_of(instance, latest) == fingerprint:
            continue
        if _content(latest) is None:  # another run made it, and nothing says it holds the same bytes
            return False
        if made_by is None:
            made_by = set(instance.get_run_ids(dg.RunsFilter(tags={FINGERPRINT_TAG: fingerprint})))
        made = next((r for r in _records(instance, key, partitions, limit=50) if r.run_id in made_by), None)
        if made is None or _content(made) != _content(latest):
            return False
    return True


def _identity(instance, graph, key: dg.AssetKey, partition: str | None, started_at: float | None = None) -> list:
    is_global = graph.get(key).partitions_def is None
    if is_global or partition is not None:
        # a global upstream, or the same chunk of a per-chunk upstream of a per-chunk stage
        record = _latest(instance, key, None if is_global else [partition])
        _check_before(record and record.timestamp, started_at)
        return [_record_identity(record)]
    # a fan-in reads every chunk partition: the identity of each one's latest materialization
    keys = sorted(instance.get_dynamic_partitions(chunks.name))
    # every partition's latest, filtered here (a filter of thousands of keys is too long an SQL IN list)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    records = {r.partition_key: r for r in _fetch(instance, key, sorted(latest[k] for k in keys if k in latest))}
    _check_before(max((r.timestamp for r in records.values()), default=None), started_at)
    # a chunk whose run failed after that materialization is left out of the fan-in (io_managers.storage)
    failed = failed_since(instance, {k: r.timestamp for k, r in records.items()}, made_from(graph, key))
    pairs = [[k, f"failed:{failed[k]}" if k in failed else _record_identity(records.get(k))] for k in keys]
    return [hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]]


def _check_before(timestamp: float | None, started_at: float | None) -> None:
    # timestamps, not storage ids: SQLite storage numbers a run's events in that run's own shard
    if started_at is not None and timestamp is not None and timestamp > started_at:
        raise ChangedDuringRun(f"an upstream was materialized {timestamp - started_at:.1f} s after the run started")


def _fetch(instance, key: dg.AssetKey, storage_ids: list[int]) -> list:
    records = []
    for start in range(0, len(storage_ids), 900):  # under SQLite's 999 variables per query
        batch = storage_ids[start : start + 900]
        records += instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=batch),
                                                   limit=len(batch)).records
    return records


def _record_identity(record) -> str | int | None:
    """The content version of a materialization where it has one (the same bytes, the same identity),
    else its storage id (every re-materialization is new)."""
    if record is None:
        return None
    return _content(record) or record.storage_id


def _content(record) -> str | None:
    value = record.event_log_entry.asset_materialization.metadata.get(CONTENT_VERSION)
    return None if value is None else str(value.value)


def _fingerprint_of(instance, record) -> str | None:
    run = instance.get_run_by_id(record.run_id)
    return None if run is None else run.tags.get(FINGERPRINT_TAG)


def _latest(instance, key: dg.AssetKey, partitions: list[str] | None):
    records = _records(instance, key, partitions, limit=1)
    return records[0] if records else None


def _records(instance, key: dg.AssetKey, partitions: list[str] | None, limit: int) -> list:
    """The newest `limit` materializations of `key` (of `partitions`, if given), newest first."""
    return list(instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions),
                                                limit=limit).records)


def _resource_config(resource) -> object:
    dump = getattr(resource, "model_dump", None)
    return dump() if dump else type(resource).__name__
