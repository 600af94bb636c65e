"""Ensembles of seeded soft-clustering runs: distances between runs, per-cluster stability, registry.

An ensemble re-fits the soft clustering with n seeds on one shared sample. Two runs are compared
through their hard labels on that sample (permutation-invariant Hamming, matching distance, ARI)
and through their centers (best-match cosine of each cluster across runs).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from latent_atlas.tables import save_npz

# fit_fn(sample [n, d], seed) -> (centers [k, d] unit-norm, labels [n])
FitFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

DISTANCE_METHODS = ("perm_invariant_hamming", "matching_dist", "ari")


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of items per (label in a, label in b) -> [ka, kb]; labels need not be 0..k-1."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"partitions must be 1-D and the same length, got {a.shape} and {b.shape}")
    _, a_idx = np.unique(a, return_inverse=True)
    b_ids, b_idx = np.unique(b, return_inverse=True)
    ka = int(a_idx.max()) + 1 if a.size else 0
    flat = np.bincount(a_idx * len(b_ids) + b_idx, minlength=ka * len(b_ids))
    return flat.reshape(ka, len(b_ids))


def perm_invariant_hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Items that disagree under the best one-to-one relabelling of b onto a (Hungarian)."""
    table = contingency(a, b)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return int(len(a) - table[rows, cols].sum())


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def matching_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Item pairs grouped together in one partition but not in the other.

    From the contingency table in O(ka * kb): pairs together in a + pairs together in b
    - 2 * pairs together in both, never touching the O(n^2) pairs.
    """
    table = contingency(a, b)
    return _pairs(table.sum(1)) + _pairs(table.sum(0)) - 2 * _pairs(table)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (1 = same partition up to relabelling, ~0 = chance)."""
    table = contingency(a, b)
    n = int(table.sum())
    both, in_a, in_b = _pairs(table), _pairs(table.sum(1)), _pairs(table.sum(0))
    total = n * (n - 1) // 2
    expected = in_a * in_b / total if total else 0.0
    top = 0.5 * (in_a + in_b)
    # two identical trivial partitions (all-one-cluster or all-singletons) agree perfectly
    return 1.0 if top == expected else float((both - expected) / (top - expected))


def partition_distance(a: np.ndarray, b: np.ndarray, method: str) -> float:
    """One of DISTANCE_METHODS between two labelings of the same items."""
    if method == "perm_invariant_hamming":
        return float(perm_invariant_hamming(a, b))
    if method == "matching_dist":
        return float(matching_distance(a, b))
    if method == "ari":
        return adjusted_rand(a, b)
    raise ValueError(f"method must be one of {DISTANCE_METHODS}, got {method!r}")


def pairwise_partition_distances(labels: np.ndarray, method: str) -> np.ndarray:
    """Distance between every pair of runs: labels [n_runs, n] -> [n_runs, n_runs]."""
    n_runs = len(labels)
    out = np.zeros((n_runs, n_runs))
    for i in range(n_runs):
        out[i, i] = 1.0 if method == "ari" else 0.0
        for j in range(i + 1, n_runs):
            out[i, j] = out[j, i] = partition_distance(labels[i], labels[j], method)
    return out


def best_match_cosines(centers_a: np.ndarray, centers_b: np.ndarray) -> np.ndarray:
    """Cosine of each center of a with its one-to-one match in b (Hungarian) -> [ka]; NaN if unmatched."""
    cos = _unit(centers_a) @ _unit(centers_b).T  # [ka, kb]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    out = np.full(len(centers_a), np.nan)
    out[rows] = cos[rows, cols]
    return out


