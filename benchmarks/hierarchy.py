"""Hierarchy figures from a materialized demo: the token and document trees, Cramér's V against the
category, ensemble stability, and the trees' wall time as a ratio to the centroid fit, all timed here
in the same run.

    ATLAS_HOME=/tmp/atlas-issue5 .venv/bin/latent-atlas demo
    ATLAS_HOME=/tmp/atlas-issue5 .venv/bin/python benchmarks/hierarchy.py
"""

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.clustering.model import SequentialSoftClustering  # noqa: E402
from latent_atlas.compute.cpu import describe  # noqa: E402
from latent_atlas.hierarchy.ensemble import EnsembleResult  # noqa: E402
from latent_atlas.hierarchy.outcomes import Association, association_by_depth, parse_path  # noqa: E402
from latent_atlas.hierarchy.sample import HierarchySample  # noqa: E402
from latent_atlas.hierarchy.tree import ClusterTree, build_tree  # noqa: E402


def print_tree(title: str, tree: ClusterTree) -> int:
    depth = max(n.depth for n in tree.nodes.values())
    print(f"\n{title}: {len(tree.nodes)} nodes, {len(tree.leaves())} leaves, depth {depth}")
    print(tree.render())
    return depth


def print_over(a: Association) -> None:
    for outcome in a.outcomes:
        over = a.most_over(outcome, 1)[0]
        print(f"    {outcome:>13}: most over-represented in node {over.cluster} "
              f"({over.observed} docs, expected {over.expected:.1f}, residual {over.residual:+.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=os.environ.get("ATLAS_HOME", ".atlas"), help="ATLAS_HOME of a finished demo")
    args = parser.parse_args()
    print(f"[machine] {describe()}")  # the CPU and kernels every figure below was measured with
    home = Path(args.home).resolve()
    tensors, tables = home / "tensors", home / "tables"

    sample = HierarchySample.load(tensors / "hierarchy_sample.npz")
    tree = ClusterTree.load(tensors / "cluster_tree.npz")
    doc_tree = ClusterTree.load(tensors / "document_tree.npz")
    print(f"sample: {len(sample.vectors)} tokens of {sample.tokens_seen} ({sample.vectors.shape[1]} dims), "
          f"{len(sample.doc_ids)} documents, k={sample.n_clusters}; tree config: {tree.config}")
    depth = print_tree("cluster_tree (token level)", tree)
    doc_depth = print_tree(f"document_tree ({len(sample.doc_ids)} document vectors)", doc_tree)

    paths = pq.read_table(tables / "document_paths.parquet").to_pydict()
    categories = sample.doc_categories.tolist()
    by_doc_tree = association_by_depth([parse_path(p) for p in paths["path"]], paths["outcome"], doc_depth)
    by_token_tree = association_by_depth(tree.assign_paths(sample.doc_vectors), categories, depth)
    majority = tree.assign_document_paths(sample.vectors, sample.doc_id, "majority")
    category = dict(zip(sample.doc_ids.tolist(), categories))
    by_majority = association_by_depth(list(majority.values()), [category[d] for d in majority], depth)
    print(f"\nCramér's V, tree node vs BBC category, document level ({len(paths['doc_id'])} documents; "
          "document_paths reads the document tree):")
    for a in by_doc_tree:
        print(f"  document tree, depth {a.depth}: V={a.cramers_v:.3f} (p={a.p_value:.2g}, {len(a.clusters)} nodes)")
        print_over(a)
    for mean_a, major_a in zip(by_token_tree, by_majority):
        print(f"  token tree, depth {mean_a.depth}: mean-pooled V={mean_a.cramers_v:.3f} (p={mean_a.p_value:.2g}, "
              f"{len(mean_a.clusters)} nodes)   majority of sampled tokens V={major_a.cramers_v:.3f} "
              f"(p={major_a.p_value:.2g}, {len(majority)} docs)")

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
    start = time.perf_counter()  # numba compiles UMAP/HDBSCAN kernels once per process: not the tree's cost
    build_tree(sample.vectors[:500], replace(tree.config, max_depth=1))
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuilt = build_tree(sample.vectors, tree.config, soft_clusters=sample.memberships())  # no cache
    tree_seconds = time.perf_counter() - start
    start = time.perf_counter()
    doc_rebuilt = build_tree(sample.doc_vectors, doc_tree.config, soft_clusters=sample.doc_memberships())
    doc_seconds = time.perf_counter() - start
    start = time.perf_counter()
    old_default = build_tree(sample.vectors, replace(tree.config, silhouette_threshold=0.3),
                             soft_clusters=sample.memberships())
    old_seconds = time.perf_counter() - start
    same = all(r.render() == t.render() for r, t in ((rebuilt, tree), (doc_rebuilt, doc_tree)))
    n_tokens = sum(int(np.load(c / "attention_mask.npy", mmap_mode="r").sum()) for c in chunks)
    print(f"\nwall time, measured here: centroid fit {fit_seconds:.1f} s ({n_tokens} tokens, {len(chunks)} chunks, "
          f"k={sample.n_clusters}, {centroids.n_epochs} epochs); token tree {tree_seconds:.1f} s "
          f"({len(sample.vectors)} sampled tokens, {len(tree.nodes) - 1} non-root nodes); document tree "
          f"{doc_seconds:.1f} s ({len(sample.doc_ids)} documents, {len(doc_tree.nodes) - 1} non-root nodes); "
          f"{'same trees as materialized' if same else 'DIFFER from the materialized trees'}; "
          f"before them, once per process, numba compilation + a 500-token warm-up tree {warmup_seconds:.1f} s")
    print(f"  token tree / centroid fit: {tree_seconds / fit_seconds:.1f}x; "
          f"document tree / centroid fit: {doc_seconds / fit_seconds:.1f}x")
    print(f"  token tree at silhouette_threshold={tree.config.silhouette_threshold} / at the old default 0.3 "
          f"({old_seconds:.1f} s, {len(old_default.nodes) - 1} non-root nodes): {tree_seconds / old_seconds:.1f}x")


if __name__ == "__main__":
    main()
