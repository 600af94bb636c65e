"""Partition-aware paths shared by the IO managers."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


def output_path(base: Path, context: dg.OutputContext | dg.InputContext, suffix: str, partition_key: str | None) -> Path:
    """<base>/<asset key path>/<partition>.<suffix>, or <base>/<asset key path>.<suffix> if unpartitioned."""
    asset_path = base.joinpath(*context.asset_key.path)
    if partition_key is None:
        return asset_path.with_name(asset_path.name + suffix)
    return asset_path / f"{partition_key}{suffix}"


def input_paths(base: Path, context: dg.InputContext, suffix: str) -> dict[str, Path]:
    """Fan-in: partition key -> path of every materialized upstream partition, sorted by key.

    A lazy handle: nothing is opened here. Partitions that were added but never materialized
    are left out (the input is declared with allow_missing_partitions), and so is a chunk whose
    latest run failed after its file was written (its source changed and now fails, or went missing):
    that file was made from data the chunk no longer has, and a global fit must not read it.
    """
    paths = {key: output_path(base, context, suffix, key) for key in sorted(context.asset_partition_keys)}
    paths = {key: path for key, path in paths.items() if path.exists()}
    failed = failed_since(context.instance, {key: path.stat().st_mtime for key, path in paths.items()},
                          _made_from(context))
    for key, run_id in failed.items():
        context.log.warning(f"left out chunk {key}: its run {run_id} failed after its "
                            f"{context.asset_key.to_user_string()} was written")
    return {key: path for key, path in paths.items() if key not in failed}


def _made_from(context: dg.InputContext) -> set[str] | None:
    """made_from of the upstream asset, or None where the graph is not at hand."""
    try:
        graph = context.step_context.job_def.asset_layer.asset_graph
    except Exception:  # noqa: BLE001 - outside a run (a hand-built context): every failure counts
        return None
    return made_from(graph, context.asset_key)


def made_from(graph, key: dg.AssetKey) -> set[str]:
    """The names of `key` and of every asset it is made from: the steps whose failure makes its file stale."""
    return {k.to_user_string() for k in {key, *graph.get_ancestor_asset_keys(key)}}


def failed_since(instance: dg.DagsterInstance, written: dict[str, float], made_from: set[str] | None) -> dict[str, str]:
    """{partition: run id} of the partitions in `written` (partition -> when its file was written) with a
    failed run that started after that and ran a step of `made_from` (None: any step): the file was made
    from what the chunk was before, and the chunk now fails there."""
    failed: dict[str, str] = {}
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        run = record.dagster_run
        key = run.tags.get("dagster/partition")
        if key not in written or key in failed or (record.start_time or record.create_timestamp.timestamp()) <= written[key]:
            continue
        steps = run.step_keys_to_execute
        if made_from is None or steps is None or made_from & set(steps):
            failed[key] = run.run_id
    return failed


def record_inputs_fingerprint(context: dg.OutputContext) -> None:
    """Tag the run with its stage's inputs fingerprint if its launcher did not (orchestration.run_fingerprint),
    before its first output's materialization is written. A failure here only costs a rerun of the stage
    later, so it is logged rather than failing a run whose outputs are fine."""
    from orchestration.run_fingerprint import record_fingerprint  # lazily: orchestration imports this module

    try:
        record_fingerprint(context)
    except Exception as exc:  # noqa: BLE001 - see above
        context.log.warning(f"no inputs fingerprint recorded: {type(exc).__name__}: {exc}")


def wants_single_partition(context: dg.InputContext) -> bool:
    """True when a partitioned run reads one partition of its upstream (identity mapping)."""
    return context.has_partition_key and len(context.asset_partition_keys) == 1
