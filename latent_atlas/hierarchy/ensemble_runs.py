"""Seeded re-fits of the atlas's clustering on one shared sample, recorded in the run registry.

Every re-fit takes the atlas's clustering config (same k and kernel) with another seed and the
ensemble's own steps; the registry keeps one row per seed under an id that hashes the config, the seeds
and the sample's version, so the same ensemble on the same sample always has the same id.
"""

import hashlib
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from latent_atlas.clustering.model import SequentialSoftClustering
from latent_atlas.hierarchy.ensemble import EnsembleResult, RunRegistry, fit_ensemble, soft_clustering_fit_fn


def refit_params(clustering: SequentialSoftClustering, points_per_step: int, n_epochs: int, n_rows: int) -> dict:
    """The atlas's clustering config for a re-fit on n_rows sample rows: everything but k and the seed,
    with points_per_step rows per online step (0 = all of them) and n_epochs passes."""
    params = {f.name: getattr(clustering.config, f.name) for f in fields(clustering.config)
              if f.name not in ("n_clusters", "seed")}
    return {**params, "max_points": points_per_step or n_rows, "n_epochs": n_epochs}


@dataclass
class EnsembleRun:
    """An ensemble's result with what it was fitted with."""

    result: EnsembleResult
    params: dict  # refit_params: the clustering config of every member, less k and the seed
    n_clusters: int
    n_points: int  # rows of the shared sample
    seconds: float

    def run_config(self, seed: int | None = None) -> dict:
        """The config the registry records (npz_keys name the corpus's files, not the fit)."""
        config = {"n_clusters": self.n_clusters, **{n: v for n, v in self.params.items() if n != "npz_keys"}}
        return config if seed is None else {**config, "seed": seed}

    def summary(self) -> dict:
        """The numbers that say how far the members agree (medians and means over clusters and run pairs)."""
        n, r = self.n_points, self.result
        off = ~np.eye(len(r.seeds), dtype=bool)
        return {"seeds": r.seeds, "n_clusters": self.n_clusters, "sample": n,
                "sample_tokens_per_cluster": round(n / self.n_clusters, 1),
                "online_steps_per_run": self.params["n_epochs"] * -(-n // self.params["max_points"]),
                "median_assignment_agreement": float(np.nanmedian(r.atlas.agreement)),
                "median_run_cluster_stability": float(np.median(r.stability)),
                "mean_pairwise_ari": float(r.distances["ari"][off].mean()),
                "mean_pairwise_hamming_fraction": float(r.distances["perm_invariant_hamming"][off].mean() / n),
                "wall_seconds": round(self.seconds, 2)}

    def pairwise_rows(self) -> list[dict]:
        """One row per pair of members: their ARI and the share of sample rows they place apart."""
        seeds, d = self.result.seeds, self.result.distances
        return [{"run_a": f"seed={seeds[i]}", "run_b": f"seed={seeds[j]}", "ari": float(d["ari"][i, j]),
                 "hamming_fraction": float(d["perm_invariant_hamming"][i, j] / self.n_points)}
                for i in range(len(seeds)) for j in range(i + 1, len(seeds))]


def fit_atlas_ensemble(x: np.ndarray, clustering: SequentialSoftClustering, seeds: list[int], points_per_step: int,
                       n_epochs: int, refine_iters: int) -> EnsembleRun:
    """Re-fit `clustering`'s config with every seed on x [n, d] (online steps, then at most refine_iters
    batch EM passes), compared pairwise and against the atlas's own centers and labels of x."""
    x = np.ascontiguousarray(x, np.float32)
    params = refit_params(clustering, points_per_step, n_epochs, len(x))
    k = int(clustering.cluster_centers_.shape[0])
    start = time.perf_counter()
    result = fit_ensemble(x, seeds, soft_clustering_fit_fn(k, refine_iters, **params),
                          atlas_centers=clustering.cluster_centers_, atlas_labels=clustering.predict(x))
    return EnsembleRun(result, params, k, len(x), time.perf_counter() - start)


def register_ensemble(registry: RunRegistry, run: EnsembleRun, data_version: str, saved_at: Path) -> str:
    """Record every member of `run` (fitted on the sample of data_version, saved at saved_at); returns
    the ensemble id."""
    seeds = run.result.seeds
    ensemble_id = hashlib.sha256(json.dumps([run.run_config(), seeds, data_version],
                                            sort_keys=True).encode()).hexdigest()[:16]
    for seed in seeds:
        registry.add_run(ensemble_id, seed, run.run_config(seed), data_version, {"ensemble": saved_at})
    return ensemble_id
