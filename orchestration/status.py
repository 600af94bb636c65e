"""What is materialized, read from the Dagster instance: the full listing for `latent-atlas status`, and
the short summary `demo` and `run` end with."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.metadata import failed_check_lines, short_metadata as _short
from orchestration.jobs import stages_of


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


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


def failed_checks(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """'check (asset): why' for every asset check whose latest evaluation (per partition) failed."""
    return failed_check_lines(defs.resolve_asset_graph().asset_check_keys, instance)


def final_summary(defs: dg.Definitions, instance: dg.DagsterInstance, home: Path, keys: list[str],
                  failed_chunks: int, seconds: float) -> list[str]:
    """At most ~15 lines: what the atlas holds, what failed, and last where to open it."""
    tokens = sum(int(_metadata(instance, "token_chunks", key).get("tokens", 0)) for key in keys)
    clusters = _metadata(instance, "centroids").get("n_clusters")
    lines = [f"atlas: {clusters if clusters is not None else '?'} clusters over {tokens:,} analysed tokens in "
             f"{len(keys)} chunks; done in {seconds:.0f} s; failed chunks: {failed_chunks}"]
    checks = failed_checks(defs, instance)
    lines += [f"failed checks: {len(checks)}"] + [f"  {line}" for line in checks[:8]]
    if len(checks) > 8:
        lines.append(f"  ... and {len(checks) - 8} more (latent-atlas status, or the UI's Checks tab)")
    lines.append(f"every asset's figures: .venv/bin/latent-atlas status --home {home}")
    report = home / "report" / "index.html"
    lines.append(f"open the atlas: {report}" if report.exists() else f"browse: .venv/bin/latent-atlas ui --home {home}")
    return lines
