"""Time to quality: wall time to reach a given ARI on a planted mixture, ours against the peers.

    python benchmarks/time_to_quality.py [--chunks 19] [--sequences 1024] [--data DIR]

Data: a planted mixture of k=512 unit directions at d=2304 (latent_atlas.data.synthetic), written once to
DIR as fp16 chunk directories (19 x 1024 x 128 positions: ~2.1M attended vectors, 11 GB) and read
back from disk by every method. Contenders, one after the other in this process:
- ours: SequentialSoftClustering.fit_chunks streaming every point of every chunk (max_points above
  the chunk size), 3 epochs, with the default config (init on the sphere, temperature 0.05) and,
  with --tuned T, with init='kmeans++' and temperature T; the centroids after every step are
  snapshotted;
- faiss spherical k-means with its default subsampling (256 points per centroid, the sample read
  from disk inside the clock), one iteration at a time, each starting from the previous centroids;
- faiss on all points where memory allows (fp32 in memory: --faiss-all-rows, default 1M of them;
  all 2.1M would be 19 GB of this machine's 24);
- sklearn MiniBatchKMeans, partial_fit once per chunk streamed from disk, 2 passes.
The clocks stop while a snapshot is taken; afterwards every snapshot is scored by the ARI of its
nearest-centroid assignment (cosine) on a fixed evaluation set of 50k attended vectors.
Prints each contender's ARI-vs-time curve, the time each reaches the peers' final ARI, the ratios,
and writes the plot (docs/figures/time_to_quality.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss  # at the top, so that its bundled OpenBLAS is loaded before torch's (as in clustering.py)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_atlas.clustering.estep import effective_precision, resolve_precision  # noqa: E402
from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.backends import LocalBackend  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.data.chunks import read_chunk  # noqa: E402
from latent_atlas.data.synthetic import read_labels, write_synthetic_chunks  # noqa: E402

DIM, K = 2304, 512


class Clock:
    """Wall time that excludes the pauses in which snapshots are taken."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def snapshot(self, curve: list, centers: np.ndarray) -> None:
        began = time.perf_counter()
        curve.append((self.now(), np.array(centers, np.float32, copy=True)))
        self.paused += time.perf_counter() - began


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def data(args) -> list[Path]:
    folder = Path(args.data)
    done = folder / "done.json"
    spec = {"chunks": args.chunks, "sequences": args.sequences, "separation": args.separation, "k": K, "d": DIM}
    if done.exists() and json.loads(done.read_text()) == spec:
        return sorted(p for p in folder.glob("chunk_*") if p.is_dir())
    start = time.perf_counter()
    paths = write_synthetic_chunks(folder, n_chunks=args.chunks, n_sequences=args.sequences, seq_len=128, dim=DIM,
                                   n_clusters=K, separation=args.separation, seed=0, format="dir")
    done.write_text(json.dumps(spec))
    print(f"wrote {len(paths)} chunk dirs to {folder} in {time.perf_counter() - start:.0f} s")
    return paths


