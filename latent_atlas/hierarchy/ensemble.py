"""Ensembles of seeded soft-clustering runs: distances between runs, per-cluster stability, registry.

An ensemble re-fits the soft clustering with n seeds on one shared sample. Two runs are compared
through their hard labels on that sample (permutation-invariant Hamming, matching distance, ARI)
and through their centers (best-match cosine of each cluster across runs).

The atlas's own clusters (the centroids every other asset describes) get their stability from the
runs: each atlas cluster is matched one-to-one (Hungarian on center cosines) to a cluster of every
run, and scored by the matched cosine and by how many of its tokens the run puts in the match
(see `atlas_cluster_stability`).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.sparse import csr_matrix

from latent_atlas.data.tables import save_npz

# fit_fn(sample [n, d], seed) -> (centers [k, d] unit-norm, labels [n], last step's centroid shift)
FitFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, float]]

DISTANCE_METHODS = ("perm_invariant_hamming", "matching_dist", "ari")
STABILITY_FLOOR = 0.8  # an atlas cluster whose median best-match cosine to the runs is below this is unstable
MAX_UNSTABLE_SHARE = 0.2  # a stability floor passes with at most this share of unstable clusters


def _partitions(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"partitions must be 1-D and the same length, got {a.shape} and {b.shape}")
    return a, b


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of items per (label in a, label in b) -> [ka, kb] int64, rows and columns in sorted
    label order; labels need not be 0..k-1."""
    from sklearn.metrics.cluster import contingency_matrix  # where used: scipy.stats/sklearn cost every run process ~1 s to import
    return contingency_matrix(*_partitions(a, b))


