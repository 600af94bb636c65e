"""Stability of the atlas on the hierarchy sample: seeded re-fits of its clustering (the ensemble) and
MDL merge hierarchies of the atlas and of every member. The work lives in latent_atlas (ensemble_runs,
sample_merges)."""

import dagster as dg
import numpy as np
from pydantic import Field

from assets.clustering import CLUSTERING_IN
from assets.configs import config_class, library_config
from assets.metadata import histogram_markdown, markdown_table, png_markdown
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.paths import atlas_home
from latent_atlas.hierarchy.ensemble import (MAX_UNSTABLE_SHARE, STABILITY_FLOOR, EnsembleResult, RunRegistry,
                                             stability_floor)
from latent_atlas.hierarchy.ensemble_runs import fit_atlas_ensemble, register_ensemble
from latent_atlas.hierarchy.mdl import MergeConfig
from latent_atlas.hierarchy.sample import HierarchySample
from latent_atlas.hierarchy.sample_merges import merge_sample


class EnsembleConfig(dg.Config):
    """Seeded re-fits of the atlas's clustering on the hierarchy sample's ensemble_vectors: online steps
    over the whole sample (init, dead-cluster reseeding), then batch EM passes to the fixed point. Members
    that have not converged make every cluster look unstable: the old 1,000-row steps on 5,000 tokens (15
    steps) left the demo's runs moving by up to 0.04 per step, mutual best-match cosine 0.86 with 10th
    percentile 0.19; 10 full-batch steps + batch EM reach shifts < 1e-4 and a mutual cosine of 0.94."""

    seeds: list[int] = Field(default=[0, 1, 2], description="One re-fit of the soft clustering per seed")
    points_per_step: int = Field(default=0, description="Sample rows per online step; 0 = the whole ensemble sample")
    n_epochs: int = Field(default=10, description="Online passes over the ensemble sample (steps when points_per_step is 0)")
    refine_iters: int = Field(default=100, description="Then at most this many batch EM passes, stopping once no "
                              "center moves by more than 1e-4 (1 - cosine)")
    stability_floor: float = Field(default=STABILITY_FLOOR, description="Check atlas_stability_floor: an atlas cluster is unstable "
                                   "when its median best-match cosine to the runs is below this")
    max_unstable_share: float = Field(default=MAX_UNSTABLE_SHARE, description="Check atlas_stability_floor: at most this share of the "
                                      "atlas clusters unstable")
    max_final_shift: float = Field(default=1e-3, description="Check ensemble_members_converged: every run's last pass "
                                   "moved no center by more than this (1 - cosine)")


@dg.asset(
    io_manager_key="tensor_io_manager",
    group_name="hierarchy",
    ins=CLUSTERING_IN,
    check_specs=[dg.AssetCheckSpec("atlas_stability_floor", asset="ensemble",
                                   description="At most max_unstable_share of the atlas clusters have stability "
                                               "(median best-match cosine to the runs) below stability_floor"),
                 dg.AssetCheckSpec("ensemble_members_converged", asset="ensemble",
                                   description="Every run's last pass moved no center by more than max_final_shift")],
    kinds={"torch"},
)
def ensemble(config: EnsembleConfig, hierarchy_sample: HierarchySample, clustering: SequentialSoftClustering):
    """Seeded re-fits of the soft clustering (the centroids' config) on the sample's ensemble_vectors:
    distances between runs, and each atlas cluster's stability (best-match cosine to every run, share of
    its tokens a run keeps together); runs recorded in a SQLite registry under ATLAS_HOME. Says which
    clusters are real (found again from other seeds) and which an artifact of one seed; the page
    shows the atlas clusters' stability distribution and the runs' pairwise agreement."""
    run = fit_atlas_ensemble(hierarchy_sample.ensemble_vectors, clustering, config.seeds, config.points_per_step,
                             config.n_epochs, config.refine_iters)
    registry = RunRegistry(atlas_home() / "registry" / "ensembles.sqlite")
    ensemble_id = register_ensemble(registry, run, hierarchy_sample.version, atlas_home() / "tensors" / "ensemble.npz")
    result = run.result
    floor = stability_floor(result.atlas.stability, config.stability_floor, config.max_unstable_share)
    converged, convergence = members_converged(result.final_shift, config.max_final_shift)
    return dg.MaterializeResult(
        value=result,
        metadata={**run.summary(), "ensemble_id": ensemble_id,
                  "median_atlas_stability": floor.median, "atlas_clusters_below_floor": floor.n_below,
                  "registry": dg.MetadataValue.path(str(registry.path)),
                  "atlas_stability": histogram_markdown(
                      {"stability (median cosine)": result.atlas.stability,
                       "assignment agreement": result.atlas.agreement},
                      "atlas clusters across the runs", "value", bins=20, reference=config.stability_floor),
                  "pairwise_runs": markdown_table(run.pairwise_rows())},
        check_results=[
            dg.AssetCheckResult(check_name="atlas_stability_floor", passed=floor.passed, metadata={
                "clusters_below_floor": floor.n_below, "share_below_floor": round(floor.share_below, 4),
                "median_stability": floor.median, "floor": floor.floor, "max_unstable_share": floor.max_share}),
            dg.AssetCheckResult(check_name="ensemble_members_converged", passed=converged, metadata=convergence),
        ],
    )


def members_converged(final_shift: np.ndarray, max_shift: float) -> tuple[bool, dict]:
    """Check: every run's last pass moved no center by more than max_shift (1 - cosine); NaN (a run
    that made no pass) fails. An unsettled member makes every atlas cluster look unstable."""
    shift = np.asarray(final_shift, np.float64)
    return bool(shift.size and np.all(shift <= max_shift)), {
        "final_shift": [round(float(s), 6) for s in shift], "max_final_shift": max_shift}


MergeHierarchyConfig = config_class(MergeConfig, name="MergeHierarchyConfig", extra={
    "distance": (str, Field(default="perm_invariant_hamming", description="Distance between members' merge states"))})


@dg.asset(io_manager_key="parquet_io_manager", group_name="hierarchy", ins=CLUSTERING_IN, kinds={"parquet"})
def merge_hierarchy(config: MergeHierarchyConfig, hierarchy_sample: HierarchySample,
                    clustering: SequentialSoftClustering, ensemble: EnsembleResult):
    """Greedy MDL merges of the soft clusters by coactivation on the sample, for the centroids and for
    every ensemble member, each member's clusters aligned to the centroids' first (so component j is the
    same cluster in every member); one row per (member, merge) with the distance between members at that merge.
    A coarser-to-finer view of the clusters, and whether it is stable across seeds (the page plots the
    members' distance at each merge)."""
    merges = merge_sample(hierarchy_sample, clustering, ensemble, library_config(config),
                          config.distance, atlas_home() / "plots" / "merge_history_distances.png")
    return dg.MaterializeResult(value=merges.table, metadata={
        "members": merges.members, "merges_per_member": int(merges.distances.shape[0]),
        "median_distance_at_half": merges.median_distance_at_half,
        "plot_path": dg.MetadataValue.path(str(merges.plot)),
        "distances": png_markdown(merges.plot.read_bytes(), "merge history distances")})
