"""Cluster tree speed (issue 12, item 3): the previous build (UMAP's own kNN search, NN-descent above
4,096 points, and UMAP's 500 epochs) against the current one (exact kNN by matrix products, 200 epochs),
in one process, on the same planted three-level hierarchies, with the quality of each tree.

    .venv/bin/python benchmarks/tree_speed.py [--large 20000]

Order: a 500-point warm-up tree first (numba compiles, or loads from its cache, the UMAP kernels both
paths share), then per sample the previous build and the current one. The first previous build also
compiles NN-descent, as every new process (every Dagster run) does; it is built a second time warm.
Start-up: two fresh processes import the tree and build the warm-up tree, one compiling UMAP's kernels
(every process before issue 12: umap leaves numba's cache off) and one loading them from the cache
this build keeps.
Quality: ARI of the tree's partition at each depth (a point's node at that depth, or its leaf above it;
points left as noise on the way are excluded) against each planted level (top, mid, leaf groups).
"""

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.hierarchy.tree import ClusterTree, build_tree  # noqa: E402
from latent_atlas.hierarchy.tree_config import TreeConfig  # noqa: E402

CURRENT = TreeConfig()
PREVIOUS = replace(CURRENT, knn="umap", umap_n_epochs=None)  # the build before issue 12
LEVELS = ("top", "mid", "leaf")


