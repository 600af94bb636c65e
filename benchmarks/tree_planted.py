"""The planted two-level hierarchy of tests/test_tree.py over data seeds x layout (UMAP) seeds: the
tree's top-level and leaf ARI, the share of leaves that mix planted top groups, and how often a
sample's leaf is the one nearest-centroid descent (`assign_paths`) gives it.

    .venv/bin/python benchmarks/tree_planted.py [--data-seeds 5] [--layout-seeds 3] [--refine 0|N]

Run it once as is and once under the CI's AVX2 caps (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 NUMBA_CPU_NAME=haswell): UMAP's layout is numba code whose rounding
follows the CPU, so one seed can land differently on another CPU; a property of the tree must hold
over all seeds. --refine 0 builds without the original-space refinement (the build before it).
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.hierarchy.tree import ROOT, build_tree  # noqa: E402
from tests.test_tree import CONFIG, planted_hierarchy  # noqa: E402


def scores(x, top, leaf, tree) -> dict[str, float]:
    leaf_ids = tree.sample_leaf_ids(len(x))
    kept = np.array([i is not None for i in leaf_ids])
    found = np.array([i for i in leaf_ids if i is not None])
    found_top = np.full(len(x), -1)
    for k, node in enumerate(tree.children(ROOT)):
        found_top[node.members] = k
    on_top = found_top >= 0
    paths = tree.assign_paths(x)
    agree = [p[-1] == i for p, i in zip(paths, leaf_ids) if i is not None]
    return {"top_ari": adjusted_rand_score(top[on_top], found_top[on_top]) if on_top.any() else 0.0,
            "leaf_ari": adjusted_rand_score(leaf[kept], found), "kept": kept.mean(),
            "mixed_leaves": sum(len(np.unique(top[n.members])) > 1 for n in tree.leaves()),
            "leaves": len(tree.leaves()), "paths_agree": float(np.mean(agree))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-seeds", type=int, default=5)
    parser.add_argument("--layout-seeds", type=int, default=3)
    parser.add_argument("--refine", type=int, default=None, help="refine_iterations (default: TreeConfig's)")
    args = parser.parse_args()
    config = CONFIG if args.refine is None else replace(CONFIG, refine_iterations=args.refine)
    print(describe())
    print(f"refine_iterations={config.refine_iterations}")
    print("data layout  top_ari leaf_ari  kept  leaves mixed paths_agree  seconds")
    rows = []
    for data_seed in range(args.data_seeds):
        x, top, leaf = planted_hierarchy(seed=data_seed)
        for layout_seed in range(args.layout_seeds):
            began = time.perf_counter()
            tree = build_tree(x, replace(config, seed=layout_seed))
            row = scores(x, top, leaf, tree)
            rows.append(row)
            print(f"{data_seed:4d} {layout_seed:6d}  {row['top_ari']:7.3f} {row['leaf_ari']:8.3f} {row['kept']:5.2f}"
                  f"  {row['leaves']:6d} {row['mixed_leaves']:5d} {row['paths_agree']:11.3f}"
                  f"  {time.perf_counter() - began:7.1f}", flush=True)
    for key in ("top_ari", "leaf_ari", "paths_agree"):
        values = np.array([r[key] for r in rows])
        print(f"{key}: min {values.min():.3f}  median {np.median(values):.3f}  "
              f"share >= 0.9: {np.mean(values >= 0.9):.2f} over {len(values)} trees")
    print(f"trees with a leaf that mixes top groups: {sum(r['mixed_leaves'] > 0 for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
