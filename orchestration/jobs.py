"""Jobs: per-chunk work for one partition, the refit of the global models, and one job per stage of
the pipeline (what `latent-atlas demo/run` execute, so their runs carry a stage's name in the UI and
can be re-executed from there)."""

import dagster as dg

# Generates text for every top cluster (minutes on CPU): a stage job of its own, run on request only.
ON_REQUEST = "steering_eval"

chunk_job = dg.define_asset_job(
    "chunk_job",
    selection=dg.AssetSelection.assets("token_chunks", "activations"),
    description="Tokens and activations of one chunk partition (requested by the incoming sensor).",
)

# The refit, one run: whitening over every chunk's activations, every chunk's whitened activations
# under the new whitening, then the centroids over those. The centroids read whitened_activations, so
# refitting whitening and centroids alone would learn clusters on chunks whitened by the previous fit;
# whitened_activations in the same run over the range of every chunk partition (refit_range_tags,
# set by orchestration.schedules.nightly_refit) keeps the three consistent. Per-chunk outputs that read
# the centroids (memberships, chunk_stats, ...) are downstream and follow eagerly or in the next
# `latent-atlas run`.
REFIT_ASSETS = ("whitening", "whitened_activations", "centroids")

refit_job = dg.define_asset_job(
    "refit_job",
    selection=dg.AssetSelection.assets(*REFIT_ASSETS),
    description="Refit the global models over every materialized chunk: whitening, every chunk's whitened "
                "activations under it, and the centroids, in one run over the range of all chunk partitions.",
)


def refit_range_tags(keys: list[str]) -> dict[str, str]:
    """Run tags making a refit_job run cover the chunk partitions `keys` (first to last, in partition order)."""
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def stage_job_name(names: tuple[str, ...], graph) -> str:
    """'<head>_stage': head, the first (alphabetically) of the stage's assets with no upstream inside it,
    e.g. token_chunks_stage for token_chunks + activations, centroids_stage for the global fits."""
    keys = {dg.AssetKey(n) for n in names}
    heads = sorted(k.to_user_string() for k in keys if not set(graph.get(k).parent_keys) & keys)
    return f"{heads[0]}_stage"


def stage_job(names: tuple[str, ...], per_chunk: bool, graph, name: str | None = None):
    """An asset job for one stage (partitioned by chunk when the stage is per chunk)."""
    kind = "one chunk partition of " if per_chunk else ""
    return dg.define_asset_job(name or stage_job_name(names, graph), selection=dg.AssetSelection.assets(*names),
                               description=f"Pipeline stage: {kind}{', '.join(names)}.")


def stage_jobs(defs: dg.Definitions) -> list:
    """One job per stage of the whole graph of `defs`, in dependency order (orchestration.pipeline.stages_of)."""
    from orchestration.pipeline import stages_of

    graph = defs.resolve_asset_graph()
    everything = [k.to_user_string() for k in graph.get_all_asset_keys()]
    stages = stages_of(defs, [n for n in everything if n != ON_REQUEST])
    return [*(stage_job(names, per_chunk, graph) for names, per_chunk in stages),
            stage_job((ON_REQUEST,), False, graph)]