def attended(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 rows [n, d] of the attended positions, their true labels), read from the chunk dir."""
    chunk = read_chunk(path)
    mask = np.asarray(chunk.attention_mask)
    return chunk.activations[mask], read_labels(path)[mask]


def evaluation_set(paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    per_chunk = -(-size // len(paths))
    rows, labels = [], []
    for path in paths:
        x, y = attended(path)
        pick = np.sort(rng.choice(len(x), per_chunk, replace=False))
        rows.append(unit(x[pick]))
        labels.append(y[pick])
    return np.concatenate(rows)[:size], np.concatenate(labels)[:size]


def run_ours(paths, args, **params) -> list:
    clock, curve = Clock(), []
    model = SequentialSoftClustering(K, n_epochs=args.epochs, max_points=10 * args.sequences * 128, seed=0, **params)

    class Snapshotting(LocalBackend):  # each map starts a step: the centroids then are the last step's
        def map(self, fn, items, **shared):
            if hasattr(model, "cluster_centers_") and model.n_steps_ > 0:
                clock.snapshot(curve, model.cluster_centers_)
            return super().map(fn, items, **shared)

    model.fit_chunks(paths, backend=Snapshotting())
    clock.snapshot(curve, model.cluster_centers_)
    return curve


def faiss_iterations(clock: Clock, x: np.ndarray, iterations: int, curve: list) -> None:
    """Spherical k-means on x one iteration at a time, each from the previous centroids (faiss takes
    given centroids as its initialization), snapshot after each."""
    centroids = None
    for _ in range(iterations):
        clus = faiss.Clustering(DIM, K)
        clus.niter, clus.spherical, clus.seed, clus.verbose = 1, True, 1, False
        clus.max_points_per_centroid = len(x)  # x is already the sample: no second subsampling
        if centroids is not None:
            faiss.copy_array_to_vector(centroids.ravel(), clus.centroids)
        index = faiss.IndexFlatIP(DIM)
        clus.train(x, index)
        centroids = faiss.vector_to_array(clus.centroids).reshape(K, DIM)
        clock.snapshot(curve, centroids)


def run_faiss(paths, args, rows: int, iterations: int) -> list:
    """faiss on `rows` points drawn uniformly from every chunk (read inside the clock)."""
    clock, curve = Clock(), []
    sizes = [int(np.asarray(read_chunk(p).attention_mask).sum()) for p in paths]
    rows = min(rows, sum(sizes))
    rng = np.random.default_rng(3)
    picks = np.sort(rng.choice(sum(sizes), rows, replace=False))
    bounds = np.cumsum([0] + sizes)
    x = np.empty((rows, DIM), np.float32)
    filled = 0
    for i, path in enumerate(paths):
        mine = picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]
        x[filled:filled + len(mine)] = unit(attended(path)[0][mine])
        filled += len(mine)
    faiss_iterations(clock, x, iterations, curve)
    return curve


def run_minibatch(paths, args) -> list:
    from sklearn.cluster import MiniBatchKMeans

    clock, curve = Clock(), []
    mbk = MiniBatchKMeans(K, random_state=0)
    for _ in range(args.mbk_passes):
        for path in paths:
            mbk.partial_fit(unit(attended(path)[0]))
            clock.snapshot(curve, mbk.cluster_centers_)
    return curve


def scored(curve: list, eval_x: np.ndarray, eval_y: np.ndarray) -> list[tuple[float, float]]:
    import torch
    from sklearn.metrics import adjusted_rand_score

    x = torch.from_numpy(eval_x)
    return [(t, float(adjusted_rand_score(eval_y, (x @ torch.from_numpy(unit(c)).T).argmax(1).numpy())))
            for t, c in curve]


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, ari in curve if ari >= target), None)


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        ax.plot([t for t, _ in curve], [a for _, a in curve], marker=".", label=name)
    ax.set_xlabel("wall time, s (snapshots excluded)")
    ax.set_ylabel("ARI on the evaluation vectors")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/latent-atlas-ttq")
    parser.add_argument("--chunks", type=int, default=19)
    parser.add_argument("--sequences", type=int, default=1024, help="sequences of 128 positions per chunk")
    parser.add_argument("--separation", type=float, default=0.2, help="cosine of a token to its direction")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--faiss-iterations", type=int, default=20)
    parser.add_argument("--faiss-all-iterations", type=int, default=10)
    parser.add_argument("--faiss-all-rows", type=int, default=1_000_000, help="rows faiss 'all points' gets")
    parser.add_argument("--mbk-passes", type=int, default=2)
    parser.add_argument("--eval", type=int, default=50_000)
    parser.add_argument("--tuned", type=float, default=0.01,
                        help="also ours with init='kmeans++' and this temperature (0: not run)")
    parser.add_argument("--bf16", action="store_true", help="also ours with learn_precision='bfloat16'")
    parser.add_argument("--plot", default=str(REPO / "docs" / "figures" / "time_to_quality.png"))
    args = parser.parse_args()

    print(describe())
    paths = data(args)
    n = sum(int(np.asarray(read_chunk(p).attention_mask).sum()) for p in paths)
    eval_x, eval_y = evaluation_set(paths, args.eval)
    print(f"N={n:,} attended vectors in {len(paths)} chunks on disk, d={DIM}, k={K}, separation={args.separation}; "
          f"ARI on {len(eval_x):,} of them")
    runs = {f"ours ({effective_precision(resolve_precision('auto', 'cpu'), 'cpu')}, {args.epochs} epochs, all points)":
            lambda: run_ours(paths, args)}
    if args.tuned:
        runs[f"ours, init=kmeans++, temperature={args.tuned}"] = lambda: run_ours(
            paths, args, init="kmeans++", temperature=args.tuned)
    if args.bf16:
        runs[f"ours ({effective_precision('bfloat16', 'cpu')})"] = lambda: run_ours(paths, args, learn_precision="bfloat16")
    runs["faiss, default subsample (256/centroid)"] = lambda: run_faiss(paths, args, 256 * K, args.faiss_iterations)
    runs[f"faiss, {min(args.faiss_all_rows, n):,} points in memory"] = lambda: run_faiss(paths, args, args.faiss_all_rows, args.faiss_all_iterations)
    runs["MiniBatchKMeans, partial_fit per chunk"] = lambda: run_minibatch(paths, args)
    curves = {}
    for name, run in runs.items():
        curves[name] = scored(run(), eval_x, eval_y)
        t, ari = curves[name][-1]
        print(f"\n[{name}] final ARI {ari:.4f} after {t:.1f} s")
        print("  " + "  ".join(f"{t:.0f}s:{a:.3f}" for t, a in curves[name]))
    ours = next(iter(curves))
    print("\n| contender | final ARI | wall s | reaches its final ARI at | ours reaches it at | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, curve in curves.items():
        t_end, final = curve[-1]
        t_own, t_ours = first_reach(curve, final), first_reach(curves[ours], final)
        ratio = f"{t_own / t_ours:.2f}x" if t_ours and name != ours else "-"
        reach = f"{t_ours:.1f} s" if t_ours is not None else "never"
        print(f"| {name} | {final:.4f} | {t_end:.1f} | {t_own:.1f} s | {reach} | {ratio} |")
    cpu = describe().split(" | torch")[0]
    plot(curves, Path(args.plot), f"N={n:,}, d={DIM}, k={K}, planted separation {args.separation}\n{cpu}")
    print(f"\nplot: {args.plot}")
    print(json.dumps({name: curve for name, curve in curves.items()}))


if __name__ == "__main__":
    main()
