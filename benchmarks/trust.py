"""Trust signals of a demo home, recomputed from its stored artifacts (issue 9's before/after table).

    python benchmarks/trust.py ATLAS_HOME [--refits]

Reads only files every version of the pipeline wrote (centroids.npz, ensemble.npz,
intervention_vectors.npz, cluster_stats.parquet), so a home made before the trust signals existed
gets the same figures: the atlas clusters' stability (median over the ensemble's runs of the cosine
to the one-to-one matched center), position artifacts, near-duplicate centroids, held-out AUROC.
--refits also re-fits the clustering itself (the ensemble's method on 100 and 400 tokens per
cluster, and the atlas's own streaming fit reseeded on every token) and reports the same stability.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.hierarchy.ensemble import best_match_cosines  # noqa: E402


def stored(home: Path) -> None:
    centroids = np.load(home / "tensors" / "centroids.npz", allow_pickle=False)
    atlas, history = centroids["cluster_centers"], json.loads(str(centroids["history"]))
    runs = np.load(home / "tensors" / "ensemble.npz", allow_pickle=False)["centers"]
    stability = np.median(np.stack([best_match_cosines(atlas, run) for run in runs]), axis=0)
    print(f"atlas stability (median matched cosine over {len(runs)} ensemble runs): median {np.median(stability):.3f}, "
          f"below 0.8: {int(np.sum(stability < 0.8))} of {len(atlas)}")
    moved = [(h["n_reseeded"], h.get("n_swapped", 0)) for h in history]
    print(f"reseeded / swapped over the fit: {sum(m[0] for m in moved)} / {sum(m[1] for m in moved)}; "
          f"final centroid shift {history[-1]['centroid_shift']:.4f}")
    table = pq.read_table(home / "tables" / "cluster_stats.parquet").to_pydict()
    first = np.array([sum(p[:4]) / max(sum(p), 1e-12) for p in table["position_distribution"]])
    print(f"position artifacts (> 0.5 of weight in positions 0-3): {int(np.sum(first > 0.5))}, "
          f"shares {np.round(np.sort(first[first > 0.5])[::-1], 3).tolist()}")
    cos = atlas @ atlas.T
    np.fill_diagonal(cos, -1)
    print(f"clusters with a centroid at cosine > 0.9: {int(np.sum(cos.max(axis=1) > 0.9))} (max {cos.max():.3f})")
    vectors = np.load(home / "tensors" / "intervention_vectors.npz", allow_pickle=False)
    for name in ("auroc", "auroc_hard"):
        if name in vectors.files:
            print(f"held-out {name}: median {np.nanmedian(vectors[name]):.4f}, min {np.nanmin(vectors[name]):.4f}")


def refits(home: Path) -> None:
    from latent_atlas.clustering.model import SequentialSoftClustering
    from latent_atlas.data.chunks import read_chunk
    from latent_atlas.hierarchy.ensemble import atlas_cluster_stability, soft_clustering_fit_fn

    atlas = SequentialSoftClustering.load(home / "tensors" / "centroids.npz")
    paths = sorted((home / "tensors" / "whitened_activations").iterdir())
    x = np.concatenate([np.asarray(c.activations[c.attention_mask], np.float32) for c in map(read_chunk, paths)])
    labels, k = atlas.predict(x), atlas.n_clusters
    params = {n: v for n, v in atlas.get_params().items() if n not in ("n_clusters", "seed", "checkpoint_dir")}

    def report(what, runs, index):
        s = atlas_cluster_stability(atlas.cluster_centers_, labels[index], [r[0] for r in runs], [r[1] for r in runs])
        print(f"{what}: median stability {np.median(s.stability):.3f}, below 0.8: {int(np.sum(s.stability < 0.8))}, "
              f"agreement {np.nanmedian(s.agreement):.3f}")

    rng = np.random.default_rng(0)
    for per_cluster in (100, 400):
        index = np.sort(rng.choice(len(x), min(len(x), per_cluster * k), replace=False))
        fit = soft_clustering_fit_fn(k, 100, **{**params, "max_points": len(index), "n_epochs": 10})
        report(f"ensemble method, {per_cluster} tokens per cluster, seeds 1-3",
               [fit(x[index], seed) for seed in (1, 2, 3)], index)
    reseeded = [SequentialSoftClustering(k, **{**params, "seed": seed}).fit_chunks(paths) for seed in (1, 2)]
    report(f"the atlas's own fit reseeded on all {len(x):,} tokens, seeds 1-2",
           [(m.cluster_centers_, m.predict(x)) for m in reseeded], np.arange(len(x)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--refits", action="store_true")
    args = parser.parse_args()
    print(f"[machine] {describe()}")
    stored(args.home)
    if args.refits:
        refits(args.home)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