def cluster_stability(centers: Sequence[np.ndarray]) -> np.ndarray:
    """Per-cluster stability [n_runs, k]: median over the other runs of the best-match cosine."""
    n_runs = len(centers)
    if n_runs < 2:
        raise ValueError(f"cluster_stability needs at least 2 runs, got {n_runs}")
    out = []
    for i in range(n_runs):
        matches = [best_match_cosines(centers[i], centers[j]) for j in range(n_runs) if j != i]
        out.append(np.nanmedian(np.stack(matches), axis=0))
    return np.stack(out)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def soft_clustering_fit_fn(n_clusters: int, **kwargs) -> FitFn:
    """A fit_fn that re-fits latent_atlas.clustering.SequentialSoftClustering with the given seed."""

    def fit(sample: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        # imported here so the ensemble math does not depend on the clustering module being present
        from latent_atlas.clustering import SequentialSoftClustering

        model = SequentialSoftClustering(n_clusters, seed=seed, **kwargs)
        model.fit(sample)
        return np.asarray(model.cluster_centers_), np.asarray(model.predict(sample))

    return fit


@dataclass
class EnsembleResult:
    """n seeded runs on one shared sample, compared pairwise."""

    seeds: list[int]
    centers: np.ndarray  # [n_runs, k, d]
    labels: np.ndarray  # [n_runs, n] hard labels of the shared sample
    distances: dict[str, np.ndarray]  # method -> [n_runs, n_runs]
    stability: np.ndarray  # [n_runs, k] median best-match cosine of each cluster

    def save(self, path: str | Path) -> Path:
        """Write all arrays to one .npz (no pickle)."""
        arrays = {f"distances_{m}": d for m, d in self.distances.items()}
        return save_npz(path, {"seeds": np.asarray(self.seeds), "centers": self.centers, "labels": self.labels,
                               "stability": self.stability, **arrays})

    @classmethod
    def load(cls, path: str | Path) -> EnsembleResult:
        with np.load(path, allow_pickle=False) as z:
            distances = {k.removeprefix("distances_"): z[k] for k in z.files if k.startswith("distances_")}
            return cls([int(s) for s in z["seeds"]], z["centers"], z["labels"], distances, z["stability"])


def fit_ensemble(sample: np.ndarray, seeds: Sequence[int], fit_fn: FitFn,
                 methods: Sequence[str] = DISTANCE_METHODS) -> EnsembleResult:
    """Re-fit with every seed on `sample` [n, d] and compare all pairs of runs."""
    if len(seeds) < 2:
        raise ValueError(f"seeds: an ensemble needs at least 2 seeds, got {list(seeds)}")
    centers, labels = [], []
    for seed in seeds:
        c, lab = fit_fn(sample, int(seed))
        centers.append(np.asarray(c, dtype=np.float32))
        labels.append(np.asarray(lab, dtype=np.int64))
    labels_arr = np.stack(labels)
    distances = {m: pairwise_partition_distances(labels_arr, m) for m in methods}
    return EnsembleResult(list(map(int, seeds)), np.stack(centers), labels_arr, distances,
                          cluster_stability(centers))


class RunRegistry:
    """Runs of an ensemble in SQLite: seed, configuration JSON, data version, created time, paths."""

    _SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
        run_id INTEGER PRIMARY KEY AUTOINCREMENT, ensemble_id TEXT NOT NULL, seed INTEGER NOT NULL,
        config_json TEXT NOT NULL, data_version TEXT, created_at REAL NOT NULL, paths_json TEXT NOT NULL)"""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(self._SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.row_factory = sqlite3.Row
        return db

    def add_run(self, ensemble_id: str, seed: int, config: dict, data_version: str | None = None,
                paths: dict[str, str] | None = None) -> int:
        """Record one run; returns its run_id."""
        with closing(self._connect()) as db, db:
            cur = db.execute(
                "INSERT INTO runs (ensemble_id, seed, config_json, data_version, created_at, paths_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ensemble_id, int(seed), json.dumps(config, sort_keys=True), data_version, time.time(),
                 json.dumps({k: str(v) for k, v in (paths or {}).items()})))
            return int(cur.lastrowid)

    def runs(self, ensemble_id: str | None = None) -> list[dict]:
        """All recorded runs (of one ensemble if given), oldest first, config and paths decoded."""
        query, args = "SELECT * FROM runs", ()
        if ensemble_id is not None:
            query, args = query + " WHERE ensemble_id = ?", (ensemble_id,)
        with closing(self._connect()) as db:
            rows = db.execute(query + " ORDER BY run_id", args).fetchall()
        return [dict(r, config=json.loads(r["config_json"]), paths=json.loads(r["paths_json"])) for r in rows]
