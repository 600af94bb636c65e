"""What is materialized, read from the Dagster instance: for `latent-atlas status` and the demo."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.jobs import stages_of


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _short(metadata: dict) -> str:
    """Numbers and short strings only: paths, plots and tables stay in the UI."""
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metadata.items()
             if isinstance(v, (int, float, str)) and k != "path" and not k.startswith("dagster/") and len(str(v)) <= 80}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def summary_lines(defs: dg.Definitions, instance: dg.DagsterInstance, home: Path, keys: list[str]) -> list[str]:
    lines = [f"ATLAS_HOME: {home}", f"chunk partitions: {len(keys)}"]
    for names, per_chunk in stages_of(defs):
        for asset in names:
            if per_chunk:
                done = instance.get_materialized_partitions(dg.AssetKey(asset)) & set(keys)
                lines.append(f"  {asset:22s} {len(done):4d}/{len(keys)} partitions")
            else:
                meta = _metadata(instance, asset)
                lines.append(f"  {asset:22s} {_short(meta) if meta else 'not materialized'}")
    sequences = tokens = 0
    for key in keys:
        meta = _metadata(instance, "token_chunks", key)
        sequences += int(meta.get("sequences", 0))
        tokens += int(meta.get("tokens", 0))
    lines.append(f"sequences: {sequences}, analysed tokens: {tokens}")
    lines.append(f"outputs: {home / 'tables'} (Parquet), {home / 'tensors'} (memory-mapped .npy / .npz)")
    return lines
