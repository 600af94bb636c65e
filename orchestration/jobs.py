"""Jobs: per-chunk work for one partition, the refit of the global models, and one job per stage of
the pipeline (what `latent-atlas demo/run` execute, so their runs carry a stage's name in the UI and
can be re-executed from there). The stages themselves are read off the asset graph (`stages_of`)."""

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


Stage = tuple[tuple[str, ...], bool]  # (asset names, per chunk?)


def stages_of(defs: dg.Definitions, targets: list[str] | None = None) -> list[Stage]:
    """Stages in dependency order, read off the asset graph (only `targets` and their upstreams, if given).

    Each stage is a maximal set of assets of one kind (per chunk or global) whose upstreams are
    done: per-chunk chains such as token_chunks -> activations run together, one run per chunk.
    """
    graph = defs.resolve_asset_graph()
    if targets:
        keys = set(dg.AssetSelection.assets(*targets).upstream().resolve(graph))
    else:
        keys = set(graph.get_all_asset_keys())
    per_chunk = {k: graph.get(k).partitions_def is not None for k in keys}
    deps = {k: set(graph.get(k).parent_keys) & keys for k in keys}
    done: set = set()
    stages: list[Stage] = []
    while len(done) < len(keys):
        ready = [k for k in keys - done if deps[k] <= done]
        kind = any(per_chunk[k] for k in ready)
        stage = {k for k in ready if per_chunk[k] == kind}
        grown = True
        while grown:  # pull in same-kind descendants whose upstreams are now all available
            more = {k for k in keys - done - stage if per_chunk[k] == kind and deps[k] <= done | stage}
            grown = bool(more)
            stage |= more
        stages.append((tuple(sorted(k.to_user_string() for k in stage)), kind))
        done |= stage
    return stages


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
    """One job per stage of the whole graph of `defs`, in dependency order (`stages_of`)."""
    graph = defs.resolve_asset_graph()
    everything = [k.to_user_string() for k in graph.get_all_asset_keys()]
    stages = stages_of(defs, [n for n in everything if n != ON_REQUEST])
    return [*(stage_job(names, per_chunk, graph) for names, per_chunk in stages),
            stage_job((ON_REQUEST,), False, graph)]

