"""Held-out AUROC against its null: Gaussian noise vs a planted mixture (issue 27, item 3).

    python benchmarks/auroc_null.py [--vectors 32768] [--seeds 0 1] [--shapes 64x16 576x64] [--home /tmp/demo2]

For each shape d x k and seed, the atlas's own steps (spherical soft clustering, memberships,
held-out documents, LDA directions fit on the rest) run on two data sets of `--vectors` vectors:
isotropic Gaussian noise (no clusters) and a planted mixture (k random unit directions scaled to
sqrt(d), plus the same noise). Beside each, the null (`latent_atlas.analysis.null`) is drawn
from the data's own mean and covariance with another seed. Printed per row: the median raw AUROC
and auroc_hard, the null's median and 95th percentile of auroc_hard, the median margin
(auroc_hard - null 95th percentile), the share of clusters above the null (margin > 0), and times.
On noise the raw AUROC is high by construction and the margin should sit below 0 for ~95% of
clusters; on the planted mixture every cluster should clear the null.

With --home (a finished demo's ATLAS_HOME, read only), the same for the atlas's own clusters:
their scores as the intervention_vectors asset computes them, beside the null the asset draws.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from latent_atlas.analysis.null import NullConfig, pipeline_separation, separation_null, shrunk_for_gaussian  # noqa: E402
from latent_atlas.analysis.statistics import StatisticsConfig  # noqa: E402
from latent_atlas.clustering.config import ClusteringConfig  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402


def data(kind: str, n: int, d: int, k: int, seed: int) -> np.ndarray:
    """[n, d] float16: Gaussian noise, or a planted mixture of k directions in that noise."""
    rng = np.random.default_rng([seed, d, k])
    x = rng.standard_normal((n, d))
    if kind == "planted":
        directions = rng.standard_normal((k, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        x += np.sqrt(d) * directions[rng.integers(0, k, n)]  # cosine ~0.7 to its own direction
    return x.astype(np.float16)


def row(kind: str, d: int, k: int, seed: int, vectors: int, repeats: int) -> dict:
    x = data(kind, vectors, d, k, seed)
    clustering = ClusteringConfig(n_clusters=k, seed=seed)
    statistics = StatisticsConfig(heldout_fraction=0.5)
    start = time.perf_counter()
    scored = pipeline_separation(x, clustering, statistics)
    atlas_s = time.perf_counter() - start
    x32 = x.astype(np.float64)
    start = time.perf_counter()
    covariance = shrunk_for_gaussian(np.cov(x32, rowvar=False), x32.shape[0])  # as null_mean_covariance does
    null = separation_null(x32.mean(0), covariance, clustering, statistics,
                           NullConfig(vectors=vectors, repeats=repeats, seed=100 + seed))
    null_s = time.perf_counter() - start
    columns = scored.with_null(null.auroc, null.auroc_hard, 0.95).null_columns()
    margin = columns["auroc_hard_margin"]
    return {"data": kind, "d": d, "k": k, "seed": seed, "auroc": np.nanmedian(scored.auroc),
            "auroc_hard": np.nanmedian(scored.auroc_hard), "null_auroc": np.median(null.auroc),
            "null_hard": np.median(null.auroc_hard), "null_hard_95": columns["auroc_hard_null_high"][0],
            "margin": np.nanmedian(margin), "above_null": float(np.mean(margin > 0)),
            "atlas_s": atlas_s, "null_s": null_s}


def home_row(home: Path, null: NullConfig) -> dict:
    """The atlas's clusters in a finished home against the null the intervention_vectors asset draws."""
    from io_managers.tensors import load_artifact
    from latent_atlas.analysis.null import with_separation_null
    from latent_atlas.analysis.statistics import ChunkStatistics
    from latent_atlas.data.chunks import read_chunk

    tensors = home / "tensors"
    stats = ChunkStatistics.load(tensors / "merged_statistics.npz")
    clustering = load_artifact(tensors / "centroids.npz")
    scored = stats.fit_intervention_vectors(clustering.cluster_centers_,
                                            open_chunk=lambda key: read_chunk(tensors / "whitened_activations" / key))
    start = time.perf_counter()
    scored = with_separation_null(scored, stats.moments, clustering.config, stats.config, null)
    null_s = time.perf_counter() - start
    columns = scored.null_columns()
    margin = columns["auroc_hard_margin"]
    return {"data": f"demo {home}", "d": scored.vectors.shape[1], "k": scored.vectors.shape[0], "seed": null.seed,
            "auroc": np.nanmedian(scored.auroc), "auroc_hard": np.nanmedian(scored.auroc_hard),
            "null_auroc": np.median(scored.auroc_null), "null_hard": np.median(scored.auroc_hard_null),
            "null_hard_95": columns["auroc_hard_null_high"][0], "margin": np.nanmedian(margin),
            "above_null": float(np.mean(margin > 0)), "atlas_s": float("nan"), "null_s": null_s,
            "min_auroc": np.nanmin(scored.auroc), "min_margin": np.nanmin(margin)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=32768)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--shapes", nargs="+", default=["64x16", "576x64"], help="d x k")
    parser.add_argument("--repeats", type=int, default=2, help="null fits pooled (NullConfig.repeats)")
    parser.add_argument("--home", type=Path, default=None, help="also score a finished demo home (read only)")
    args = parser.parse_args(argv)
    print(describe())
    names = ("data", "d", "k", "seed", "auroc", "auroc_hard", "null_auroc", "null_hard", "null_hard_95", "margin",
             "above_null", "atlas_s", "null_s")
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    for shape in args.shapes:
        d, k = (int(v) for v in shape.split("x"))
        for kind in ("noise", "planted"):
            for seed in args.seeds:
                r = row(kind, d, k, seed, args.vectors, args.repeats)
                print(line(r, names), flush=True)
    if args.home is not None:
        r = home_row(args.home, NullConfig())
        print(line(r, names), flush=True)
        print(f"demo: min raw auroc {r['min_auroc']:.3f}, min margin {r['min_margin']:+.3f}, "
              f"{int(round(r['above_null'] * r['k']))} of {r['k']} clusters above the null")
    return 0


def line(r: dict, names: tuple) -> str:
    return "| " + " | ".join(f"{r[n]:.3f}" if isinstance(r[n], float) else str(r[n]) for n in names) + " |"


if __name__ == "__main__":
    raise SystemExit(main())
