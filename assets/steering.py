"""Steering: the intervention vectors in the model's residual stream, and their measured causal effect.

    intervention_vectors, merged_statistics, whitening -> steering_vectors
    steering_vectors, whitening, centroids (the fitted clustering), merged_statistics, token_chunks -> steering_eval
                                                       (+ ATLAS_HOME/plots/steering_dose_response.png)

`steering_vectors` is a `latent_atlas.steering.vectors.SteeringVectors` (.npz by the tensor IO manager:
whitened and residual-stream vectors for LDA and the difference of means, natural scales).
`steering_eval` is one row per (cluster, direction, alpha) with every cluster's usage per prompt
(latent_atlas.steering.evaluation); its metadata holds, from latent_atlas.steering.statistics, each
cluster's lift and specificity on the report half of the prompts with bootstrap intervals (alpha
chosen on the selection half), the medians, and the paired tests against the random direction.
"""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from assets.clustering import CLUSTERING_IN
from assets.configs import config_class, library_config
from assets.metadata import markdown_table, png_markdown, top_clusters
from assets.partitions import all_chunks
from latent_atlas.analysis.intervention import InterventionVectors
from latent_atlas.analysis.statistics import ChunkStatistics, document_keys_for, heldout_documents
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.paths import atlas_home, model_cache_dir
from latent_atlas.data.tables import _META_KEY  # the schema metadata key of this project's tables
from latent_atlas.data.whitening import Whitening
from latent_atlas.steering.evaluation import SteeringEvalConfig, dose_response_plot, evaluate_steering, heldout_windows
from latent_atlas.steering.statistics import steering_statistics
from latent_atlas.steering.vectors import SteeringVectors, load_causal_model
from resources import CorpusResource, ModelResource


@dg.asset(io_manager_key="tensor_io_manager", group_name="steering", kinds={"numpy"})
def steering_vectors(intervention_vectors: InterventionVectors, merged_statistics: ChunkStatistics,
                     whitening: Whitening, model: ModelResource):
    """Each cluster's LDA and difference-of-means directions mapped back through the whitening into the
    residual stream of the extraction layer, at their natural scale (the whitened directions kept). The
    vectors a researcher adds to the model's residual stream to push it toward a cluster (steering_eval
    measures the effect); the page lists the most used clusters' scales and mapping errors."""
    stats, moments = merged_statistics, merged_statistics.moments
    loaded = model.load(torch.device("cpu"), torch.float32)
    vectors = SteeringVectors.from_moments(
        whitening, intervention_vectors.vectors, intervention_vectors.diff_means, moments.cluster_means(),
        moments.negative_means(), stats.usage / max(stats.n_tokens, 1), model.name, model.layer_of(loaded))
    return dg.MaterializeResult(value=vectors, metadata={
        "clusters": vectors.n_clusters, "model": vectors.model, "layer": vectors.layer,
        "max_mapping_error": float(vectors.mapping_error.max()),
        "median_scale_lda": float(np.median(vectors.scale_lda)), "median_scale_mean": float(np.median(vectors.scale_mean)),
        "median_residual_norm_mean": float(np.median(np.linalg.norm(vectors.residual_mean, axis=1))),
        "top_clusters": markdown_table(
            {"cluster": int(c), "usage_fraction": float(vectors.usage[c]), "scale_lda": float(vectors.scale_lda[c]),
             "scale_mean": float(vectors.scale_mean[c]),
             "residual_norm_mean": float(np.linalg.norm(vectors.residual_mean[c])),
             "mapping_error_lda": float(vectors.mapping_error[c, 0])} for c in top_clusters(vectors.usage))})


SteeringEvalAssetConfig = config_class(SteeringEvalConfig, name="SteeringEvalAssetConfig")


def heldout_token_windows(token_chunks: dict[str, Path], stats: ChunkStatistics):
    """Token ids of every held-out window (documents held out as the statistics split them), one chunk
    file read at a time."""
    for key in sorted(token_chunks):
        table = pq.read_table(token_chunks[key], columns=["doc_id", "token_ids", "n_tokens"])
        held = heldout_documents(document_keys_for(table.column("doc_id").to_pylist()), stats.config)
        ids, counts = table.column("token_ids").to_pylist(), table.column("n_tokens").to_pylist()
        for i in np.flatnonzero(held):
            yield ids[i][: counts[i]]


