"""Jobs: per-chunk work for one partition, and the refit of the global models."""

import dagster as dg

chunk_job = dg.define_asset_job(
    "chunk_job",
    selection=dg.AssetSelection.assets("token_chunks", "activations"),
    description="Tokens and activations of one chunk partition (requested by the incoming sensor).",
)

refit_job = dg.define_asset_job(
    "refit_job",
    selection=dg.AssetSelection.assets("whitening"),
    description="Refit the global models over every materialized chunk.",
)
