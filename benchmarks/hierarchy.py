"""Hierarchy figures from a materialized demo: the tree, Cramér's V against the category, ensemble
stability, and the tree's wall time as a ratio to the centroid fit, both timed here in the same run.

    ATLAS_HOME=/tmp/atlas-issue5 .venv/bin/latent-atlas demo
    ATLAS_HOME=/tmp/atlas-issue5 .venv/bin/python benchmarks/hierarchy.py
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.hierarchy import HierarchySample  # noqa: E402
from latent_atlas.clustering import SequentialSoftClustering  # noqa: E402
from latent_atlas.ensemble import EnsembleResult  # noqa: E402
from latent_atlas.outcomes import association_by_depth  # noqa: E402
from latent_atlas.tree import ClusterTree, build_tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=os.environ.get("ATLAS_HOME", ".atlas"), help="ATLAS_HOME of a finished demo")
    args = parser.parse_args()
    home = Path(args.home).resolve()
    tensors, tables = home / "tensors", home / "tables"

    sample = HierarchySample.load(tensors / "hierarchy_sample.npz")
    tree = ClusterTree.load(tensors / "cluster_tree.npz")
    print(f"sample: {len(sample.vectors)} tokens of {sample.tokens_seen} ({sample.vectors.shape[1]} dims), "
          f"{len(sample.doc_ids)} documents, k={sample.n_clusters}")
    depth = max(n.depth for n in tree.nodes.values())
    print(f"\ncluster tree (token level): {len(tree.nodes)} nodes, {len(tree.leaves())} leaves, depth {depth}")
    print(tree.render())

    paths = pq.read_table(tables / "document_paths.parquet").to_pydict()
    association = association_by_depth([p.split("/") if p != "root" else [] for p in paths["path"]], paths["outcome"], depth)
    majority = tree.assign_document_paths(sample.vectors, sample.doc_id, "majority")
    category = dict(zip(sample.doc_ids.tolist(), sample.doc_categories.tolist()))
    majority_v = association_by_depth(list(majority.values()), [category[d] for d in majority], depth)
    print("\nCramér's V, tree node vs BBC category, document level "
          f"({len(paths['doc_id'])} documents mean-pooled; {len(majority)} by majority of sampled tokens):")
    for mean_a, major_a in zip(association, majority_v):
        print(f"  depth {mean_a.depth}: mean-pooled V={mean_a.cramers_v:.3f} (p={mean_a.p_value:.2g}, "
              f"{len(mean_a.clusters)} nodes)   majority V={major_a.cramers_v:.3f} (p={major_a.p_value:.2g})")
    top = association[0]
    for outcome in top.outcomes:
        over = top.most_over(outcome, 1)[0]
        print(f"    {outcome:>13}: most over-represented in node {over.cluster} "
              f"({over.observed} docs, expected {over.expected:.1f}, residual {over.residual:+.1f})")

    # the same tree config on the documents themselves (level="document" of the cluster_tree asset)
    start = time.perf_counter()
    doc_tree = build_tree(sample.doc_vectors, tree.config, soft_clusters=sample.doc_memberships())
    doc_seconds = time.perf_counter() - start
    doc_paths = doc_tree.assign_paths(sample.doc_vectors)
    doc_depth = max(n.depth for n in doc_tree.nodes.values())
    print(f"\ndocument-level tree (same config, {len(sample.doc_ids)} document vectors, {doc_seconds:.1f} s): "
          f"{len(doc_tree.nodes)} nodes, depth {doc_depth}")
    print(doc_tree.render())
    for a in association_by_depth(doc_paths, sample.doc_categories.tolist(), max(doc_depth, 1)):
        print(f"  depth {a.depth}: V={a.cramers_v:.3f} (p={a.p_value:.2g}, {len(a.clusters)} nodes)")
        for outcome in a.outcomes if a.depth == 1 else []:
            over = a.most_over(outcome, 1)[0]
            print(f"    {outcome:>13}: node {over.cluster} ({over.observed} docs, expected {over.expected:.1f}, "
                  f"residual {over.residual:+.1f})")

    ens = EnsembleResult.load(tensors / "ensemble.npz")
    off = ~np.eye(len(ens.seeds), dtype=bool)
    print(f"\nensemble: seeds {ens.seeds}, k={ens.centers.shape[1]}, sample {ens.labels.shape[1]} tokens")
    print(f"  median per-cluster stability (best-match cosine): {np.median(ens.stability):.3f} "
          f"(10th pct {np.percentile(ens.stability, 10):.3f})")
    print(f"  mean pairwise ARI: {ens.distances['ari'][off].mean():.3f}; mean perm-invariant Hamming: "
          f"{ens.distances['perm_invariant_hamming'][off].mean() / ens.labels.shape[1]:.3f} of tokens")

    centroids = SequentialSoftClustering.load(tensors / "centroids.npz")
    chunks = sorted(p for p in (tensors / "whitened_activations").iterdir() if p.is_dir())
    start = time.perf_counter()
    SequentialSoftClustering(**{**centroids.get_params(), "checkpoint_dir": None}).fit_chunks(chunks)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuilt = build_tree(sample.vectors, tree.config, soft_clusters=sample.memberships())  # no cache
    tree_seconds = time.perf_counter() - start
    same = "same tree as materialized" if rebuilt.render() == tree.render() else "DIFFERS from the materialized tree"
    n_tokens = sum(int(np.load(c / "attention_mask.npy", mmap_mode="r").sum()) for c in chunks)
    print(f"\nwall time, measured here: centroid fit {fit_seconds:.1f} s ({n_tokens} tokens, {len(chunks)} chunks, "
          f"k={sample.n_clusters}, {centroids.n_epochs} epochs); tree build {tree_seconds:.1f} s "
          f"({len(sample.vectors)} sampled tokens, {len(tree.nodes) - 1} non-root nodes; {same})")
    print(f"  tree / centroid fit: {tree_seconds / fit_seconds:.1f}x")


if __name__ == "__main__":
    main()