def perm_invariant_hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Items that disagree under the best one-to-one relabelling of b onto a (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
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
    """Adjusted Rand index (1 = same partition up to relabelling, ~0 = chance); two identical trivial
    partitions (all-one-cluster or all-singletons) agree perfectly."""
    from sklearn.metrics import adjusted_rand_score
    return float(adjusted_rand_score(*_partitions(a, b)))


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


def match_centers(reference: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one match of each reference center [ka, d] to a center [kb, d] maximizing the summed cosine
    (Hungarian) -> (index into centers [ka], -1 if unmatched; cosine [ka], NaN if unmatched)."""
    from scipy.optimize import linear_sum_assignment
    cos = _unit(reference) @ _unit(centers).T  # [ka, kb]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    match, cosine = np.full(len(reference), -1, np.int64), np.full(len(reference), np.nan)
    match[rows], cosine[rows] = cols, cos[rows, cols]
    return match, cosine


def best_match_cosines(centers_a: np.ndarray, centers_b: np.ndarray) -> np.ndarray:
    """Cosine of each center of a with its one-to-one match in b (Hungarian) -> [ka]; NaN if unmatched."""
    return match_centers(centers_a, centers_b)[1]


def align_centers(centers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """centers [k, d] reordered so row j is the one matched to reference cluster j: runs become comparable
    cluster by cluster (a run's cluster order is arbitrary)."""
    if len(centers) != len(reference):
        raise ValueError(f"align_centers needs as many centers as reference clusters, got {len(centers)} "
                         f"and {len(reference)}")
    return np.asarray(centers)[match_centers(reference, centers)[0]]


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


def refine_centers(model, x: np.ndarray, max_iters: int, tol: float = 1e-4) -> float:
    """Batch EM on rows x [n, d], in place: centers <- normalized sums of unit rows weighted by the model's
    own (top-m) memberships, until no center moves by more than tol (1 - cosine) or max_iters passes.
    Returns the last pass's largest shift. The online fit's decaying step size leaves a re-fit creeping
    for many steps (on the demo, runs' mutual best-match cosine 0.66 -> 0.80 from 10 to 30 full-batch
    steps); these exact steps reach the fixed point the online updates approach."""
    unit = _unit(x)
    n, k = len(x), len(model.cluster_centers_)
    shift = float("nan")
    for _ in range(max_iters):
        clusters, values = model.soft_memberships(x)  # [n, m]
        kept = clusters >= 0
        weights = csr_matrix((values[kept], (np.nonzero(kept)[0], clusters[kept])), shape=(n, k))
        sums = np.asarray(weights.T @ unit)  # [k, d]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        old = model.cluster_centers_
        new = np.where(norms > 0, sums / np.maximum(norms, 1e-300), old).astype(np.float32)  # no mass: stays
        shift = float(np.max(1.0 - np.sum(old * new, axis=1)))
        model.cluster_centers_ = new
        if shift <= tol:
            break
    return shift


def soft_clustering_fit_fn(n_clusters: int, refine_iters: int = 0, **kwargs) -> FitFn:
    """A fit_fn that re-fits latent_atlas.clustering.model.SequentialSoftClustering with the given seed, then
    runs up to refine_iters batch EM passes (refine_centers). The shift it reports is the last refine
    pass's, or without refinement the last online step's."""

    def fit(sample: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        # imported here so the ensemble math does not depend on the clustering module being present
        from latent_atlas.clustering.model import SequentialSoftClustering

        model = SequentialSoftClustering(n_clusters, seed=seed, **kwargs)
        model.fit(sample)
        shift = model.history_[-1]["centroid_shift"]
        if refine_iters:
            shift = refine_centers(model, sample, refine_iters)
        return np.asarray(model.cluster_centers_), np.asarray(model.predict(sample)), float(shift)

    return fit


@dataclass
class AtlasStability:
    """How well each of the atlas's k clusters is reproduced by the ensemble's runs (arrays [k]).

    Every atlas cluster c is matched one-to-one to a cluster m_r(c) of each run r (Hungarian on center
    cosines, so two atlas clusters never share a match).

    stability: median over runs of cos(atlas center c, center m_r(c)); 1 = every run has this cluster.
    stability_min: the same cosine in the worst run.
    agreement: median over runs of the share of the sample tokens with hard label c under the atlas
        that run r also puts together, in m_r(c) (recall: "do the runs keep this cluster's tokens?").
    jaccard: median over runs of |tokens in c and in m_r(c)| / |tokens in c or in m_r(c)|; also low when
        the matched cluster swallows other clusters' tokens.
    tokens: sample tokens with hard label c under the atlas (the count agreement rests on); agreement
        and jaccard are NaN where it is 0.
    """

    stability: np.ndarray  # [k]
    stability_min: np.ndarray  # [k]
    agreement: np.ndarray  # [k]
    jaccard: np.ndarray  # [k]
    tokens: np.ndarray  # [k] int64


def atlas_cluster_stability(atlas_centers: np.ndarray, atlas_labels: np.ndarray, run_centers: Sequence[np.ndarray],
                            run_labels: Sequence[np.ndarray]) -> AtlasStability:
    """Stability of the atlas clusters (centers [k, d], hard labels of the sample [n]) under runs
    (centers [k_r, d] and hard labels [n] of the same sample, one per run); see AtlasStability."""
    atlas_labels = np.asarray(atlas_labels)
    k = len(atlas_centers)
    tokens = np.bincount(atlas_labels, minlength=k)[:k]
    cosines, agreements, jaccards = [], [], []
    for centers, labels in zip(run_centers, run_labels, strict=True):
        labels = np.asarray(labels)
        if labels.shape != atlas_labels.shape:
            raise ValueError(f"run labels must label the atlas's {len(atlas_labels)} sample tokens, got {labels.shape}")
        match, cosine = match_centers(atlas_centers, centers)
        matched = np.where(match >= 0, match, -2)[atlas_labels] == labels  # [n] token kept in its atlas cluster's match
        both = np.bincount(atlas_labels[matched], minlength=k)[:k]
        run_sizes = np.bincount(labels, minlength=len(centers))
        in_match = np.where(match >= 0, run_sizes[np.maximum(match, 0)], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            agreements.append(np.where(tokens > 0, both / tokens, np.nan))
            jaccards.append(np.where(tokens > 0, both / (tokens + in_match - both), np.nan))
        cosines.append(cosine)
    if not cosines:
        raise ValueError("atlas_cluster_stability needs at least one run")
    cos = np.stack(cosines)  # [n_runs, k]
    return AtlasStability(np.nanmedian(cos, 0), np.nanmin(cos, 0), _median_or_nan(np.stack(agreements)),
                          _median_or_nan(np.stack(jaccards)), tokens.astype(np.int64))


def _median_or_nan(x: np.ndarray) -> np.ndarray:
    """Median over runs (axis 0); NaN, without a warning, where every run is NaN."""
    out = np.full(x.shape[1], np.nan)
    seen = ~np.isnan(x).all(0)
    out[seen] = np.nanmedian(x[:, seen], axis=0)
    return out


@dataclass
class StabilityFloor:
    """Verdict of a stability floor: at most max_share of the atlas clusters below `floor`."""

    passed: bool
    n_below: int
    share_below: float
    median: float
    floor: float
    max_share: float


def stability_floor(stability: np.ndarray, floor: float = STABILITY_FLOOR,
                    max_share: float = MAX_UNSTABLE_SHARE) -> StabilityFloor:
    """Passes when the share of clusters with stability < floor (NaN counts as below) is <= max_share."""
    stability = np.asarray(stability, np.float64)
    below = int(np.sum(~(stability >= floor)))
    share = below / max(len(stability), 1)
    median = float(np.nanmedian(stability)) if np.isfinite(stability).any() else float("nan")
    return StabilityFloor(share <= max_share, below, share, median, floor, max_share)


@dataclass
class EnsembleResult:
    """n seeded runs on one shared sample, compared pairwise, and the atlas clusters' stability under them."""

    seeds: list[int]
    centers: np.ndarray  # [n_runs, k, d]
    labels: np.ndarray  # [n_runs, n] hard labels of the shared sample
    distances: dict[str, np.ndarray]  # method -> [n_runs, n_runs]
    stability: np.ndarray  # [n_runs, k] median best-match cosine of each run's cluster to the other runs
    final_shift: np.ndarray | None = None  # [n_runs] max 1 - cos(old, new) center in each run's last step
    atlas: AtlasStability | None = None  # the atlas clusters' stability, when fitted with atlas centers

    def save(self, path: str | Path) -> Path:
        """Write all arrays to one .npz (no pickle); the atlas's arrays as atlas_<field>."""
        arrays = {f"distances_{m}": d for m, d in self.distances.items()}
        if self.final_shift is not None:
            arrays["final_shift"] = self.final_shift
        if self.atlas is not None:
            arrays.update({f"atlas_{f.name}": getattr(self.atlas, f.name) for f in fields(AtlasStability)})
        return save_npz(path, {"seeds": np.asarray(self.seeds), "centers": self.centers, "labels": self.labels,
                               "stability": self.stability, **arrays})

    @classmethod
    def load(cls, path: str | Path) -> EnsembleResult:
        with np.load(path, allow_pickle=False) as z:
            distances = {k.removeprefix("distances_"): z[k] for k in z.files if k.startswith("distances_")}
            atlas = (AtlasStability(**{f.name: z[f"atlas_{f.name}"] for f in fields(AtlasStability)})
                     if "atlas_stability" in z.files else None)
            return cls([int(s) for s in z["seeds"]], z["centers"], z["labels"], distances, z["stability"],
                       z["final_shift"] if "final_shift" in z.files else None, atlas)


def atlas_stability_columns(result: EnsembleResult) -> dict[str, np.ndarray]:
    """The atlas clusters' stability as columns keyed by cluster: cluster, stability, stability_min,
    assignment_agreement, assignment_jaccard, stability_tokens (see AtlasStability)."""
    if result.atlas is None:
        raise ValueError("this ensemble was fitted without atlas centers: it has no per-atlas-cluster stability")
    a = result.atlas
    return {"cluster": np.arange(len(a.stability), dtype=np.int64), "stability": a.stability,
            "stability_min": a.stability_min, "assignment_agreement": a.agreement,
            "assignment_jaccard": a.jaccard, "stability_tokens": a.tokens}


def atlas_stability_table(result: EnsembleResult) -> pa.Table:
    """atlas_stability_columns as a pyarrow table, one row per atlas cluster."""
    return pa.table(atlas_stability_columns(result))


def fit_ensemble(sample: np.ndarray, seeds: Sequence[int], fit_fn: FitFn,
                 methods: Sequence[str] = DISTANCE_METHODS, atlas_centers: np.ndarray | None = None,
                 atlas_labels: np.ndarray | None = None) -> EnsembleResult:
    """Re-fit with every seed on `sample` [n, d] and compare all pairs of runs; with the atlas's
    centers [k, d] and its hard labels of the sample [n], also the atlas clusters' stability."""
    if len(seeds) < 2:
        raise ValueError(f"seeds: an ensemble needs at least 2 seeds, got {list(seeds)}")
    if (atlas_centers is None) != (atlas_labels is None):
        raise ValueError("atlas_centers and atlas_labels go together: give both or neither")
    centers, labels, shifts = [], [], []
    for seed in seeds:
        c, lab, shift = fit_fn(sample, int(seed))
        centers.append(np.asarray(c, dtype=np.float32))
        labels.append(np.asarray(lab, dtype=np.int64))
        shifts.append(float(shift))
    labels_arr = np.stack(labels)
    distances = {m: pairwise_partition_distances(labels_arr, m) for m in methods}
    atlas = None if atlas_centers is None else atlas_cluster_stability(atlas_centers, atlas_labels, centers, labels)
    return EnsembleResult(list(map(int, seeds)), np.stack(centers), labels_arr, distances,
                          cluster_stability(centers), np.asarray(shifts), atlas)


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
