"""Cluster labels: every cluster named from its top exemplar windows, with a confidence measured
on held-out examples (members against random and hard negatives) the labeler never saw.

    exemplars, merged_statistics, intervention_vectors -> cluster_labels
                                                          (+ ATLAS_HOME/labels/clusters/centroid_<id>.json)

The JSON files are the cache: a re-materialization with unchanged inputs makes no labeler calls,
and a run that fails half way keeps the labels it finished (latent_atlas.labels.pipeline).
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from assets.analysis import _decoder, _fan_in, context_reader
from latent_atlas.intervention import InterventionVectors
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.examples import HeldoutConfig, check_disjoint, heldout_examples, shown_examples
from latent_atlas.labels.pipeline import label_clusters, median_confidence
from latent_atlas.labels.records import CentroidExplanation, LabelRequest
from latent_atlas.labels.scorers import ScorerConfig
from latent_atlas.statistics import ChunkStatistics
from resources import CorpusResource, LabelerResource, ModelResource

COMPONENTS = ("embedding_random", "embedding_hard", "detection")


class ClusterLabelsConfig(dg.Config):
    top_k: int = Field(default=10, description="Top exemplar windows shown to the labeler per cluster")
    max_positives: int = Field(default=64, description="Held-out members scored per cluster")
    max_negatives: int = Field(default=64, description="Held-out random and (separately) hard negatives per cluster")
    heldout_window: int = Field(default=10, description="Context tokens each side of a held-out token")
    score_window: int = Field(default=1, description="Tokens each side of a held-out token embedded by the "
                              "embedding scorer (-1 = its whole window)")
    n_bootstrap: int = Field(default=200, description="Bootstrap resamples behind every interval")
    seed: int = Field(default=0, description="Seed of the held-out samples and the bootstrap")
    label_dir: str = Field(default="", description="Cache directory of the JSON records; '' = ATLAS_HOME/labels/clusters")


def label_rows(records: list[CentroidExplanation]) -> pa.Table:
    """One row per cluster: the label, its confidence with interval, every score component."""
    column = lambda name, key: [r.scores.get(name, {}).get(key, np.nan) for r in records]  # noqa: E731
    columns = {
        "centroid_id": pa.array([r.centroid_id for r in records], pa.int32()),
        "label": [r.label for r in records], "explanation": [r.explanation for r in records],
        "confidence": [r.confidence for r in records],
        "confidence_low": [r.confidence_interval[0] for r in records],
        "confidence_high": [r.confidence_interval[1] for r in records],
        "n_shown": [int(r.scores.get("n_shown", 0)) for r in records],
    }
    for name in COMPONENTS:
        if any(name in r.scores for r in records):
            columns.update({f"{name}{suffix}": pa.array(column(name, key), pa.float64())
                            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high"))})
            if name.startswith("embedding"):
                columns[f"{name}_n_pos"] = column(name, "n_pos")
                columns[f"{name}_n_neg"] = column(name, "n_neg")
            else:
                columns[f"{name}_n"] = column(name, "n")
    columns.update(labeler=[r.metadata.get("labeler", "") for r in records],
                   model=[r.metadata.get("model", "") for r in records])
    return pa.table(columns)


def _markdown(records: list[CentroidExplanation], n: int = 10) -> str:
    lines = ["| cluster | label | confidence | 95% interval | explanation |", "|---|---|---|---|---|"]
    for r in records[:n]:
        low, high = r.confidence_interval
        text = r.explanation.replace("|", "\\|")
        lines.append(f"| {r.centroid_id} | {r.label.replace('|', '/')} | {r.confidence:.2f} | "
                     f"[{low:.2f}, {high:.2f}] | {text} |")
    return "\n".join(lines)


@dg.asset(io_manager_key="parquet_io_manager", group_name="labels",
          ins={"memberships": _fan_in(), "whitened_activations": _fan_in()},
          check_specs=[dg.AssetCheckSpec("labels_beat_chance", asset="cluster_labels",
                                         description="The median cluster's confidence interval lies above chance "
                                                     "(lower end > 0): labels tell members from hard negatives")],
          kinds={"parquet"})
def cluster_labels(context: dg.AssetExecutionContext, config: ClusterLabelsConfig, exemplars: pa.Table,
                   merged_statistics: ChunkStatistics, intervention_vectors: InterventionVectors,
                   memberships: dict[str, Path], whitened_activations: dict[str, Path],
                   corpus: CorpusResource, model: ModelResource, labeler: LabelerResource):
    """Label, explanation and measured confidence per cluster; one JSON record per cluster in the
    label directory (reused when its inputs are unchanged)."""

    open_chunk = context_reader(memberships, whitened_activations, "held-out")

    k = int(intervention_vectors.vectors.shape[0])
    shown = shown_examples(exemplars, config.top_k)
    held = heldout_examples(merged_statistics.heldout, intervention_vectors.hard_negatives, open_chunk,
                            _decoder(corpus, model), HeldoutConfig(config.max_positives, config.max_negatives,
                                                                   config.heldout_window, config.seed))
    check_disjoint(shown, held)
    client = labeler.chat_client()  # None for keywords; one client serves labeling and detection
    chosen = labeler.labeler(client)
    scorer = ScorerConfig(n_bootstrap=config.n_bootstrap, seed=config.seed,
                          score_window=None if config.score_window < 0 else config.score_window,
                          detection_client=client if labeler.score_with_llm else None)
    cache = LabelCache(config.label_dir or None)
    records, stats = label_clusters(
        [LabelRequest(c, shown.get(c, [])) for c in range(k)], held, chosen, cache, scorer,
        {"layer": model.layer or "middle", "activation_type": "whitened residual stream", "model_name": model.name},
        force_regenerate=labeler.force_regenerate, batch_size=labeler.batch_size)
    table = label_rows(records)
    lows = np.array([r.confidence_interval[0] for r in records], float)
    median_low = float(np.nanmedian(lows)) if np.isfinite(lows).any() else float("nan")
    context.log.info(f"labeled {stats['new_labels']} clusters, {stats['cache_hits']} from the cache")
    return dg.MaterializeResult(
        value=table,
        metadata={"labeler": chosen.name, "model": chosen.model, "prompt_version": chosen.prompt_version,
                  "labeler_config": labeler.public_config(), "label_dir": dg.MetadataValue.path(str(cache.directory)),
                  "clusters": k, **{name: stats[name] for name in ("cache_hits", "new_labels", "prompt_tokens",
                                                                   "completion_tokens", "requests")},
                  "seconds_per_cluster": float(stats["seconds_per_cluster"]),
                  "median_confidence": median_confidence(records), "median_confidence_low": median_low,
                  "first_labels": dg.MetadataValue.md(_markdown(records))},
        check_results=[dg.AssetCheckResult(check_name="labels_beat_chance", passed=bool(median_low > 0),
                                           metadata={"median_confidence_low": median_low,
                                                     "clusters_above_chance": int(np.sum(lows > 0))})],
    )
