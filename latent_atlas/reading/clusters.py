"""Cluster analysis results on disk, and `ClusterAnalyzer` to read them.

Layout of a results directory (written to a temp directory, then renamed):

    summary.json                  n_clusters, n_tokens, chunk_ids, shrinkage, caller's extras
    cluster_stats.parquet         one row per cluster (`analysis.cluster_stats`)
    exemplars.parquet             one row per exemplar with context (`exemplars.fill_context`)
    intervention_vectors.parquet  one row per cluster (`InterventionVectors.per_cluster_columns`):
                                  auroc / auroc_hard / diff_means_auroc / diff_means_auroc_hard with
                                  their intervals, the null of auroc and auroc_hard with auroc_hard's
                                  margin over it and p (`null_columns`), the counts behind them, d_prime,
                                  within_variance, hard-negative and most correlated clusters
    intervention_vectors.npz      vectors [k, d], diff_means [k, d], centers [k, d] (if given),
                                  cross_correlation [k, k], coactivation [k, k]

Labels (the `cluster_labels` asset) live beside it, in ATLAS_HOME/labels/clusters/centroid_<id>.json;
`ClusterAnalyzer` reads them from there (or from `labels_path`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latent_atlas.analysis.cluster_stats import cluster_stats
from latent_atlas.analysis.exemplars import Decode, fill_context, select_exemplars
from latent_atlas.analysis.intervention import SCORES, InterventionVectors
from latent_atlas.analysis.statistics import ChunkStatistics
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.data.atomic import atomic_dir
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.tables import write_table
from latent_atlas.hierarchy.ensemble import STABILITY_FLOOR
from latent_atlas.labels.cache import LabelCache
from latent_atlas.labels.records import CentroidExplanation

# cluster_stats columns from the ensemble (latent_atlas.hierarchy.ensemble.atlas_stability_columns), when present
STABILITY = ("stability", "stability_min", "assignment_agreement", "assignment_jaccard", "stability_tokens")

# 256-colour backgrounds from faint to strong, indexed by membership.
_SHADES = (236, 22, 28, 34, 40, 46)


def write_results(results_path: str | Path, stats_table: pa.Table, exemplars: pa.Table,
                  vectors: InterventionVectors, centers: np.ndarray | None = None,
                  coactivation: np.ndarray | None = None, summary: dict | None = None) -> Path:
    """Write a results directory atomically (a reader never sees half of it)."""
    path = Path(results_path)
    with atomic_dir(path) as tmp:
        k = vectors.vectors.shape[0]
        top = np.argsort(-(vectors.cross_correlation - 2 * np.eye(k)), axis=1, kind="stable")[:, : min(5, k - 1)]
        write_table(stats_table, tmp / "cluster_stats.parquet")
        write_table(exemplars, tmp / "exemplars.parquet")
        write_table(pa.table({
            "cluster": np.arange(k, dtype=np.int32), **vectors.per_cluster_columns(),
            "correlated_clusters": pa.array(list(top), pa.list_(pa.int64())),
            "correlation_values": pa.array(list(np.take_along_axis(vectors.cross_correlation, top, 1)),
                                           pa.list_(pa.float64())),
        }), tmp / "intervention_vectors.parquet", {"shrinkage": vectors.shrinkage})
        arrays = {"vectors": vectors.vectors, "diff_means": vectors.diff_means,
                  "cross_correlation": vectors.cross_correlation}
        if centers is not None:
            arrays["centers"] = np.asarray(centers, np.float32)
        if coactivation is not None:
            arrays["coactivation"] = coactivation
        np.savez(tmp / "intervention_vectors.npz", **arrays)
        meta = {"n_clusters": int(k), "shrinkage": vectors.shrinkage, **score_summary(vectors, stats_table),
                **(summary or {})}
        (tmp / "summary.json").write_text(json.dumps(meta, indent=2))
    return path


def _median(values: np.ndarray) -> float:
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _min(values: np.ndarray) -> float:
    return float(np.nanmin(values)) if np.isfinite(values).any() else float("nan")


FEW_HELDOUT = 20  # a label's confidence resting on fewer held-out members than this is flagged
FLAGS = {"position_artifact": "weight in the first positions of the window",
         "near_duplicate": "nearly the same center as another cluster",
         "unstable": f"stability across ensemble re-fits below {STABILITY_FLOOR}",
         "few_heldout": f"its label's confidence rests on fewer than {FEW_HELDOUT} held-out members",
         "label_at_null": "its label scores no better on it than on other clusters (permutation null)",
         "no_tree_path": "no path in the token tree"}


def cluster_flags(stats: dict, record: CentroidExplanation | None, tree_path: str | None = None) -> list[str]:
    """Why a cluster's numbers deserve care (`FLAGS`): statistics' flags, low stability, a label
    resting on few held-out members or indistinguishable from its null, no tree path (when known)."""
    flags = [name for name in ("position_artifact", "near_duplicate") if stats.get(name)]
    stability = stats.get("stability")
    if stability is not None and np.isfinite(stability) and stability < STABILITY_FLOOR:
        flags.append("unstable")
    if record is not None:
        n_pos = record.scores.get(record.scorer, {}).get("confidence", {}).get("n_pos", 0) if record.scorer else 0
        if n_pos < FEW_HELDOUT:
            flags.append("few_heldout")
        if record.scores.get("null", {}).get("indistinguishable_from_null"):
            flags.append("label_at_null")
    if tree_path is not None and not tree_path:
        flags.append("no_tree_path")
    return flags


def score_summary(vectors: InterventionVectors, stats_table: pa.Table) -> dict:
    """Medians of the held-out scores, the null of auroc_hard (median, high quantile), the median
    margin over it and how many clusters clear it, and how many are flagged (summary.json, asset metadata)."""
    flags = {name: int(np.sum(stats_table.column(name).to_numpy(zero_copy_only=False)))
             for name in ("position_artifact", "near_duplicate") if name in stats_table.column_names}
    null = vectors.null_columns()
    return {**{f"median_{name}": _median(getattr(vectors, name)) for name in SCORES},
            **{name: _median(null[name]) for name in ("auroc_null", "auroc_hard_null", "auroc_hard_null_high")},
            "median_auroc_hard_margin": _median(null["auroc_hard_margin"]),
            "clusters_above_null": int(np.sum(null["auroc_hard_margin"] > 0)),
            **{f"{name}_clusters": n for name, n in flags.items()}}


def build_results(results_path: str | Path, stats: ChunkStatistics, open_chunk: Callable[[str], tuple[np.ndarray, SparseMemberships]],
                  open_whitened: Callable[[str], DenseChunk], decode: Decode, centers: np.ndarray | None = None,
                  window: int = 10) -> Path:
    """Merged statistics -> cluster_stats, exemplars with context, intervention vectors, on disk.
    open_chunk gives a chunk's token ids and memberships (contexts), open_whitened its whitened
    DenseChunk (the reservoirs' vectors, which saved statistics do not keep)."""
    vectors = stats.fit_intervention_vectors(centers, open_chunk=open_whitened)
    table = cluster_stats(stats, centers, decode)
    exemplars = fill_context(select_exemplars(stats.candidates), open_chunk, decode, window)
    return write_results(results_path, table, exemplars, vectors, centers, stats.coactivation,
                         results_summary(stats, window))


def results_summary(stats: ChunkStatistics, window: int) -> dict:
    """What summary.json records about the merged statistics (beside n_clusters and shrinkage)."""
    return {"n_tokens": stats.n_tokens, "chunk_ids": sorted(stats.chunk_ids),
            "heldout_tokens": int(stats.heldout.priority.size),
            "heldout_documents": int(np.unique(stats.heldout.group).size), "window": window}


class ClusterAnalyzer:
    """Read-only view of a results directory written by `write_results`, and of the cluster labels.

    labels_path: directory of the `centroid_<id>.json` label records; default `labels/clusters`
    beside the results directory (both under ATLAS_HOME)."""

    def __init__(self, results_path: str | Path, labels_path: str | Path | None = None):
        self.path = Path(results_path)
        self.labels_path = Path(labels_path) if labels_path is not None else self.path.parent / "labels" / "clusters"
        self._labels: dict[int, CentroidExplanation] | None = None
        missing = [n for n in ("summary.json", "cluster_stats.parquet", "exemplars.parquet",
                               "intervention_vectors.parquet", "intervention_vectors.npz") if not (self.path / n).exists()]
        if missing:
            raise FileNotFoundError(f"{self.path}: not a results directory, missing {missing}")
        self.summary_ = json.loads((self.path / "summary.json").read_text())
        self.stats_ = pq.read_table(self.path / "cluster_stats.parquet").to_pylist()
        self.intervention_ = pq.read_table(self.path / "intervention_vectors.parquet").to_pylist()
        self.exemplars_ = pq.read_table(self.path / "exemplars.parquet")
        with np.load(self.path / "intervention_vectors.npz", allow_pickle=False) as npz:
            self.arrays_ = {key: npz[key] for key in npz.files}
        self._cluster_col = self.exemplars_.column("cluster").to_numpy()
        self._kind_col = self.exemplars_.column("kind").to_numpy(zero_copy_only=False)

    @property
    def n_clusters(self) -> int:
        return len(self.stats_)

    def _check(self, cluster_id: int) -> int:
        if not 0 <= int(cluster_id) < self.n_clusters:
            raise IndexError(f"cluster_id {cluster_id} out of range: {self.path} has {self.n_clusters} clusters")
        return int(cluster_id)

    def exemplars(self, cluster_id: int, kind: str = "top_k") -> list[dict]:
        """Exemplars of one kind ("top_k", "random_k", "quantile"), in order (band, then rank)."""
        c = self._check(cluster_id)
        rows = self.exemplars_.filter(pa.array((self._cluster_col == c) & (self._kind_col == kind))).to_pylist()
        return sorted(rows, key=lambda r: (r["band"], r["rank"]))

    def labels(self) -> dict[int, CentroidExplanation]:
        """Every cluster's label record, by cluster id ({} before cluster_labels has run); read once."""
        if self._labels is None:
            self._labels = LabelCache(self.labels_path).all()
        return self._labels

    def label(self, cluster_id: int) -> CentroidExplanation | None:
        """One cluster's label record, None when it has not been labeled."""
        return self.labels().get(self._check(cluster_id))

    def node_labels(self, tree: str = "cluster_tree") -> dict[str, CentroidExplanation]:
        """Every labeled node of a tree ('cluster_tree' or 'document_tree'), by node id ({} before
        node_labels has run): the records in labels/nodes/<tree>/ beside labels_path."""
        cache = LabelCache(self.labels_path.parent / "nodes" / tree, prefix="node")
        return {record.metadata.get("node_id", str(index)): record for index, record in cache.all().items()}

    def vector(self, cluster_id: int, kind: str = "vectors") -> np.ndarray:
        """Unit intervention vector [d] ("vectors"), or "diff_means" / "centers"."""
        return self.arrays_[kind][self._check(cluster_id)]

    def get_cluster_summary(self, cluster_id: int, n_examples: int = 5) -> dict:
        """JSON-able summary: statistics, intervention stats, exemplars with their chunk ids."""
        c = self._check(cluster_id)
        stats = dict(self.stats_[c])
        brief = lambda r: {key: r[key] for key in ("chunk_id", "sequence", "position", "membership", "token")}  # noqa: E731
        top = self.exemplars(c, "top_k")
        chunks = sorted({r["chunk_id"] for kind in ("top_k", "random_k", "quantile") for r in self.exemplars(c, kind)})
        iv = self.intervention_[c]
        score = lambda name: {"value": iv[name], "low": iv[f"{name}_low"], "high": iv[f"{name}_high"]}  # noqa: E731
        record = self.label(c)
        label = None if record is None else {
            "label": record.label, "explanation": record.explanation, "scorer": record.scorer,
            "confidence": record.confidence, "confidence_interval": list(record.confidence_interval),
            "specificity": record.specificity, "specificity_interval": list(record.specificity_interval),
            "null_p": record.scores.get("null", {}).get("p"), "scores": record.scores,
            "labeler": record.metadata.get("labeler"), "model": record.metadata.get("model")}
        return {
            "cluster_id": c,
            "label": label,
            "statistics": stats,
            "flags": cluster_flags(stats, record),
            "measures": {key: stats.get(key) for key in ("first_positions_share", "position_entropy", "token_entropy",
                                                         "top_token_share", "near_duplicate_partners")},
            "stability": {key: stats.get(key) for key in STABILITY},
            "intervention_stats": {"separation_strength": iv["auroc"], "d_prime": iv["d_prime"],
                                   **{name: score(name) for name in SCORES},
                                   # the evidence: auroc_hard over what the pipeline reaches on noise
                                   "null": {key: iv.get(key) for key in ("auroc_null", "auroc_hard_null",
                                                                          "auroc_hard_null_high", "auroc_hard_margin",
                                                                          "auroc_hard_p")},
                                   "hard_negative_clusters": iv["hard_negative_clusters"],
                                   "rests_on": {key: iv[key] for key in ("positive_weight", "positive_tokens",
                                                                         "negative_weight", "hard_negative_weight",
                                                                         "hard_negative_tokens")},
                                   "within_cluster_variance": iv["within_variance"],
                                   "cross_cluster_correlation": dict(zip(map(str, iv["correlated_clusters"]),
                                                                         iv["correlation_values"]))},
            "exemplars": {"top_k": [brief(r) for r in top[:n_examples]],
                          "random_k": [brief(r) for r in self.exemplars(c, "random_k")[:n_examples]]},
            "chunk_ids": chunks,
            "steering": self.steering(c),
        }

    def steering(self, cluster_id: int) -> dict | None:
        """The cluster's measured steering effect (per direction: alpha chosen on the selection half,
        the report half's lift and specificity with intervals; the paired tests against random across
        clusters; its dose-response), from ATLAS_HOME/tables/steering_eval.parquet; None before
        steering_eval ran (or from a table written before per-prompt usages were kept) or when the
        cluster was not among those evaluated."""
        from latent_atlas.data.tables import read_metadata
        from latent_atlas.steering.evaluation import cluster_steering
        from latent_atlas.steering.statistics import steering_statistics

        path = self.path.parent / "tables" / "steering_eval.parquet"
        if not path.exists():
            return None
        if getattr(self, "_steering", None) is None:
            table, meta = pq.read_table(path), read_metadata(path)
            self._steering = ()
            if "kl_budget" in meta and "prompt_usage" in table.column_names:
                stats, summary = steering_statistics(table, float(meta["kl_budget"]), meta.get("level", 0.95),
                                                     meta.get("n_bootstrap", 2000), meta.get("seed", 0))
                self._steering = (table, stats, summary)
        if not self._steering:
            return None
        return cluster_steering(*self._steering, self._check(cluster_id))

    def visualize_cluster_context(self, cluster_id: int, example_idx: int = 0, kind: str = "top_k",
                                  color: bool | None = None) -> str:
        """Terminal rendering of one exemplar: background shade by this cluster's membership
        (ANSI), or without colour the exemplar token as [[token]] and other members as [token]."""
        rows = self.exemplars(cluster_id, kind)
        if not 0 <= example_idx < len(rows):
            raise IndexError(f"example_idx {example_idx}: cluster {cluster_id} has {len(rows)} {kind} exemplars")
        r = rows[example_idx]
        if color is None:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        centre = r["position"] - r["context_start"]
        parts = []
        for i, (tok, m) in enumerate(zip(r["context_tokens"], r["context_memberships"])):
            tok = tok.replace("\n", "\u23ce")
            if color and m > 0:
                shade = _SHADES[min(len(_SHADES) - 1, int(np.ceil(m * (len(_SHADES) - 1))))]
                style = "1;4;" if i == centre else ""
                parts.append(f"\x1b[{style}48;5;{shade}m{tok}\x1b[0m")
            elif i == centre:
                parts.append(f"[[{tok}]]")
            else:
                parts.append(f"[{tok}]" if m >= 0.2 else tok)
        others = ", ".join(f"{c} ({v:.2f})" for c, v in zip(r["active_clusters"], r["active_values"]) if c != r["cluster"])
        head = (f"cluster {r['cluster']} | {kind} #{example_idx} | chunk {r['chunk_id']} seq {r['sequence']} "
                f"pos {r['position']} | membership {r['membership']:.3f}")
        return f"{head}\n{''.join(parts)}\nalso active: {others or 'none'}"

    def __str__(self) -> str:
        s, k = self.summary_, self.n_clusters
        col = lambda name: np.array([row.get(name, np.nan) for row in self.intervention_], dtype=float)  # noqa: E731
        auroc, hard, low, high = col("auroc"), col("auroc_hard"), col("auroc_hard_low"), col("auroc_hard_high")
        margin, null_high = col("auroc_hard_margin"), col("auroc_hard_null_high")
        flagged = {name: sum(bool(row.get(name)) for row in self.stats_) for name in ("position_artifact", "near_duplicate")}
        stability = np.array([row.get("stability", np.nan) for row in self.stats_], dtype=float)
        lines = [f"ClusterAnalyzer({self.path})",
                 f"{k} clusters, {s.get('n_tokens', '?')} tokens from {len(s.get('chunk_ids', []))} chunks; "
                 f"Ledoit-Wolf shrinkage {s.get('shrinkage', float('nan')):.3f}",
                 f"held-out AUROC median {_median(auroc):.3f} (min {_min(auroc):.3f}) against random negatives, "
                 f"{_median(hard):.3f} (min {_min(hard):.3f}) against hard negatives (members of the most similar clusters)",
                 f"null (the same steps on structureless data): auroc {_median(col('auroc_null')):.3f}, auroc_hard "
                 f"{_median(col('auroc_hard_null')):.3f}, 95th percentile {_median(null_high):.3f}; "
                 f"{int(np.sum(margin > 0))} of {k} clusters above it (median margin {_median(margin):+.3f})",
                 f"flagged: {flagged['position_artifact']} position artifacts (weight in the first positions of the "
                 f"window), {flagged['near_duplicate']} near-duplicates",
                 f"stability across ensemble re-fits: median {_median(stability):.3f}, "
                 f"{int(np.sum(~(stability >= 0.8)))} of {k} clusters below 0.8",
                 "", f"{'cluster':>7} {'usage%':>7} {'density':>8} {'max':>6} {'hard':>6} {'margin':>6} "
                     f"{'hard 95% CI':>13} {'tok.H':>5} {'stab.':>5} flags  top tokens"
                     + ("  | label (scorer: confidence, specificity)" if self.labels() else "")]
        for row in sorted(self.stats_, key=lambda r: -r["total_usage"])[:15]:
            c = row["cluster"]
            tokens = " ".join(repr(t) for t in row["top_tokens"][:6])
            flags = ("P" if row.get("position_artifact") else "-") + ("D" if row.get("near_duplicate") else "-")
            lines.append(f"{c:>7} {100 * row['usage_fraction']:>7.2f} {row['density']:>8.4f} "
                         f"{row['max_membership']:>6.3f} {hard[c]:>6.3f} {margin[c]:>+6.3f} "
                         f"{f'[{low[c]:.2f}, {high[c]:.2f}]':>13} {row.get('token_entropy', np.nan):>5.2f} "
                         f"{stability[c]:>5.2f} "
                         f"{flags:>5}  {tokens}" + self._label_cell(c))
        if k > 15:
            lines.append(f"... {k - 15} more clusters (sorted by usage)")
        lines.append("flags: P position artifact, D near-duplicate; hard: held-out AUROC against hard negatives; margin: "
                     "hard minus the null's 95th percentile; tok.H normalised token entropy; stab. median "
                     "matched cosine across ensemble re-fits")
        return "\n".join(lines)

    def _label_cell(self, cluster_id: int) -> str:
        record = self.labels().get(cluster_id)
        if record is None:
            return ""
        at_null = " at null" if record.scores.get("null", {}).get("indistinguishable_from_null") else ""
        return (f"  | {record.label} ({record.scorer or 'unscored'}: {record.confidence:.2f}, "
                f"{record.specificity:.2f}{at_null})")

    __repr__ = __str__
