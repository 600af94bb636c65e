"""The rewritten asset checks on the crafted inputs of tests/test_checks.py: each good input's verdict,
each bad input's verdict and the metadata that names the defect (docs/benchmarks.md, issue 27 item 5).

    PYTHONPATH=. .venv/bin/python benchmarks/crafted_checks.py
"""

import numpy as np

from assets.clustering import centroids_unit_norm_and_finite
from assets.inputs import finite_and_shaped, mask_token_alignment
from latent_atlas.analysis.intervention import check_vectors, intervention_vectors
from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.data.chunks import DenseChunk
from tests.test_checks import _chunk, _planted, dead_cluster_statistics


def main() -> None:
    chunk = _chunk()
    acts = np.array(chunk.activations)
    acts[3, 2, 7] = np.nan
    print("finite_and_shaped: good", finite_and_shaped(chunk, 32)[0], "| one NaN",
          finite_and_shaped(DenseChunk(acts, chunk.attention_mask, chunk.token_ids), 32))
    shifted = np.roll(chunk.attention_mask, 1, axis=1)
    print("mask_token_alignment: good", mask_token_alignment(chunk)[0], "| shifted onto padding",
          mask_token_alignment(DenseChunk(chunk.activations, shifted, chunk.token_ids)))
    centers = SequentialSoftClustering(4, seed=0, n_epochs=2).fit(_planted()).cluster_centers_
    twin, half = centers.copy(), centers.copy()
    twin[3], half[1] = twin[0], half[1] * 0.5
    print("centroids_unit_norm_and_finite: good", centroids_unit_norm_and_finite(centers)[0],
          "| twin", centroids_unit_norm_and_finite(twin)[0], centroids_unit_norm_and_finite(twin)[1]["identical_pairs"],
          "| norm 0.5", centroids_unit_norm_and_finite(half)[0], centroids_unit_norm_and_finite(half)[1]["max_norm_error"])
    stats, planted = dead_cluster_statistics()
    vectors = intervention_vectors(stats.moments, stats.fit_sample, stats.heldout, planted).vectors
    print("vectors_finite_and_unit_norm: dead cluster 3's vector norm", round(float(np.linalg.norm(vectors[3])), 6),
          "fitting weight", stats.moments.cluster_weight.round(1).tolist(),
          "| check", check_vectors(vectors, stats.moments.cluster_weight))


if __name__ == "__main__":
    main()
