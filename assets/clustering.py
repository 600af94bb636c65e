"""Soft spherical clustering: centroids learned online over all chunks, memberships per chunk."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.configs import config_class, library_config
from assets.metadata import figure_markdown, markdown_table, pyplot, top_clusters
from latent_atlas.clustering.estep import effective_precision
from latent_atlas.clustering.memberships import SparseMemberships
from latent_atlas.clustering.model import ClusteringConfig, SequentialSoftClustering, checkpoint_key
from latent_atlas.data.chunks import DenseChunk
from latent_atlas.data.content import content_version
from latent_atlas.data.paths import atlas_home
from assets.partitions import all_chunks, chunks
from assets.versions import versioned
from resources import ComputeBackendResource, TorchDeviceResource


# Assets that apply the clustering read the fitted model (SequentialSoftClustering: centers, config,
# history) from the `centroids` asset under the name of what it is.
CLUSTERING_IN = {"clustering": dg.AssetIn("centroids")}

# What the UI plots per step and shows for the last one (history_ holds more).
CONVERGENCE = ("objective", "centroid_shift", "usage_entropy", "imbalance", "n_dead")


# The library's ClusteringConfig is the one source (k=512 by default, the user's scale); the device comes
# from the device resource and the NPZ key names from the corpus. The demo sets k=64 for its ~90k tokens.
CentroidsConfig = config_class(
    ClusteringConfig, exclude=("device", "npz_keys"), name="CentroidsConfig",
    extra={"max_dead_fraction": (float, Field(default=0.05, description="Asset check: at most this share of "
                                              "clusters dead at the end or moved (reseeded, swapped) in the last epoch"))})


def _plot_history(history: list[dict]) -> dg.MetadataValue:
    """Convergence curves (one panel per CONVERGENCE measure, per step) as an inline image."""
    plt = pyplot()
    names = [n for n in CONVERGENCE if n in history[0]]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6))
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.plot([h[name] for h in history])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    return figure_markdown(fig, "convergence")


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="clustering",
    ins={"whitened_activations": all_chunks()},
    check_specs=[
        dg.AssetCheckSpec("centroids_unit_norm_and_finite", asset="centroids",
                          description="Centers finite, unit norm, no two of them the same direction"),
        dg.AssetCheckSpec("few_dead_clusters", asset="centroids",
                          description="Clusters dead at the end or moved in the last epoch: at most max_dead_fraction"),
    ],
    kinds={"torch"},
)
def centroids(config: CentroidsConfig, whitened_activations: dict[str, Path], device: TorchDeviceResource,
              compute: ComputeBackendResource):
    """Soft spherical clustering learned online over every whitened chunk, with checkpoints after
    every step (a killed run resumes where it stopped) and convergence history. The atlas's clusters:
    every membership, statistic, exemplar and label downstream is read through them; the page plots
    the convergence curves (objective, centroid shift, usage entropy, imbalance, dead clusters)."""
    if not whitened_activations:
        raise ValueError("no materialized whitened_activations partitions to learn centroids from")
    paths = [str(p) for p in whitened_activations.values()]
    settings = library_config(config, device=str(device.torch_device()))
    model = SequentialSoftClustering(**vars(settings))
    # One checkpoint directory per (resolved config, chunk contents): the same fit resumes, a refit of
    # the whitening (new chunk contents under the same paths) starts afresh; older fits are dropped.
    root = atlas_home() / "checkpoints" / "centroids"
    model.checkpoint_dir = root / checkpoint_key(model.config, paths)
    model.fit_chunks(paths, backend=compute.backend())
    for old in root.iterdir():
        if old != model.checkpoint_dir:
            shutil.rmtree(old, ignore_errors=True)
    centers = model.cluster_centers_
    churn = model.churn()
    return versioned(
        model, content_version(model.state()),
        {
            "n_clusters": config.n_clusters, "dim": int(centers.shape[1]), "chunks": len(paths),
            "steps": model.n_steps_,
            "learning_gemm": effective_precision(model.learn_precision, model.device),  # what ran, 'auto' resolved
            **{f"final_{k}": float(model.history_[-1][k]) for k in CONVERGENCE},
            "convergence": _plot_history(model.history_),
        },
        check_results=[dg.AssetCheckResult(check_name=name, passed=passed, metadata=metadata) for name, (passed, metadata) in (
            ("centroids_unit_norm_and_finite", centroids_unit_norm_and_finite(centers)),
            ("few_dead_clusters", few_dead_clusters(churn, config.max_dead_fraction)))],
    )


# Eager: a new chunk upstream, or a refit global model, makes the partition due (once the UI's
# default automation sensor is switched on).
@dg.asset(partitions_def=chunks, automation_condition=dg.AutomationCondition.eager(),
          io_manager_key="parquet_io_manager", group_name="clustering",
          check_specs=[dg.AssetCheckSpec("memberships_valid", asset="memberships", partitions_def=chunks,
                                         description="Every attended token of the chunk and no other has 1 to top_m "
                                                     "memberships, values in (0, 1], sums <= 1, rows sorted")],
          ins=CLUSTERING_IN, kinds={"parquet"})
def memberships(whitened_activations: DenseChunk, clustering: SequentialSoftClustering):
    """Sparse soft memberships of every attended token of the chunk: (sequence, position, cluster,
    value, token id), the centroids applied to new data. What the statistics, exemplars and labels
    are computed from; the page shows which clusters this chunk uses most."""
    sparse = clustering.transform(whitened_activations)
    passed, check_meta = memberships_valid(sparse, whitened_activations.attention_mask, clustering.config.top_m)
    return dg.MaterializeResult(
        value=sparse,
        metadata={"nonzero": len(sparse), "tokens": whitened_activations.n_tokens,
                  "mean_clusters_per_token": len(sparse) / max(whitened_activations.n_tokens, 1),
                  "top_clusters": chunk_top_clusters(sparse, clustering.cluster_centers_.shape[0],
                                                     whitened_activations.n_tokens)},
        check_results=[dg.AssetCheckResult(check_name="memberships_valid", passed=passed, metadata=check_meta)],
    )


def chunk_top_clusters(sparse: SparseMemberships, k: int, n_tokens: int, n: int = 10) -> dg.MetadataValue:
    """The chunk's most used clusters: share of its membership mass, tokens it holds above 0.5 (its
    own tokens), mean membership where present; one cluster taking most of a chunk is worth a look."""
    usage = np.bincount(sparse.cluster, weights=sparse.value, minlength=k)
    strong = np.bincount(sparse.cluster[sparse.value > 0.5], minlength=k)
    present = np.bincount(sparse.cluster, minlength=k)
    return markdown_table({"cluster": int(c), "usage_fraction": usage[c] / max(n_tokens, 1), "tokens_above_0.5": int(strong[c]),
                           "mean_membership": usage[c] / max(present[c], 1)} for c in top_clusters(usage, n))


def centroids_unit_norm_and_finite(centers: np.ndarray) -> tuple[bool, dict]:
    """Check: centers [k, d] finite and of norm 1 (the spherical model's cosines assume it), and no two
    the same direction: a reseed landing twice on one token splits its mass into two copies that each
    look like a cluster."""
    finite = np.isfinite(centers).all(axis=1)
    safe = np.where(finite[:, None], centers, 0.0).astype(np.float64)
    norms = np.linalg.norm(safe, axis=1)
    unit = safe / np.maximum(norms, 1e-30)[:, None]
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -1.0)
    pairs = np.argwhere(np.triu(cosines > 1 - 1e-6))
    off_norm = np.flatnonzero(~finite | (np.abs(norms - 1) > 1e-4))
    return bool(off_norm.size == 0 and pairs.size == 0), {
        "non_finite_centers": int((~finite).sum()), "max_norm_error": float(np.abs(norms - 1).max(initial=0.0)),
        "off_unit_centers": off_norm[:20].tolist(), "identical_pairs": pairs[:10].tolist(),
        "max_pair_cosine": float(cosines.max(initial=-1.0))}


def few_dead_clusters(churn: dict, max_share: float) -> tuple[bool, dict]:
    """Check: the share of clusters dead at the end or moved in the last epoch (`SequentialSoftClustering.churn()`)
    is at most max_share; more and the fit had not settled."""
    return bool(churn["share"] <= max_share), {**churn, "max_dead_fraction": max_share}


def memberships_valid(sparse: SparseMemberships, attention_mask: np.ndarray, top_m: int) -> tuple[bool, dict]:
    """Check the memberships against their chunk's mask [n_seq, seq_len]: every attended token has 1 to
    top_m entries (the top cluster is always kept, so a token with none is lost from every statistic)
    and no unattended one has any; values in (0, 1], per-token sums <= 1 (never renormalized), rows
    sorted by (sequence, position, cluster)."""
    mask = np.asarray(attention_mask, bool)
    values, seq, pos = sparse.value, sparse.sequence.astype(np.int64), sparse.position.astype(np.int64)
    inside = (seq >= 0) & (seq < mask.shape[0]) & (pos >= 0) & (pos < mask.shape[1])
    token = np.where(inside, seq * mask.shape[1] + pos, 0)
    counts = np.bincount(token[inside], minlength=mask.size)
    sums = np.bincount(token[inside], weights=values[inside].astype(np.float64), minlength=mask.size)
    outside = int((~inside).sum()) + int(counts[~mask.ravel()].sum())
    attended = counts[mask.ravel()]
    missing, crowded = int((attended == 0).sum()), int((attended > top_m).sum())
    order_ok = bool(np.all(np.diff(token * 1_000_000 + sparse.cluster) > 0)) if len(values) > 1 else True
    in_range = bool(np.all((values > 0) & (values <= 1)))  # False on a NaN
    passed = in_range and bool(np.all(sums <= 1 + 1e-5)) and order_ok and not (outside or missing or crowded)
    return passed, {"min_value": float(np.nanmin(values)) if len(values) else 0.0,
                    "max_token_sum": float(sums.max(initial=0.0)), "sorted": order_ok,
                    "attended_tokens_without_membership": missing, "tokens_over_top_m": crowded,
                    "entries_off_the_mask": outside}
