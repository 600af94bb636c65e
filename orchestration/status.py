"""What is materialized, read from the Dagster instance: for `latent-atlas status` and the demo."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

PER_CHUNK = ("token_chunks", "activations", "whitened_activations")
GLOBAL = ("whitening",)


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def summary_lines(instance: dg.DagsterInstance, home: Path, keys: list[str]) -> list[str]:
    lines = [f"ATLAS_HOME: {home}", f"chunk partitions: {len(keys)}"]
    for asset in PER_CHUNK:
        done = instance.get_materialized_partitions(dg.AssetKey(asset)) & set(keys)
        lines.append(f"  {asset:22s} {len(done):4d}/{len(keys)} partitions materialized")
    sequences = tokens = 0
    for key in keys:
        meta = _metadata(instance, "token_chunks", key)
        sequences += int(meta.get("sequences", 0))
        tokens += int(meta.get("tokens", 0))
    lines.append(f"  sequences: {sequences}, analysed tokens: {tokens}")
    for asset in GLOBAL:
        meta = _metadata(instance, asset)
        shown = {k: v for k, v in meta.items() if k != "path"}
        lines.append(f"  {asset}: {shown if meta else 'not materialized'}")
    lines.append(f"outputs: {home / 'tables'} (Parquet), {home / 'tensors'} (memory-mapped .npy)")
    return lines
