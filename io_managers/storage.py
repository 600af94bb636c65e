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
    are left out (the input is declared with allow_missing_partitions).
    """
    paths = {key: output_path(base, context, suffix, key) for key in sorted(context.asset_partition_keys)}
    return {key: path for key, path in paths.items() if path.exists()}


def wants_single_partition(context: dg.InputContext) -> bool:
    """True when a partitioned run reads one partition of its upstream (identity mapping)."""
    return context.has_partition_key and len(context.asset_partition_keys) == 1
