"""The token tree of a materialized home's hierarchy sample, built three ways in one process: the current
build, exact kNN with UMAP's 500 epochs, and the previous build (UMAP's own kNN, 500 epochs).

    python -W ignore benchmarks/tree_shapes.py HOME      # e.g. a fresh `latent-atlas demo --home HOME`

Prints nodes, leaves, nodes per depth and seconds for each: how the tree's shape moves with the build.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.hierarchy.sample import HierarchySample  # noqa: E402
from latent_atlas.hierarchy.sample_trees import tree_inputs  # noqa: E402
from latent_atlas.hierarchy.tree import build_tree  # noqa: E402
from latent_atlas.hierarchy.tree_config import TreeConfig  # noqa: E402


def main(home: str) -> None:
    sample = HierarchySample.load(Path(home) / "tensors" / "hierarchy_sample.npz")
    x, soft = tree_inputs(sample, "token")
    for name, config in [("current", TreeConfig()), ("exact kNN, 500 epochs", TreeConfig(umap_n_epochs=None)),
                         ("previous (UMAP's kNN, 500 epochs)", TreeConfig(knn="umap", umap_n_epochs=None))]:
        start = time.perf_counter()
        tree = build_tree(x, config, soft)
        seconds = time.perf_counter() - start
        depths: dict[int, int] = {}
        for node in tree.nodes.values():
            depths[node.depth] = depths.get(node.depth, 0) + 1
        print(f"{name}: {len(tree.nodes)} nodes, {len(tree.leaves())} leaves, "
              f"per depth {dict(sorted(depths.items()))}, {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1])
