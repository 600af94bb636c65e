"""MDL merge hierarchies of the atlas's clusters and of every ensemble member on the hierarchy sample.

Each member's clusters are first aligned to the atlas's, so component j is the same cluster in every
member and the members' merge states compare component by component; the distance between members at
each merge says whether the coarse-to-fine view is stable across seeds.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.hierarchy.ensemble import EnsembleResult
from latent_atlas.hierarchy.mdl import (MergeConfig, aligned_merge_histories, histories_table, history_distances,
                                        merge_iteration, pair_distances, plot_history_distances)
from latent_atlas.hierarchy.sample import HierarchySample, memberships_for_centers


@dataclass
class SampleMerges:
    table: pa.Table  # histories_table: one row per (member, merge)
    members: list[str]  # "centroids" (the atlas), then "seed=<s>" per ensemble member
    distances: np.ndarray  # [n_iters, n_members, n_members] between ensemble members at each merge
    plot: Path  # PNG of those distances

    @property
    def median_distance_at_half(self) -> float:
        """Median distance between members halfway down the merges (0 when there are none)."""
        per_pair = pair_distances(self.distances)  # [n_iters, n_pairs]
        return float(np.median(per_pair[len(per_pair) // 2])) if len(per_pair) else 0.0


def merge_sample(sample: HierarchySample, clustering: SequentialSoftClustering, ensemble: EnsembleResult,
                 config: MergeConfig, distance: str, plot_path: Path) -> SampleMerges:
    """Greedy MDL merges by coactivation on the sample's tokens, for the atlas and every ensemble member
    (its memberships under the member's aligned centers, with the atlas's kernel)."""
    members = {f"seed={seed}": centers for seed, centers in zip(ensemble.seeds, ensemble.centers)}
    ensemble_histories = aligned_merge_histories(
        clustering.cluster_centers_, members,
        lambda centers: memberships_for_centers(sample.vectors, centers, clustering), config)
    histories = {"centroids": merge_iteration(sample.memberships(), config), **ensemble_histories}
    distances = history_distances(list(ensemble_histories.values()), distance)  # [n_iters, n_ens, n_ens]
    plot = plot_history_distances(distances, plot_path, distance)
    return SampleMerges(histories_table(histories, distances), list(histories), distances, plot)