def planted_hierarchy(n: int, dim: int, noise: float, seed: int = 0, branching=(4, 3, 3),
                      offsets=(1.0, 0.17, 0.08)) -> tuple[np.ndarray, np.ndarray]:
    """x [n, dim] float32 and planted labels [3, n] (top, mid, leaf group of each point).

    Each level's centers are its parent's plus offsets[level] * N(0, I); points are their leaf
    center plus noise * N(0, I); leaf sizes are lognormal (unequal groups, as real clusters are).
    """
    rng = np.random.default_rng(seed)
    centers = np.zeros((1, dim))
    for b, offset in zip(branching, offsets):
        centers = np.repeat(centers, b, axis=0) + offset * rng.normal(size=(len(centers) * b, dim))
    weights = rng.lognormal(0.0, 0.4, len(centers))
    leaf = rng.choice(len(centers), size=n, p=weights / weights.sum())
    x = centers[leaf] + noise * rng.normal(size=(n, dim))
    levels = np.stack([leaf // (branching[2] * branching[1]), leaf // branching[2], leaf])
    return x.astype(np.float32), levels


def depth_partitions(tree: ClusterTree, n: int) -> dict[int, np.ndarray]:
    """Per depth >= 1, each point's node at that depth (its leaf where the branch stops above): [n]
    integer codes, -1 where the point was left as noise at that depth or above."""
    depth = max(node.depth for node in tree.nodes.values())
    codes = {d: np.full(n, -1) for d in range(1, depth + 1)}
    for code, node in enumerate(tree.nodes.values()):
        if node.depth == 0:
            continue
        deepest = depth if not node.children else node.depth
        for d in range(node.depth, deepest + 1):
            codes[d][node.members] = code
    return codes


def quality(tree: ClusterTree, levels: np.ndarray) -> str:
    parts = [f"{len(tree.nodes)} nodes, {len(tree.leaves())} leaves"]
    for d, codes in depth_partitions(tree, levels.shape[1]).items():
        kept = codes >= 0
        aris = " ".join(f"{name} {adjusted_rand_score(lab[kept], codes[kept]):.3f}" for name, lab in zip(LEVELS, levels))
        parts.append(f"depth {d} ({kept.mean():.0%} of points): ARI vs {aris}")
    return "; ".join(parts)


def timed_build(x: np.ndarray, config: TreeConfig) -> tuple[ClusterTree, float]:
    start = time.perf_counter()
    tree = build_tree(x, config)
    return tree, time.perf_counter() - start


def fresh_process_seconds(dim: int, cache_umap_kernels: bool) -> float:
    """Wall time of a new Python process that imports the tree and builds the 500-point warm-up tree."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import tree_speed as t; "
            "import latent_atlas.hierarchy.node_split as node_split; from dataclasses import replace; "
            + ("" if cache_umap_kernels else "node_split._cache_umap_kernels = lambda: None; ")  # compile, as before
            + f"x, _ = t.planted_hierarchy(500, {dim}, 0.2, seed=1); t.build_tree(x, replace(t.CURRENT, max_depth=1))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return time.perf_counter() - start


def same_tree(a: ClusterTree, b: ClusterTree) -> bool:
    return a.render() == b.render() and all(
        np.array_equal(a.nodes[i].members, b.nodes[i].members) for i in a.nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="points per planted sample (the demo samples 5,000 tokens)")
    parser.add_argument("--dim", type=int, default=576, help="dimensions (SmolLM2-135M's residual stream)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.25], help="one planted sample per value")
    parser.add_argument("--large", type=int, default=0,
                        help="also time the current build on a planted sample of this many points, "
                             "with and without umap_fit_size=5000 (0: skip)")
    args = parser.parse_args()
    print(f"[machine] {describe()}")
    print(f"previous: knn={PREVIOUS.knn!r}, umap_n_epochs={PREVIOUS.umap_n_epochs}; "
          f"current: knn={CURRENT.knn!r}, umap_n_epochs={CURRENT.umap_n_epochs}")

    fresh_process_seconds(args.dim, True)  # writes the cache if this checkout has none yet
    cold, cached = fresh_process_seconds(args.dim, False), fresh_process_seconds(args.dim, True)
    print(f"fresh process, import + 500-point tree: {cold:.1f} s compiling UMAP's kernels, {cached:.1f} s loading "
          f"them from the numba cache")
    warm_x, _ = planted_hierarchy(500, args.dim, 0.2, seed=1)
    _, warmup = timed_build(warm_x, replace(CURRENT, max_depth=1))
    print(f"warm-up, 500-point tree (numba compiles or loads the shared UMAP kernels): {warmup:.1f} s")

    for s, noise in enumerate(args.noise):
        x, levels = planted_hierarchy(args.n, args.dim, noise)
        print(f"\nplanted sample {s + 1}: {args.n} points, {args.dim} dims, 4 x 3 x 3 groups, noise {noise}")
        old, old_s = timed_build(x, PREVIOUS)
        label = "first in process, compiles NN-descent" if s == 0 else "warm"
        print(f"  previous ({label}): {old_s:6.1f} s  {quality(old, levels)}")
        if s == 0:
            old_again, old_warm_s = timed_build(x, PREVIOUS)
            print(f"  previous (warm):     {old_warm_s:6.1f} s  same tree as its first build: {same_tree(old, old_again)}")
        new, new_s = timed_build(x, CURRENT)
        print(f"  current:             {new_s:6.1f} s  {quality(new, levels)}")
        exact_only, exact_only_s = timed_build(x, replace(CURRENT, umap_n_epochs=None))
        print(f"  exact kNN, 500 epochs: {exact_only_s:4.1f} s  {quality(exact_only, levels)}")
        new_again, _ = timed_build(x, CURRENT)
        print(f"  current again: same tree: {same_tree(new, new_again)}")
        ratios = f"speed-up previous / current: {old_s / new_s:.1f}x"
        if s == 0:
            ratios += (f" (first in process); {old_warm_s / new_s:.1f}x (both warm); per new process "
                       f"(start-up + tree, previous without the numba cache): {(cold + old_s) / (cached + new_s):.1f}x")
        print(f"  {ratios}")

    if args.large:
        x, levels = planted_hierarchy(args.large, args.dim, args.noise[0])
        print(f"\nlarge planted sample: {args.large} points, noise {args.noise[0]} (current build only)")
        full, full_s = timed_build(x, CURRENT)
        print(f"  umap_fit_size=None: {full_s:6.1f} s  {quality(full, levels)}")
        fitted, fitted_s = timed_build(x, replace(CURRENT, umap_fit_size=5000))
        print(f"  umap_fit_size=5000: {fitted_s:6.1f} s  {quality(fitted, levels)}")
        print(f"  speed-up: {full_s / fitted_s:.1f}x")


if __name__ == "__main__":
    main()