@dg.asset(io_manager_key="parquet_io_manager", group_name="steering", ins={**CLUSTERING_IN, "token_chunks": all_chunks()},
          kinds={"parquet"})
def steering_eval(context: dg.AssetExecutionContext, config: SteeringEvalAssetConfig, steering_vectors: SteeringVectors,
                  whitening: Whitening, clustering: SequentialSoftClustering, merged_statistics: ChunkStatistics,
                  token_chunks: dict[str, Path], corpus: CorpusResource):
    """Concept lift (the rise of the cluster's usage on steered continuations of held-out prompts, read
    back through the model) and cost (next-token KL on neutral text, perplexity) over a grid of alphas,
    for the LDA vector, the difference of means and a random direction of equal norm drawn from the
    activations' covariance. Whether a cluster's direction is causal for the model, not only a
    description of it: alpha is chosen within the KL budget on half the prompts, the lift and its
    specificity are reported with bootstrap intervals on the other half, and a paired test across
    clusters says whether the cluster directions beat random; the page shows them and the
    dose-response curves."""
    cfg = library_config(config)
    if corpus.source == "npz":  # seed-format chunks come without a model to steer
        return dg.MaterializeResult(value=pa.table({"cluster": pa.array([], pa.int64())}),
                                    metadata={"skipped": "NPZ corpus: no model to steer"})
    vectors = steering_vectors
    clusters = [int(c) for c in np.argsort(-vectors.usage, kind="stable")[: cfg.top_n]]
    length = max(cfg.prompt_tokens, cfg.neutral_tokens)
    windows = heldout_windows(heldout_token_windows(token_chunks, merged_statistics), cfg.n_prompts + cfg.n_neutral,
                              length, cfg.seed)
    if len(windows) < 3:
        raise ValueError(f"steering_eval needs at least 3 held-out windows of {length} tokens (2 prompts, 1 neutral), "
                         f"found {len(windows)}")
    n_prompts = min(cfg.n_prompts, len(windows) - 1)
    prompts, neutral = windows[:n_prompts, : cfg.prompt_tokens], windows[n_prompts:, : cfg.neutral_tokens]
    clustering.config = dataclasses.replace(clustering.config, device="cpu")  # memberships are exact fp32 anywhere
    model = load_causal_model(vectors.model, model_cache_dir())
    table = evaluate_steering(model, vectors.layer, whitening, clustering, vectors, clusters, prompts, neutral, cfg,
                              log=context.log.info)
    table = table.replace_schema_metadata({_META_KEY: json.dumps(
        {"kl_budget": cfg.kl_budget, "alphas": list(cfg.alphas), "level": cfg.level, "n_bootstrap": cfg.n_bootstrap,
         "seed": cfg.seed})})
    per_cluster, summary = steering_statistics(table, cfg.kl_budget, cfg.level, cfg.n_bootstrap, cfg.seed)
    plot = dose_response_plot(table, cfg.kl_budget, atlas_home() / "plots" / "steering_dose_response.png")
    return dg.MaterializeResult(value=table, metadata={
        **summary, "prompts": len(prompts), "neutral_windows": len(neutral), "alphas": str(list(cfg.alphas)),
        "lifts": markdown_table([
            {"cluster": r["cluster"], "direction": r["direction"], "alpha": r["alpha"], "kl": r["kl"],
             "lift": r["lift"], "lift_interval": f"[{r['lift_low']:.4f}, {r['lift_high']:.4f}]",
             "specificity": r["specificity"],
             "specificity_interval": f"[{r['specificity_low']:.4f}, {r['specificity_high']:.4f}]"}
            for r in per_cluster.to_pylist()], digits=4),
        "dose_response_plot": dg.MetadataValue.path(str(plot)),
        "dose_response": png_markdown(plot.read_bytes(), "dose response")})
